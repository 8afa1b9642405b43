//! Function reset of a passed-through device (VFIO_DEVICE_RESET: FLR, PM
//! or bus reset, whichever the kernel finds for the function), before the
//! guest starts and after it stops, so the next VM gets a clean device.

use std::os::fd::AsRawFd;

/// Why a reset did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("the device offers no function reset (no FLR, PM or bus reset)")]
    Unsupported,
    #[error("VFIO_DEVICE_RESET failed")]
    Ioctl(#[source] std::io::Error),
}

/// VFIO_DEVICE_RESET: _IO(VFIO_TYPE, VFIO_BASE + 11).
const VFIO_DEVICE_RESET: libc::c_ulong =
    ((vfio_bindings::bindings::vfio::VFIO_TYPE as libc::c_ulong) << 8)
        | (vfio_bindings::bindings::vfio::VFIO_BASE as libc::c_ulong + 11);

/// Resets the function behind the VFIO device fd `dev`.
pub fn reset(dev: &impl AsRawFd) -> Result<(), ResetError> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is a VFIO device
    // fd owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_RESET as _) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTTY) | Some(libc::EINVAL) => Err(ResetError::Unsupported),
        _ => Err(ResetError::Ioctl(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
    }

    #[test]
    fn reset_on_a_non_vfio_fd_is_an_error() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(reset(&f), Err(ResetError::Unsupported)));
    }
}
