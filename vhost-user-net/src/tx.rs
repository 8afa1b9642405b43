//! The TX path: guest TX ring → validated header copy + frame → one
//! `writev` on the pair's TAP queue.

use std::io;

use std::os::fd::{AsRawFd, RawFd};

use log::debug;
use virtio_devices::net::header::{HeaderError, VirtioNetHdr, check_tx_len};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::counters::{Drop, QueueCounters};
use crate::iov;
use crate::pair_types::{Negotiated, Virtqueue};

/// How a TX pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOutcome {
    /// The ring is empty.
    Drained,
    /// The TAP answered EAGAIN; the chain stays in the ring (back-pressure).
    Blocked,
}

enum Sent {
    Done,
    WouldBlock,
}

/// Reusable buffers of one TX worker.
#[derive(Debug, Default)]
pub struct TxScratch {
    guest: Vec<libc::iovec>,
    out: Vec<libc::iovec>,
}

// SAFETY: the iovecs are only ever filled and used within one `process`
// call on the worker that owns the scratch; between calls they are cleared
// and carry no pointer that is dereferenced.
unsafe impl Send for TxScratch {}

/// Transmits every frame the guest queued in `ring`, each as one `writev`
/// on `tap` (a TAP queue in the daemon), until the ring is empty or the TAP
/// pushes back. Ring errors (corrupt used/avail ring) are returned. The
/// caller has checked that the ring is enabled and ready.
///
/// A thin generic shim over [`run`], which is not generic: that keeps the
/// hot loop (and its own copies of virtio-queue's and vm-memory's generic
/// descriptor and guest-memory reads) in this module's codegen unit, where
/// LLVM inlines them, rather than in the caller's next to the RX path.
/// Generic, the loop cost about 16 % more instructions per 64-byte frame
/// (docs/benchmarks.md, "TX inlining").
#[inline]
pub fn process(
    ring: &mut impl Virtqueue,
    mem: &GuestMemoryMmap,
    tap: &impl AsRawFd,
    neg: Negotiated,
    counters: &QueueCounters,
    scratch: &mut TxScratch,
) -> Result<TxOutcome, virtio_queue::Error> {
    run(ring, mem, tap.as_raw_fd(), neg, counters, scratch)
}

/// [`process`] on a `dyn` ring (two virtual calls per pass, none per
/// frame) and a raw fd.
fn run(
    ring: &mut dyn Virtqueue,
    mem: &GuestMemoryMmap,
    tap: RawFd,
    neg: Negotiated,
    counters: &QueueCounters,
    scratch: &mut TxScratch,
) -> Result<TxOutcome, virtio_queue::Error> {
    let q = ring.queue();
    let mut used = false;
    let mut outcome = TxOutcome::Drained;
    'ring: loop {
        q.disable_notification(mem)?;
        crate::ring_check::avail_sane(q, mem)?;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match send_one(chain, mem, tap, neg, counters, scratch) {
                Sent::Done => {
                    q.add_used(mem, head, 0)?;
                    used = true;
                }
                Sent::WouldBlock => {
                    q.go_to_previous_position();
                    outcome = TxOutcome::Blocked;
                    q.enable_notification(mem)?;
                    break 'ring;
                }
            }
        }
        if !q.enable_notification(mem)? {
            break;
        }
    }
    if used && q.needs_notification(mem)? {
        if let Err(e) = ring.signal_used() {
            debug!("event=tx_signal_failed err={e}");
        }
    }
    Ok(outcome)
}

fn send_one(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    tap: RawFd,
    neg: Negotiated,
    counters: &QueueCounters,
    scratch: &mut TxScratch,
) -> Sent {
    scratch.guest.clear();
    scratch.out.clear();
    let total = match iov::gather(chain, mem, false, &mut scratch.guest) {
        Ok(t) => t,
        Err(e) => {
            debug!("event=tx_drop reason=bad_chain err={e}");
            counters.drop(Drop::BadChain);
            return Sent::Done;
        }
    };
    let frame_len = match check_tx_len(total, neg.hdr_len) {
        Ok(n) => n,
        Err(e) => {
            let why = if matches!(e, HeaderError::TooLong { .. }) {
                Drop::TxTooLong
            } else {
                Drop::TxShort
            };
            debug!("event=tx_drop reason={} err={e}", why.name());
            counters.drop(why);
            return Sent::Done;
        }
    };
    // Validate a private copy: the guest can't change it after the check.
    let mut raw = [0u8; 12];
    let hdr_bytes = &mut raw[..neg.hdr_len];
    iov::copy_from(&scratch.guest, 0, hdr_bytes);
    let hdr = match VirtioNetHdr::parse(hdr_bytes, neg.hdr_len)
        .and_then(|h| h.validate_tx(neg.acked, frame_len))
    {
        Ok(h) => h.to_bytes(),
        Err(e) => {
            debug!("event=tx_drop reason=bad_header err={e}");
            counters.drop(Drop::TxBadHeader);
            return Sent::Done;
        }
    };
    scratch.out.push(libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: neg.hdr_len,
    });
    iov::skip_into(&scratch.guest, neg.hdr_len, &mut scratch.out);
    // At most MAX_SEGMENTS + 1; a count past c_int would fail writev with
    // EINVAL, the error path below.
    let count = libc::c_int::try_from(scratch.out.len()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: every iovec points either at `hdr` (alive on this stack
        // frame) or into guest memory mapped for the whole batch (see
        // `iov`); writev only reads them.
        let n = unsafe { libc::writev(tap, scratch.out.as_ptr(), count) };
        if n >= 0 {
            counters.frame(frame_len);
            return Sent::Done;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Sent::WouldBlock,
            _ => {
                debug!("event=tx_drop reason=tap_error err={err}");
                counters.drop(Drop::TapError);
                return Sent::Done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_devices::net::features::VERSION_1;
    use virtio_devices::net::header::GSO_TCPV4;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::test_ring::{BUF, QSIZE, TestRing, frame, memory, post, recv, send, used, wire};

    const NEG: Negotiated = Negotiated {
        acked: VERSION_1,
        hdr_len: 12,
        mrg_rxbuf: false,
    };

    /// Writes a zero header (with `gso_type`) and `body` at BUF as one
    /// 3-descriptor chain (header split across the first two).
    fn queue_frame(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<'_, GuestMemoryMmap>,
        first: u16,
        gso_type: u8,
        body: &[u8],
    ) -> u16 {
        let at = BUF + u64::from(first) * 0x1000;
        let mut hdr = [0u8; 12];
        hdr[1] = gso_type;
        mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        mem.write_slice(body, GuestAddress(at + 0x100)).unwrap();
        let bufs = [
            (at, 5),
            (at + 5, 7),
            (at + 0x100, u32::try_from(body.len()).unwrap()),
        ];
        post(mock, first, &bufs, false)
    }

    #[test]
    fn a_chain_becomes_one_frame_on_the_fd() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let body = frame(60, 7);
        let head = queue_frame(&mem, &mock, 0, 0, &body);
        let mut scratch = TxScratch::default();
        let out = process(&mut ring, &mem, &tap, NEG, &counters, &mut scratch);
        assert_eq!(out, Ok(TxOutcome::Drained));
        let mut want = vec![0u8; 12];
        want.extend_from_slice(&body);
        assert_eq!(recv(&peer), Some(want), "header + frame, one message");
        assert_eq!(recv(&peer), None);
        assert_eq!(used(&mem, &mock), vec![(u32::from(head), 0)]);
        assert!(ring.signalled());
        assert_eq!((counters.packets(), counters.bytes()), (1, 60));
    }

    #[test]
    fn an_offload_not_negotiated_is_dropped_and_completed() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let counters = QueueCounters::default();
        let bad = queue_frame(&mem, &mock, 0, GSO_TCPV4, &frame(60, 1));
        let short = post(&mock, 3, &[(BUF + 0x8000, 12 + 13)], false);
        let mut scratch = TxScratch::default();
        let out = process(&mut ring, &mem, &tap, NEG, &counters, &mut scratch);
        assert_eq!(out, Ok(TxOutcome::Drained));
        assert_eq!(recv(&peer), None, "nothing reaches the TAP");
        assert_eq!(
            used(&mem, &mock),
            vec![(u32::from(bad), 0), (u32::from(short), 0)]
        );
        assert_eq!(counters.packets(), 0);
        assert_eq!(counters.drops(Drop::TxBadHeader), 1);
        assert_eq!(counters.drops(Drop::TxShort), 1);
    }

    #[test]
    fn a_full_fd_leaves_the_chain_in_the_ring_until_it_drains() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut ring = TestRing::new(&mock);
        let (tap, peer) = wire();
        let filler = frame(1000, 0);
        let mut queued = 0;
        while send(&tap, &filler) {
            queued += 1;
        }
        let counters = QueueCounters::default();
        let body = frame(100, 3);
        let head = queue_frame(&mem, &mock, 0, 0, &body);
        let mut scratch = TxScratch::default();
        let out = process(&mut ring, &mem, &tap, NEG, &counters, &mut scratch);
        assert_eq!(out, Ok(TxOutcome::Blocked));
        assert!(used(&mem, &mock).is_empty(), "the chain stays in the ring");
        assert!(!ring.signalled());
        for _ in 0..queued {
            assert_eq!(recv(&peer).map(|f| f.len()), Some(filler.len()));
        }
        let out = process(&mut ring, &mem, &tap, NEG, &counters, &mut scratch);
        assert_eq!(out, Ok(TxOutcome::Drained));
        assert_eq!(recv(&peer).map(|f| f[12..].to_vec()), Some(body));
        assert_eq!(used(&mem, &mock), vec![(u32::from(head), 0)]);
        assert!(ring.signalled());
    }
}
