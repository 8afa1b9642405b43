//! The queue-pair vocabulary shared by the backend, the pair worker and the
//! two data paths (`rx`, `tx`): what negotiation
//! fixed, which vring is which, what a wake-up concerns, what a pass needs
//! of a virtqueue, and which events a pair wants from its worker epoll.
//!
//! A leaf: it uses nothing else from this crate, so the modules above it
//! form no import circle.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Index of the RX / TX vring within a worker's vrings.
pub const RX: u16 = 0;
pub const TX: u16 = 1;

/// What the negotiation fixed for the data paths.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    pub acked: u64,
    pub hdr_len: usize,
    pub mrg_rxbuf: bool,
}

/// One virtqueue as a data path sees it during one pass: the ring, and the
/// way to tell the driver that used buffers were added. The daemon's is
/// the framework's vring state, locked for the pass; a test's or fuzzer's
/// is a plain [`Queue`] and an eventfd.
pub trait Virtqueue {
    /// The ring (descriptor table, avail and used rings).
    fn queue(&mut self) -> &mut Queue;
    /// Signals the driver (the call eventfd) that used buffers were added.
    fn signal_used(&self) -> io::Result<()>;
}

/// What one wake-up should look at.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    pub rx: bool,
    pub tx: bool,
}

impl Wake {
    /// Maps a worker event to the directions it concerns.
    pub fn from_event(device_event: u16, evset: EventSet, tap_token: u64) -> Wake {
        match device_event {
            RX => Wake {
                rx: true,
                tx: false,
            },
            TX => Wake {
                rx: false,
                tx: true,
            },
            t if u64::from(t) == tap_token => Wake {
                rx: evset.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR),
                tx: evset.contains(EventSet::OUT),
            },
            _ => Wake { rx: true, tx: true },
        }
    }
}

/// Per-connection context every wake-up needs.
#[derive(Debug)]
pub struct PairCtx<'a> {
    pub mem: &'a GuestMemoryAtomic<GuestMemoryMmap>,
    pub neg: Negotiated,
    pub multiqueue: bool,
    pub poll: Duration,
    pub budget: usize,
}

/// A change of the events a pair wants for its TAP fd on its worker epoll:
/// whoever owns the epoll removes `from` (if not empty), adds `to` (if not
/// empty), and reports back what is registered afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    pub fd: RawFd,
    pub from: EventSet,
    pub to: EventSet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_directions() {
        let w = Wake::from_event(0, EventSet::IN, 3);
        assert!(w.rx && !w.tx);
        let w = Wake::from_event(1, EventSet::IN, 3);
        assert!(!w.rx && w.tx);
        let w = Wake::from_event(3, EventSet::OUT, 3);
        assert!(!w.rx && w.tx, "tap writable again: resume tx");
        let w = Wake::from_event(3, EventSet::IN | EventSet::OUT, 3);
        assert!(w.rx && w.tx);
        let w = Wake::from_event(3, EventSet::HANG_UP, 3);
        assert!(w.rx && !w.tx);
    }
}
