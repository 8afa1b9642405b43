//! The RX path: TAP → guest RX ring.
//!
//! Fast path: one `readv` straight into the first free chain, with a host
//! overflow buffer as the last segment. A frame larger than that chain is
//! completed by copying the overflow into more chains (MRG_RXBUF), and when
//! the guest has too few buffers the frame is parked in host memory and the
//! TAP is no longer polled until the guest kicks: nothing read is lost.
//!
//! A parked frame is retried only when the guest has published buffers
//! since the ring ran dry ([`RxState`] remembers its avail index then):
//! the chains given back with `go_to_previous_position` keep
//! `enable_notification` saying "more available", which must not loop.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use log::debug;
use virtio_devices::net::features::HDR_LEN_V1;
use virtio_devices::net::header::NUM_BUFFERS_OFFSET;
use virtio_devices::net::mrg::spread;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::counters::{Drop, QueueCounters};
use crate::iov;
use crate::pair_types::{Negotiated, Virtqueue};

/// Host overflow buffer: a 64 KiB GSO frame plus headers fits.
const BOUNCE_LEN: usize = 64 * 1024 + 1024;

/// How an RX pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Nothing more to read from the TAP right now.
    TapEmpty,
    /// The guest has no (or too few) RX buffers: stop polling the TAP.
    NoBuffers,
    /// The per-wake-up budget is used up; the TAP may hold more.
    Budget,
}

/// RX state of one queue pair, kept across wake-ups.
pub struct RxState {
    bounce: Vec<u8>,
    /// A frame (virtio-net header included) read from the TAP that did not
    /// fit the guest's buffers yet.
    pending: Option<Vec<u8>>,
    /// When `pending` last found too few buffers: the guest's avail index
    /// and the device's next index then. Until the avail index moves (or the
    /// ring is set up anew) a retry would find the same chains.
    dry: Option<Dry>,
    guest: Vec<libc::iovec>,
}

/// The ring's state when a parked frame found too few buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dry {
    avail: u16,
    next_avail: u16,
}

// SAFETY: `guest` holds raw pointers only within one `process` call on the
// worker owning this state; it is cleared before reuse and never read
// across calls.
unsafe impl Send for RxState {}

// The bounce buffer (64 KiB) and the scratch iovecs are left out.
impl std::fmt::Debug for RxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxState")
            .field("pending_len", &self.pending.as_ref().map(Vec::len))
            .field("dry", &self.dry)
            .finish_non_exhaustive()
    }
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            bounce: vec![0; BOUNCE_LEN],
            pending: None,
            dry: None,
            guest: Vec::new(),
        }
    }
}

impl RxState {
    /// Whether a frame waits for guest buffers.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// A chain taken from the ring for the frame being delivered.
struct Taken {
    head: u16,
    iovs: Vec<libc::iovec>,
    cap: usize,
}

enum Placed {
    Delivered,
    NoRoom,
}

/// Moves frames from `tap` (a TAP queue in the daemon; one `readv` per
/// frame) into the RX `ring`, at most `budget` of them. The caller has
/// checked that the ring is enabled and ready.
pub fn process(
    ring: &mut impl Virtqueue,
    mem: &GuestMemoryMmap,
    tap: &impl AsRawFd,
    neg: Negotiated,
    counters: &QueueCounters,
    st: &mut RxState,
    budget: usize,
) -> Result<RxOutcome, virtio_queue::Error> {
    let q = ring.queue();
    let mut used = false;
    let mut frames = 0usize;
    let outcome = loop {
        if frames >= budget {
            break RxOutcome::Budget;
        }
        if let Some(frame) = st.pending.take() {
            if st.dry == Some(ring_now(q, mem)?) {
                // Nothing published since the ring ran dry: same chains.
                st.pending = Some(frame);
                if rearm_dry(q, mem, st)? {
                    continue;
                }
                break RxOutcome::NoBuffers;
            }
            match place_copy(q, mem, &frame, neg, counters, &mut used)? {
                Placed::Delivered => {
                    st.dry = None;
                    frames += 1;
                    continue;
                }
                Placed::NoRoom => {
                    st.pending = Some(frame);
                    if rearm_dry(q, mem, st)? {
                        // Each retry needs a buffer published meanwhile. Not
                        // counted against the budget: a Budget return relies
                        // on a kick to come back, which the guest may have
                        // skipped for a buffer published before the re-arm.
                        continue;
                    }
                    break RxOutcome::NoBuffers;
                }
            }
        }
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            // Re-arm kicks (EVENT_IDX: publishes avail_event); true means
            // buffers arrived in between.
            if q.enable_notification(mem)? {
                crate::ring_check::avail_sane(q, mem)?;
                continue;
            }
            break RxOutcome::NoBuffers;
        };
        let head = chain.head_index();
        st.guest.clear();
        let cap = match iov::gather(chain, mem, true, &mut st.guest) {
            Ok(c) if c >= neg.hdr_len => c,
            Ok(_) | Err(_) => {
                counters.drop(Drop::BadChain);
                q.add_used(mem, head, 0)?;
                used = true;
                continue;
            }
        };
        st.guest.push(libc::iovec {
            iov_base: st.bounce.as_mut_ptr().cast(),
            iov_len: st.bounce.len(),
        });
        // SAFETY: the iovecs point into guest memory mapped for this whole
        // batch (see `iov`) and into our own bounce buffer; at most
        // MAX_SEGMENTS + 1 of them.
        let n = unsafe {
            libc::readv(
                tap.as_raw_fd(),
                st.guest.as_ptr(),
                // At most MAX_SEGMENTS + 1; a count past c_int would fail
                // readv with EINVAL, the tap-error path below.
                libc::c_int::try_from(st.guest.len()).unwrap_or(libc::c_int::MAX),
            )
        };
        st.guest.pop();
        if n < 0 {
            q.go_to_previous_position();
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break RxOutcome::TapEmpty,
                _ => {
                    debug!("event=rx_tap_error err={err}");
                    counters.drop(Drop::TapError);
                    break RxOutcome::TapEmpty;
                }
            }
        }
        // n >= 0 here: the error case left the loop above. A TAP frame is
        // at most 64 KiB and a header: one past a u32 is a TAP error too.
        let n = n.unsigned_abs();
        let Some(len) = u32::try_from(n).ok().filter(|_| n >= neg.hdr_len) else {
            q.go_to_previous_position();
            counters.drop(Drop::TapError);
            continue;
        };
        frames += 1;
        if n <= cap {
            set_num_buffers(&st.guest, neg, 1);
            q.add_used(mem, head, len)?;
            used = true;
            counters.frame(n - neg.hdr_len);
            continue;
        }
        if !neg.mrg_rxbuf {
            // The chain is reusable for the next frame; this one can't fit.
            q.go_to_previous_position();
            counters.drop(Drop::RxTooLarge);
            continue;
        }
        let first = Taken {
            head,
            iovs: std::mem::take(&mut st.guest),
            cap,
        };
        let overflow = &st.bounce[..n - cap];
        match spread_overflow(q, mem, first, overflow, n, neg, counters, &mut used)? {
            Ok(()) => {}
            Err(frame) => {
                st.pending = Some(frame);
                if rearm_dry(q, mem, st)? {
                    continue;
                }
                break RxOutcome::NoBuffers;
            }
        }
    };
    if used && q.needs_notification(mem)? {
        if let Err(e) = ring.signal_used() {
            debug!("event=rx_signal_failed err={e}");
        }
    }
    Ok(outcome)
}

/// The guest's avail index and the device's next index.
fn ring_now(q: &Queue, mem: &GuestMemoryMmap) -> Result<Dry, virtio_queue::Error> {
    Ok(Dry {
        avail: q.avail_idx(mem, Ordering::Acquire)?.0,
        next_avail: q.next_avail(),
    })
}

/// The ring ran dry with a frame parked: remembers the guest's avail index
/// and re-arms kicks for the next buffer the guest publishes after it (with
/// EVENT_IDX, `avail_event` must name that index, not `next_avail`: the
/// chains given back are already published and the guest would not kick
/// for more). True if the guest published buffers meanwhile: worth a retry.
/// `enable_notification` alone would answer true as long as the given-back
/// chains are there, which is what made this loop spin.
fn rearm_dry(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    st: &mut RxState,
) -> Result<bool, virtio_queue::Error> {
    let dry = ring_now(q, mem)?;
    st.dry = Some(dry);
    q.set_next_avail(dry.avail);
    let armed = q.enable_notification(mem);
    q.set_next_avail(dry.next_avail);
    if !armed? {
        return Ok(false);
    }
    crate::ring_check::avail_sane(q, mem)?;
    Ok(true)
}

/// Writes `num_buffers` into the header at the front of the first chain.
fn set_num_buffers(first: &[libc::iovec], neg: Negotiated, n: u16) {
    if neg.hdr_len >= HDR_LEN_V1 {
        iov::copy_to(first, NUM_BUFFERS_OFFSET, &n.to_le_bytes());
    }
}

/// Pops chains until `need` bytes fit (at most one chain without
/// MRG_RXBUF). Chains the guest got wrong are returned separately, to be
/// completed empty after the frame's own chains.
fn take_chains(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    hdr_len: usize,
    mut room: usize,
    need: usize,
    taken: &mut Vec<Taken>,
    bad: &mut Vec<u16>,
) {
    let limit = usize::from(q.size());
    while room < need && taken.len() + bad.len() < limit {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            return;
        };
        let head = chain.head_index();
        let mut iovs = Vec::new();
        match iov::gather(chain, mem, true, &mut iovs) {
            Ok(cap) if !taken.is_empty() || cap >= hdr_len => {
                room += cap;
                taken.push(Taken { head, iovs, cap });
            }
            Ok(_) | Err(_) => bad.push(head),
        }
    }
}

/// Completes a frame whose first `first.cap` bytes already sit in the first
/// chain and whose rest is `overflow`. On too few buffers, returns the whole
/// frame as host bytes (and gives every chain back) so it can wait.
#[allow(clippy::too_many_arguments)]
fn spread_overflow(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    first: Taken,
    overflow: &[u8],
    total: usize,
    neg: Negotiated,
    counters: &QueueCounters,
    used: &mut bool,
) -> Result<Result<(), Vec<u8>>, virtio_queue::Error> {
    let mut taken = vec![first];
    let mut bad = Vec::new();
    take_chains(
        q,
        mem,
        neg.hdr_len,
        taken[0].cap,
        total,
        &mut taken,
        &mut bad,
    );
    let caps = taken.iter().map(|t| t.cap);
    let Ok(lens) = spread(total, neg.hdr_len, caps, true) else {
        let mut frame = vec![0u8; total];
        let cap = taken[0].cap;
        iov::copy_from(&taken[0].iovs, 0, &mut frame[..cap]);
        frame[cap..].copy_from_slice(overflow);
        for _ in 0..taken.len() + bad.len() {
            q.go_to_previous_position();
        }
        return Ok(Err(frame));
    };
    let mut off = 0usize;
    for (t, &len) in taken.iter().zip(&lens).skip(1) {
        let src_start = off;
        iov::copy_to(&t.iovs, 0, &overflow[src_start..src_start + len]);
        off += len;
    }
    complete(q, mem, &taken, &lens, &bad, neg, counters, used)?;
    counters.frame(total - neg.hdr_len);
    Ok(Ok(()))
}

/// Delivers a parked frame by copying it into as many chains as needed.
fn place_copy(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    neg: Negotiated,
    counters: &QueueCounters,
    used: &mut bool,
) -> Result<Placed, virtio_queue::Error> {
    let mut taken = Vec::new();
    let mut bad = Vec::new();
    let need = if neg.mrg_rxbuf { frame.len() } else { 1 };
    take_chains(q, mem, neg.hdr_len, 0, need, &mut taken, &mut bad);
    let ring_exhausted = taken.len() + bad.len() >= usize::from(q.size());
    match spread(
        frame.len(),
        neg.hdr_len,
        taken.iter().map(|t| t.cap),
        neg.mrg_rxbuf,
    ) {
        Ok(lens) => {
            let mut off = 0usize;
            for (t, &len) in taken.iter().zip(&lens) {
                iov::copy_to(&t.iovs, 0, &frame[off..off + len]);
                off += len;
            }
            complete(q, mem, &taken, &lens, &bad, neg, counters, used)?;
            counters.frame(frame.len() - neg.hdr_len);
            Ok(Placed::Delivered)
        }
        Err(_) if ring_exhausted => {
            // Even the whole ring can't hold it: waiting would never end.
            for _ in 0..taken.len() + bad.len() {
                q.go_to_previous_position();
            }
            counters.drop(Drop::RxTooLarge);
            Ok(Placed::Delivered)
        }
        Err(_) => {
            for _ in 0..taken.len() + bad.len() {
                q.go_to_previous_position();
            }
            Ok(Placed::NoRoom)
        }
    }
}

/// Publishes a frame's chains (in order, `num_buffers` in the first), then
/// the malformed chains met on the way, empty.
#[allow(clippy::too_many_arguments)]
fn complete(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    taken: &[Taken],
    lens: &[usize],
    bad: &[u16],
    neg: Negotiated,
    counters: &QueueCounters,
    used: &mut bool,
) -> Result<(), virtio_queue::Error> {
    let count = u16::try_from(lens.len()).unwrap_or(u16::MAX);
    set_num_buffers(&taken[0].iovs, neg, count);
    for (t, &len) in taken.iter().zip(lens) {
        // Cannot saturate: each part is a piece of one frame, whose length
        // was checked to fit a u32 in `process`.
        q.add_used(mem, t.head, u32::try_from(len).unwrap_or(u32::MAX))?;
    }
    // Chains popped past the frame's last buffer (none in practice: we stop
    // as soon as the frame fits) are not published here.
    for &head in bad {
        counters.drop(Drop::BadChain);
        q.add_used(mem, head, 0)?;
    }
    *used = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_devices::net::features::VERSION_1;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::test_ring::{BUF, QSIZE, TestRing, frame, memory, post, read, send, used, wire};

    const HDR: usize = 12;

    fn neg(mrg_rxbuf: bool) -> Negotiated {
        Negotiated {
            acked: VERSION_1,
            hdr_len: HDR,
            mrg_rxbuf,
        }
    }

    /// A header with some device-side bytes set, then a frame of `len`.
    fn packet(len: usize, seed: u8) -> Vec<u8> {
        let mut p = vec![0u8; HDR];
        p[0] = 2; // DATA_VALID
        p[10] = 0xaa; // num_buffers: the device overwrites it
        p.extend_from_slice(&frame(len, seed));
        p
    }

    /// `sent` as the guest should see it: num_buffers = `n`.
    fn as_delivered(sent: &[u8], n: u16) -> Vec<u8> {
        let mut want = sent.to_vec();
        want[10..12].copy_from_slice(&n.to_le_bytes());
        want
    }

    /// Posts `count` one-descriptor chains of `size` bytes from head `first`.
    fn post_bufs(mock: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, count: u16, size: u32) {
        for h in first..first + count {
            post(mock, h, &[(BUF + u64::from(h) * 0x1000, size)], true);
        }
    }

    /// The bytes the used entries cover, in order (one-descriptor chains).
    fn delivered(mem: &GuestMemoryMmap, entries: &[(u32, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(h, len)| read(mem, BUF + u64::from(h) * 0x1000, len as usize))
            .collect()
    }

    #[test]
    fn a_frame_lands_in_the_posted_chain_with_its_header() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let mut st = RxState::default();
        // A chain the guest got wrong (device-readable) first.
        let bad = post(&mock, 0, &[(BUF, 2048)], false);
        let good = post(&mock, 1, &[(BUF + 0x1000, 8), (BUF + 0x2000, 2048)], true);
        let sent = packet(100, 5);
        assert!(send(&peer, &sent));
        let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 64);
        assert_eq!(
            out,
            Ok(RxOutcome::NoBuffers),
            "delivered, then the ring is empty"
        );
        let n = u32::try_from(sent.len()).unwrap();
        assert_eq!(
            used(&mem, &mock),
            vec![(u32::from(bad), 0), (u32::from(good), n)]
        );
        let mut got = read(&mem, BUF + 0x1000, 8);
        got.extend(read(&mem, BUF + 0x2000, sent.len() - 8));
        assert_eq!(got, as_delivered(&sent, 1));
        assert!(ring.signalled());
        assert_eq!((counters.packets(), counters.bytes()), (1, 100));
        assert_eq!(counters.drops(Drop::BadChain), 1);
    }

    #[test]
    fn the_budget_bounds_one_pass() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let mut st = RxState::default();
        post_bufs(&mock, 0, 4, 2048);
        for seed in 0..3 {
            assert!(send(&peer, &packet(60, seed)));
        }
        let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 2);
        assert_eq!(out, Ok(RxOutcome::Budget));
        assert_eq!(used(&mem, &mock).len(), 2);
        let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 2);
        assert_eq!(out, Ok(RxOutcome::TapEmpty));
        let entries = used(&mem, &mock);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            delivered(&mem, &entries[2..]),
            as_delivered(&packet(60, 2), 1)
        );
    }

    #[test]
    fn a_frame_larger_than_a_chain_spreads_over_more_with_mrg_rxbuf() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let mut st = RxState::default();
        post_bufs(&mock, 0, 4, 64);
        let sent = packet(150, 9);
        assert!(send(&peer, &sent));
        let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 64);
        assert_eq!(out, Ok(RxOutcome::TapEmpty));
        let entries = used(&mem, &mock);
        assert_eq!(entries, vec![(0, 64), (1, 64), (2, 34)]);
        assert_eq!(delivered(&mem, &entries), as_delivered(&sent, 3));
        assert_eq!((counters.packets(), counters.bytes()), (1, 150));
    }

    #[test]
    fn too_few_buffers_park_the_frame_until_the_guest_posts_more() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let mut st = RxState::default();
        post_bufs(&mock, 0, 1, 64);
        let sent = packet(150, 3);
        assert!(send(&peer, &sent));
        for _ in 0..2 {
            let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 64);
            assert_eq!(out, Ok(RxOutcome::NoBuffers));
            assert!(st.has_pending(), "the frame waits in host memory");
            assert!(
                used(&mem, &mock).is_empty(),
                "the small buffer is given back"
            );
            assert!(!ring.signalled());
        }
        post_bufs(&mock, 1, 2, 64);
        let out = process(&mut ring, &mem, &tap, neg(true), &counters, &mut st, 64);
        assert_eq!(
            out,
            Ok(RxOutcome::NoBuffers),
            "delivered, then the ring is empty"
        );
        assert!(!st.has_pending());
        let entries = used(&mem, &mock);
        assert_eq!(entries, vec![(0, 64), (1, 64), (2, 34)]);
        assert_eq!(delivered(&mem, &entries), as_delivered(&sent, 3));
        assert!(ring.signalled());
        assert_eq!(counters.packets(), 1);
    }

    #[test]
    fn without_mrg_rxbuf_a_frame_larger_than_the_chain_is_dropped() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let mut st = RxState::default();
        post_bufs(&mock, 0, 1, 64);
        assert!(send(&peer, &packet(150, 1)));
        let small = packet(40, 2);
        assert!(send(&peer, &small));
        let out = process(&mut ring, &mem, &tap, neg(false), &counters, &mut st, 64);
        assert_eq!(out, Ok(RxOutcome::NoBuffers));
        let entries = used(&mem, &mock);
        assert_eq!(
            entries,
            vec![(0, u32::try_from(small.len()).unwrap())],
            "the chain took the next frame"
        );
        assert_eq!(delivered(&mem, &entries), as_delivered(&small, 1));
        assert_eq!(counters.drops(Drop::RxTooLarge), 1);
        assert_eq!(counters.packets(), 1);
    }
}
