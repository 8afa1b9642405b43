//! One queue's request processing: ring → validated requests → engine →
//! used ring. Each queue has its own worker (own thread, own io_uring, own
//! lock); nothing on this path is shared with another queue.
//!
//! Faults come in two tiers: a bad request is completed with IOERR/UNSUPP
//! (or dropped when no status byte exists) and the queue goes on; a corrupt
//! ring (avail index jumping more than the queue size, a head index reused
//! while in flight) stops the queue until the frontend resets it and
//! signals the frontend's vring error eventfd; viaduct turns that into
//! NEEDS_RESET in the device status (QEMU logs it).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use vhost_user_daemon::chain;
use vhost_user_daemon::inflight::{InflightQueue, SharedRegion};
use virtio_devices::block::{
    BlockStatus, ID_BYTES, ParseOutcome, Request, RequestKind, RequestLimits, Segment, request,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

use crate::config::CacheMode;
use crate::counters::QueueCounters;
use crate::disk::{Disk, DiskBackend};
use crate::engine::qcow2;
use crate::engine::uring::{Inline, InlinePolicy, UringEngine, UringError, UringOp};
use crate::engine::zeroes::{self, ZeroFill};

/// Guest memory as the daemon maps it.
pub type Mem = GuestMemoryMmap<()>;
/// The shared, replaceable guest memory map.
pub type AtomicMem = GuestMemoryAtomic<Mem>;
/// The vring type of our backend.
pub type Vring = crate::checked_vring::CheckedVring<AtomicMem>;

/// Linux's IOV_MAX: more iovecs than this and readv/writev fail.
const IOV_MAX: usize = 1024;

/// Worker failures that are the host's fault, never the guest's.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// io_uring refused a submission.
    #[error("io_uring failure")]
    Uring(#[from] UringError),
}

/// Device-wide settings a worker needs.
#[derive(Clone)]
pub struct WorkerSettings {
    /// Validation limits.
    pub limits: RequestLimits,
    /// GET_ID answer.
    pub serial: [u8; ID_BYTES],
    /// Busy-poll window (zero = off).
    pub poll: Duration,
    /// Guest-visible write cache enabled (CONFIG_WCE); when the guest turns it
    /// off, writes are made durable before they complete.
    pub writeback: Arc<AtomicBool>,
    /// `--null-io`: reads and writes complete at once, no I/O.
    pub null_io: bool,
    /// The connection's in-flight region (INFLIGHT_SHMFD), if the frontend
    /// negotiated one; read at every ring start.
    pub inflight: SharedRegion,
}

/// What a request in flight was, for its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
    Discard,
    /// WRITE_ZEROES: a fallocate, then maybe zeroes written chunk by chunk.
    Zeroes,
    Other,
}

/// A request the kernel owns until its CQE arrives.
struct InFlight {
    head: u16,
    status_addr: GuestAddress,
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
// `InFlight` keeps mapped (`_mem`); they are only dereferenced by the kernel,
// never by Rust code, so moving the entry to another thread is sound.
unsafe impl Send for InFlight {}

/// A queue's worker state (one per queue, behind that queue's own mutex).
pub struct QueueWorker {
    index: usize,
    disk: Arc<Disk>,
    settings: WorkerSettings,
    mem: AtomicMem,
    counters: Arc<Vec<QueueCounters>>,
    engine: Option<UringEngine>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    busy_heads: Vec<bool>,
    inflight: usize,
    vring: Option<Vring>,
    broken: bool,
    event_idx: bool,
    completions: Vec<(u64, i32)>,
    /// Requests completed since the last used-ring notification decision.
    unsignalled: usize,
    /// This queue's part of the in-flight region while the ring runs.
    tracker: Option<InflightQueue>,
    /// fallocate modes the image refused for WRITE_ZEROES (zeroes are
    /// written instead from then on).
    zero_modes_refused: Vec<i32>,
}

impl QueueWorker {
    /// Worker for queue `index`; raw disks get an io_uring of `queue_size`
    /// entries.
    pub fn new(
        index: usize,
        disk: Arc<Disk>,
        settings: WorkerSettings,
        mem: AtomicMem,
        counters: Arc<Vec<QueueCounters>>,
        queue_size: u16,
    ) -> Result<Self, WorkerError> {
        let engine = match disk.raw_fd() {
            Some(fd) => Some(UringEngine::new(
                fd,
                u32::from(queue_size),
                inline_policy(disk.cache),
            )?),
            None => None,
        };
        let size = usize::from(queue_size);
        Ok(QueueWorker {
            index,
            disk,
            settings,
            mem,
            counters,
            engine,
            slots: (0..size).map(|_| None).collect(),
            free: (0..size).rev().collect(),
            busy_heads: vec![false; size],
            inflight: 0,
            vring: None,
            broken: false,
            event_idx: false,
            completions: Vec::new(),
            unsignalled: 0,
            tracker: None,
            zero_modes_refused: Vec::new(),
        })
    }

    /// The completion eventfd to register on this worker's epoll, if any.
    pub fn completion_fd(&self) -> Option<RawFd> {
        self.engine.as_ref().map(UringEngine::eventfd)
    }

    /// Requests currently owned by the kernel.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    fn counters(&self) -> &QueueCounters {
        &self.counters[self.index]
    }

    /// A kick (or a ring being enabled): process everything available, then
    /// busy-poll if configured.
    pub fn on_kick(&mut self, vring: &Vring, event_idx: bool) -> Result<(), WorkerError> {
        self.event_idx = event_idx;
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
            self.start(vring)?;
        }
        self.process_ring(vring)?;
        if !self.settings.poll.is_zero() {
            self.busy_poll(vring)?;
        }
        Ok(())
    }

    /// The completion eventfd fired.
    pub fn on_completion(&mut self, vring: &Vring) -> Result<(), WorkerError> {
        self.complete_ready(vring);
        self.notify(vring);
        Ok(())
    }

    /// Wait for every request in flight and complete it (stop_vring,
    /// disconnect, shutdown, reset). Clears the broken-ring state.
    pub fn drain(&mut self) -> Result<(), WorkerError> {
        self.settle()?;
        self.broken = false;
        self.vring = None;
        self.tracker = None;
        Ok(())
    }

    /// Wait for every request in flight and complete it, each through the
    /// memory table it started with; the ring keeps running (a memory
    /// table change: completions must reach the guest before the table
    /// they were started under goes away).
    pub fn settle(&mut self) -> Result<(), WorkerError> {
        while self.inflight > 0 {
            let Some(vring) = self.vring.clone() else {
                break;
            };
            if let Some(engine) = self.engine.as_mut() {
                engine.wait_one()?;
            }
            self.complete_ready(&vring);
            self.notify(&vring);
        }
        Ok(())
    }

    /// First kick after the ring (re)started: pick up the in-flight region
    /// and resubmit, oldest first, every request a previous daemon took and
    /// never returned; popping resumes after them.
    fn start(&mut self, vring: &Vring) -> Result<(), WorkerError> {
        let region = self
            .settings
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mem = self.mem.memory().into_inner();
        let (used_idx, ring_size, desc_table) = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            (
                queue.used_idx(&*mem, Ordering::Acquire),
                queue.size(),
                GuestAddress(queue.desc_table()),
            )
        };
        let queue_index = u16::try_from(self.index).unwrap_or(u16::MAX);
        self.tracker = match region.map(|r| r.queue_for_ring(queue_index, ring_size)) {
            Some(Ok(tracker)) => tracker,
            Some(Err(e)) => {
                // Neither read nor written: the ring runs untracked.
                log::error!(
                    "event=inflight_refused queue={} reason=\"{e}\" action=run_untracked",
                    self.index
                );
                None
            }
            None => None,
        };
        let Some(tracker) = self.tracker.as_mut() else {
            return Ok(());
        };
        let used_idx = match used_idx {
            Ok(i) => i.0,
            Err(e) => {
                self.mark_broken(vring, &format!("used index: {e}"));
                return Ok(());
            }
        };
        let recovery = tracker.recover(used_idx, ring_size);
        if let Some(next) = recovery.next_avail {
            vring.get_mut().get_queue_mut().set_next_avail(next);
        }
        log::info!(
            "event=inflight_start queue={} fresh={} resubmit={} used_idx={used_idx} next_avail={:?}",
            self.index,
            recovery.fresh,
            recovery.resubmit.len(),
            recovery.next_avail
        );
        for head in recovery.resubmit {
            let descs = chain::collect(&*mem, desc_table, ring_size, head);
            let outcome = request::parse(head, descs, &*mem, &self.settings.limits);
            QueueCounters::bump(&self.counters().resubmitted);
            self.dispatch(vring, &mem, outcome)?;
        }
        if let Some(engine) = self.engine.as_mut() {
            engine.submit()?;
        }
        self.complete_ready(vring);
        // A predecessor may have died after publishing used entries and
        // before signalling them: one interrupt too many is harmless.
        if let Err(e) = vring.signal_used_queue() {
            log::warn!("signal_failed queue={} error=\"{e}\"", self.index);
        }
        self.unsignalled = 0;
        Ok(())
    }

    fn busy_poll(&mut self, vring: &Vring) -> Result<(), WorkerError> {
        let mut deadline = Instant::now() + self.settings.poll;
        while Instant::now() < deadline {
            if !vring.get_ref().is_enabled() {
                // SET_VRING_ENABLE(0): stop polling; what is in flight
                // still completes (completion events).
                break;
            }
            let before = self.counters().requests.load(Ordering::Relaxed);
            let popped = self.process_ring(vring)?;
            self.complete_ready(vring);
            self.notify(vring);
            if popped > 0 || self.counters().requests.load(Ordering::Relaxed) != before {
                deadline = Instant::now() + self.settings.poll;
            } else {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Pop and dispatch every available chain (the event_idx
    /// disable/drain/enable loop), submit, reap, notify. Returns chains popped.
    fn process_ring(&mut self, vring: &Vring) -> Result<usize, WorkerError> {
        // A disabled ring (SET_VRING_ENABLE(0)) is not processed, whoever
        // asks: a kick, a busy poll, a self-kick.
        if self.broken || !vring.get_ref().is_enabled() {
            return Ok(0);
        }
        let mem = self.mem.memory().into_inner();
        let mut popped = 0;
        loop {
            let chains = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                if !queue.ready() {
                    return Ok(popped);
                }
                if self.event_idx {
                    let _ = queue.disable_notification(&*mem);
                }
                match queue.iter(&*mem) {
                    Ok(iter) => iter
                        .map(|chain| (chain.head_index(), chain.collect::<Vec<_>>()))
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        self.mark_broken(vring, &format!("{e}"));
                        return Ok(popped);
                    }
                }
            };
            popped += chains.len();
            for (head, descs) in chains {
                if usize::from(head) >= self.busy_heads.len() || self.busy_heads[usize::from(head)]
                {
                    self.mark_broken(vring, &format!("head {head} reused while in flight"));
                    return Ok(popped);
                }
                if let Some(tracker) = self.tracker.as_mut() {
                    tracker.begin(head);
                }
                let outcome = request::parse(head, descs, &*mem, &self.settings.limits);
                self.dispatch(vring, &mem, outcome)?;
            }
            let more = {
                let mut state = vring.get_mut();
                self.event_idx
                    && state
                        .get_queue_mut()
                        .enable_notification(&*mem)
                        .unwrap_or(false)
            };
            if !more {
                break;
            }
        }
        if let Some(engine) = self.engine.as_mut() {
            engine.submit()?;
        }
        self.complete_ready(vring);
        self.notify(vring);
        Ok(popped)
    }

    /// The ring cannot be trusted: stop processing it until the driver
    /// resets the device, and tell the frontend (its vring error eventfd),
    /// which sets NEEDS_RESET for the driver.
    fn mark_broken(&mut self, vring: &Vring, why: &str) {
        if !self.broken {
            let told = vring.signal_error();
            log::error!(
                "ring_corrupt queue={} reason=\"{why}\" action=stop_until_reset frontend_told={told}",
                self.index
            );
            QueueCounters::bump(&self.counters().ring_errors);
        }
        self.broken = true;
    }

    fn dispatch(
        &mut self,
        vring: &Vring,
        mem: &Arc<Mem>,
        outcome: ParseOutcome,
    ) -> Result<(), WorkerError> {
        let req = match outcome {
            ParseOutcome::Valid(req) => req,
            ParseOutcome::Rejected {
                head,
                status_addr,
                error,
            } => {
                log::debug!(
                    "request_rejected queue={} head={head} error=\"{error}\"",
                    self.index
                );
                let status = error.status().unwrap_or(BlockStatus::IoErr);
                self.finish(vring, mem, head, status_addr, status, 0);
                return Ok(());
            }
            ParseOutcome::Dropped { head, error } => {
                log::debug!(
                    "request_dropped queue={} head={head} error=\"{error}\"",
                    self.index
                );
                QueueCounters::bump(&self.counters().dropped);
                QueueCounters::bump(&self.counters().requests);
                self.add_used(vring, mem, head, 0);
                return Ok(());
            }
        };
        match (&req.kind, &self.disk.backend) {
            (RequestKind::GetId { data, .. }, _) => {
                let n = write_id(mem, data, &self.settings.serial);
                self.finish(vring, mem, req.head, req.status_addr, BlockStatus::Ok, n);
            }
            (RequestKind::Flush, _) if !self.disk.cache.flush_syncs() => {
                self.finish(vring, mem, req.head, req.status_addr, BlockStatus::Ok, 0);
            }
            (RequestKind::Read { len, .. }, _) if self.settings.null_io => {
                let len = *len;
                self.account(&req.kind, BlockStatus::Ok);
                self.finish(vring, mem, req.head, req.status_addr, BlockStatus::Ok, len);
            }
            (RequestKind::Write { .. } | RequestKind::Flush, _) if self.settings.null_io => {
                self.account(&req.kind, BlockStatus::Ok);
                self.finish(vring, mem, req.head, req.status_addr, BlockStatus::Ok, 0);
            }
            (_, DiskBackend::Qcow2(access)) => {
                let write_through = self.disk.cache.dsync() || !self.wce();
                let (status, n) = match qcow2::execute(
                    access,
                    mem,
                    &req.kind,
                    self.disk.cache.flush_syncs(),
                    write_through,
                ) {
                    Ok(n) => (BlockStatus::Ok, n),
                    Err(e) => {
                        log::warn!("qcow2_error queue={} error=\"{e}\"", self.index);
                        (BlockStatus::IoErr, 0)
                    }
                };
                self.account(&req.kind, status);
                let used = if matches!(req.kind, RequestKind::Read { .. }) {
                    n
                } else {
                    0
                };
                self.finish(vring, mem, req.head, req.status_addr, status, used);
            }
            (_, DiskBackend::Raw { .. }) => self.submit_raw(vring, mem, req)?,
        }
        Ok(())
    }

    fn wce(&self) -> bool {
        self.settings.writeback.load(Ordering::Relaxed)
    }

    fn submit_raw(
        &mut self,
        vring: &Vring,
        mem: &Arc<Mem>,
        req: Request,
    ) -> Result<(), WorkerError> {
        let dsync = !self.wce() && !self.disk.cache.dsync();
        let mut zero_fill = None;
        let (class, expected, iov, offset, fallocate) = match &req.kind {
            RequestKind::Read { sector, data, len } => (
                Class::Read,
                *len,
                iovecs(mem, data),
                Request::sector_to_offset(*sector),
                None,
            ),
            RequestKind::Write { sector, data, len } => (
                Class::Write,
                *len,
                iovecs(mem, data),
                Request::sector_to_offset(*sector),
                None,
            ),
            RequestKind::Discard {
                sector,
                num_sectors,
            } => (
                Class::Discard,
                0,
                Some(Vec::new()),
                Request::sector_to_offset(*sector),
                // Block devices: the discard command (see below).
                (!self.disk.is_block_device()).then(|| {
                    (
                        Request::sector_to_offset(u64::from(*num_sectors)),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    )
                }),
            ),
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
                let first = if self.zero_modes_refused.contains(&mode) {
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
                        off,
                        None,
                    ),
                    None => (
                        Class::Zeroes,
                        0,
                        Some(Vec::new()),
                        offset,
                        Some((len, mode)),
                    ),
                }
            }
            RequestKind::Flush => (Class::Other, 0, Some(Vec::new()), 0, None),
            RequestKind::GetId { .. } => (Class::Other, 0, Some(Vec::new()), 0, None),
        };
        let Some(iov) = iov else {
            // Too many pieces for one readv/writev, or memory vanished.
            self.account(&req.kind, BlockStatus::IoErr);
            self.finish(vring, mem, req.head, req.status_addr, BlockStatus::IoErr, 0);
            return Ok(());
        };
        let op = match (&req.kind, fallocate) {
            (RequestKind::Read { .. }, _) => UringOp::Readv { iov: &iov, offset },
            (RequestKind::Write { .. }, _) => UringOp::Writev {
                iov: &iov,
                offset,
                dsync,
            },
            (_, Some((len, mode))) => UringOp::Fallocate { offset, len, mode },
            (RequestKind::Discard { num_sectors, .. }, None) => UringOp::BlockDiscard {
                offset,
                len: Request::sector_to_offset(u64::from(*num_sectors)),
            },
            (RequestKind::WriteZeroes { .. }, None) => UringOp::Writev {
                iov: &iov,
                offset,
                dsync,
            },
            _ => UringOp::Fdatasync,
        };
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        if expected == 0 && matches!(class, Class::Read | Class::Write) {
            self.finish(vring, mem, req.head, req.status_addr, BlockStatus::Ok, 0);
            return Ok(());
        }
        let inline = if matches!(class, Class::Read | Class::Write) {
            engine.try_inline(&op, expected)
        } else {
            None
        };
        if let Some(result) = inline {
            let status = result_status(class, expected, result);
            self.account(&req.kind, status);
            let used = if class == Class::Read && status == BlockStatus::Ok {
                expected
            } else {
                0
            };
            self.finish(vring, mem, req.head, req.status_addr, status, used);
            return Ok(());
        }
        let Some(slot) = self.free.pop() else {
            // Cannot happen: heads are unique and slots == queue size.
            self.mark_broken(vring, "more requests than queue entries");
            return Ok(());
        };
        // SAFETY: the iovec array and the guest memory it points into are
        // moved into `slots[slot]` right below (a Vec's heap buffer does not
        // move) together with an Arc of the memory map, and stay there until
        // the completion tagged `slot` is reaped in `complete_ready`.
        let pushed = unsafe { engine.push(&op, slot as u64) };
        if let Err(e) = pushed {
            self.free.push(slot);
            return Err(e.into());
        }
        self.busy_heads[usize::from(req.head)] = true;
        self.slots[slot] = Some(InFlight {
            head: req.head,
            status_addr: req.status_addr,
            class,
            expected,
            _mem: Arc::clone(mem),
            _iov: iov,
            zero_fill,
        });
        self.inflight += 1;
        self.counters().note_inflight(self.inflight);
        Ok(())
    }

    /// Complete every request whose CQE has been posted.
    fn complete_ready(&mut self, vring: &Vring) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        if self.inflight == 0 {
            return;
        }
        let mut done = std::mem::take(&mut self.completions);
        engine.reap(&mut done);
        let mut resubmitted = false;
        for (user_data, result) in done.drain(..) {
            let Some(entry) = usize::try_from(user_data)
                .ok()
                .and_then(|s| self.slots.get_mut(s))
                .and_then(Option::take)
            else {
                continue;
            };
            let (entry, result) = match self.continue_zeroes(user_data as usize, entry, result) {
                Ok(()) => {
                    resubmitted = true;
                    continue;
                }
                Err(done) => done,
            };
            self.free.push(user_data as usize);
            self.inflight -= 1;
            self.busy_heads[usize::from(entry.head)] = false;
            let status = result_status(entry.class, entry.expected, i64::from(result));
            if status != BlockStatus::Ok {
                log::debug!(
                    "io_error queue={} head={} result={result}",
                    self.index,
                    entry.head
                );
            }
            match (entry.class, status) {
                (Class::Read, BlockStatus::Ok) => {
                    QueueCounters::add(&self.counters().bytes_read, entry.expected)
                }
                (Class::Write, BlockStatus::Ok) => {
                    QueueCounters::add(&self.counters().bytes_written, entry.expected)
                }
                _ => {}
            }
            let used = if entry.class == Class::Read && status == BlockStatus::Ok {
                entry.expected
            } else {
                0
            };
            let mem = Arc::clone(&entry._mem);
            self.finish(vring, &mem, entry.head, entry.status_addr, status, used);
        }
        self.completions = done;
        if resubmitted {
            if let Some(Err(e)) = self.engine.as_mut().map(UringEngine::submit) {
                log::error!("zeroes_submit_failed queue={} error=\"{e}\"", self.index);
            }
        }
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
                    self.index,
                    fill.mode
                );
                self.zero_modes_refused.push(fill.mode);
            }
            fill.writing = true;
        } else {
            let wanted = fill.chunk().map_or(0, |(_, n)| n);
            if result < 0 || result as u64 != wanted {
                return Err((entry, result.min(-libc::EIO)));
            }
            fill.advance(wanted);
        }
        let Some((offset, len)) = fill.chunk() else {
            return Err((entry, 0));
        };
        let dsync = fill.dsync;
        let (Ok(iov), Some(engine)) = (zeroes::iovec(len), self.engine.as_mut()) else {
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
        if unsafe { engine.push(&op, slot as u64) }.is_err() {
            return Err((entry, -libc::EIO));
        }
        entry._iov = iov;
        self.slots[slot] = Some(entry);
        Ok(())
    }

    fn account(&self, kind: &RequestKind, status: BlockStatus) {
        if status != BlockStatus::Ok {
            return;
        }
        match kind {
            RequestKind::Read { len, .. } => QueueCounters::add(&self.counters().bytes_read, *len),
            RequestKind::Write { len, .. } => {
                QueueCounters::add(&self.counters().bytes_written, *len)
            }
            _ => {}
        }
    }

    /// Write the status byte and return the chain with `data_len` + 1 bytes used.
    fn finish(
        &mut self,
        vring: &Vring,
        mem: &Mem,
        head: u16,
        status_addr: GuestAddress,
        status: BlockStatus,
        data_len: u64,
    ) {
        QueueCounters::bump(&self.counters().requests);
        if status != BlockStatus::Ok {
            QueueCounters::bump(&self.counters().errors);
        }
        if let Err(e) = mem.write_obj(status.as_byte(), status_addr) {
            log::warn!(
                "status_write_failed queue={} head={head} error=\"{e}\"",
                self.index
            );
        }
        // Validation caps data at 1 GiB, so the length fits a u32.
        let used = u32::try_from(data_len.saturating_add(1)).unwrap_or(u32::MAX);
        self.add_used(vring, mem, head, used);
    }

    fn add_used(&mut self, vring: &Vring, mem: &Mem, head: u16, len: u32) {
        if let Some(tracker) = &self.tracker {
            tracker.pre_put(head);
        }
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        if let Err(e) = queue.add_used(mem, head, len) {
            drop(state);
            self.mark_broken(vring, &format!("add_used: {e}"));
            return;
        }
        if let Some(tracker) = &self.tracker {
            tracker.post_put(head, queue.next_used());
        }
        self.unsignalled += 1;
    }

    /// Signal the call eventfd if the driver wants to hear about what we used.
    fn notify(&mut self, vring: &Vring) {
        if self.unsignalled == 0 {
            return;
        }
        self.unsignalled = 0;
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let needed = state
            .get_queue_mut()
            .needs_notification(&*mem)
            .unwrap_or(true);
        if needed {
            if let Err(e) = state.signal_used_queue() {
                log::warn!("signal_failed queue={} error=\"{e}\"", self.index);
            }
        }
    }
}

impl Drop for QueueWorker {
    /// The kernel may still be reading into (or writing from) guest memory
    /// that only the in-flight slots keep mapped: wait for every
    /// completion before the slots and the ring go. Nobody reports these
    /// completions any more (the connection is gone); they only have to
    /// end. Should waiting fail, the slots' mappings are leaked instead
    /// of unmapped under the kernel.
    fn drop(&mut self) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        if self.inflight > 0 {
            log::warn!(
                "event=worker_dropped_with_inflight queue={} inflight={}",
                self.index,
                self.inflight
            );
        }
        let mut done = Vec::new();
        while self.inflight > 0 {
            if let Err(e) = engine.wait_one() {
                log::error!(
                    "event=inflight_wait_failed queue={} inflight={} action=leak_mappings error=\"{e}\"",
                    self.index,
                    self.inflight
                );
                for slot in self.slots.drain(..) {
                    std::mem::forget(slot);
                }
                return;
            }
            engine.reap(&mut done);
            for (user_data, _) in done.drain(..) {
                let slot = usize::try_from(user_data)
                    .ok()
                    .and_then(|s| self.slots.get_mut(s))
                    .and_then(Option::take);
                if slot.is_some() {
                    self.inflight -= 1;
                }
            }
        }
    }
}

/// Which reads and writes are tried inline before the ring, per cache mode.
fn inline_policy(cache: CacheMode) -> InlinePolicy {
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

/// Status of a read/write/fallocate/fsync result (`-errno` or bytes).
fn result_status(class: Class, expected: u64, result: i64) -> BlockStatus {
    match class {
        Class::Read | Class::Write if result >= 0 && result as u64 != expected => {
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
fn iovecs(mem: &Mem, segs: &[Segment]) -> Option<Vec<libc::iovec>> {
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

/// Copy the serial into the GET_ID buffers; returns bytes written.
fn write_id(mem: &Mem, data: &[Segment], serial: &[u8; ID_BYTES]) -> u64 {
    let mut written = 0usize;
    for seg in data {
        if written == ID_BYTES {
            break;
        }
        let n = (ID_BYTES - written).min(seg.len as usize);
        if mem
            .write_slice(&serial[written..written + n], seg.addr)
            .is_err()
        {
            break;
        }
        written += n;
    }
    written as u64
}
