//! Ring start with an in-flight region (INFLIGHT_SHMFD): pick up this
//! queue's part of the region and find, oldest first, the requests a
//! previous daemon took and never returned; popping resumes after them.

use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use vhost_user_daemon::chain;
use vhost_user_daemon::inflight::{InflightQueue, SharedRegion};
use virtio_devices::block::{ParseOutcome, RequestLimits, request};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::{Mem, Vring};

/// What the ring starts with.
pub enum Resume {
    /// No region, or one that does not fit the ring: nothing is tracked.
    Untracked,
    /// The used index cannot be read: the ring is corrupt.
    Corrupt {
        /// This queue's part of the region.
        tracker: InflightQueue,
        /// Why.
        why: String,
    },
    /// Tracked; resubmit these heads (oldest first) before popping.
    Tracked {
        /// This queue's part of the region.
        tracker: InflightQueue,
        /// The requests to do again.
        resubmit: Resubmit,
    },
}

/// Requests a previous daemon left in flight, parsed again from the ring.
pub struct Resubmit {
    /// Heads, oldest first.
    pub heads: Vec<u16>,
    desc_table: GuestAddress,
    ring_size: u16,
}

impl Resubmit {
    /// Walk and validate `head`'s chain again.
    pub fn parse(&self, head: u16, mem: &Mem, limits: &RequestLimits) -> ParseOutcome {
        let descs = chain::collect(mem, self.desc_table, self.ring_size, head);
        request::parse(head, descs, mem, limits)
    }
}

/// Start queue `index` of `vring` against the connection's region; moves
/// the ring's next avail index past the requests found in flight.
pub fn resume(region: &SharedRegion, index: usize, vring: &Vring, mem: &Mem) -> Resume {
    let region = region.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (used_idx, ring_size, desc_table) = {
        let state = vring.get_ref();
        let queue = state.get_queue();
        (
            queue.used_idx(mem, Ordering::Acquire),
            queue.size(),
            GuestAddress(queue.desc_table()),
        )
    };
    let queue_index = u16::try_from(index).unwrap_or(u16::MAX);
    let tracker = match region.map(|r| r.queue_for_ring(queue_index, ring_size)) {
        Some(Ok(tracker)) => tracker,
        Some(Err(e)) => {
            // Neither read nor written: the ring runs untracked.
            log::error!("event=inflight_refused queue={index} reason=\"{e}\" action=run_untracked");
            None
        }
        None => None,
    };
    let Some(mut tracker) = tracker else {
        return Resume::Untracked;
    };
    let used_idx = match used_idx {
        Ok(i) => i.0,
        Err(e) => {
            let why = format!("used index: {e}");
            return Resume::Corrupt { tracker, why };
        }
    };
    let recovery = tracker.recover(used_idx, ring_size);
    if let Some(next) = recovery.next_avail {
        vring.get_mut().get_queue_mut().set_next_avail(next);
    }
    log::info!(
        "event=inflight_start queue={index} fresh={} resubmit={} used_idx={used_idx} next_avail={:?}",
        recovery.fresh,
        recovery.resubmit.len(),
        recovery.next_avail
    );
    let resubmit = Resubmit {
        heads: recovery.resubmit,
        desc_table,
        ring_size,
    };
    Resume::Tracked { tracker, resubmit }
}
