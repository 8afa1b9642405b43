//! The Ceph RBD engine: one per queue over the shared [`RbdImage`].
//! Reads and writes go to `rbd_aio_readv/writev` with iovecs pointing
//! straight into guest memory; flush, discard and write-zeroes to their
//! `rbd_aio_*` calls. Every request is queued; its completion comes back
//! through the image's eventfd and this queue's mailbox (`rbd_image`), and
//! the engine holds the guest memory and the iovecs until then.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_devices::block::{BlockStatus, Request, RequestKind};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::raw_op;
use super::rbd_ffi::Completion as RbdCompletion;
use super::rbd_image::{RbdImage, tag};
use super::{BlockEngine, Completion, EngineError, EngineParams, Mem, Reaped, Submitted};
use crate::disk::Disk;

/// Failures of the engine itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum RbdEngineError {
    /// The queue has no mailbox (more queues than the image was opened for).
    #[error("rbd: queue {0} has no mailbox")]
    NoMailbox(usize),
    /// The epoll set that joins the image's and the queue's eventfds.
    #[error("rbd: completion epoll")]
    Epoll(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Discard,
    Zeroes,
}

/// A request librbd owns until its completion.
struct InFlight {
    token: u64,
    op: Op,
    expected: u64,
    /// A write that must be durable before it completes: a flush follows.
    then_flush: bool,
    /// Keeps the guest memory the iovecs point into mapped.
    _mem: Arc<Mem>,
    /// The iovec array librbd reads (heap buffer, never reallocated).
    _iov: Vec<libc::iovec>,
}

impl std::fmt::Debug for InFlight {
    // The memory map and the iovecs' raw pointers say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("token", &self.token)
            .field("op", &self.op)
            .field("expected", &self.expected)
            .field("then_flush", &self.then_flush)
            .finish_non_exhaustive()
    }
}

// SAFETY: the iovecs' raw pointers refer to guest memory the same entry
// keeps mapped (`_mem`); only librbd dereferences them.
unsafe impl Send for InFlight {}

/// One queue's RBD engine.
#[derive(Debug)]
pub struct RbdEngine {
    queue: usize,
    image: Arc<RbdImage>,
    /// Guest write cache on (else writes are flushed before completing
    /// when librbd caches).
    writeback: Arc<AtomicBool>,
    /// librbd's cache is on: a guest FLUSH or a write-through write needs
    /// rbd_aio_flush.
    rbd_cache: bool,
    /// Guest flushes sync (not cache=unsafe).
    flush_syncs: bool,
    epoll: Epoll,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    done: Vec<(u32, isize)>,
}

impl RbdEngine {
    /// Engine for `params.queue` on `image`.
    pub fn new(
        disk: &Arc<Disk>,
        image: &Arc<RbdImage>,
        params: &EngineParams,
    ) -> Result<Self, EngineError> {
        let mailbox = image
            .mailbox(params.queue)
            .ok_or(RbdEngineError::NoMailbox(params.queue))?;
        let epoll = Epoll::new().map_err(RbdEngineError::Epoll)?;
        for fd in [image.notify_fd(), mailbox.efd.as_raw_fd()] {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
                .map_err(RbdEngineError::Epoll)?;
        }
        let size = u32::from(params.queue_size);
        Ok(RbdEngine {
            queue: params.queue,
            image: Arc::clone(image),
            writeback: Arc::clone(&params.writeback),
            rbd_cache: disk.cache.volatile_cache(),
            flush_syncs: disk.cache.flush_syncs(),
            epoll,
            slots: (0..size).map(|_| None).collect(),
            free: (0..size).rev().collect(),
            done: Vec::new(),
        })
    }

    fn inflight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The write-through flush after `entry`'s write, in the same slot.
    fn start_flush(&self, slot: u32, entry: &InFlight) -> Result<(), ()> {
        let flush = InFlight {
            token: entry.token,
            op: Op::Flush,
            expected: 0,
            then_flush: false,
            _mem: Arc::clone(&entry._mem),
            _iov: Vec::new(),
        };
        self.start(slot, &flush, 0, 0)
    }

    /// Starts `op` in `slot`; `Err(())` if librbd refused it at once.
    fn start(&self, slot: u32, entry: &InFlight, offset: u64, len: u64) -> Result<(), ()> {
        let api = self.image.api;
        let (image, iov) = (self.image.image, &entry._iov);
        // Validation caps a request at IOV_MAX pieces.
        let iovcnt = libc::c_int::try_from(iov.len()).map_err(drop)?;
        let zero_len = usize::try_from(len).map_err(drop)?;
        let arg = usize::try_from(tag(self.queue, slot)).map_err(drop)?;
        let arg = std::ptr::without_provenance_mut::<libc::c_void>(arg);
        let mut c: RbdCompletion = std::ptr::null_mut();
        // SAFETY: no callback (completions come through the image's
        // eventfd); librbd writes the new completion into `c`.
        if unsafe { (api.rbd_aio_create_completion)(arg, None, &mut c) } < 0 {
            return Err(());
        }
        // SAFETY: open image and a fresh completion; the iovec array and
        // the guest memory it points into live in `entry`, which the
        // caller stores in `slots[slot]` (a Vec's heap buffer does not
        // move) until this completion is reaped. Lengths were validated
        // against the image size by the worker.
        let rc = unsafe {
            match entry.op {
                Op::Read => (api.rbd_aio_readv)(image, iov.as_ptr(), iovcnt, offset, c),
                Op::Write => (api.rbd_aio_writev)(image, iov.as_ptr(), iovcnt, offset, c),
                Op::Flush => (api.rbd_aio_flush)(image, c),
                Op::Discard => (api.rbd_aio_discard)(image, offset, len, c),
                Op::Zeroes => (api.rbd_aio_write_zeroes)(image, offset, zero_len, c, 0, 0),
            }
        };
        if rc < 0 {
            // SAFETY: librbd refused the request, so the completion is
            // still only ours.
            unsafe { (api.rbd_aio_release)(c) };
            return Err(());
        }
        Ok(())
    }
}

impl BlockEngine for RbdEngine {
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        token: u64,
    ) -> Result<Submitted, EngineError> {
        let (op, offset, len, iov) = match kind {
            RequestKind::Read { sector, data, len } => {
                let Some(iov) = raw_op::iovecs(mem, data) else {
                    return Ok(Submitted::Done(Completion::io_err()));
                };
                (Op::Read, Request::sector_to_offset(*sector), *len, iov)
            }
            RequestKind::Write { sector, data, len } => {
                let Some(iov) = raw_op::iovecs(mem, data) else {
                    return Ok(Submitted::Done(Completion::io_err()));
                };
                (Op::Write, Request::sector_to_offset(*sector), *len, iov)
            }
            RequestKind::Flush if !self.flush_syncs || !self.rbd_cache => {
                // Without librbd's cache a completed write is on the OSDs.
                return Ok(Submitted::Done(Completion::ok(0)));
            }
            RequestKind::Flush => (Op::Flush, 0, 0, Vec::new()),
            RequestKind::Discard {
                sector,
                num_sectors,
            } => (
                Op::Discard,
                Request::sector_to_offset(*sector),
                Request::sector_to_offset(u64::from(*num_sectors)),
                Vec::new(),
            ),
            RequestKind::WriteZeroes {
                sector,
                num_sectors,
                ..
            } => (
                Op::Zeroes,
                Request::sector_to_offset(*sector),
                Request::sector_to_offset(u64::from(*num_sectors)),
                Vec::new(),
            ),
            RequestKind::GetId { .. } => return Ok(Submitted::Done(Completion::ok(0))),
        };
        if matches!(op, Op::Read | Op::Write) && len == 0 {
            return Ok(Submitted::Done(Completion::ok(0)));
        }
        let entry = InFlight {
            token,
            op,
            expected: len,
            then_flush: op == Op::Write
                && self.rbd_cache
                && self.flush_syncs
                && !self.writeback.load(Ordering::Relaxed),
            _mem: Arc::clone(mem),
            _iov: iov,
        };
        let Some(slot) = self.free.pop() else {
            // Slots equal the queue size and every request holds one.
            return Ok(Submitted::Done(Completion::io_err()));
        };
        if self.start(slot, &entry, offset, len).is_err() {
            self.free.push(slot);
            return Ok(Submitted::Done(Completion::io_err()));
        }
        self.slots[slot as usize] = Some(entry);
        Ok(Submitted::Queued)
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn reap(&mut self, out: &mut Vec<Reaped>) {
        self.image.dispatch();
        let Some(mailbox) = self.image.mailbox(self.queue) else {
            return;
        };
        let _ = mailbox.efd.read();
        let mut done = std::mem::take(&mut self.done);
        done.append(&mut mailbox.done.lock().unwrap_or_else(|e| e.into_inner()));
        for (slot, ret) in done.drain(..) {
            let Some(mut entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                continue;
            };
            let mut ok = match entry.op {
                // A short read is never passed off as data.
                Op::Read => u64::try_from(ret).is_ok_and(|n| n == entry.expected),
                _ => ret >= 0,
            };
            if ok && entry.then_flush {
                entry.then_flush = false;
                if self.start_flush(slot, &entry).is_ok() {
                    self.slots[slot as usize] = Some(entry);
                    continue;
                }
                ok = false;
            }
            self.free.push(slot);
            let status = if ok {
                BlockStatus::Ok
            } else {
                log::debug!(
                    "io_error queue={} token={} op={:?} result={ret}",
                    self.queue,
                    entry.token,
                    entry.op
                );
                BlockStatus::IoErr
            };
            let len = if entry.op == Op::Read && status == BlockStatus::Ok {
                entry.expected
            } else {
                0
            };
            out.push(Reaped {
                token: entry.token,
                completion: Completion { status, len },
            });
        }
        self.done = done;
    }

    fn wait(&mut self) -> Result<(), EngineError> {
        let mut events = [EpollEvent::default(); 2];
        loop {
            match self.epoll.wait(-1, &mut events) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RbdEngineError::Epoll(e).into()),
            }
        }
    }
}

impl Drop for RbdEngine {
    /// librbd may still be writing into guest memory that only the
    /// in-flight slots keep mapped: wait for every completion (librbd
    /// retries against restarted OSDs and finishes every request it took);
    /// should waiting fail, the slots' mappings are leaked instead.
    fn drop(&mut self) {
        if self.inflight() > 0 {
            log::warn!(
                "event=worker_dropped_with_inflight queue={} inflight={}",
                self.queue,
                self.inflight()
            );
        }
        let mut out = Vec::new();
        while self.inflight() > 0 {
            if let Err(e) = self.wait() {
                log::error!(
                    "event=inflight_wait_failed queue={} action=leak_mappings error=\"{e}\"",
                    self.queue
                );
                for slot in self.slots.drain(..) {
                    std::mem::forget(slot);
                }
                return;
            }
            self.reap(&mut out);
            out.clear();
        }
    }
}
