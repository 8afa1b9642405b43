//! The block device on the daemon skeleton's serve loop
//! ([`vhost_user_daemon::serve`]): per connection a fresh backend whose
//! queue workers share the disk, the INFLIGHT_SHMFD relay filter
//! ([`crate::inflight_relay`]), the io_uring completion fds registered on
//! the workers' epolls, and a drain of what the stopped workers left in
//! flight. A graceful shutdown then flushes the disk per cache mode.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use vhost_user_backend::VringEpollHandler;
use vhost_user_daemon::dirty_log::DirtyLog;
use vhost_user_daemon::inflight::SharedRegion;
use vhost_user_daemon::listen::Bound;
use vhost_user_daemon::private_socket::PrivateSocket;
use vhost_user_daemon::serve::{self, DeviceError, GuestMemoryShared, ServeError};
use vhost_user_daemon::shutdown::Shutdown;
use virtio_devices::block::BlockDeviceInfo;
use vmm_sys_util::epoll::EventSet;

use crate::backend::VhostUserBlkBackend;
use crate::config::Config;
use crate::counters::{self, QueueCounters};
use crate::disk::{Disk, DiskError};
use crate::image_lock::LockFollower;
use crate::inflight_relay::BlkFilter;
use crate::worker::WorkerSettings;

/// The daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Final flush.
    #[error("final flush failed")]
    Flush(#[from] DiskError),
}

/// The daemon's long-lived state.
#[derive(Debug)]
pub struct Server {
    device: BlkDevice,
    listener: Bound,
    private: PrivateSocket,
    shutdown: Arc<Shutdown>,
}

/// What outlives connections: the disk, its geometry, the counters.
#[derive(Debug)]
struct BlkDevice {
    config: Config,
    disk: Arc<Disk>,
    info: BlockDeviceInfo,
    counters: Arc<Vec<QueueCounters>>,
}

impl serve::Device for BlkDevice {
    type Backend = VhostUserBlkBackend;
    type Filter = BlkFilter;
    const NAME: &'static str = "vhost-user-blk";
    /// Every write to guest memory is marked (`worker/dirty.rs`), and
    /// GET_VRING_BASE completes the queue before it answers.
    const LOGS_DIRTY_PAGES: bool = true;

    fn connect(
        &self,
        mem: GuestMemoryShared,
        log: DirtyLog,
    ) -> Result<(Arc<VhostUserBlkBackend>, BlkFilter), DeviceError> {
        let region = SharedRegion::default();
        let settings = WorkerSettings {
            inflight: Arc::clone(&region),
            limits: self.info.limits(),
            serial: self.config.serial,
            poll: self.config.poll,
            writeback: Arc::new(AtomicBool::new(self.info.writeback)),
            null_io: self.config.null_io,
            log,
        };
        let backend = Arc::new(VhostUserBlkBackend::new(
            self.info.clone(),
            Arc::clone(&self.disk),
            settings,
            mem,
            Arc::clone(&self.counters),
        )?);
        let filter = BlkFilter::new(
            region,
            self.info.num_queues,
            self.info.queue_size,
            LockFollower::new(Arc::clone(&self.disk.lock)),
        );
        Ok((backend, filter))
    }

    fn never_mark_dirty(&self) -> bool {
        self.config.never_mark_dirty
    }

    fn attach(
        &self,
        backend: &Arc<VhostUserBlkBackend>,
        handlers: &[Arc<VringEpollHandler<Arc<VhostUserBlkBackend>>>],
    ) -> Result<(), DeviceError> {
        for (q, handler) in handlers.iter().enumerate() {
            if let Some(fd) = backend.completion_fd(q) {
                handler
                    .register_listener(fd, EventSet::IN, backend.completion_token())
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("registering the completion eventfd: {e}"))
                    })?;
            }
        }
        Ok(())
    }

    fn drain(&self, backend: &VhostUserBlkBackend) {
        backend.quiesce();
    }

    fn close_leaked_exit_fds(backend: &mut VhostUserBlkBackend) {
        backend.close_leaked_exit_fds();
    }

    fn report(&self) {
        counters::log_all(&self.counters);
    }
}

impl Server {
    /// Everything is opened and bound; nothing is served yet.
    pub fn new(
        config: Config,
        disk: Disk,
        listener: Bound,
        private: PrivateSocket,
        counters: Arc<Vec<QueueCounters>>,
        shutdown: Arc<Shutdown>,
    ) -> Self {
        let info = BlockDeviceInfo {
            capacity_sectors: disk.capacity_sectors(),
            logical_block_size: config.logical_block_size,
            num_queues: config.num_queues,
            queue_size: config.queue_size,
            read_only: config.read_only || disk.read_only,
            writeback: config.cache.volatile_cache(),
        };
        Server {
            device: BlkDevice {
                config,
                disk: Arc::new(disk),
                info,
                counters,
            },
            listener,
            private,
            shutdown,
        }
    }

    /// Serve connections until shutdown; then flush and log the counters.
    pub fn run(&mut self) -> Result<(), RunError> {
        let d = &self.device;
        log::info!(
            "event=serving image={} size={} queues={} queue_size={} cache={:?} read_only={}",
            d.disk.path.display(),
            d.disk.size,
            d.info.num_queues,
            d.info.queue_size,
            d.config.cache,
            d.info.read_only
        );
        let result = serve::serve(d, &self.listener, &self.private, &self.shutdown);
        let flushed = d.disk.flush();
        counters::log_all(&d.counters);
        result?;
        flushed?;
        log::info!("event=exit status=ok");
        Ok(())
    }
}
