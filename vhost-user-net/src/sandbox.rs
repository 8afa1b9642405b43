//! The net daemon's part of the sandbox (`vhost_user_daemon::sandbox` holds
//! the rest, entered once the TAP is open, the socket bound and the relay's
//! private socket made): the TAP I/O syscalls and the TAP settings that
//! follow the guest's features and ring enables, on top of the base list.
//! It serves from no file: Landlock lists none.

use vhost_user_daemon::sandbox::SeccompExtras;

const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const TUNSETQUEUE: u64 = 0x4004_54d9;

/// Syscalls (any arguments) and ioctls this daemon adds to the base list.
pub const SECCOMP: SeccompExtras<'static> = SeccompExtras {
    // TAP I/O
    syscalls: &[libc::SYS_pread64, libc::SYS_pwrite64],
    ioctls: &[TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETQUEUE],
};

#[cfg(test)]
mod tests {
    use vhost_user_daemon::sandbox::seccomp::in_confined_child;
    use virtio_devices::seccomp::killed_by_seccomp;

    use super::*;

    #[test]
    fn tap_settings_pass_but_not_tunsetiff() {
        let status = in_confined_child(&SECCOMP, || {
            // SAFETY: ioctl(TUNSETIFF) on fd 0 with no argument; it must be
            // refused before the kernel looks at the pointer.
            unsafe { libc::ioctl(0, 0x4004_54ca, std::ptr::null_mut::<u8>()) };
            0
        });
        assert!(killed_by_seccomp(status), "status {status:#x}");
        let status = in_confined_child(&SECCOMP, || {
            // SAFETY: TUNSETVNETHDRSZ and pwrite64 on an invalid fd:
            // allowed, both fail with EBADF before reading memory.
            let rcs = unsafe {
                [
                    libc::ioctl(-1, TUNSETVNETHDRSZ, std::ptr::null::<i32>()),
                    i32::try_from(libc::pwrite(-1, std::ptr::null(), 0, 0)).unwrap_or(0),
                ]
            };
            if rcs == [-1; 2] { 7 } else { 1 }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "status {status:#x}"
        );
    }
}
