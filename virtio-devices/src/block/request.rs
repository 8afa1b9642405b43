//! Parse and validate one virtio-blk request from its descriptor chain.
//!
//! Everything the guest controls is checked here, once, before any I/O:
//! descriptor order and direction, every buffer against guest memory, the
//! status byte's placement, header size, request type and flags, data length
//! (a multiple of 512), and bounds in sector units with checked arithmetic.
//! The caller gets a [`ParseOutcome`]: a valid [`Request`], a rejection with
//! the status to write, or a chain so broken that no status can be written.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::status::BlockStatus;
use super::{SECTOR_SHIFT, SECTOR_SIZE};

/// Size of `struct virtio_blk_outhdr` (type, ioprio, sector).
const HEADER_LEN: u64 = 16;
/// Size of one `struct virtio_blk_discard_write_zeroes` segment.
const DISCARD_SEGMENT_LEN: u64 = 16;
/// Largest data transfer per request. Keeps every byte count far inside the
/// `i32` an io_uring completion can report, so a short transfer is an error
/// and never a silent truncation.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// Device facts request validation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Refuse OUT, DISCARD and WRITE_ZEROES with IOERR.
    pub read_only: bool,
    /// Largest DISCARD range in sectors.
    pub max_discard_sectors: u32,
    /// Largest WRITE_ZEROES range in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most data buffers one request may carry.
    pub max_data_segments: u32,
}

/// One guest buffer, already checked to lie inside guest memory (it may still
/// span several memory regions; resolve it with `get_slices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes at `sector` into the device-writable `data` buffers.
    Read {
        /// First sector.
        sector: u64,
        /// Destination buffers, in order.
        data: Vec<Segment>,
        /// Total bytes (a multiple of 512).
        len: u64,
    },
    /// Write the device-readable `data` buffers at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Source buffers, in order.
        data: Vec<Segment>,
        /// Total bytes (a multiple of 512).
        len: u64,
    },
    /// Make all completed writes durable.
    Flush,
    /// Write the device serial (up to 20 bytes) into `data`.
    GetId {
        /// Destination buffers.
        data: Vec<Segment>,
        /// Total bytes available.
        len: u64,
    },
    /// Deallocate a range (contents become unspecified).
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        num_sectors: u32,
    },
    /// Zero a range; `unmap` allows deallocating it.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        num_sectors: u32,
        /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP was set.
        unmap: bool,
    },
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// The operation.
    pub kind: RequestKind,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

impl Request {
    /// Byte offset on the disk of the first sector (already bounds-checked).
    pub fn sector_to_offset(sector: u64) -> u64 {
        sector << SECTOR_SHIFT
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor at all (bad head index or unreadable table).
    #[error("descriptor chain is empty")]
    EmptyChain,
    /// The walk stopped before a descriptor without NEXT: loop, bad index,
    /// nested indirect table or unreadable descriptor.
    #[error("descriptor chain is truncated")]
    ChainTruncated,
    /// No device-writable byte to put the status in.
    #[error("no device-writable status byte")]
    NoStatus,
    /// The status byte is outside guest memory.
    #[error("status byte outside guest memory")]
    StatusOutOfMemory,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    BadOrder,
    /// A buffer is outside guest memory or wraps around.
    #[error("buffer {addr:#x}+{len:#x} outside guest memory")]
    BufferOutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Fewer than 16 device-readable bytes for the header.
    #[error("request header shorter than 16 bytes")]
    ShortHeader,
    /// Guest memory could not be read.
    #[error("cannot read request header from guest memory")]
    MemoryRead,
    /// Request type we don't implement.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// Data length not a multiple of 512.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// Data length above [`MAX_DATA_BYTES`].
    #[error("data length {0} too large")]
    TooLong(u64),
    /// Range ends past the disk.
    #[error("sectors {sector}+{sectors} past capacity {capacity}")]
    OutOfBounds {
        /// First sector.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// Sector arithmetic overflowed.
    #[error("sector arithmetic overflows")]
    Overflow,
    /// Data buffers point the wrong way for the request type.
    #[error("data buffer has the wrong direction")]
    WrongDirection,
    /// A modifying request on a read-only device.
    #[error("write to a read-only device")]
    ReadOnly,
    /// More data buffers than the device allows.
    #[error("{0} data segments exceed the limit")]
    TooManySegments(usize),
    /// DISCARD / WRITE_ZEROES payload not a whole, allowed number of segments.
    #[error("malformed discard/write-zeroes payload of {0} bytes")]
    BadRangePayload(u64),
    /// Flags we don't know in a DISCARD / WRITE_ZEROES segment.
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    UnsupportedFlags(u32),
    /// DISCARD / WRITE_ZEROES range above the advertised maximum.
    #[error("discard/write-zeroes range of {0} sectors too large")]
    RangeTooLarge(u32),
}

impl RequestError {
    /// The status to complete the request with, or `None` when no status
    /// byte can be written (the request is dropped).
    pub fn status(&self) -> Option<BlockStatus> {
        match self {
            RequestError::EmptyChain
            | RequestError::ChainTruncated
            | RequestError::NoStatus
            | RequestError::StatusOutOfMemory => None,
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => {
                Some(BlockStatus::Unsupp)
            }
            RequestError::BadOrder
            | RequestError::BufferOutOfMemory { .. }
            | RequestError::ShortHeader
            | RequestError::MemoryRead
            | RequestError::UnalignedLength(_)
            | RequestError::TooLong(_)
            | RequestError::OutOfBounds { .. }
            | RequestError::Overflow
            | RequestError::WrongDirection
            | RequestError::ReadOnly
            | RequestError::TooManySegments(_)
            | RequestError::BadRangePayload(_)
            | RequestError::RangeTooLarge(_) => Some(BlockStatus::IoErr),
        }
    }
}

/// Result of parsing one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Go ahead with the I/O.
    Valid(Request),
    /// Complete at once with `error.status()` written at `status_addr`.
    Rejected {
        /// Head descriptor index.
        head: u16,
        /// Where the status byte goes.
        status_addr: GuestAddress,
        /// Why.
        error: RequestError,
    },
    /// No status can be written: return the head with length 0 and count it.
    Dropped {
        /// Head descriptor index.
        head: u16,
        /// Why.
        error: RequestError,
    },
}

/// Parse the chain whose head is `head`; `descs` are its descriptors in order
/// (a `virtio_queue::DescriptorChain` follows indirect tables and bounds the
/// walk at the queue size).
pub fn parse<M, I>(head: u16, descs: I, mem: &M, limits: &RequestLimits) -> ParseOutcome
where
    M: GuestMemoryBackend + ?Sized,
    I: IntoIterator<Item = Descriptor>,
{
    let layout = match ChainLayout::walk(descs, mem) {
        Ok(layout) => layout,
        Err(error) => return ParseOutcome::Dropped { head, error },
    };
    let status_addr = layout.status_addr;
    match layout.request(head, mem, limits) {
        Ok(request) => ParseOutcome::Valid(request),
        Err(error) => ParseOutcome::Rejected {
            head,
            status_addr,
            error,
        },
    }
}

/// The chain split into its device-readable part, its device-writable part
/// and the status byte.
struct ChainLayout {
    readable: Vec<Segment>,
    /// Device-writable bytes before the status byte.
    writable: Vec<Segment>,
    status_addr: GuestAddress,
    /// First problem that still allows writing a status.
    deferred: Option<RequestError>,
}

impl ChainLayout {
    fn walk<M, I>(descs: I, mem: &M) -> Result<Self, RequestError>
    where
        M: GuestMemoryBackend + ?Sized,
        I: IntoIterator<Item = Descriptor>,
    {
        let mut readable = Vec::new();
        let mut writable: Vec<Segment> = Vec::new();
        let mut deferred = None;
        let mut seen = false;
        let mut last_has_next = false;
        for desc in descs {
            seen = true;
            last_has_next = desc.has_next();
            if desc.len() == 0 {
                continue;
            }
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                writable.push(seg);
            } else {
                if !writable.is_empty() {
                    deferred.get_or_insert(RequestError::BadOrder);
                }
                readable.push(seg);
            }
        }
        if !seen {
            return Err(RequestError::EmptyChain);
        }
        if last_has_next {
            return Err(RequestError::ChainTruncated);
        }
        let last = writable.last_mut().ok_or(RequestError::NoStatus)?;
        let status_addr = last
            .addr
            .0
            .checked_add(u64::from(last.len) - 1)
            .map(GuestAddress)
            .filter(|a| mem.check_range(*a, 1))
            .ok_or(RequestError::StatusOutOfMemory)?;
        last.len -= 1;
        if last.len == 0 {
            writable.pop();
        }
        if let Some(bad) = readable
            .iter()
            .chain(writable.iter())
            .find(|s| !mem.check_range(s.addr, s.len as usize))
        {
            deferred.get_or_insert(RequestError::BufferOutOfMemory {
                addr: bad.addr.0,
                len: bad.len,
            });
        }
        Ok(ChainLayout {
            readable,
            writable,
            status_addr,
            deferred,
        })
    }

    fn request<M: GuestMemoryBackend + ?Sized>(
        self,
        head: u16,
        mem: &M,
        limits: &RequestLimits,
    ) -> Result<Request, RequestError> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        let (header_segs, payload) = split_at(&self.readable, HEADER_LEN);
        if total_len(&header_segs) < HEADER_LEN {
            return Err(RequestError::ShortHeader);
        }
        let header = gather::<M, 16>(mem, &header_segs)?;
        let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        let kind = match req_type {
            VIRTIO_BLK_T_IN => {
                if !payload.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                let len = check_data(&self.writable, sector, limits)?;
                RequestKind::Read {
                    sector,
                    data: self.writable,
                    len,
                }
            }
            VIRTIO_BLK_T_OUT => {
                if !self.writable.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let len = check_data(&payload, sector, limits)?;
                RequestKind::Write {
                    sector,
                    data: payload,
                    len,
                }
            }
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => {
                let len = total_len(&self.writable);
                RequestKind::GetId {
                    data: self.writable,
                    len,
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if !self.writable.is_empty() {
                    return Err(RequestError::WrongDirection);
                }
                range_request(req_type, mem, &payload, limits)?
            }
            other => return Err(RequestError::UnsupportedType(other)),
        };
        Ok(Request {
            head,
            kind,
            status_addr: self.status_addr,
        })
    }
}

/// Validate IN/OUT data buffers: count, length, alignment, bounds.
fn check_data(data: &[Segment], sector: u64, limits: &RequestLimits) -> Result<u64, RequestError> {
    if data.len() > limits.max_data_segments as usize {
        return Err(RequestError::TooManySegments(data.len()));
    }
    let len = total_len(data);
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    if len > MAX_DATA_BYTES {
        return Err(RequestError::TooLong(len));
    }
    check_bounds(sector, len >> SECTOR_SHIFT, limits.capacity_sectors)?;
    Ok(len)
}

/// `sector + sectors <= capacity`, without overflow.
fn check_bounds(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    let end = sector.checked_add(sectors).ok_or(RequestError::Overflow)?;
    // The byte offset of the end must be representable too.
    end.checked_mul(SECTOR_SIZE).ok_or(RequestError::Overflow)?;
    if end > capacity {
        return Err(RequestError::OutOfBounds {
            sector,
            sectors,
            capacity,
        });
    }
    Ok(())
}

/// Parse the single `virtio_blk_discard_write_zeroes` segment of a DISCARD or
/// WRITE_ZEROES request.
fn range_request<M: GuestMemoryBackend + ?Sized>(
    req_type: u32,
    mem: &M,
    payload: &[Segment],
    limits: &RequestLimits,
) -> Result<RequestKind, RequestError> {
    let len = total_len(payload);
    // We advertise max_discard_seg = max_write_zeroes_seg = 1.
    if len != DISCARD_SEGMENT_LEN {
        return Err(RequestError::BadRangePayload(len));
    }
    let raw = gather::<M, 16>(mem, payload)?;
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&raw[0..8]);
    let sector = u64::from_le_bytes(sector_bytes);
    let num_sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    let discard = req_type == VIRTIO_BLK_T_DISCARD;
    let allowed_flags = if discard {
        0
    } else {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    };
    if flags & !allowed_flags != 0 {
        return Err(RequestError::UnsupportedFlags(flags));
    }
    if limits.read_only {
        return Err(RequestError::ReadOnly);
    }
    let max = if discard {
        limits.max_discard_sectors
    } else {
        limits.max_write_zeroes_sectors
    };
    if num_sectors > max {
        return Err(RequestError::RangeTooLarge(num_sectors));
    }
    check_bounds(sector, u64::from(num_sectors), limits.capacity_sectors)?;
    Ok(if discard {
        RequestKind::Discard {
            sector,
            num_sectors,
        }
    } else {
        RequestKind::WriteZeroes {
            sector,
            num_sectors,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        }
    })
}

/// Sum of segment lengths.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Split a byte stream described by `segs` at byte `at`.
fn split_at(segs: &[Segment], at: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut remaining = at;
    for seg in segs {
        let len = u64::from(seg.len);
        if remaining >= len {
            head.push(*seg);
            remaining -= len;
        } else if remaining == 0 {
            tail.push(*seg);
        } else {
            // 0 < remaining < len <= u32::MAX: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let first = remaining as u32;
            head.push(Segment {
                addr: seg.addr,
                len: first,
            });
            tail.push(Segment {
                addr: GuestAddress(seg.addr.0 + remaining),
                len: seg.len - first,
            });
            remaining = 0;
        }
    }
    (head, tail)
}

/// Copy the first `N` bytes of `segs` out of guest memory.
fn gather<M: GuestMemoryBackend + ?Sized, const N: usize>(
    mem: &M,
    segs: &[Segment],
) -> Result<[u8; N], RequestError> {
    let mut out = [0u8; N];
    let mut filled = 0usize;
    for seg in segs {
        if filled == N {
            break;
        }
        let n = (N - filled).min(seg.len as usize);
        mem.read_slice(&mut out[filled..filled + n], seg.addr)
            .map_err(|_| RequestError::MemoryRead)?;
        filled += n;
    }
    if filled < N {
        return Err(RequestError::ShortHeader);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
