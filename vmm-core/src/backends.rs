//! Watching the vhost-user backends from the event loop: each backend's
//! socket is in the epoll set for hang-ups; a backend that hung up is
//! marked lost and retried every [`RETRY_EVERY`] until a daemon listens on
//! its socket again, which then gets the device's rings back (see
//! `VhostUserDevice::reconnect`). Each device's vring error eventfd is
//! watched too: a backend that found a ring corrupt gets the device marked
//! NEEDS_RESET for the driver. A NIC's control queue is served here too:
//! its doorbell's ioeventfd is in the epoll set and a kick has the device
//! process the queue (the backend never sees that queue).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::os::fd::AsRawFd;

use virtio_devices::transport::virtio_pci::VirtioPciDevice;
use virtio_devices::vhost_user::VhostUserDevice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How often a lost backend is retried.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

/// One vhost-user device the VMM watches.
pub struct Watched {
    pub id: String,
    pub device: Arc<Mutex<VhostUserDevice>>,
    pub transport: Arc<Mutex<VirtioPciDevice>>,
    fd: Option<RawFd>,
    failures: u32,
    /// The control queue's kick eventfd (a NIC's), duplicated.
    ctrl_kick: Option<EventFd>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("id", &self.id)
            .field("fd", &self.fd)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// What an epoll token of ours means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Device `i`'s backend hung up.
    HangUp(usize),
    /// Device `i`'s backend reported a broken ring.
    RingError(usize),
    /// The driver kicked device `i`'s control queue.
    CtrlKick(usize),
}

/// How many devices the token ranges leave room for.
const MAX_DEVICES: u64 = 0x100;

/// All of them, with epoll tokens `base + index` (hang-ups),
/// `base + MAX_DEVICES + index` (ring errors) and
/// `base + 2 * MAX_DEVICES + index` (control-queue kicks).
#[derive(Debug)]
pub struct Backends {
    list: Vec<Watched>,
    base: u64,
}

fn lock(d: &Mutex<VhostUserDevice>) -> MutexGuard<'_, VhostUserDevice> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watched {
    pub fn new(
        id: String,
        device: Arc<Mutex<VhostUserDevice>>,
        transport: Arc<Mutex<VirtioPciDevice>>,
    ) -> Self {
        let ctrl = lock(&device).kind().ctrl_queue_index();
        let ctrl_kick = ctrl.and_then(|i| {
            let t = transport.lock().unwrap_or_else(|e| e.into_inner());
            t.queue_kick(i).and_then(|k| k.try_clone().ok())
        });
        Self {
            id,
            device,
            transport,
            fd: None,
            failures: 0,
            ctrl_kick,
        }
    }
}

impl Backends {
    pub fn new(devices: Vec<Watched>, base: u64) -> Self {
        Self {
            list: devices,
            base,
        }
    }

    /// What a token means, if it is one of ours.
    pub fn event_of(&self, token: u64) -> Option<Event> {
        let off = token.checked_sub(self.base)?;
        let (i, ev): (u64, fn(usize) -> Event) = match off / MAX_DEVICES {
            0 => (off, Event::HangUp),
            1 => (off - MAX_DEVICES, Event::RingError),
            2 => (off - 2 * MAX_DEVICES, Event::CtrlKick),
            _ => return None,
        };
        let i = usize::try_from(i).ok()?;
        (i < self.list.len()).then(|| ev(i))
    }

    /// The driver kicked device `i`'s control queue: serve it.
    pub fn ctrl_kick(&mut self, i: usize) {
        let w = &self.list[i];
        if let Some(k) = &w.ctrl_kick {
            // Drain first: a kick after this is a new one.
            let _ = k.read();
        }
        lock(&w.device).process_ctrl_queue();
    }

    /// A backend said a ring of device `i` is corrupt: NEEDS_RESET.
    pub fn ring_error(&mut self, i: usize) {
        let w = &self.list[i];
        // Drain the eventfd; one report per device until the driver resets.
        let _ = lock(&w.device).error_event().read();
        let set = w
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .signal_needs_reset();
        log::error!(
            "event=backend_ring_error id={} action=needs_reset newly_set={set}",
            w.id
        );
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

    /// Puts every connected backend's socket and error eventfd into `epoll`.
    pub fn watch_all(&mut self, epoll: &Epoll) {
        for i in 0..self.list.len() {
            self.watch(i, epoll);
            let fd = lock(&self.list[i].device).error_event().as_raw_fd();
            let token = self.base + MAX_DEVICES + i as u64;
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                log::warn!("cannot watch ring errors of {}: {e}", self.list[i].id);
            }
            if let Some(k) = &self.list[i].ctrl_kick {
                let token = self.base + 2 * MAX_DEVICES + i as u64;
                let ev = EpollEvent::new(EventSet::IN, token);
                if let Err(e) = epoll.ctl(ControlOperation::Add, k.as_raw_fd(), ev) {
                    log::warn!("cannot watch the control queue of {}: {e}", self.list[i].id);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_decode_to_events_of_known_devices_only() {
        let b = Backends {
            list: Vec::new(),
            base: 0x100,
        };
        assert_eq!(b.event_of(0x100), None, "no devices");
        assert_eq!(b.event_of(0x50), None);
        let b = Backends {
            list: Vec::new(),
            base: 0x100,
        };
        assert_eq!(b.event_of(0x100 + 3 * MAX_DEVICES), None, "past the ranges");
    }
}
