//! Reads and writes tried synchronously before they go to the ring.
//!
//! With the page cache in use, a read or write is first tried inline with
//! `RWF_NOWAIT` (served from or into the page cache without blocking) and
//! only goes to the ring when the kernel says it would block: buffered
//! writes submitted to io_uring are punted to io-wq threads, which costs
//! several times the inline path. Filesystems without buffered `RWF_NOWAIT`
//! writes (ext4 answers EOPNOTSUPP) get plain inline page-cache writes
//! instead when the cache mode allows it (writeback/unsafe: a 4 KiB
//! page-cache copy is cheaper than the io-wq round trip; measured 25k vs
//! ~50k+ IOPS at QD1, see the bench).

use std::os::fd::RawFd;

use super::uring::UringOp;
use crate::config::CacheMode;

/// How a read or write is tried before it goes to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Straight to the ring (O_DIRECT: the ring is the fast path).
    Off,
    /// preadv2/pwritev2 with RWF_NOWAIT; EAGAIN → ring.
    NoWait,
    /// Plain synchronous pwritev2 (page-cache writes where RWF_NOWAIT is
    /// unsupported).
    Blocking,
}

/// Per-direction inline policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlinePolicy {
    /// Reads.
    pub reads: Inline,
    /// Writes.
    pub writes: Inline,
    /// Writes fall back to [`Inline::Blocking`] (not the ring) when the
    /// filesystem refuses RWF_NOWAIT.
    pub blocking_write_fallback: bool,
}

impl InlinePolicy {
    /// Everything through the ring.
    pub const OFF: InlinePolicy = InlinePolicy {
        reads: Inline::Off,
        writes: Inline::Off,
        blocking_write_fallback: false,
    };

    /// Which reads and writes are tried inline, per cache mode.
    pub fn for_cache(cache: CacheMode) -> Self {
        match cache {
            CacheMode::None => InlinePolicy::OFF,
            CacheMode::Writethrough => InlinePolicy {
                reads: Inline::NoWait,
                writes: Inline::NoWait,
                blocking_write_fallback: false,
            },
            CacheMode::Writeback | CacheMode::Unsafe => InlinePolicy {
                reads: Inline::NoWait,
                writes: Inline::NoWait,
                blocking_write_fallback: true,
            },
        }
    }
}

/// Inline reads and writes against one open image; the policy narrows
/// itself when the file or kernel refuses RWF_NOWAIT.
#[derive(Debug)]
pub struct InlineIo {
    fd: RawFd,
    policy: InlinePolicy,
}

impl InlineIo {
    /// Inline I/O on `fd` as `policy` says.
    pub fn new(fd: RawFd, policy: InlinePolicy) -> Self {
        InlineIo { fd, policy }
    }

    /// Try a read or write synchronously without blocking. `Some(result)`
    /// means it is done (bytes or `-errno`); `None` means submit it to the ring.
    pub fn try_inline(&mut self, op: &UringOp<'_>, expected: u64) -> Option<i64> {
        let (read, iov, offset, mode) = match *op {
            UringOp::Readv { iov, offset } => (true, iov, offset, self.policy.reads),
            UringOp::Writev { iov, offset, dsync } if !dsync => {
                (false, iov, offset, self.policy.writes)
            }
            _ => return None,
        };
        let flags = match mode {
            Inline::Off => return None,
            Inline::NoWait => libc::RWF_NOWAIT,
            Inline::Blocking => 0,
        };
        let iovcnt = i32::try_from(iov.len()).ok()?;
        let offset = i64::try_from(offset).ok()?;
        // SAFETY: `iov` describes guest-memory buffers the caller keeps mapped
        // for the duration of this call (they were validated against the
        // memory table); the kernel only touches those ranges and `fd` is our
        // open image.
        let n = unsafe {
            if read {
                libc::preadv2(self.fd, iov.as_ptr(), iovcnt, offset, flags)
            } else {
                libc::pwritev2(self.fd, iov.as_ptr(), iovcnt, offset, flags)
            }
        };
        if n >= 0 {
            // A short transfer (page cache only partly populated) is redone
            // whole by the ring; re-reading or re-writing the same bytes is
            // harmless.
            return (u64::try_from(n).ok() == Some(expected)).then_some(n as i64);
        }
        let err = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match err {
            libc::EAGAIN => None,
            libc::EOPNOTSUPP | libc::EINVAL => {
                // This file or kernel does not do RWF_NOWAIT here: stop trying.
                if read {
                    self.policy.reads = Inline::Off;
                    None
                } else if self.policy.blocking_write_fallback && mode == Inline::NoWait {
                    self.policy.writes = Inline::Blocking;
                    self.try_inline(op, expected)
                } else {
                    self.policy.writes = Inline::Off;
                    None
                }
            }
            other => Some(-i64::from(other)),
        }
    }
}
