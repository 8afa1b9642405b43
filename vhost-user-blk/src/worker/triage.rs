//! What a parsed chain becomes before any engine sees it: a rejected
//! request is answered with its status, a chain without a status byte is
//! dropped, GET_ID is answered from the serial; the rest goes to the engine.

use virtio_devices::block::{BlockStatus, ID_BYTES, ParseOutcome, Request, RequestKind, Segment};
use vm_memory::{Bytes, GuestAddress};

use super::Mem;

/// What to do with a chain.
pub enum Triage {
    /// Complete it now.
    Finish {
        head: u16,
        status_addr: GuestAddress,
        status: BlockStatus,
        /// Data bytes written to the guest.
        len: u64,
        /// The segments written (GET_ID's), for the dirty log.
        written: Vec<Segment>,
    },
    /// No status byte: return it with nothing used, counted as dropped.
    Drop { head: u16 },
    /// Submit it to the engine.
    Submit(Request),
}

/// Sort `outcome` for queue `queue`; GET_ID's answer is written here.
pub fn triage(outcome: ParseOutcome, mem: &Mem, serial: &[u8; ID_BYTES], queue: usize) -> Triage {
    match outcome {
        ParseOutcome::Valid(req) => match req.kind {
            RequestKind::GetId { data, .. } => Triage::Finish {
                head: req.head,
                status_addr: req.status_addr,
                status: BlockStatus::Ok,
                len: write_id(mem, &data, serial),
                written: data,
            },
            _ => Triage::Submit(req),
        },
        ParseOutcome::Rejected {
            head,
            status_addr,
            error,
        } => {
            log::debug!("request_rejected queue={queue} head={head} error=\"{error}\"");
            Triage::Finish {
                head,
                status_addr,
                status: error.status().unwrap_or(BlockStatus::IoErr),
                len: 0,
                written: Vec::new(),
            }
        }
        ParseOutcome::Dropped { head, error } => {
            log::debug!("request_dropped queue={queue} head={head} error=\"{error}\"");
            Triage::Drop { head }
        }
    }
}

/// Copy the serial into the GET_ID buffers; returns bytes written.
fn write_id(mem: &Mem, data: &[Segment], serial: &[u8; ID_BYTES]) -> u64 {
    let mut written = 0usize;
    for seg in data {
        if written == ID_BYTES {
            break;
        }
        let n = (ID_BYTES - written).min(seg.len as usize);
        if mem
            .write_slice(&serial[written..written + n], seg.addr)
            .is_err()
        {
            break;
        }
        written += n;
    }
    written as u64
}
