//! vhost-user-backend glue: features, config space, one worker thread per
//! queue (`queues_per_thread`), kicks and io_uring completions routed to that
//! queue's worker, and stop_vring/reset waiting for requests in flight.
//!
//! A fresh backend (and fresh exit eventfds) is built for every connection.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_F_CONFIG_WCE;
use virtio_devices::block::BlockDeviceInfo;
use virtio_devices::block::config::WRITEBACK_OFFSET;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::counters::QueueCounters;
use crate::disk::Disk;
use crate::worker::{AtomicMem, QueueWorker, Vring, WorkerError, WorkerSettings};
use vhost_user_daemon::exit_fds::LeakedExitFds;

/// Backend construction failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A queue worker (its io_uring) could not be created.
    #[error("cannot create queue {0} worker")]
    Worker(usize, #[source] WorkerError),
    /// An exit eventfd could not be created.
    #[error("cannot create exit eventfd")]
    ExitEvent(#[source] io::Error),
}

/// The vhost-user-blk device for one connection.
#[derive(Debug)]
pub struct VhostUserBlkBackend {
    info: BlockDeviceInfo,
    /// Flushed when a queue stops (the switch-over of a migration).
    disk: Arc<Disk>,
    workers: Vec<Mutex<QueueWorker>>,
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    writeback: Arc<AtomicBool>,
    exit_events: Mutex<Vec<Option<(EventConsumer, EventNotifier)>>>,
    exit_fds: LeakedExitFds,
    /// Guest memory the SIGBUS handler may patch (this connection's).
    guest_ranges: crate::memguard::GuestRanges,
}

impl VhostUserBlkBackend {
    /// Backend for `disk` with fresh per-queue workers and exit eventfds.
    pub fn new(
        info: BlockDeviceInfo,
        disk: Arc<Disk>,
        settings: WorkerSettings,
        mem: AtomicMem,
        counters: Arc<Vec<QueueCounters>>,
    ) -> Result<Self, BackendError> {
        let mut workers = Vec::with_capacity(usize::from(info.num_queues));
        let mut exit_events = Vec::with_capacity(usize::from(info.num_queues));
        for q in 0..usize::from(info.num_queues) {
            let worker = QueueWorker::new(
                q,
                Arc::clone(&disk),
                settings.clone(),
                mem.clone(),
                Arc::clone(&counters),
                info.queue_size,
            )
            .map_err(|e| BackendError::Worker(q, e))?;
            workers.push(Mutex::new(worker));
            let pair = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(BackendError::ExitEvent)?;
            exit_events.push(Some(pair));
        }
        Ok(VhostUserBlkBackend {
            info,
            disk,
            workers,
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            writeback: settings.writeback,
            exit_events: Mutex::new(exit_events),
            exit_fds: LeakedExitFds::default(),
            guest_ranges: crate::memguard::GuestRanges::default(),
        })
    }

    /// epoll token of the io_uring completion eventfd (above the vring and
    /// exit tokens the framework reserves).
    pub fn completion_token(&self) -> u64 {
        u64::from(self.info.num_queues) + 1
    }

    /// Completion eventfd of queue `q`'s io_uring (raw images only).
    pub fn completion_fd(&self, q: usize) -> Option<RawFd> {
        self.workers.get(q).and_then(|w| lock(w).completion_fd())
    }

    /// Close the exit-event fds vhost-user-backend leaks (see
    /// [`vhost_user_daemon::exit_fds`]); call with the backend exclusively owned.
    pub fn close_leaked_exit_fds(&mut self) {
        self.exit_fds.close_all();
    }

    /// Wait for every request in flight on every queue (disconnect, shutdown).
    pub fn quiesce(&self) {
        for (q, w) in self.workers.iter().enumerate() {
            if let Err(e) = lock(w).drain() {
                log::error!("drain_failed queue={q} error=\"{e}\"");
            }
        }
    }
}

/// Lock a worker, recovering from a poisoned lock: a worker's state stays
/// consistent between calls, and refusing service forever would be worse.
fn lock(w: &Mutex<QueueWorker>) -> MutexGuard<'_, QueueWorker> {
    w.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VhostUserBackend for VhostUserBlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.info.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.info.queue_size)
    }

    fn features(&self) -> u64 {
        self.info.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
        log::info!("features_acked features={features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        self.quiesce();
        self.writeback.store(self.info.writeback, Ordering::Relaxed);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = self.info.config_space();
        config.writeback = u8::from(self.writeback.load(Ordering::Relaxed));
        config.read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let wce_acked =
            self.acked_features.load(Ordering::Relaxed) & (1 << VIRTIO_BLK_F_CONFIG_WCE) != 0;
        if offset as usize == WRITEBACK_OFFSET && buf.len() == 1 && wce_acked {
            let on = buf[0] != 0;
            self.writeback.store(on, Ordering::Relaxed);
            log::info!("writeback_toggled enabled={on}");
        } else {
            // Read-only field: ignored, as a real device would.
            log::warn!("config_write_ignored offset={offset} len={}", buf.len());
        }
        Ok(())
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        // Workers share the daemon's GuestMemoryAtomic and snapshot it per
        // batch; requests in flight keep their own snapshot alive. Those
        // are finished here, through the table they started with, before
        // the frontend gets its reply: a completion written through the
        // old table after that is lost if the ring or a buffer moved (the
        // frontend may reuse the old memory once we answered), as
        // GET_VRING_BASE waits for them too. The old table stays memory
        // the SIGBUS handler may patch until then.
        for (q, w) in self.workers.iter().enumerate() {
            if let Err(e) = lock(w).settle() {
                log::error!("settle_failed queue={q} error=\"{e}\"");
            }
        }
        // A table running past the end of its files is refused (closes the
        // connection before any worker touches it); the rest becomes
        // memory the SIGBUS handler may patch.
        let snapshot = vm_memory::GuestAddressSpace::memory(&mem).into_inner();
        crate::memguard::check_backing(&snapshot)?;
        self.guest_ranges.track(&snapshot).map_err(io::Error::other)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.info.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let mut events = self
            .exit_events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pair = events.get_mut(thread_index).and_then(Option::take);
        if let Some((consumer, _)) = &pair {
            self.exit_fds.note(consumer.as_raw_fd());
        }
        pair
    }

    /// GET_VRING_BASE (vhost-user-backend has already stopped the ring:
    /// no more pops). Before the frontend gets its reply, every request of
    /// the queue completes — data written and marked, used entries
    /// published, the guest signalled — and the image is flushed: at a
    /// migration's switch-over the destination finds nothing left to do,
    /// and this daemon writes nothing to the image after the reply.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let Some(worker) = self.workers.get(queue_index as usize) else {
            return Ok(());
        };
        let mut worker = lock(worker);
        let inflight = worker.inflight();
        worker.drain().map_err(io::Error::other)?;
        drop(worker);
        self.disk.hand_over().map_err(io::Error::other)?;
        log::info!(
            "event=vring_stopped queue={queue_index} completed_inflight={inflight} image=flushed"
        );
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // One queue per thread: the thread index is the queue index and the
        // thread's only vring is vrings[0].
        let (Some(worker), Some(vring)) = (self.workers.get(thread_id), vrings.first()) else {
            return Ok(());
        };
        let mut worker = lock(worker);
        let result = if u64::from(device_event) == self.completion_token() {
            worker.on_completion(vring)
        } else {
            worker.on_kick(vring, self.event_idx.load(Ordering::Relaxed))
        };
        // An Err here would end the worker thread for good; report and keep
        // serving instead.
        if let Err(e) = result {
            log::error!("queue_error queue={thread_id} error=\"{e}\"");
        }
        Ok(())
    }
}
