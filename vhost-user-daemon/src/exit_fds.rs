//! Works around an fd leak in vhost-user-backend 0.24: `VringEpollHandler::new`
//! registers each worker's exit-event consumer with `into_raw_fd()` and never
//! closes it, so every connection leaked one eventfd per worker thread until
//! the daemon ran out of fds (found by the vhost-user message fuzz targets).
//! The backend notes the fd numbers it hands out; the serve loop closes them
//! once the connection's daemon — every worker thread and epoll with it — is
//! gone, which it proves by holding the only reference to the backend.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Exit-event consumer fds handed to the framework for one connection.
#[derive(Debug, Default)]
pub struct LeakedExitFds(Mutex<Vec<RawFd>>);

impl LeakedExitFds {
    /// Remember `fd` (a consumer about to be handed to the framework).
    pub fn note(&self, fd: RawFd) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
    }

    /// Close every noted fd. `&mut self` means the caller owns the backend
    /// exclusively: no worker thread or epoll of its daemon is left.
    pub fn close_all(&mut self) {
        let fds = std::mem::take(self.0.get_mut().unwrap_or_else(|p| p.into_inner()));
        for fd in fds {
            // SAFETY: the framework turned this fd into a raw number and
            // dropped every user of it (worker threads joined, epolls
            // closed); nothing else owns it, so we take ownership and close.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}
