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
use std::sync::atomic::Ordering;
use std::time::Instant;

use vhost_user_backend::VringT;
use vhost_user_daemon::inflight::InflightQueue;
use virtio_devices::block::{ParseOutcome, request};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use crate::counters::QueueCounters;
use crate::disk::Disk;
use crate::engine::{BlockEngine, Engine, EngineError, EngineParams, Reaped, Submitted};

mod dirty;
mod pending;
mod resume;
mod settings;
mod triage;
mod used;
use pending::{Pending, PendingTable, Transfer, take_written};
use resume::{Resume, resume};
pub use settings::WorkerSettings;
use triage::{Triage, triage};
use used::Finished;

/// Guest memory as the daemon maps it.
pub type Mem = crate::engine::Mem;
/// The shared, replaceable guest memory map.
pub type AtomicMem = GuestMemoryAtomic<Mem>;
/// The vring type of our backend.
pub type Vring = crate::checked_vring::CheckedVring<AtomicMem>;

/// Worker failures that are the host's fault, never the guest's.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The engine cannot go on.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A queue's worker state (one per queue, behind that queue's own mutex).
#[derive(Debug)]
pub struct QueueWorker {
    index: usize,
    settings: WorkerSettings,
    mem: AtomicMem,
    counters: Arc<Vec<QueueCounters>>,
    engine: Engine,
    /// Requests the engine holds, by head.
    pending: PendingTable,
    vring: Option<Vring>,
    broken: bool,
    event_idx: bool,
    reaped: Vec<Reaped>,
    /// Requests completed since the last used-ring notification decision.
    unsignalled: usize,
    /// This queue's part of the in-flight region while the ring runs.
    tracker: Option<InflightQueue>,
}

impl QueueWorker {
    /// Worker for queue `index`, with the engine `disk` needs (raw disks
    /// get an io_uring of `queue_size` entries).
    pub fn new(
        index: usize,
        disk: Arc<Disk>,
        settings: WorkerSettings,
        mem: AtomicMem,
        counters: Arc<Vec<QueueCounters>>,
        queue_size: u16,
    ) -> Result<Self, WorkerError> {
        let params = EngineParams {
            queue: index,
            queue_size,
            writeback: Arc::clone(&settings.writeback),
            null_io: settings.null_io,
        };
        let engine = Engine::new(&disk, params)?;
        Ok(QueueWorker {
            index,
            settings,
            mem,
            counters,
            engine,
            pending: PendingTable::new(queue_size),
            vring: None,
            broken: false,
            event_idx: false,
            reaped: Vec::new(),
            unsignalled: 0,
            tracker: None,
        })
    }

    /// The completion eventfd to register on this worker's epoll, if any.
    pub fn completion_fd(&self) -> Option<RawFd> {
        self.engine.completion_fd()
    }

    /// Requests the engine holds (queued, not yet reaped).
    pub fn inflight(&self) -> usize {
        self.pending.len()
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
        while self.pending.len() > 0 {
            let Some(vring) = self.vring.clone() else {
                break;
            };
            self.engine.wait()?;
            self.complete_ready(&vring);
            self.notify(&vring);
        }
        Ok(())
    }

    /// First kick after the ring (re)started: pick up the in-flight region
    /// and resubmit, oldest first, every request a previous daemon took and
    /// never returned; popping resumes after them.
    fn start(&mut self, vring: &Vring) -> Result<(), WorkerError> {
        let mem = self.mem.memory().into_inner();
        let resubmit = match resume(&self.settings.inflight, self.index, vring, &mem) {
            Resume::Untracked => {
                self.tracker = None;
                return Ok(());
            }
            Resume::Corrupt { tracker, why } => {
                self.tracker = Some(tracker);
                self.mark_broken(vring, &why);
                return Ok(());
            }
            Resume::Tracked { tracker, resubmit } => {
                self.tracker = Some(tracker);
                resubmit
            }
        };
        for &head in &resubmit.heads {
            let outcome = resubmit.parse(head, &mem, &self.settings.limits);
            QueueCounters::bump(&self.counters().resubmitted);
            self.dispatch(vring, &mem, outcome)?;
        }
        self.engine.commit()?;
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
                if !self.pending.is_free(head) {
                    self.mark_broken(vring, &format!("head {head} reused while in flight"));
                    return Ok(popped);
                }
                if let Some(tracker) = self.tracker.as_mut() {
                    tracker.begin(head);
                }
                let outcome = request::parse(head, descs, &*mem, &self.settings.limits);
                self.dispatch(vring, &mem, outcome)?;
            }
            let more = self.event_idx && {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                let more = queue.enable_notification(&*mem).unwrap_or(false);
                // It wrote avail_event into the used ring.
                if let Some(log) = self.settings.log.active() {
                    dirty::mark_used_ring(&log, queue);
                }
                more
            };
            if !more {
                break;
            }
        }
        self.engine.commit()?;
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
        let mut req = match triage(outcome, mem, &self.settings.serial, self.index) {
            Triage::Submit(req) => req,
            Triage::Finish {
                head,
                status_addr,
                status,
                len,
                written,
            } => {
                let f = Finished {
                    head,
                    status_addr,
                    status,
                    len,
                    written: &written,
                };
                self.finish(vring, mem, f);
                return Ok(());
            }
            Triage::Drop { head } => {
                QueueCounters::bump(&self.counters().dropped);
                QueueCounters::bump(&self.counters().requests);
                let log = self.settings.log.active();
                self.add_used(vring, mem, head, 0, log.as_deref());
                return Ok(());
            }
        };
        let transfer = Transfer::of(&req.kind);
        match self.engine.submit(mem, &req.kind, u64::from(req.head))? {
            Submitted::Done(done) => {
                self.account(transfer, done.status);
                let f = Finished {
                    head: req.head,
                    status_addr: req.status_addr,
                    status: done.status,
                    len: done.len,
                    written: &take_written(&mut req.kind),
                };
                self.finish(vring, mem, f);
            }
            Submitted::Queued => {
                let pending = Pending {
                    head: req.head,
                    status_addr: req.status_addr,
                    mem: Arc::clone(mem),
                    transfer,
                    written: take_written(&mut req.kind),
                };
                if !self.pending.insert(pending) {
                    // Heads are checked against the queue size when popped.
                    self.mark_broken(vring, "head beyond the queue size");
                    return Ok(());
                }
                self.counters().note_inflight(self.pending.len());
            }
        }
        Ok(())
    }
}
