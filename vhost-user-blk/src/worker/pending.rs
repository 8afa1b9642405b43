//! The requests an engine holds for a queue, by head: where each one's
//! status and used entry go when the engine gives it back.

use std::sync::Arc;

use virtio_devices::block::{RequestKind, Segment};
use vm_memory::GuestAddress;

use super::Mem;

/// Guest data a request moves, for the byte counters.
#[derive(Debug, Clone, Copy)]
pub enum Transfer {
    Read(u64),
    Write(u64),
    None,
}

impl Transfer {
    /// What `kind` moves.
    pub fn of(kind: &RequestKind) -> Self {
        match kind {
            RequestKind::Read { len, .. } => Transfer::Read(*len),
            RequestKind::Write { len, .. } => Transfer::Write(*len),
            _ => Transfer::None,
        }
    }
}

/// The device-writable data segments of `kind`, taken out of it: what the
/// request may write into guest memory (a read's buffers; GET_ID's).
pub fn take_written(kind: &mut RequestKind) -> Vec<Segment> {
    match kind {
        RequestKind::Read { data, .. } | RequestKind::GetId { data, .. } => std::mem::take(data),
        _ => Vec::new(),
    }
}

/// A request the engine has queued, until it is reaped.
#[derive(Debug)]
pub struct Pending {
    pub head: u16,
    pub status_addr: GuestAddress,
    /// The memory table it started with: its completion goes there.
    pub mem: Arc<Mem>,
    pub transfer: Transfer,
    /// A read's buffers (moved out of the request, not copied), marked in
    /// the dirty log at completion; empty for everything else.
    pub written: Vec<Segment>,
}

/// In-flight requests by head (the engine's token).
#[derive(Debug)]
pub struct PendingTable {
    entries: Vec<Option<Pending>>,
    count: usize,
}

impl PendingTable {
    /// Room for a queue of `size` entries.
    pub fn new(size: u16) -> Self {
        PendingTable {
            entries: (0..size).map(|_| None).collect(),
            count: 0,
        }
    }

    /// `head` fits the queue and is not in flight.
    pub fn is_free(&self, head: u16) -> bool {
        matches!(self.entries.get(usize::from(head)), Some(None))
    }

    /// Record `p`; false if its head is beyond the queue.
    pub fn insert(&mut self, p: Pending) -> bool {
        let Some(entry) = self.entries.get_mut(usize::from(p.head)) else {
            return false;
        };
        if entry.replace(p).is_none() {
            self.count += 1;
        }
        true
    }

    /// The request submitted with `token`, if it is in flight.
    pub fn take(&mut self, token: u64) -> Option<Pending> {
        let p = usize::try_from(token)
            .ok()
            .and_then(|h| self.entries.get_mut(h))
            .and_then(Option::take)?;
        self.count -= 1;
        Some(p)
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.count
    }
}
