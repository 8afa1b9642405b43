//! Watching the vhost-user backends from the event loop: each backend's
//! socket is in the epoll set for hang-ups; a backend that hung up is
//! marked lost and retried every [`RETRY_EVERY`] until a daemon listens on
//! its socket again, which then gets the device's rings back (see
//! `VhostUserDevice::reconnect`).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use virtio_devices::vhost_user::VhostUserDevice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// How often a lost backend is retried.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

/// One vhost-user device the VMM watches.
pub struct Watched {
    pub id: String,
    pub device: Arc<Mutex<VhostUserDevice>>,
    fd: Option<RawFd>,
    failures: u32,
}

/// All of them, with epoll tokens `base + index`.
pub struct Backends {
    list: Vec<Watched>,
    base: u64,
}

fn lock(d: &Mutex<VhostUserDevice>) -> MutexGuard<'_, VhostUserDevice> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backends {
    pub fn new(devices: Vec<(String, Arc<Mutex<VhostUserDevice>>)>, base: u64) -> Self {
        let list = devices
            .into_iter()
            .map(|(id, device)| Watched {
                id,
                device,
                fd: None,
                failures: 0,
            })
            .collect();
        Self { list, base }
    }

    /// The token's device index, if it is one of ours.
    pub fn index_of(&self, token: u64) -> Option<usize> {
        let i = usize::try_from(token.checked_sub(self.base)?).ok()?;
        (i < self.list.len()).then_some(i)
    }

    fn watch(&mut self, i: usize, epoll: &Epoll) {
        let w = &mut self.list[i];
        let Some(fd) = lock(&w.device).backend_fd() else {
            return;
        };
        // Hang-ups only: replies are read by whoever sent the request.
        let ev = EpollEvent::new(EventSet::READ_HANG_UP, self.base + i as u64);
        match epoll.ctl(ControlOperation::Add, fd, ev) {
            Ok(()) => w.fd = Some(fd),
            Err(e) => log::warn!("cannot watch backend {}: {e}", w.id),
        }
    }

    /// Puts every connected backend's socket into `epoll`.
    pub fn watch_all(&mut self, epoll: &Epoll) {
        for i in 0..self.list.len() {
            self.watch(i, epoll);
        }
    }

    /// Backend `i` hung up: stop watching its socket and mark it lost.
    pub fn hung_up(&mut self, i: usize, epoll: &Epoll) {
        let w = &mut self.list[i];
        if let Some(fd) = w.fd.take() {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        lock(&w.device).backend_lost();
        w.failures = 0;
    }

    pub fn any_lost(&self) -> bool {
        self.list.iter().any(|w| !lock(&w.device).is_connected())
    }

    /// Tries to reconnect every lost backend once.
    pub fn retry(&mut self, epoll: &Epoll) {
        for i in 0..self.list.len() {
            if lock(&self.list[i].device).is_connected() {
                continue;
            }
            let result = lock(&self.list[i].device).reconnect();
            match result {
                Ok(()) => self.watch(i, epoll),
                Err(e) => {
                    let w = &mut self.list[i];
                    w.failures = w.failures.saturating_add(1);
                    // Say it once, then every 25 attempts (5 s).
                    if w.failures % 25 == 1 {
                        log::warn!(
                            "event=backend_retry id={} attempts={} error=\"{e}\"",
                            w.id,
                            w.failures
                        );
                    }
                }
            }
        }
    }
}
