//! The dirty-page log a frontend hands over with SET_LOG_BASE: a bitmap in
//! shared memory, one bit per 4 KiB page of guest physical address space
//! (bit `gpa / 4096`, byte `bit / 8`, bit `bit % 8`, as the vhost-user
//! spec's "Migration" section and the vhost kernel driver lay it out).
//!
//! The fd comes from the frontend and is hostile like every region it
//! hands us: the range must lie inside the file (`fstat`, regular file or
//! memfd), and the mapping is registered with [`crate::memguard`] so a log
//! truncated later faults into a zero page instead of killing the daemon.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use thiserror::Error;

use crate::memguard;

/// Bytes of guest memory one log bit covers.
pub const LOG_PAGE: u64 = 4096;

/// Why a log region was refused.
#[derive(Debug, Error)]
pub enum LogRegionError {
    #[error("log region of 0 bytes")]
    Empty,
    #[error("log region offset {offset} + size {size} overflows")]
    Overflow { offset: u64, size: u64 },
    #[error("log fd is not a regular file or memfd")]
    NotAFile,
    #[error("log region [{offset}, {end}) runs past the end of its file ({file} bytes)")]
    PastEnd { offset: u64, end: u64, file: u64 },
    #[error("log region of {size} bytes is too large to map")]
    TooLarge { size: u64 },
    #[error("fstat on the log fd")]
    Stat(#[source] io::Error),
    #[error("mmap of the log region")]
    Map(#[source] io::Error),
    #[error("registering the log region with the SIGBUS guard")]
    Guard(#[from] memguard::MemGuardError),
}

/// Bytes of log needed to cover guest physical addresses below `end`.
pub fn bytes_for(end: u64) -> u64 {
    end.div_ceil(LOG_PAGE).div_ceil(8)
}

/// A mapped log region.
#[derive(Debug)]
pub struct LogRegion {
    base: NonNull<u8>,
    len: usize,
    /// The mapping's page-aligned start and length, for munmap.
    map_base: NonNull<libc::c_void>,
    map_len: usize,
    guard_slot: usize,
    /// Marks that fell beyond the end of the log (a frontend that grew the
    /// memory table without growing the log).
    beyond: AtomicU64,
    /// Pages marked while clear ([`LogRegion::pages_marked`]).
    marked: AtomicU64,
}

// SAFETY: the mapping is shared memory only ever touched through atomics;
// the raw pointers are owned by this value and unmapped once, on drop.
unsafe impl Send for LogRegion {}
// SAFETY: as above: every access to the bytes is an atomic operation.
unsafe impl Sync for LogRegion {}

impl LogRegion {
    /// Maps `size` bytes at `offset` of `fd`, after checking they lie
    /// inside the file.
    pub fn map(fd: BorrowedFd<'_>, offset: u64, size: u64) -> Result<LogRegion, LogRegionError> {
        if size == 0 {
            return Err(LogRegionError::Empty);
        }
        let end = offset
            .checked_add(size)
            .ok_or(LogRegionError::Overflow { offset, size })?;
        let file = file_size(fd)?;
        if end > file {
            return Err(LogRegionError::PastEnd { offset, end, file });
        }
        let len = usize::try_from(size).map_err(|_| LogRegionError::TooLarge { size })?;
        // SAFETY: sysconf has no memory effects.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p.unsigned_abs(),
            _ => 4096,
        };
        let map_off = offset - offset % page;
        let lead = offset - map_off;
        let map_len =
            usize::try_from(lead + size).map_err(|_| LogRegionError::TooLarge { size })?;
        let off = libc::off_t::try_from(map_off).map_err(|_| LogRegionError::TooLarge { size })?;
        // SAFETY: a fresh shared mapping of a range checked to lie inside
        // the file; nothing else refers to the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LogRegionError::Map(io::Error::last_os_error()));
        }
        let map_base = NonNull::new(p).ok_or(LogRegionError::Map(io::Error::other("null")))?;
        let guard_slot = match memguard::register(p as usize, map_len) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: unmapping the mapping made just above, unused.
                unsafe { libc::munmap(p, map_len) };
                return Err(e.into());
            }
        };
        // `lead < page`, so it fits a usize.
        let lead = usize::try_from(lead).unwrap_or(0);
        // SAFETY: `lead` lies inside the mapping (lead < map_len).
        let base = unsafe { map_base.cast::<u8>().add(lead) };
        Ok(LogRegion {
            base,
            len,
            map_base,
            map_len,
            guard_slot,
            beyond: AtomicU64::new(0),
            marked: AtomicU64::new(0),
        })
    }

    /// Log bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: [`LogRegion::map`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Guest physical addresses below this are covered.
    pub fn covers(&self) -> u64 {
        (self.len as u64).saturating_mul(8).saturating_mul(LOG_PAGE)
    }

    /// Marks every page `[gpa, gpa + len)` touches as dirty.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut page = first;
        while page <= last {
            let Ok(byte) = usize::try_from(page / 8) else {
                self.beyond.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if byte >= self.len {
                self.beyond.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Up to a whole byte's worth of pages at once.
            let bit = page % 8;
            let n = (last - page + 1).min(8 - bit);
            let ones: u16 = (1u16 << n) - 1;
            // n <= 8 - bit, so the shifted mask fits in 8 bits.
            let mask = u8::try_from(ones << bit).unwrap_or(u8::MAX);
            // SAFETY: `byte < self.len`, inside the mapping, which lives as
            // long as `self`; shared memory is only accessed atomically.
            let cell = unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(byte)) };
            let old = cell.fetch_or(mask, Ordering::Relaxed);
            let fresh = (mask & !old).count_ones();
            if fresh > 0 {
                self.marked.fetch_add(u64::from(fresh), Ordering::Relaxed);
            }
            page = page - bit + 8;
        }
    }

    /// Pages this daemon marked that were clear (the frontend had not yet
    /// seen them dirty): what it logged, in pages of [`LOG_PAGE`] bytes.
    pub fn pages_marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }

    /// Marks that fell past the end of the log.
    pub fn beyond(&self) -> u64 {
        self.beyond.load(Ordering::Relaxed)
    }

    /// Whether the page holding `gpa` is marked (tests, diagnostics).
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        let Ok(byte) = usize::try_from(page / 8) else {
            return false;
        };
        if byte >= self.len {
            return false;
        }
        // SAFETY: in bounds, as above.
        let cell = unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(byte)) };
        cell.load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }
}

impl Drop for LogRegion {
    fn drop(&mut self) {
        let pages = self.pages_marked();
        log::info!(
            "event=dirty_log_end pages_marked={pages} bytes_marked={} beyond={}",
            pages.saturating_mul(LOG_PAGE),
            self.beyond()
        );
        memguard::unregister(self.guard_slot);
        // SAFETY: the mapping made in `map`, unmapped exactly once.
        unsafe { libc::munmap(self.map_base.as_ptr(), self.map_len) };
    }
}

/// The size of a regular file or memfd behind `fd`.
fn file_size(fd: BorrowedFd<'_>) -> Result<u64, LogRegionError> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(LogRegionError::Stat(io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LogRegionError::NotAFile);
    }
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn memfd(len: u64) -> std::fs::File {
        let f = tempfile_in_shm();
        f.set_len(len).expect("set_len");
        f
    }

    fn tempfile_in_shm() -> std::fs::File {
        let name = c"dirty-log-test";
        // SAFETY: a fresh memfd; the name is a valid C string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: memfd_create returned a new fd that we own.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }

    #[test]
    fn marks_land_on_the_spec_bits_and_nowhere_else() {
        let f = memfd(8192);
        let log = LogRegion::map(f.as_fd(), 4096, 64).expect("map");
        assert_eq!(log.covers(), 64 * 8 * 4096);
        log.mark(0x5000, 1); // page 5
        log.mark(0x9fff, 2); // pages 9 and 10
        log.mark(0x10_000, 0x8000); // pages 16..=23: a whole byte
        for page in 0..64 * 8u64 {
            let want = matches!(page, 5 | 9 | 10 | 16..=23);
            assert_eq!(log.is_marked(page * 4096), want, "page {page}");
        }
        // The bytes as the frontend sees them, through the file.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 4096).expect("read");
        assert_eq!(buf, [0b0010_0000, 0b0000_0110, 0xff, 0]);
        assert_eq!(log.beyond(), 0);
        assert_eq!(log.pages_marked(), 11, "1 + 2 + 8 fresh pages");
        log.mark(0x5000, 0x2000); // page 5 again, page 6 fresh
        assert_eq!(log.pages_marked(), 12, "only fresh pages count");
    }

    #[test]
    fn a_mark_past_the_log_is_counted_not_written() {
        let f = memfd(4096);
        let log = LogRegion::map(f.as_fd(), 0, 1).expect("map");
        log.mark(7 * 4096, 4096);
        assert!(log.is_marked(7 * 4096));
        log.mark(8 * 4096, 1);
        assert_eq!(log.beyond(), 1);
    }

    #[test]
    fn regions_outside_the_file_are_refused() {
        let f = memfd(4096);
        assert!(matches!(
            LogRegion::map(f.as_fd(), 0, 4097),
            Err(LogRegionError::PastEnd { .. })
        ));
        assert!(matches!(
            LogRegion::map(f.as_fd(), u64::MAX, 2),
            Err(LogRegionError::Overflow { .. })
        ));
        assert!(matches!(
            LogRegion::map(f.as_fd(), 0, 0),
            Err(LogRegionError::Empty)
        ));
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(matches!(
            LogRegion::map(a.as_fd(), 0, 1),
            Err(LogRegionError::NotAFile)
        ));
    }

    #[test]
    fn log_bytes_needed_round_up() {
        assert_eq!(bytes_for(0), 0);
        assert_eq!(bytes_for(1), 1);
        assert_eq!(bytes_for(8 * 4096), 1);
        assert_eq!(bytes_for(8 * 4096 + 1), 2);
        assert_eq!(bytes_for(512 << 20), (512 << 20) / 4096 / 8);
    }
}
