//! A validated request as raw-image ring work: host iovecs into guest
//! memory, the io_uring operation (readv/writev, fdatasync, fallocate, the
//! block layer's discard command), and a completion result turned back into
//! a virtio status.

use virtio_devices::block::{BlockStatus, Request, RequestKind, Segment};
use vm_memory::GuestMemoryBackend;

use super::Mem;
use super::uring::UringOp;
use super::zeroes::{self, ZeroFill};

/// Linux's IOV_MAX: more iovecs than this and readv/writev fail.
const IOV_MAX: usize = 1024;

/// What a request in flight was, for its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
    Discard,
    /// WRITE_ZEROES: a fallocate, then maybe zeroes written chunk by chunk.
    Zeroes,
    Other,
}

impl Class {
    /// A read or a write (moves guest data; may go inline).
    pub fn transfers(self) -> bool {
        matches!(self, Class::Read | Class::Write)
    }
}

/// The ring operation, without its iovecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Readv { offset: u64 },
    Writev { offset: u64, dsync: bool },
    Fdatasync,
    BlockDiscard { offset: u64, len: u64 },
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// One request, ready for the ring.
#[derive(Debug)]
pub struct Prepared {
    /// What it is.
    pub class: Class,
    /// Bytes a complete read/write transfers.
    pub expected: u64,
    /// The iovecs the operation points at (heap buffer, never reallocated).
    pub iov: Vec<libc::iovec>,
    /// WRITE_ZEROES: the range still to zero.
    pub zero_fill: Option<ZeroFill>,
    op: Op,
}

impl Prepared {
    /// The ring operation (borrows the iovecs).
    pub fn op(&self) -> UringOp<'_> {
        match self.op {
            Op::Readv { offset } => UringOp::Readv {
                iov: &self.iov,
                offset,
            },
            Op::Writev { offset, dsync } => UringOp::Writev {
                iov: &self.iov,
                offset,
                dsync,
            },
            Op::Fdatasync => UringOp::Fdatasync,
            Op::BlockDiscard { offset, len } => UringOp::BlockDiscard { offset, len },
            Op::Fallocate { offset, len, mode } => UringOp::Fallocate { offset, len, mode },
        }
    }
}

/// How the disk takes requests.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Writes must be durable on completion (RWF_DSYNC).
    pub dsync: bool,
    /// A block device: discard by the block layer's command, not fallocate.
    pub block_device: bool,
    /// fallocate modes the image refused for WRITE_ZEROES.
    pub zero_modes_refused: &'a [i32],
}

/// `kind` as ring work; `None` if its buffers need more than IOV_MAX
/// pieces or are no longer mapped (the request ends with IOERR).
pub fn prepare(mem: &Mem, kind: &RequestKind, target: Target<'_>) -> Option<Prepared> {
    let dsync = target.dsync;
    let mut zero_fill = None;
    let (class, expected, iov, op) = match kind {
        RequestKind::Read { sector, data, len } => (
            Class::Read,
            *len,
            iovecs(mem, data),
            Op::Readv {
                offset: Request::sector_to_offset(*sector),
            },
        ),
        RequestKind::Write { sector, data, len } => (
            Class::Write,
            *len,
            iovecs(mem, data),
            Op::Writev {
                offset: Request::sector_to_offset(*sector),
                dsync,
            },
        ),
        RequestKind::Discard {
            sector,
            num_sectors,
        } => {
            let offset = Request::sector_to_offset(*sector);
            let len = Request::sector_to_offset(u64::from(*num_sectors));
            let op = if target.block_device {
                Op::BlockDiscard { offset, len }
            } else {
                Op::Fallocate {
                    offset,
                    len,
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                }
            };
            (Class::Discard, 0, Some(Vec::new()), op)
        }
        RequestKind::WriteZeroes {
            sector,
            num_sectors,
            unmap,
        } => {
            let offset = Request::sector_to_offset(*sector);
            let len = Request::sector_to_offset(u64::from(*num_sectors));
            let mode = if *unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            let mut fill = ZeroFill::new(offset, len, mode, dsync);
            let first = if target.zero_modes_refused.contains(&mode) {
                // Known refused: write zeroes straight away.
                fill.writing = true;
                fill.chunk()
            } else {
                None
            };
            zero_fill = Some(fill);
            match first {
                Some((off, n)) => (
                    Class::Zeroes,
                    0,
                    zeroes::iovec(n).ok().map(|v| vec![v]),
                    Op::Writev { offset: off, dsync },
                ),
                None => (
                    Class::Zeroes,
                    0,
                    Some(Vec::new()),
                    Op::Fallocate { offset, len, mode },
                ),
            }
        }
        RequestKind::Flush | RequestKind::GetId { .. } => {
            (Class::Other, 0, Some(Vec::new()), Op::Fdatasync)
        }
    };
    Some(Prepared {
        class,
        expected,
        iov: iov?,
        zero_fill,
        op,
    })
}

/// Status of a read/write/fallocate/fsync result (`-errno` or bytes).
pub fn result_status(class: Class, expected: u64, result: i64) -> BlockStatus {
    match class {
        Class::Read | Class::Write if u64::try_from(result).is_ok_and(|r| r != expected) => {
            BlockStatus::IoErr
        }
        // Discard is advisory: a filesystem without hole punching is fine.
        Class::Discard if result == -i64::from(libc::EOPNOTSUPP) => BlockStatus::Ok,
        _ if result >= 0 => BlockStatus::Ok,
        _ => BlockStatus::IoErr,
    }
}

/// Host iovecs for validated segments; `None` if a segment is no longer
/// mapped or the request needs more than IOV_MAX pieces.
pub fn iovecs(mem: &Mem, segs: &[Segment]) -> Option<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(segs.len());
    for seg in segs {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.ok()?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    (iov.len() <= IOV_MAX).then_some(iov)
}
