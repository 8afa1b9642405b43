//! What a queue worker marks in the dirty-page log (live migration), in
//! one place every engine's completions pass through: the worker's
//! `finish` (data and status byte, before the used entry is published)
//! and `add_used` / the notification toggles (the used ring, after they
//! wrote it). Marks always follow the write they record, so a frontend
//! that cleared a bit before the write sees it set again.
//!
//! - A read's device-writable segments are marked whole, whatever the
//!   engine (io_uring, the inline `preadv2`, qcow2, null) and whatever the
//!   status: a failed or short read may still have written part of them.
//!   GET_ID's segments likewise (the serial is at most 20 bytes of them).
//!   A write request's buffers are device-readable: never marked.
//! - The status byte.
//! - The used ring's whole extent ([`used_ring_bytes`]): entry, index,
//!   flags and `avail_event` (a page or two).
//!
//! With logging off each call site pays one atomic load
//! ([`vhost_user_daemon::dirty_log::DirtyLog::active`]).

use vhost_user_daemon::dirty_log::{LogRegion, used_ring_bytes};
use virtio_devices::block::Segment;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

/// A request's data segments and status byte, once written.
pub(super) fn mark_request(log: &LogRegion, written: &[Segment], status_addr: GuestAddress) {
    for seg in written {
        log.mark(seg.addr.0, u64::from(seg.len));
    }
    log.mark(status_addr.0, 1);
}

/// The whole used ring of `queue`, once written.
pub(super) fn mark_used_ring(log: &LogRegion, queue: &impl QueueT) {
    log.mark(queue.used_ring(), used_ring_bytes(queue.size()));
}
