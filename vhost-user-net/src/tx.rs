//! The TX path: guest TX ring → validated header copy + frame → one
//! `writev` on the pair's TAP queue.

use std::io;

use log::debug;
use vhost_user_backend::VringT;
use virtio_devices::net::header::{HeaderError, VirtioNetHdr, check_tx_len};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::counters::{Drop, QueueCounters};
use crate::iov;
use crate::tap::TapQueue;
use std::os::fd::AsRawFd;

/// What the negotiation fixed for the data paths.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    pub acked: u64,
    pub hdr_len: usize,
    pub mrg_rxbuf: bool,
}

/// How a TX pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOutcome {
    /// The ring is empty.
    Drained,
    /// The TAP answered EAGAIN; the chain stays in the ring (back-pressure).
    Blocked,
    /// The ring is disabled (SET_VRING_ENABLE 0) or stopped: not touched.
    Disabled,
}

enum Sent {
    Done,
    WouldBlock,
}

/// Reusable buffers of one TX worker.
#[derive(Default)]
pub struct TxScratch {
    guest: Vec<libc::iovec>,
    out: Vec<libc::iovec>,
}

// SAFETY: the iovecs are only ever filled and used within one `process`
// call on the worker that owns the scratch; between calls they are cleared
// and carry no pointer that is dereferenced.
unsafe impl Send for TxScratch {}

/// Transmits every frame the guest queued, until the ring is empty or the
/// TAP pushes back. Ring errors (corrupt used/avail ring) are returned.
/// A disabled or stopped ring is left alone: checked under the ring's lock,
/// which SET_VRING_ENABLE and GET_VRING_BASE take too, so nothing is done
/// on it once the frontend has been answered.
pub fn process(
    vring: &crate::pair::NetVring,
    mem: &GuestMemoryMmap,
    tap: &TapQueue,
    neg: Negotiated,
    counters: &QueueCounters,
    scratch: &mut TxScratch,
) -> Result<TxOutcome, virtio_queue::Error> {
    let mut guard = vring.get_mut();
    if !guard.is_enabled() || !guard.get_queue().ready() {
        return Ok(TxOutcome::Disabled);
    }
    let q = guard.get_queue_mut();
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
        if let Err(e) = guard.signal_used_queue() {
            debug!("event=tx_signal_failed err={e}");
        }
    }
    Ok(outcome)
}

fn send_one(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    tap: &TapQueue,
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
    let count = scratch.out.len() as libc::c_int; // <= MAX_SEGMENTS + 1
    loop {
        // SAFETY: every iovec points either at `hdr` (alive on this stack
        // frame) or into guest memory mapped for the whole batch (see
        // `iov`); writev only reads them.
        let n = unsafe { libc::writev(tap.as_raw_fd(), scratch.out.as_ptr(), count) };
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
