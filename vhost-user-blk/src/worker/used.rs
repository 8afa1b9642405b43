//! Returning a chain: the status byte, the request counters, the used
//! entry, and the in-flight region's marks around it (crash-safe restart).

use vhost_user_backend::VringT;
use virtio_devices::block::BlockStatus;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{Mem, QueueWorker, Vring};
use crate::counters::QueueCounters;

impl QueueWorker {
    /// Write the status byte and return the chain with `data_len` + 1 bytes used.
    pub(super) fn finish(
        &mut self,
        vring: &Vring,
        mem: &Mem,
        head: u16,
        status_addr: GuestAddress,
        status: BlockStatus,
        data_len: u64,
    ) {
        QueueCounters::bump(&self.counters().requests);
        if status != BlockStatus::Ok {
            QueueCounters::bump(&self.counters().errors);
        }
        if let Err(e) = mem.write_obj(status.as_byte(), status_addr) {
            log::warn!(
                "status_write_failed queue={} head={head} error=\"{e}\"",
                self.index
            );
        }
        // Validation caps data at 1 GiB, so the length fits a u32.
        let used = u32::try_from(data_len.saturating_add(1)).unwrap_or(u32::MAX);
        self.add_used(vring, mem, head, used);
    }

    pub(super) fn add_used(&mut self, vring: &Vring, mem: &Mem, head: u16, len: u32) {
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
        if let Some(tracker) = &self.tracker {
            tracker.post_put(head, queue.next_used());
        }
        self.unsignalled += 1;
    }
}
