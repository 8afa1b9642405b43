//! Returning a chain: the status byte, the request counters, the dirty-log
//! marks (live migration, [`super::dirty`]), the used entry, and the
//! in-flight region's marks around it (crash-safe restart); completing
//! what the engine reaped, and signalling the guest.

use vhost_user_backend::VringT;
use vhost_user_daemon::dirty_log::LogRegion;
use virtio_devices::block::{BlockStatus, Segment};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vm_memory::{Bytes, GuestAddress};

use super::pending::Transfer;
use super::{Mem, QueueWorker, Vring, dirty};
use crate::counters::QueueCounters;
use crate::engine::BlockEngine;

/// A request the worker returns to the guest.
pub(super) struct Finished<'a> {
    pub head: u16,
    pub status_addr: GuestAddress,
    pub status: BlockStatus,
    /// Data bytes written to the guest (the used length minus the status byte).
    pub len: u64,
    /// The device-writable data segments (a read's buffers, GET_ID's),
    /// marked in the dirty log while logging is on.
    pub written: &'a [Segment],
}

impl QueueWorker {
    /// Write the status byte and return the chain with `len` + 1 bytes used.
    pub(super) fn finish(&mut self, vring: &Vring, mem: &Mem, f: Finished<'_>) {
        let head = f.head;
        QueueCounters::bump(&self.counters().requests);
        if f.status != BlockStatus::Ok {
            QueueCounters::bump(&self.counters().errors);
        }
        if let Err(e) = mem.write_obj(f.status.as_byte(), f.status_addr) {
            log::warn!(
                "status_write_failed queue={} head={head} error=\"{e}\"",
                self.index
            );
        }
        // One atomic load with logging off. Data and status are written by
        // now: marked before the used entry publishes them.
        let log = self.settings.log.active();
        if let Some(log) = &log {
            dirty::mark_request(log, f.written, f.status_addr);
        }
        // Validation caps data at 1 GiB, so the length fits a u32.
        let used = u32::try_from(f.len.saturating_add(1)).unwrap_or(u32::MAX);
        self.add_used(vring, mem, head, used, log.as_deref());
    }

    /// Publish `head` in the used ring; with `log`, mark the ring after.
    pub(super) fn add_used(
        &mut self,
        vring: &Vring,
        mem: &Mem,
        head: u16,
        len: u32,
        log: Option<&LogRegion>,
    ) {
        if let Some(tracker) = &self.tracker {
            tracker.pre_put(head);
        }
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        if let Err(e) = queue.add_used(mem, head, len) {
            drop(state);
            self.mark_broken(vring, &format!("add_used: {e}"));
            return;
        }
        if let Some(log) = log {
            dirty::mark_used_ring(log, queue);
        }
        if let Some(tracker) = &self.tracker {
            tracker.post_put(head, queue.next_used());
        }
        self.unsignalled += 1;
    }

    /// Complete every request the engine has finished.
    pub(super) fn complete_ready(&mut self, vring: &Vring) {
        if self.pending.len() == 0 {
            return;
        }
        let mut done = std::mem::take(&mut self.reaped);
        self.engine.reap(&mut done);
        for reaped in done.drain(..) {
            let Some(entry) = self.pending.take(reaped.token) else {
                continue;
            };
            let status = reaped.completion.status;
            self.account(entry.transfer, status);
            let f = Finished {
                head: entry.head,
                status_addr: entry.status_addr,
                status,
                len: reaped.completion.len,
                written: &entry.written,
            };
            self.finish(vring, &entry.mem, f);
        }
        self.reaped = done;
    }

    pub(super) fn account(&self, transfer: Transfer, status: BlockStatus) {
        if status != BlockStatus::Ok {
            return;
        }
        match transfer {
            Transfer::Read(n) => QueueCounters::add(&self.counters().bytes_read, n),
            Transfer::Write(n) => QueueCounters::add(&self.counters().bytes_written, n),
            Transfer::None => {}
        }
    }

    /// Signal the call eventfd if the driver wants to hear about what we used.
    pub(super) fn notify(&mut self, vring: &Vring) {
        if self.unsignalled == 0 {
            return;
        }
        self.unsignalled = 0;
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let needed = state
            .get_queue_mut()
            .needs_notification(&*mem)
            .unwrap_or(true);
        if needed {
            if let Err(e) = state.signal_used_queue() {
                log::warn!("signal_failed queue={} error=\"{e}\"", self.index);
            }
        }
    }
}
