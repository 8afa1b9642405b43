//! A vring that refuses a queue size the driver may not use.
//!
//! vhost-user-backend 0.24 checks SET_VRING_NUM only against 0 and the
//! maximum; virtio-queue's `set_size` then drops a size that is not a power
//! of two with a log line and keeps the previous one, so device and driver
//! would disagree about the ring layout. This wrapper remembers such a
//! request and keeps the queue from ever becoming ready (the activation
//! fails; the worker sees a not-ready queue and processes nothing) until a
//! valid SET_VRING_NUM arrives.
//!
//! It also keeps the frontend's error eventfd (SET_VRING_ERR), which
//! vhost-user-backend stores but never exposes: a worker that finds the
//! ring corrupt calls [`CheckedVring::signal_error`] and the frontend
//! (viaduct) marks the device NEEDS_RESET for the driver. Everything else
//! delegates to [`VringRwLock`].

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;
use vm_memory::GuestAddressSpace;

/// [`VringRwLock`] plus the "size refused" latch.
#[derive(Clone)]
pub struct CheckedVring<M: GuestAddressSpace> {
    inner: VringRwLock<M>,
    bad_size: Arc<AtomicBool>,
    err: Arc<Mutex<Option<File>>>,
}

impl<M: GuestAddressSpace> CheckedVring<M> {
    /// Whether the last SET_VRING_NUM was refused.
    pub fn size_refused(&self) -> bool {
        self.bad_size.load(Ordering::Acquire)
    }

    /// Tells the frontend this ring is broken (its SET_VRING_ERR eventfd);
    /// false when it gave none or the write failed. Never blocks (see
    /// [`crate::notify_fd`]): callers hold the worker's lock.
    pub fn signal_error(&self) -> bool {
        let slot = self.err.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(f) => crate::notify_fd::signal(f.as_fd()).is_ok(),
            None => false,
        }
    }
}

// vhost-user-backend's VringRwLock has no Debug: print the latches only.
impl<M: GuestAddressSpace> std::fmt::Debug for CheckedVring<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedVring")
            .field("bad_size", &self.bad_size)
            .field("err", &self.err)
            .finish_non_exhaustive()
    }
}

impl<'a, M: 'a + GuestAddressSpace> VringStateGuard<'a, M> for CheckedVring<M> {
    type G = <VringRwLock<M> as VringStateGuard<'a, M>>::G;
}

impl<'a, M: 'a + GuestAddressSpace> VringStateMutGuard<'a, M> for CheckedVring<M> {
    type G = <VringRwLock<M> as VringStateMutGuard<'a, M>>::G;
}

impl<M: 'static + GuestAddressSpace> VringT<M> for CheckedVring<M> {
    fn new(mem: M, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(CheckedVring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            bad_size: Arc::new(AtomicBool::new(false)),
            err: Arc::new(Mutex::new(None)),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, M>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, M>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc, avail, used)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        let valid = num.is_power_of_two();
        self.bad_size.store(!valid, Ordering::Release);
        if valid {
            self.inner.set_queue_size(num);
        } else {
            log::warn!("event=queue_size_refused size={num}");
            self.inner.set_queue_ready(false);
        }
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready && !self.size_refused())
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        let mine = file.as_ref().and_then(|f| f.try_clone().ok());
        *self.err.lock().unwrap_or_else(|e| e.into_inner()) = mine;
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    use super::*;

    type V = CheckedVring<GuestMemoryAtomic<GuestMemoryMmap>>;

    #[test]
    fn size_not_a_power_of_two_keeps_the_queue_from_being_ready() {
        let v = V::new(GuestMemoryAtomic::new(GuestMemoryMmap::new()), 256).unwrap();
        v.set_queue_size(100);
        v.set_queue_ready(true);
        assert!(v.size_refused());
        assert!(!v.get_ref().get_queue().ready());
        v.set_queue_size(64);
        v.set_queue_ready(true);
        assert!(!v.size_refused());
        assert!(v.get_ref().get_queue().ready());
        assert_eq!(v.get_ref().get_queue().size(), 64);
    }

    #[test]
    fn the_error_eventfd_is_signalled_when_asked() {
        use std::os::fd::{FromRawFd, IntoRawFd};
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let v = V::new(GuestMemoryAtomic::new(GuestMemoryMmap::new()), 256).unwrap();
        assert!(!v.signal_error(), "no eventfd given yet");
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let dup = evt.try_clone().unwrap().into_raw_fd();
        // SAFETY: `dup` is a fresh descriptor this test owns; the File takes it.
        v.set_err(Some(unsafe { File::from_raw_fd(dup) }));
        assert!(v.signal_error());
        assert_eq!(evt.read().unwrap(), 1);
        v.set_err(None);
        assert!(!v.signal_error());
    }
}
