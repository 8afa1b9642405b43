//! The raw-image engine: one io_uring per queue straight into guest memory,
//! reads and writes tried inline first, WRITE_ZEROES written as zeroes
//! where fallocate is refused. Owns everything the kernel may still touch
//! (iovecs, a reference to the guest memory map) until its completion.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_devices::block::{BlockStatus, RequestKind};

use super::raw_inline::{InlineIo, InlinePolicy};
use super::raw_op::{self, Class, Target};
use super::uring::{UringEngine, UringOp};
use super::zeroes::{self, ZeroFill};
use super::{BlockEngine, Completion, EngineError, EngineParams, Mem, Reaped, Submitted};
use crate::disk::Disk;

/// A request the kernel owns until its CQE arrives.
#[derive(Debug)]
struct InFlight {
    token: u64,
    class: Class,
    /// Bytes a complete read/write transfers.
    expected: u64,
    /// Keeps the guest memory the iovecs point into mapped, even if the
    /// frontend replaces the memory table meanwhile.
    _mem: Arc<Mem>,
    /// The iovec array the kernel reads (heap buffer, never reallocated).
    _iov: Vec<libc::iovec>,
    /// WRITE_ZEROES: the range still to zero.
    zero_fill: Option<ZeroFill>,
}

// SAFETY: the iovecs' raw pointers refer to guest memory that the same
// `InFlight` keeps mapped (`_mem`), or to the process-wide zero buffer;
// they are only dereferenced by the kernel, never by Rust code, so moving
// the entry to another thread is sound.
unsafe impl Send for InFlight {}

/// One queue's raw-image engine.
#[derive(Debug)]
pub struct RawEngine {
    queue: usize,
    /// Keeps the image (and the fd the ring and `inline` use) open.
    disk: Arc<Disk>,
    writeback: Arc<AtomicBool>,
    ring: UringEngine,
    inline: InlineIo,
    /// In-flight requests by slot (the ring's user_data).
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    cqes: Vec<(u64, i32)>,
    /// fallocate modes the image refused for WRITE_ZEROES (zeroes are
    /// written instead from then on).
    zero_modes_refused: Vec<i32>,
}

impl RawEngine {
    /// Engine with an io_uring of `params.queue_size` entries on `fd`,
    /// `disk`'s open image (kept open by the engine's reference).
    pub fn new(disk: &Arc<Disk>, fd: RawFd, params: &EngineParams) -> Result<Self, EngineError> {
        let size = usize::from(params.queue_size);
        Ok(RawEngine {
            queue: params.queue,
            disk: Arc::clone(disk),
            writeback: Arc::clone(&params.writeback),
            ring: UringEngine::new(fd, u32::from(params.queue_size))?,
            inline: InlineIo::new(fd, InlinePolicy::for_cache(disk.cache)),
            slots: (0..size).map(|_| None).collect(),
            free: (0..size).rev().collect(),
            cqes: Vec::new(),
            zero_modes_refused: Vec::new(),
        })
    }

    /// A WRITE_ZEROES step completed in `slot`. If the fallocate was
    /// refused (EOPNOTSUPP) or a chunk of zeroes was written and more
    /// remain, the next chunk of zeroes goes to the ring in the same slot
    /// (`Ok`); otherwise the request is done with the result given back.
    fn continue_zeroes(
        &mut self,
        slot: usize,
        mut entry: InFlight,
        result: i32,
    ) -> Result<(), (InFlight, i32)> {
        let Some(fill) = entry.zero_fill.as_mut() else {
            return Err((entry, result));
        };
        if !fill.writing {
            if result != -libc::EOPNOTSUPP {
                return Err((entry, result));
            }
            if !self.zero_modes_refused.contains(&fill.mode) {
                log::info!(
                    "event=write_zeroes_fallback queue={} mode={:#x} action=write_zeroes",
                    self.queue,
                    fill.mode
                );
                self.zero_modes_refused.push(fill.mode);
            }
            fill.writing = true;
        } else {
            let wanted = fill.chunk().map_or(0, |(_, n)| n);
            if u64::try_from(result).ok() != Some(wanted) {
                return Err((entry, result.min(-libc::EIO)));
            }
            fill.advance(wanted);
        }
        let Some((offset, len)) = fill.chunk() else {
            return Err((entry, 0));
        };
        let dsync = fill.dsync;
        let Ok(iov) = zeroes::iovec(len) else {
            return Err((entry, -libc::EIO));
        };
        let iov = vec![iov];
        let op = UringOp::Writev {
            iov: &iov,
            offset,
            dsync,
        };
        // SAFETY: the iovec array moves into this slot's entry right below
        // (its heap buffer does not move) and points at the process-wide
        // zero buffer, which is never unmapped.
        if unsafe { self.ring.push(&op, slot as u64) }.is_err() {
            return Err((entry, -libc::EIO));
        }
        entry._iov = iov;
        self.slots[slot] = Some(entry);
        Ok(())
    }

    fn inflight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl BlockEngine for RawEngine {
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        token: u64,
    ) -> Result<Submitted, EngineError> {
        let cache = self.disk.cache;
        match kind {
            RequestKind::Flush if !cache.flush_syncs() => {
                return Ok(Submitted::Done(Completion::ok(0)));
            }
            // GET_ID never reaches an engine (the worker answers it).
            RequestKind::GetId { .. } => return Ok(Submitted::Done(Completion::ok(0))),
            _ => {}
        }
        let target = Target {
            dsync: !self.writeback.load(Ordering::Relaxed) && !cache.dsync(),
            block_device: self.disk.is_block_device(),
            zero_modes_refused: &self.zero_modes_refused,
        };
        let Some(prepared) = raw_op::prepare(mem, kind, target) else {
            // Too many pieces for one readv/writev, or memory vanished.
            return Ok(Submitted::Done(Completion::io_err()));
        };
        let (class, expected) = (prepared.class, prepared.expected);
        if class.transfers() {
            if expected == 0 {
                return Ok(Submitted::Done(Completion::ok(0)));
            }
            if let Some(result) = self.inline.try_inline(&prepared.op(), expected) {
                let status = raw_op::result_status(class, expected, result);
                return Ok(Submitted::Done(completion(class, expected, status)));
            }
        }
        // Slots equal the queue size and tokens are unique heads, so a
        // free slot exists; grow rather than fail if that ever changes.
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // SAFETY: the iovec array and the guest memory it points into are
        // moved into `slots[slot]` right below (a Vec's heap buffer does not
        // move) together with an Arc of the memory map, and stay there until
        // the completion tagged `slot` is reaped.
        let pushed = unsafe { self.ring.push(&prepared.op(), slot as u64) };
        if let Err(e) = pushed {
            self.free.push(slot);
            return Err(e.into());
        }
        self.slots[slot] = Some(InFlight {
            token,
            class,
            expected,
            _mem: Arc::clone(mem),
            _iov: prepared.iov,
            zero_fill: prepared.zero_fill,
        });
        Ok(Submitted::Queued)
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        Ok(self.ring.submit()?)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.ring.eventfd())
    }

    fn reap(&mut self, out: &mut Vec<Reaped>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.reap(&mut cqes);
        let mut resubmitted = false;
        for (user_data, result) in cqes.drain(..) {
            let Some(slot) = usize::try_from(user_data).ok() else {
                continue;
            };
            let Some(entry) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let (entry, result) = match self.continue_zeroes(slot, entry, result) {
                Ok(()) => {
                    resubmitted = true;
                    continue;
                }
                Err(done) => done,
            };
            self.free.push(slot);
            let status = raw_op::result_status(entry.class, entry.expected, i64::from(result));
            if status != BlockStatus::Ok {
                log::debug!(
                    "io_error queue={} token={} result={result}",
                    self.queue,
                    entry.token
                );
            }
            out.push(Reaped {
                token: entry.token,
                completion: completion(entry.class, entry.expected, status),
            });
        }
        self.cqes = cqes;
        if resubmitted {
            if let Err(e) = self.ring.submit() {
                log::error!("zeroes_submit_failed queue={} error=\"{e}\"", self.queue);
            }
        }
    }

    fn wait(&mut self) -> Result<(), EngineError> {
        Ok(self.ring.wait_one()?)
    }
}

/// A finished request of `class`: a read that succeeded filled `expected`
/// guest bytes; nothing else writes guest data.
fn completion(class: Class, expected: u64, status: BlockStatus) -> Completion {
    let len = if class == Class::Read && status == BlockStatus::Ok {
        expected
    } else {
        0
    };
    Completion { status, len }
}

impl Drop for RawEngine {
    /// The kernel may still be reading into (or writing from) guest memory
    /// that only the in-flight slots keep mapped: wait for every
    /// completion before the slots go. Nobody reports these completions
    /// any more (the connection is gone); they only have to end. Should
    /// waiting fail, the slots' mappings are leaked instead of unmapped
    /// under the kernel.
    fn drop(&mut self) {
        if self.inflight() > 0 {
            log::warn!(
                "event=worker_dropped_with_inflight queue={} inflight={}",
                self.queue,
                self.inflight()
            );
        }
        let mut done = Vec::new();
        while self.inflight() > 0 {
            if let Err(e) = self.ring.wait_one() {
                log::error!(
                    "event=inflight_wait_failed queue={} inflight={} action=leak_mappings error=\"{e}\"",
                    self.queue,
                    self.inflight()
                );
                for slot in self.slots.drain(..) {
                    std::mem::forget(slot);
                }
                return;
            }
            self.ring.reap(&mut done);
            for (user_data, _) in done.drain(..) {
                let Ok(slot) = usize::try_from(user_data) else {
                    continue;
                };
                if self.slots.get_mut(slot).and_then(Option::take).is_some() {
                    self.free.push(slot);
                }
            }
        }
    }
}
