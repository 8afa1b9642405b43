//! One io_uring per queue, for raw images and block devices.
//!
//! Discard and write-zeroes go through the ring too (fallocate, and on
//! block devices the block layer's discard command), so a slow discard
//! never holds up the queue's worker.
//!
//! Reads and writes are `readv`/`writev` whose iovecs point straight into
//! guest memory (no bounce buffer); completions wake the queue's worker
//! through an eventfd registered with the ring. (Reads and writes the page
//! cache can serve are tried inline first: `raw_inline`.)

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// `BLOCK_URING_CMD_DISCARD` = `_IO(0x12, 0)` (linux/fs.h, 6.12+).
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

/// io_uring failures (setup or submission; per-request errors come back as
/// negative completion results).
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// io_uring_setup failed.
    #[error("cannot create io_uring")]
    Setup(#[source] std::io::Error),
    /// The completion eventfd could not be created or registered.
    #[error("cannot set up the completion eventfd")]
    EventFd(#[source] std::io::Error),
    /// io_uring_enter failed.
    #[error("io_uring submit failed")]
    Submit(#[source] std::io::Error),
    /// More iovecs than one io_uring request takes (validation prevents it).
    #[error("{0} iovecs in one request")]
    TooManyIovecs(usize),
}

/// One disk operation, described by raw pointers into guest memory.
#[derive(Debug, Clone, Copy)]
pub enum UringOp<'a> {
    /// Read into the buffers `iov` describes.
    Readv {
        /// Destination buffers (guest memory).
        iov: &'a [libc::iovec],
        /// Disk byte offset.
        offset: u64,
    },
    /// Write the buffers `iov` describes.
    Writev {
        /// Source buffers (guest memory).
        iov: &'a [libc::iovec],
        /// Disk byte offset.
        offset: u64,
        /// Make this write durable on completion (RWF_DSYNC).
        dsync: bool,
    },
    /// fdatasync.
    Fdatasync,
    /// Discard a byte range of a block device (the block layer's
    /// `BLOCK_URING_CMD_DISCARD`, Linux 6.12+; older kernels answer
    /// EOPNOTSUPP).
    BlockDiscard {
        /// Device byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// fallocate(mode, offset, len).
    Fallocate {
        /// Disk byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// FALLOC_FL_* mode.
        mode: i32,
    },
}

/// A queue's io_uring and its completion eventfd.
pub struct UringEngine {
    ring: IoUring,
    eventfd: EventFd,
    fd: RawFd,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // io_uring's IoUring has no Debug: show what identifies the ring.
        f.debug_struct("UringEngine")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("eventfd", &self.eventfd.as_raw_fd())
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl UringEngine {
    /// Ring for `entries` requests in flight against `fd`.
    pub fn new(fd: RawFd, entries: u32) -> Result<Self, UringError> {
        let ring = IoUring::new(entries.next_power_of_two()).map_err(UringError::Setup)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(UringError::EventFd)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(UringError::EventFd)?;
        Ok(UringEngine { ring, eventfd, fd })
    }

    /// The eventfd that becomes readable when completions are posted.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Queue `op` tagged `user_data`, submitting first if the ring is full.
    ///
    /// # Safety
    ///
    /// Every buffer `op` points at, and the iovec array itself, must stay
    /// valid and mapped until the completion for `user_data` is reaped.
    pub unsafe fn push(&mut self, op: &UringOp<'_>, user_data: u64) -> Result<(), UringError> {
        let fd = types::Fd(self.fd);
        let entry: squeue::Entry = match *op {
            UringOp::Readv { iov, offset } => {
                // Validation caps a request well under u32::MAX iovecs.
                let n =
                    u32::try_from(iov.len()).map_err(|_| UringError::TooManyIovecs(iov.len()))?;
                opcode::Readv::new(fd, iov.as_ptr(), n)
                    .offset(offset)
                    .build()
            }
            UringOp::Writev { iov, offset, dsync } => {
                let n =
                    u32::try_from(iov.len()).map_err(|_| UringError::TooManyIovecs(iov.len()))?;
                opcode::Writev::new(fd, iov.as_ptr(), n)
                    .offset(offset)
                    .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            UringOp::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            UringOp::BlockDiscard { offset, len } => {
                // blkdev_uring_cmd: the start in sqe->addr, the length in
                // sqe->addr3 (the first 8 bytes of the command area).
                let mut cmd = [0u8; 16];
                cmd[..8].copy_from_slice(&len.to_ne_bytes());
                opcode::UringCmd16::new(fd, BLOCK_URING_CMD_DISCARD)
                    .addr(Some(offset))
                    .cmd(cmd)
                    .build()
            }
            UringOp::Fallocate { offset, len, mode } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode)
                .build(),
        }
        .user_data(user_data);
        loop {
            // SAFETY: the caller guarantees the buffers outlive the request
            // (see this function's contract); the entry was fully built above.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Hand queued entries to the kernel.
    pub fn submit(&mut self) -> Result<(), UringError> {
        // Nothing queued (inline completions, --null-io): no syscall.
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ is full: the caller reaps and calls again.
                    return Ok(());
                }
                Err(e) => return Err(UringError::Submit(e)),
            }
        }
    }

    /// Submit and block until at least one completion is available.
    pub fn wait_one(&mut self) -> Result<(), UringError> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(UringError::Submit(e)),
            }
        }
    }

    /// Move every posted completion into `out` as `(user_data, result)`.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        // Reset the eventfd first so a completion posted after the drain
        // below re-arms it rather than being missed.
        let _ = self.eventfd.read();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::raw_inline::{Inline, InlineIo, InlinePolicy};
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    use vhost_user_daemon::iovec::of_buf as iov;

    #[test]
    fn ring_and_inline_paths_move_real_bytes() {
        let f = TempFile::new().unwrap();
        let mut file = f.as_file();
        file.write_all(&[0x5a; 8192]).unwrap();
        let policy = InlinePolicy {
            reads: Inline::NoWait,
            writes: Inline::NoWait,
            blocking_write_fallback: true,
        };
        let mut e = UringEngine::new(file.as_raw_fd(), 8).unwrap();
        let mut inline = InlineIo::new(file.as_raw_fd(), policy);
        // Inline write (RWF_NOWAIT, or plain where the fs refuses it).
        let mut first = vec![0x5au8; 4096];
        let fv = [iov(&mut first)];
        let op = UringOp::Writev {
            iov: &fv,
            offset: 0,
            dsync: false,
        };
        assert_eq!(inline.try_inline(&op, 4096), Some(4096));

        // Inline read out of the (warm) page cache.
        let mut buf = vec![0u8; 4096];
        let v = [iov(&mut buf)];
        let op = UringOp::Readv { iov: &v, offset: 0 };
        if let Some(n) = inline.try_inline(&op, 4096) {
            assert_eq!(n, 4096);
            assert!(buf.iter().all(|&b| b == 0x5a));
        }

        // Through the ring: write 0xa5 at 4096, read it back, fdatasync.
        let mut src = vec![0xa5u8; 4096];
        let wv = [iov(&mut src)];
        let mut dst = vec![0u8; 4096];
        let rv = [iov(&mut dst)];
        // SAFETY: the buffers and iovec arrays live until the completions
        // are reaped below.
        unsafe {
            e.push(
                &UringOp::Writev {
                    iov: &wv,
                    offset: 4096,
                    dsync: false,
                },
                1,
            )
            .unwrap();
        }
        e.wait_one().unwrap();
        let mut done = Vec::new();
        e.reap(&mut done);
        assert_eq!(done, vec![(1, 4096)]);
        // SAFETY: as above.
        unsafe {
            e.push(
                &UringOp::Readv {
                    iov: &rv,
                    offset: 4096,
                },
                2,
            )
            .unwrap();
            e.push(&UringOp::Fdatasync, 3).unwrap();
        }
        done.clear();
        while done.len() < 2 {
            e.wait_one().unwrap();
            e.reap(&mut done);
        }
        done.sort();
        assert_eq!(done, vec![(2, 4096), (3, 0)]);
        assert!(dst.iter().all(|&b| b == 0xa5));
    }
}
