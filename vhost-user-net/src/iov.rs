//! Guest buffers → host iovecs, the one place where a descriptor chain's
//! (addr, len) pairs are checked against guest memory before any I/O.
//!
//! The iovecs hold raw host pointers into the guest's shared memory. They are
//! valid while the memory snapshot (`GuestMemoryLoadGuard`) they were built
//! from is alive; callers build and use them within one batch that holds it.
//!
//! The guest may change those bytes at any time, so every copy to or from
//! them goes through vm-memory's volatile accessors ([`VolatileSlice`]), never
//! a plain memcpy the compiler may assume stable.

use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// Most guest segments per frame: Linux's `UIO_MAXIOV` (1024) less the one
/// slot the data paths add (the TX header copy, the RX overflow buffer).
pub const MAX_SEGMENTS: usize = 1023;

/// Why a descriptor chain cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor with the wrong direction for this queue")]
    WrongDirection,
    #[error("descriptor at {addr:#x}+{len} outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("chain has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
}

/// Appends to `out` the host iovecs of every descriptor of `chain`, which
/// must all be device-writable (`writable`) or all device-readable, and
/// returns the chain's total length. Zero-length descriptors are skipped
/// without being looked up.
///
/// Not generic on purpose (and `#[inline]`, so each data path's codegen
/// unit gets its own copy): the generic version cost about 5 % more
/// instructions per 64-byte TX frame (docs/benchmarks.md, "TX inlining").
#[inline]
pub fn gather(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    writable: bool,
    out: &mut Vec<libc::iovec>,
) -> Result<usize, ChainError> {
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        let bad = ChainError::OutOfMemory {
            addr: desc.addr().0,
            len,
        };
        let mut covered = 0usize;
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len as usize) {
            let slice = slice.map_err(|_| bad.clone())?;
            if out.len() >= MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            covered += slice.len();
        }
        if covered != len as usize {
            return Err(bad);
        }
        // A chain is at most 2^32 bytes (virtio-queue stops iterating
        // beyond), so this cannot overflow on 64-bit hosts.
        total += len as usize;
    }
    Ok(total)
}

/// The `n` bytes `offset` bytes into `iov`, for volatile access.
fn guest_bytes(iov: &libc::iovec, offset: usize, n: usize) -> VolatileSlice<'_> {
    debug_assert!(offset + n <= iov.iov_len);
    // SAFETY: the iovec was built by `gather` from a live guest memory
    // mapping (see module doc) that outlives this borrow of it, and
    // `offset + n <= iov_len` (both callers clip `n` to it). Our side only
    // touches those bytes through volatile accesses, as `new` asks.
    unsafe { VolatileSlice::new(iov.iov_base.cast::<u8>().add(offset), n) }
}

/// Copies from the iovecs, starting `offset` bytes in, into `dst`; returns
/// the number of bytes copied.
pub fn copy_from(iovs: &[libc::iovec], mut offset: usize, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for iov in iovs {
        if done == dst.len() {
            break;
        }
        if offset >= iov.iov_len {
            offset -= iov.iov_len;
            continue;
        }
        let n = (iov.iov_len - offset).min(dst.len() - done);
        done += guest_bytes(iov, offset, n).copy_to(&mut dst[done..done + n]);
        offset = 0;
    }
    done
}

/// Copies `src` into the iovecs starting `offset` bytes in; returns the
/// number of bytes copied.
pub fn copy_to(iovs: &[libc::iovec], mut offset: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for iov in iovs {
        if done == src.len() {
            break;
        }
        if offset >= iov.iov_len {
            offset -= iov.iov_len;
            continue;
        }
        let n = (iov.iov_len - offset).min(src.len() - done);
        guest_bytes(iov, offset, n).copy_from(&src[done..done + n]);
        done += n;
        offset = 0;
    }
    done
}

/// Appends to `out` the part of `iovs` that lies `offset` bytes in.
pub fn skip_into(iovs: &[libc::iovec], mut offset: usize, out: &mut Vec<libc::iovec>) {
    for iov in iovs {
        if offset >= iov.iov_len {
            offset -= iov.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY: offset < iov_len, so the result stays inside the
            // buffer the iovec describes.
            iov_base: unsafe { iov.iov_base.cast::<u8>().add(offset) }.cast(),
            iov_len: iov.iov_len - offset,
        });
        offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_devices::narrow::u16_of;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    use vhost_user_daemon::iovec::of_buf as iov;

    #[test]
    fn copies_cross_segment_boundaries() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 0];
        let mut c = [0u8; 5];
        let iovs = [iov(&mut a), iov(&mut b), iov(&mut c)];
        assert_eq!(copy_to(&iovs, 2, &[1, 2, 3, 4]), 4);
        let mut out = [0u8; 8];
        assert_eq!(copy_from(&iovs, 0, &mut out), 8);
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 0, 0]);
        assert_eq!(copy_to(&iovs, 7, &[9, 9, 9]), 1, "clipped at the end");
        let mut tail = Vec::new();
        skip_into(&iovs, 4, &mut tail);
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].iov_len, 4);
    }

    #[test]
    fn guest_bytes_are_copied_only_through_volatile_accessors() {
        let src = include_str!("iov.rs");
        let code = src.split("#[cfg(test)]").next().unwrap_or(src);
        for plain in [
            "copy_nonoverlapping",
            "ptr::copy",
            "ptr::write",
            "ptr::read",
        ] {
            assert!(!code.contains(plain), "iov.rs uses {plain} on guest memory");
        }
    }

    #[test]
    fn copies_through_a_chain_spanning_two_memory_regions() {
        // Two regions with a hole: a descriptor crossing no boundary, one
        // ending exactly at the first region's end, one in the second.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x10000),
        ])
        .unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let descs: Vec<RawDescriptor> = [(0x8000u64, 5u32), (0xfffd, 3), (0x20010, 9)]
            .iter()
            .map(|&(addr, len)| Descriptor::new(addr, len, u16_of(VRING_DESC_F_WRITE), 0).into())
            .collect();
        let chain = q.build_desc_chain(&descs).unwrap();
        let mut iovs = Vec::new();
        assert_eq!(gather(chain, &mem, true, &mut iovs), Ok(17));
        assert_eq!(iovs.len(), 3);

        let frame: Vec<u8> = (1..=17).collect();
        assert_eq!(copy_to(&iovs, 0, &frame[..2]), 2);
        assert_eq!(copy_to(&iovs, 2, &frame[2..]), 15);
        let at = |gpa: u64, n: usize| {
            let mut v = vec![0u8; n];
            mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
            v
        };
        assert_eq!(at(0x8000, 5), frame[..5]);
        assert_eq!(at(0xfffd, 3), frame[5..8]);
        assert_eq!(at(0x20010, 9), frame[8..]);
        // The guest changes a byte; the next read sees it.
        mem.write_obj(0xeeu8, GuestAddress(0x20011)).unwrap();
        let mut back = vec![0u8; 20];
        assert_eq!(copy_from(&iovs, 0, &mut back), 17);
        assert_eq!(back[9], 0xee);
        assert_eq!(back[..9], frame[..9]);
        assert_eq!(back[10..17], frame[10..]);
        // From an offset inside the second segment, clipped at the end.
        let mut tail = [0u8; 4];
        assert_eq!(copy_from(&iovs, 14, &mut tail), 3);
        assert_eq!(tail[..3], frame[14..]);
        assert_eq!(copy_to(&iovs, 16, &[7, 7]), 1, "clipped at the end");
    }
}
