//! A graceful-shutdown request, shared by the signal thread (or a test)
//! and the serve loop: it wakes the wait for a connection and ends the
//! current one, whose requests the device then drains.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vhost_user_backend::ShutdownHandle;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Graceful-shutdown request.
pub struct Shutdown {
    requested: AtomicBool,
    wake: EventFd,
    current: Mutex<Option<ShutdownHandle>>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.is_requested())
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// New, not requested.
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            current: Mutex::new(None),
        })
    }

    /// Asks the serve loop to stop: wakes the wait for a connection and
    /// closes the current connection.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(handle) = self.current().as_ref() {
            handle.shutdown();
        }
    }

    /// Whether [`Shutdown::request`] was called.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The handle that ends the connection being served, if any.
    pub(crate) fn current(&self) -> MutexGuard<'_, Option<ShutdownHandle>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}
