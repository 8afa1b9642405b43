//! The vhost-user in-flight region (protocol feature INFLIGHT_SHMFD), split
//! virtqueues.
//!
//! The backend allocates a shared memory region (GET_INFLIGHT_FD), the
//! frontend keeps it across backend restarts and hands it back
//! (SET_INFLIGHT_FD). Per queue the backend records which descriptor heads
//! it took from the avail ring and has not yet returned through the used
//! ring, so a backend started after a crash resubmits exactly those, in the
//! order it first took them, and nothing the guest was promised is lost.
//!
//! Layout per queue (the vhost-user spec's `QueueRegionSplit`), queues at
//! [`queue_region_size`] strides:
//!
//! ```text
//! 0  u64 features   8  u16 version   10 u16 desc_num
//! 12 u16 last_batch_head   14 u16 used_idx
//! 16 + 16*i: desc[i] = { u8 inflight, u8 pad[5], u16 next, u64 counter }
//! ```
//!
//! Protocol, as libvhost-user does it with one used entry per batch:
//! [`InflightQueue::begin`] when a head is popped; [`InflightQueue::pre_put`]
//! before its used entry is published; [`InflightQueue::post_put`] after.
//! A crash between the used index store and `post_put` leaves the region's
//! `used_idx` one behind the ring's: [`InflightQueue::recover`] then clears
//! `last_batch_head`, which the guest has already been given.
//!
//! The region is memory the frontend can write too, so every field is read
//! with atomics and every index is bounds-checked; a region whose header
//! does not match the queue is reinitialized, never trusted. Regions we
//! create are memfds sealed against shrinking; a region handed to us must
//! carry that seal (or we would take SIGBUS if it shrank), must be large
//! enough, and must lie within its file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`.
pub const PROTOCOL_F_INFLIGHT_SHMFD: u64 = 1 << 12;
/// `VHOST_USER_GET_INFLIGHT_FD`.
pub const REQ_GET_INFLIGHT_FD: u32 = 31;
/// `VHOST_USER_SET_INFLIGHT_FD`.
pub const REQ_SET_INFLIGHT_FD: u32 = 32;
/// Region format version we write.
const VERSION: u16 = 1;
const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: u64 = 64;

/// A region could not be created or accepted.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("{num_queues} queues of {queue_size} entries: not a region we can serve")]
    Geometry { num_queues: u16, queue_size: u16 },
    #[error("region of {got} bytes, {need} needed")]
    TooSmall { got: u64, need: u64 },
    #[error("region offset {0:#x} is not page aligned")]
    Offset(u64),
    #[error("region runs past the end of its file ({0} bytes)")]
    PastEnd(u64),
    #[error("region file is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    #[error("region queues have {region} entries, the ring has {ring}")]
    RingSize { region: u16, ring: u16 },
    #[error("{0}")]
    Os(&'static str, #[source] io::Error),
}

/// The GET/SET_INFLIGHT_FD payload (`VhostUserInflight`: 20 bytes of
/// fields, 24 on the wire with the C struct's tail padding, as QEMU,
/// libvhost-user and the vhost crate send it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightInfo {
    pub mmap_size: u64,
    pub mmap_offset: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl InflightInfo {
    /// Wire size of the payload.
    pub const LEN: usize = 24;
    /// The fields without the tail padding (accepted too).
    const PACKED_LEN: usize = 20;

    /// Parses the payload; `None` unless it is 24 (or packed, 20) bytes.
    pub fn parse(p: &[u8]) -> Option<InflightInfo> {
        if p.len() != Self::LEN && p.len() != Self::PACKED_LEN {
            return None;
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[o..o + 8]);
            u64::from_le_bytes(b)
        };
        Some(InflightInfo {
            mmap_size: u64_at(0),
            mmap_offset: u64_at(8),
            num_queues: u16::from_le_bytes([p[16], p[17]]),
            queue_size: u16::from_le_bytes([p[18], p[19]]),
        })
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.mmap_size.to_le_bytes());
        v.extend_from_slice(&self.mmap_offset.to_le_bytes());
        v.extend_from_slice(&self.num_queues.to_le_bytes());
        v.extend_from_slice(&self.queue_size.to_le_bytes());
        v.resize(Self::LEN, 0);
        v
    }
}

/// Bytes one queue's part of the region takes.
pub fn queue_region_size(queue_size: u16) -> u64 {
    let raw = (HEADER + DESC * usize::from(queue_size)) as u64;
    raw.div_ceil(ALIGN) * ALIGN
}

/// The region shared between a connection's relay (which receives it) and
/// its queue workers (which use it at ring start).
pub type SharedRegion = Arc<Mutex<Option<Arc<InflightRegion>>>>;

/// A mapped in-flight region.
#[derive(Debug)]
pub struct InflightRegion {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
    info: InflightInfo,
}

// SAFETY: the mapping is plain shared memory that lives as long as the
// struct; every access goes through atomics at bounds-checked offsets.
unsafe impl Send for InflightRegion {}
// SAFETY: as above: concurrent access is atomic.
unsafe impl Sync for InflightRegion {}

fn os(what: &'static str) -> InflightError {
    InflightError::Os(what, io::Error::last_os_error())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

impl InflightRegion {
    /// A fresh, zeroed region for `num_queues` queues of `queue_size`
    /// entries, in a memfd sealed against resizing (GET_INFLIGHT_FD).
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Geometry {
                num_queues,
                queue_size,
            });
        }
        let size = u64::from(num_queues) * queue_region_size(queue_size);
        let file_len = libc::off_t::try_from(size).map_err(|_| InflightError::Geometry {
            num_queues,
            queue_size,
        })?;
        // SAFETY: the name is a NUL-terminated literal; the call has no
        // other memory effects.
        let raw = unsafe {
            libc::memfd_create(
                c"viaduct-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: memfd_create just returned this fd; we own it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate/fcntl on our own fd; no memory effects.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), file_len) };
        if rc != 0 {
            return Err(os("ftruncate"));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(os("F_ADD_SEALS"));
        }
        let info = InflightInfo {
            mmap_size: size,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        Self::map(fd, info)
    }

    /// Accepts a region the frontend hands back (SET_INFLIGHT_FD).
    pub fn open(fd: OwnedFd, info: InflightInfo) -> Result<InflightRegion, InflightError> {
        let InflightInfo {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        } = info;
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Geometry {
                num_queues,
                queue_size,
            });
        }
        let need = u64::from(num_queues) * queue_region_size(queue_size);
        if mmap_size < need {
            return Err(InflightError::TooSmall {
                got: mmap_size,
                need,
            });
        }
        if mmap_offset % page_size() != 0 {
            return Err(InflightError::Offset(mmap_offset));
        }
        // SAFETY: fcntl on an fd we own; no memory effects.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(InflightError::NotSealed);
        }
        // SAFETY: fstat writes into `st`, a stat buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os("fstat"));
        }
        let file_len = u64::try_from(st.st_size).unwrap_or(0);
        if mmap_offset
            .checked_add(mmap_size)
            .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::PastEnd(file_len));
        }
        Self::map(fd, info)
    }

    fn map(fd: OwnedFd, info: InflightInfo) -> Result<InflightRegion, InflightError> {
        let len = usize::try_from(info.mmap_size).map_err(|_| InflightError::TooSmall {
            got: info.mmap_size,
            need: 0,
        })?;
        let offset = libc::off_t::try_from(info.mmap_offset)
            .map_err(|_| InflightError::PastEnd(info.mmap_offset))?;
        // SAFETY: a fresh shared mapping of a file we checked is at least
        // `offset + len` long and cannot shrink; nothing else is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        Ok(InflightRegion {
            ptr: ptr.cast(),
            len,
            fd,
            info,
        })
    }

    /// What GET_INFLIGHT_FD answers for this region.
    pub fn info(&self) -> InflightInfo {
        self.info
    }

    /// A copy of the region's fd, to send to the frontend.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.fd.as_fd().try_clone_to_owned()
    }

    /// Queue `q`'s part of the region; `None` if the region has no such
    /// queue.
    pub fn queue(self: &Arc<Self>, q: u16) -> Option<InflightQueue> {
        if q >= self.info.num_queues {
            return None;
        }
        let stride = usize::try_from(queue_region_size(self.info.queue_size)).ok()?;
        Some(InflightQueue {
            region: Arc::clone(self),
            base: usize::from(q) * stride,
            entries: self.info.queue_size,
            counter: 0,
        })
    }

    /// Queue `q`'s part of the region for a ring of `ring_size` entries:
    /// the region's queue size must be the ring's (a smaller region would
    /// leave heads above it untracked, a larger one records heads the ring
    /// cannot have). `Ok(None)` if the region has no such queue.
    pub fn queue_for_ring(
        self: &Arc<Self>,
        q: u16,
        ring_size: u16,
    ) -> Result<Option<InflightQueue>, InflightError> {
        if self.info.queue_size != ring_size {
            return Err(InflightError::RingSize {
                region: self.info.queue_size,
                ring: ring_size,
            });
        }
        Ok(self.queue(q))
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.len);
        debug_assert!(offset % std::mem::align_of::<T>() == 0);
        self.ptr.wrapping_add(offset).cast()
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this struct created; no references
        // into it outlive the struct (accessors return values, not refs).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What a queue must do at start after a backend restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Heads taken and never returned, oldest first: resubmit these.
    pub resubmit: Vec<u16>,
    /// Where popping from the avail ring resumes (`used_idx` + in flight);
    /// `None` on a fresh region (keep the frontend's SET_VRING_BASE).
    pub next_avail: Option<u16>,
    /// Whether the region had to be (re)initialized.
    pub fresh: bool,
}

/// One queue's view of the region, kept by that queue's worker.
#[derive(Debug)]
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: usize,
    entries: u16,
    counter: u64,
}

impl InflightQueue {
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        // SAFETY: `base + off` lies within the mapping (header fields of a
        // queue the region has), is 2-byte aligned (page-aligned mapping,
        // 64-byte strides), and the mapping outlives `&self`.
        unsafe { AtomicU16::from_ptr(self.region.at(self.base + off)) }
    }

    fn inflight(&self, head: u16) -> &AtomicU8 {
        let off = self.base + HEADER + DESC * usize::from(head);
        // SAFETY: callers check `head < entries`, so the byte lies within
        // this queue's part of the mapping, which outlives `&self`.
        unsafe { AtomicU8::from_ptr(self.region.at(off)) }
    }

    fn counter_of(&self, head: u16) -> &AtomicU64 {
        let off = self.base + HEADER + DESC * usize::from(head) + 8;
        // SAFETY: as for `inflight`; the offset is 8-byte aligned.
        unsafe { AtomicU64::from_ptr(self.region.at(off)) }
    }

    fn set_used_idx(&self, idx: u16) {
        self.u16_at(14).store(idx, Ordering::Release);
    }

    /// At ring start: reads what a previous backend left. `used_idx` is the
    /// used ring's index in guest memory, `ring_size` the ring's size now.
    pub fn recover(&mut self, used_idx: u16, ring_size: u16) -> Recovery {
        let version = self.u16_at(8).load(Ordering::Acquire);
        let desc_num = self.u16_at(10).load(Ordering::Acquire);
        if version != VERSION || desc_num != self.entries {
            if version != 0 {
                log::warn!(
                    "event=inflight_region_reset version={version} desc_num={desc_num} entries={}",
                    self.entries
                );
            }
            for head in 0..self.entries {
                self.inflight(head).store(0, Ordering::Relaxed);
                self.counter_of(head).store(0, Ordering::Relaxed);
            }
            self.u16_at(10).store(self.entries, Ordering::Relaxed);
            self.u16_at(12).store(0, Ordering::Relaxed);
            self.set_used_idx(used_idx);
            self.u16_at(8).store(VERSION, Ordering::Release);
            self.counter = 0;
            return Recovery {
                fresh: true,
                ..Recovery::default()
            };
        }
        // Died between publishing a used entry and clearing it here: the
        // guest has that one.
        if self.u16_at(14).load(Ordering::Acquire) != used_idx {
            let last = self.u16_at(12).load(Ordering::Acquire);
            if last < self.entries {
                self.inflight(last).store(0, Ordering::Release);
            }
            self.set_used_idx(used_idx);
        }
        let mut pending: Vec<(u64, u16)> = (0..self.entries)
            .filter(|&h| self.inflight(h).load(Ordering::Acquire) == 1)
            .map(|h| (self.counter_of(h).load(Ordering::Acquire), h))
            .collect();
        pending.sort_unstable();
        self.counter = pending.last().map_or(0, |(c, _)| c.wrapping_add(1));
        let resubmit: Vec<u16> = pending
            .into_iter()
            .map(|(_, h)| h)
            .filter(|&h| {
                let ok = h < ring_size;
                if !ok {
                    log::warn!("event=inflight_head_dropped head={h} ring_size={ring_size}");
                    self.inflight(h).store(0, Ordering::Release);
                }
                ok
            })
            .collect();
        // Only what is resubmitted was taken from the avail ring: a dropped
        // head must not move popping past an entry nobody will complete.
        let count = u16::try_from(resubmit.len()).unwrap_or(u16::MAX);
        Recovery {
            resubmit,
            next_avail: Some(used_idx.wrapping_add(count)),
            fresh: false,
        }
    }

    /// A head was taken from the avail ring.
    pub fn begin(&mut self, head: u16) {
        if head >= self.entries {
            return;
        }
        self.counter_of(head).store(self.counter, Ordering::Release);
        self.counter = self.counter.wrapping_add(1);
        self.inflight(head).store(1, Ordering::Release);
    }

    /// `head`'s used entry is about to be published.
    pub fn pre_put(&self, head: u16) {
        if head < self.entries {
            self.u16_at(12).store(head, Ordering::Release);
        }
    }

    /// `head`'s used entry is published and the used index is `used_idx`.
    pub fn post_put(&self, head: u16, used_idx: u16) {
        if head < self.entries {
            self.inflight(head).store(0, Ordering::Release);
        }
        self.set_used_idx(used_idx);
    }

    /// Heads currently marked in flight (for logs and tests).
    pub fn marked(&self) -> usize {
        (0..self.entries)
            .filter(|&h| self.inflight(h).load(Ordering::Acquire) == 1)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_rejects_other_sizes() {
        let info = InflightInfo {
            mmap_size: 4096,
            mmap_offset: 0,
            num_queues: 2,
            queue_size: 128,
        };
        assert_eq!(info.encode().len(), 24);
        assert_eq!(InflightInfo::parse(&info.encode()), Some(info));
        assert_eq!(InflightInfo::parse(&info.encode()[..20]), Some(info));
        assert_eq!(InflightInfo::parse(&[0u8; 19]), None);
        assert_eq!(InflightInfo::parse(&[0u8; 32]), None);
    }

    #[test]
    fn crash_at_every_step_recovers_exactly_the_unreturned_heads() {
        let region = Arc::new(InflightRegion::create(2, 8).unwrap());
        let mut q = region.queue(1).unwrap();
        assert!(region.queue(2).is_none());
        assert!(q.recover(0, 8).fresh);
        // Pop 5, 3, 6 in that order; complete 3 fully.
        for h in [5, 3, 6] {
            q.begin(h);
        }
        q.pre_put(3);
        q.post_put(3, 1);
        // Complete 6 but "die" after the used index store (no post_put).
        q.pre_put(6);
        // A new backend: the ring's used index is 2.
        let mut again = region.queue(1).unwrap();
        let r = again.recover(2, 8);
        assert_eq!(r.resubmit, vec![5]);
        assert_eq!(r.next_avail, Some(3));
        assert!(!r.fresh);
        // New work continues the counter: resubmission order holds next time.
        again.begin(1);
        let mut third = region.queue(1).unwrap();
        let r = third.recover(2, 8);
        assert_eq!(r.resubmit, vec![5, 1]);
        assert_eq!(r.next_avail, Some(4));
        // Queue 0 was never touched.
        assert!(region.queue(0).unwrap().recover(0, 8).fresh);
    }

    #[test]
    fn a_handed_back_region_is_the_same_memory() {
        let region = InflightRegion::create(1, 4).unwrap();
        let mut q = Arc::new(region).queue(0).unwrap();
        q.recover(7, 4);
        q.begin(2);
        let fd = q.region.dup_fd().unwrap();
        let info = q.region.info();
        let back = Arc::new(InflightRegion::open(fd, info).unwrap());
        let r = back.queue(0).unwrap().recover(7, 4);
        assert_eq!(r.resubmit, vec![2]);
        assert_eq!(r.next_avail, Some(8));
    }

    #[test]
    fn hostile_regions_are_refused_or_reset() {
        let region = InflightRegion::create(1, 4).unwrap();
        let info = region.info();
        let small = InflightInfo {
            mmap_size: 16,
            ..info
        };
        assert!(matches!(
            InflightRegion::open(region.dup_fd().unwrap(), small),
            Err(InflightError::TooSmall { .. })
        ));
        let past = InflightInfo {
            mmap_offset: 4096,
            ..info
        };
        assert!(matches!(
            InflightRegion::open(region.dup_fd().unwrap(), past),
            Err(InflightError::PastEnd(_))
        ));
        let odd = InflightInfo {
            mmap_offset: 8,
            ..info
        };
        assert!(matches!(
            InflightRegion::open(region.dup_fd().unwrap(), odd),
            Err(InflightError::Offset(8))
        ));
        // An unsealed file (could shrink under us: SIGBUS).
        let f = std::fs::File::from(
            // SAFETY: memfd_create with a literal name; we take the fd.
            unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"x".as_ptr(), 0)) },
        );
        f.set_len(4096).unwrap();
        assert!(matches!(
            InflightRegion::open(f.into(), info),
            Err(InflightError::NotSealed)
        ));
        assert!(InflightRegion::create(0, 4).is_err());
        // A header the frontend scribbled on: reinitialized, nothing resubmitted.
        let region = Arc::new(region);
        let mut q = region.queue(0).unwrap();
        q.recover(0, 4);
        q.begin(1);
        q.u16_at(10).store(999, Ordering::Relaxed);
        let r = region.queue(0).unwrap().recover(0, 4);
        assert!(r.fresh && r.resubmit.is_empty());
        // Heads beyond the current ring size are dropped, not resubmitted.
        let mut q = region.queue(0).unwrap();
        q.begin(3);
        let r = region.queue(0).unwrap().recover(0, 2);
        assert!(r.resubmit.is_empty());
        assert_eq!(r.next_avail, Some(0), "a dropped head moved next_avail");
    }

    #[test]
    fn the_region_must_have_the_rings_size() {
        let region = Arc::new(InflightRegion::create(2, 8).unwrap());
        for ring in [4, 16] {
            assert!(matches!(
                region.queue_for_ring(0, ring),
                Err(InflightError::RingSize { region: 8, ring: r }) if r == ring
            ));
        }
        assert!(region.queue_for_ring(1, 8).unwrap().is_some());
        assert!(region.queue_for_ring(2, 8).unwrap().is_none());
    }
}
