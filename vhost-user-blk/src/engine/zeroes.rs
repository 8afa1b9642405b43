//! WRITE_ZEROES by writing zeroes, where fallocate cannot do it.
//!
//! WRITE_ZEROES becomes `fallocate(FALLOC_FL_ZERO_RANGE)` (or PUNCH_HOLE
//! with UNMAP), which tmpfs and other filesystems refuse with EOPNOTSUPP;
//! the guest would get IOERR for a feature we advertise. The worker then
//! writes zeroes instead, through its io_uring, one bounded chunk at a time
//! (a [`ZeroFill`] walks the range), from one read-only zero buffer the
//! process maps once and never unmaps, so a write still in the kernel's
//! hands can never read from memory that went away.

use std::sync::OnceLock;

/// Largest write of zeroes one SQE carries.
pub const CHUNK: u64 = CHUNK_BYTES as u64;
const CHUNK_BYTES: usize = 1 << 20;

/// The zero buffer could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum ZeroesError {
    #[error("cannot map the zero buffer")]
    Map(#[source] std::io::Error),
}

/// Address of the process's zero buffer ([`CHUNK`] bytes, read-only).
static BUFFER: OnceLock<usize> = OnceLock::new();

fn buffer() -> Result<usize, ZeroesError> {
    if let Some(&p) = BUFFER.get() {
        return Ok(p);
    }
    // SAFETY: a fresh private anonymous read-only mapping; no existing
    // memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHUNK_BYTES,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(ZeroesError::Map(std::io::Error::last_os_error()));
    }
    let mine = p as usize;
    let kept = *BUFFER.get_or_init(|| mine);
    if kept != mine {
        // Another thread won the race: ours was never shared.
        // SAFETY: unmaps the mapping made above, which nothing else knows.
        unsafe { libc::munmap(p, CHUNK_BYTES) };
    }
    Ok(kept)
}

/// One iovec of `len` (at most [`CHUNK`]) zero bytes; the buffer lives as
/// long as the process.
pub fn iovec(len: u64) -> Result<libc::iovec, ZeroesError> {
    Ok(libc::iovec {
        iov_base: buffer()? as *mut libc::c_void,
        iov_len: len.min(CHUNK) as usize,
    })
}

/// A byte range of the disk being zeroed, one chunk at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFill {
    next: u64,
    end: u64,
    /// The fallocate mode tried first (to remember it failed).
    pub mode: i32,
    /// Writes must be durable on completion (RWF_DSYNC).
    pub dsync: bool,
    /// Zeroes are being written (the fallocate was refused or skipped).
    pub writing: bool,
}

impl ZeroFill {
    /// The range `[offset, offset + len)`, first tried as fallocate `mode`.
    pub fn new(offset: u64, len: u64, mode: i32, dsync: bool) -> Self {
        ZeroFill {
            next: offset,
            end: offset.saturating_add(len),
            mode,
            dsync,
            writing: false,
        }
    }

    /// The next chunk to write, `(offset, len)`, or None when done.
    pub fn chunk(&self) -> Option<(u64, u64)> {
        (self.next < self.end).then(|| (self.next, (self.end - self.next).min(CHUNK)))
    }

    /// `n` more bytes written.
    pub fn advance(&mut self, n: u64) {
        self.next = self.next.saturating_add(n).min(self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_and_cover_the_range_exactly() {
        let mut f = ZeroFill::new(4096, 3 * CHUNK + 512, libc::FALLOC_FL_ZERO_RANGE, false);
        let mut seen = Vec::new();
        while let Some((off, len)) = f.chunk() {
            assert!(len <= CHUNK && len > 0);
            seen.push((off, len));
            f.advance(len);
        }
        assert_eq!(
            seen,
            vec![
                (4096, CHUNK),
                (4096 + CHUNK, CHUNK),
                (4096 + 2 * CHUNK, CHUNK),
                (4096 + 3 * CHUNK, 512)
            ]
        );
        assert_eq!(ZeroFill::new(0, 0, 0, false).chunk(), None);
    }

    #[test]
    fn the_buffer_is_zero_and_shared() {
        let a = iovec(CHUNK).unwrap();
        let b = iovec(2 * CHUNK).unwrap();
        assert_eq!(a.iov_base, b.iov_base);
        assert_eq!(b.iov_len, CHUNK_BYTES);
        // SAFETY: the buffer is CHUNK readable bytes, mapped for good.
        let bytes = unsafe { std::slice::from_raw_parts(a.iov_base as *const u8, a.iov_len) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
