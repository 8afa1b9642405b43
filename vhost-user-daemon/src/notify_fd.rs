//! The notification fds a frontend hands over (SET_VRING_KICK, _CALL,
//! _ERR) must be eventfds, and the daemon's writes to them must never
//! block.
//!
//! The daemons write to these fds themselves: the blk relay kicks a
//! restarted ring's kick fd, the workers signal the call fd and, for a
//! corrupt ring, the error fd — some of them holding a worker's lock. A
//! frontend that passes a full pipe (or any file a write can block on)
//! would park that thread for good, and with it the disconnect path and
//! every later connection. So [`prepare`] refuses anything whose
//! `/proc/self/fd` link is not `anon_inode:[eventfd]` and sets O_NONBLOCK on
//! the ones it keeps (an eventfd write then fails with EAGAIN at a saturated
//! counter instead of waiting for a reader). The relay calls it on every such
//! fd before the message goes anywhere ([`crate::relay`]).
//!
//! O_NONBLOCK lives in the open file description, which the frontend
//! shares: it could clear the flag again later. [`signal`] therefore sets
//! it before each write as well, which leaves a hostile frontend a race of
//! a few instructions per write and nothing more.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use thiserror::Error;

/// `VHOST_USER_SET_VRING_KICK`.
pub const REQ_SET_VRING_KICK: u32 = 12;
/// `VHOST_USER_SET_VRING_CALL`.
pub const REQ_SET_VRING_CALL: u32 = 13;
/// `VHOST_USER_SET_VRING_ERR`.
pub const REQ_SET_VRING_ERR: u32 = 14;

/// What `/proc/self/fd/N` of an eventfd links to.
const EVENTFD_LINK: &[u8] = b"anon_inode:[eventfd]";

/// A notification fd the daemon will not use.
#[derive(Debug, Error)]
pub enum NotifyFdError {
    /// Its kind could not be read.
    #[error("cannot inspect fd {0}")]
    Inspect(i32, #[source] io::Error),
    /// It is something else (a pipe, a socket, a file...).
    #[error("fd {fd} is {kind}, not an eventfd")]
    NotEventFd { fd: i32, kind: String },
    /// O_NONBLOCK could not be set.
    #[error("cannot make fd {0} non-blocking")]
    NonBlock(i32, #[source] io::Error),
}

/// The `/proc/self/fd` link of `fd` (`anon_inode:[eventfd]`, `pipe:[123]`...).
fn link_of(fd: BorrowedFd<'_>) -> Result<Vec<u8>, NotifyFdError> {
    let raw = fd.as_raw_fd();
    let path = format!("/proc/self/fd/{raw}\0");
    let mut buf = [0u8; 64];
    // SAFETY: `path` is NUL-terminated and `buf` is writable for its
    // length; readlinkat writes at most that many bytes.
    let n = unsafe {
        libc::readlinkat(
            libc::AT_FDCWD,
            path.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // Negative: the call failed.
    let Ok(n) = usize::try_from(n) else {
        return Err(NotifyFdError::Inspect(raw, io::Error::last_os_error()));
    };
    Ok(buf[..n].to_vec())
}

/// Whether `fd` is an eventfd.
pub fn is_eventfd(fd: BorrowedFd<'_>) -> Result<bool, NotifyFdError> {
    Ok(link_of(fd)? == EVENTFD_LINK)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), NotifyFdError> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor we hold; no memory involved.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    let rc = if flags < 0 || flags & libc::O_NONBLOCK != 0 {
        flags.min(0)
    } else {
        // SAFETY: F_SETFL on a descriptor we hold; no memory involved.
        unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) }
    };
    if rc < 0 {
        return Err(NotifyFdError::NonBlock(raw, io::Error::last_os_error()));
    }
    Ok(())
}

/// Accepts `fd` as a kick, call or error fd: it must be an eventfd; it is
/// made non-blocking.
pub fn prepare(fd: BorrowedFd<'_>) -> Result<(), NotifyFdError> {
    let link = link_of(fd)?;
    if link != EVENTFD_LINK {
        return Err(NotifyFdError::NotEventFd {
            fd: fd.as_raw_fd(),
            kind: String::from_utf8_lossy(&link).into_owned(),
        });
    }
    set_nonblocking(fd)
}

/// Adds 1 to the eventfd `fd` without ever waiting (EAGAIN when the
/// frontend left its counter saturated).
pub fn signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_nonblocking(fd).map_err(|e| match e {
        NotifyFdError::NonBlock(_, e) => e,
        other => io::Error::other(other),
    })?;
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from `one`, alive for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    match n {
        8 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::from(io::ErrorKind::WriteZero)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    fn eventfd(flags: i32) -> OwnedFd {
        // SAFETY: plain eventfd(2); checked below.
        let fd = unsafe { libc::eventfd(0, flags) };
        assert!(fd >= 0);
        // SAFETY: we own the fresh fd.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [-1; 2];
        // SAFETY: pipe2 fills the two ints.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: we own both fresh fds.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    fn nonblocking(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFL on our fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    #[test]
    fn eventfds_are_kept_and_made_non_blocking() {
        let e = eventfd(0);
        assert!(!nonblocking(&e));
        prepare(e.as_fd()).unwrap();
        assert!(nonblocking(&e));
        signal(e.as_fd()).unwrap();
    }

    #[test]
    fn pipes_sockets_and_files_are_refused() {
        let (r, w) = pipe();
        assert!(matches!(
            prepare(w.as_fd()),
            Err(NotifyFdError::NotEventFd { .. })
        ));
        assert!(!nonblocking(&w), "a refused fd is left alone");
        assert!(prepare(r.as_fd()).is_err());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(prepare(a.as_fd()).is_err());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(prepare(f.as_fd()).is_err());
    }

    #[test]
    fn a_saturated_counter_fails_instead_of_blocking() {
        let e = eventfd(0);
        let max = (u64::MAX - 1).to_ne_bytes();
        // SAFETY: 8 bytes from `max`; the eventfd is still blocking, but the
        // counter is 0 so this write does not wait.
        let n = unsafe { libc::write(e.as_raw_fd(), max.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
        let err = signal(e.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
    }
}
