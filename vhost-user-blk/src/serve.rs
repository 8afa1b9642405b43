//! The listener loop: bind (or adopt) the socket once, then for every
//! accepted connection build a fresh backend, daemon and exit eventfds, serve
//! until the frontend goes away, drain, and listen again. A graceful
//! shutdown drains in-flight requests and flushes the disk per cache mode.
//!
//! The frontend talks to the [`crate::inflight_relay`] (INFLIGHT_SHMFD),
//! which talks to vhost-user-backend over a private socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};
use virtio_devices::backend::inflight::SharedRegion;
use virtio_devices::block::BlockDeviceInfo;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::backend::{BackendError, VhostUserBlkBackend};
use crate::config::{Config, Listen};
use crate::counters::{self, QueueCounters};
use crate::disk::{Disk, DiskError};
use crate::inflight_relay::BlkFilter;
use crate::private_socket::{PrivateSocket, RelaySocketError};
use crate::worker::WorkerSettings;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something is listening on the socket path already.
    #[error("socket path {0} is in use")]
    InUse(String),
    /// The socket path exists and is not a socket.
    #[error("socket path {0} exists and is not a socket")]
    NotASocket(String),
    /// bind/listen failed.
    #[error("cannot listen on {0}")]
    Bind(String, #[source] VhostUserError),
    /// --fd is not a listening unix socket.
    #[error("--fd {0} is not a listening socket")]
    BadFd(RawFd),
    /// Shutdown eventfd.
    #[error("cannot create the shutdown eventfd")]
    EventFd(#[source] io::Error),
    /// Per-connection backend.
    #[error("cannot create the backend")]
    Backend(#[from] BackendError),
    /// The vhost-user daemon framework.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// Registering the io_uring completion eventfd.
    #[error("cannot register the completion eventfd")]
    Register(#[source] io::Error),
    /// poll(2) on the listener.
    #[error("waiting for a connection failed")]
    Poll(#[source] io::Error),
    /// Final flush.
    #[error("final flush failed")]
    Flush(#[from] DiskError),
    /// The relay's private socket.
    #[error("relay socket")]
    RelaySocket(#[from] RelaySocketError),
    /// Starting the relay threads.
    #[error("cannot start the relay")]
    Relay(#[source] io::Error),
}

/// Graceful-shutdown request shared with the signal thread.
pub struct Shutdown {
    requested: AtomicBool,
    wake: EventFd,
    current: Mutex<Option<ShutdownHandle>>,
}

impl Shutdown {
    /// New, not requested.
    pub fn new() -> Result<Self, ServeError> {
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK).map_err(ServeError::EventFd)?,
            current: Mutex::new(None),
        })
    }

    /// Ask the server to stop: wakes the listener wait and closes the
    /// current connection (its requests are then drained).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(handle) = self.lock().as_ref() {
            handle.shutdown();
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ShutdownHandle>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The daemon's long-lived state.
pub struct Server {
    config: Config,
    disk: Arc<Disk>,
    info: BlockDeviceInfo,
    listener: Listener,
    private: PrivateSocket,
    counters: Arc<Vec<QueueCounters>>,
    shutdown: Arc<Shutdown>,
}

/// Bind `listen`: refuses a path a live daemon is listening on, replaces a
/// stale socket file, adopts an already-listening fd.
pub fn bind(listen: &Listen) -> Result<Listener, ServeError> {
    match listen {
        Listen::Path(path) => {
            let shown = path.display().to_string();
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(ServeError::NotASocket(shown));
                }
                if UnixStream::connect(path).is_ok() {
                    return Err(ServeError::InUse(shown));
                }
                // Stale socket of a dead daemon.
                let _ = std::fs::remove_file(path);
            }
            Listener::new(path, false).map_err(|e| ServeError::Bind(shown, e))
        }
        Listen::Fd(fd) => {
            if !is_listening_socket(*fd) {
                return Err(ServeError::BadFd(*fd));
            }
            // SAFETY: the caller handed this fd over for our exclusive use
            // (backend program conventions) and we checked it is a listening
            // socket; the Listener becomes its only owner.
            Ok(unsafe { Listener::from_raw_fd(*fd) })
        }
    }
}

fn is_listening_socket(fd: RawFd) -> bool {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `val`; an invalid
    // fd just returns an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && val != 0
}

impl Server {
    /// Everything is opened and bound; nothing is served yet.
    pub fn new(
        config: Config,
        disk: Disk,
        listener: Listener,
        private: PrivateSocket,
        counters: Arc<Vec<QueueCounters>>,
        shutdown: Arc<Shutdown>,
    ) -> Self {
        let info = BlockDeviceInfo {
            capacity_sectors: disk.capacity_sectors(),
            logical_block_size: config.logical_block_size,
            num_queues: config.num_queues,
            queue_size: config.queue_size,
            read_only: config.read_only,
            writeback: config.cache.volatile_cache(),
        };
        Server {
            config,
            disk: Arc::new(disk),
            info,
            listener,
            private,
            counters,
            shutdown,
        }
    }

    /// Serve connections until shutdown; then flush and log the counters.
    pub fn run(&mut self) -> Result<(), ServeError> {
        log::info!(
            "serving image={} size={} queues={} queue_size={} cache={:?} read_only={}",
            self.disk.path.display(),
            self.disk.size,
            self.info.num_queues,
            self.info.queue_size,
            self.config.cache,
            self.info.read_only
        );
        let result = self.serve_loop();
        let flushed = self.disk.flush();
        counters::log_all(&self.counters);
        result?;
        flushed?;
        log::info!("exit status=ok");
        Ok(())
    }

    fn serve_loop(&mut self) -> Result<(), ServeError> {
        while !self.shutdown.is_requested() {
            if !self.wait_for_connection()? {
                break;
            }
            self.serve_one()?;
        }
        Ok(())
    }

    /// Block until a connection is pending (true) or shutdown (false).
    fn wait_for_connection(&self) -> Result<bool, ServeError> {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.shutdown.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServeError::Poll(e));
            }
            if self.shutdown.is_requested() || fds[1].revents != 0 {
                return Ok(false);
            }
            if fds[0].revents != 0 {
                return Ok(true);
            }
        }
    }

    /// One connection: fresh backend + daemon, serve, drain, tear down.
    fn serve_one(&mut self) -> Result<(), ServeError> {
        let front = match self.listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(e) => {
                log::warn!("accept_failed error=\"{e}\"");
                return Ok(());
            }
        };
        let private_path = self
            .private
            .path()
            .to_str()
            .ok_or_else(|| ServeError::Daemon("private socket path is not UTF-8".into()))?
            .to_owned();
        let region = SharedRegion::default();
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let settings = WorkerSettings {
            inflight: Arc::clone(&region),
            limits: self.info.limits(),
            serial: self.config.serial,
            poll: self.config.poll,
            writeback: Arc::new(AtomicBool::new(self.info.writeback)),
            null_io: self.config.null_io,
        };
        let backend = Arc::new(VhostUserBlkBackend::new(
            self.info.clone(),
            Arc::clone(&self.disk),
            settings,
            mem.clone(),
            Arc::clone(&self.counters),
        )?);
        let mut daemon = VhostUserDaemon::new("vhost-user-blk".into(), Arc::clone(&backend), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for (q, handler) in handlers.iter().enumerate() {
            if let Some(fd) = backend.completion_fd(q) {
                handler
                    .register_listener(fd, EventSet::IN, backend.completion_token())
                    .map_err(ServeError::Register)?;
            }
        }
        // The backend connects to the relay's private socket; the relay
        // only takes a connection made by this process.
        let started = daemon.start_client(&private_path);
        let mut relay = Vec::new();
        let result = match started {
            Ok(()) => {
                let back = self.private.accept_own()?;
                let filter = BlkFilter::new(region, self.info.num_queues, self.info.queue_size);
                relay = virtio_devices::backend::relay::spawn_relay(front, back, filter)
                    .map_err(ServeError::Relay)?;
                log::info!("frontend_connected");
                *self.shutdown.lock() = daemon.shutdown_handle();
                if self.shutdown.is_requested() {
                    daemon.request_shutdown();
                }
                let r = daemon.wait();
                *self.shutdown.lock() = None;
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(())
            | Err(DaemonError::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => log::info!("frontend_disconnected"),
            Err(e) if self.shutdown.is_requested() => {
                log::info!("connection_closed reason=shutdown detail=\"{e}\"")
            }
            Err(e) => log::warn!("connection_closed reason=error error=\"{e}\""),
        }
        let faults = crate::memguard::faults();
        if faults > 0 {
            log::warn!("event=guest_memory_faults total={faults}");
        }
        // Stop the worker threads first (dropping the daemon joins them):
        // the guest's ioeventfd may still point at a kick fd, and a worker
        // that took a kick after the drain would start requests nobody
        // waits for. Then drain what they left in flight, before the next
        // connection is accepted.
        for handler in &handlers {
            handler.send_exit_event();
        }
        drop(handlers);
        drop(daemon);
        backend.quiesce();
        for t in relay {
            let _ = t.join();
        }
        let mut backend = backend;
        match Arc::get_mut(&mut backend) {
            Some(b) => b.close_leaked_exit_fds(),
            None => log::warn!("exit_fds_kept reason=backend_still_shared"),
        }
        Ok(())
    }
}
