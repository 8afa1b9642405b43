//! The serve loop every daemon runs: for each frontend that connects, a
//! fresh backend (the device builds it), vhost-user-backend's daemon and
//! worker threads, and the device's relay filter between the frontend and
//! the daemon (on a private socket); serve until the frontend goes away or
//! shutdown is requested; then stop the worker threads first (the guest's
//! ioeventfd may still point at a kick fd), let the device drain what they
//! left in flight, and only then accept the next frontend.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    Error as DaemonError, VhostUserBackend, VhostUserDaemon, VringEpollHandler,
};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::dirty_log::DirtyLog;
use crate::dirty_log::filter::Logging;
use crate::listen::{ListenError, wait_for_connection};
use crate::private_socket::{PrivateSocket, RelaySocketError};
use crate::relay::{self, Filter};
use crate::shutdown::Shutdown;

/// Guest memory as the daemons map it (no dirty bitmap yet).
pub type GuestMemory = GuestMemoryMmap<()>;
/// The guest memory a connection's backend and workers share.
pub type GuestMemoryShared = GuestMemoryAtomic<GuestMemory>;

/// A device-specific failure while setting up a connection.
pub type DeviceError = Box<dyn std::error::Error + Send + Sync>;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The device could not build or wire a connection's backend.
    #[error("cannot set up the connection")]
    Device(#[source] DeviceError),
    /// The vhost-user daemon framework.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// The relay's private socket.
    #[error("relay socket")]
    RelaySocket(#[from] RelaySocketError),
    /// Starting the relay threads.
    #[error("cannot start the relay")]
    Relay(#[source] std::io::Error),
}

/// What a daemon supplies to the serve loop.
pub trait Device {
    /// The per-connection vhost-user-backend implementation.
    type Backend: VhostUserBackend<Bitmap = ()> + 'static;
    /// The relay filter for the messages the framework cannot handle.
    type Filter: Filter;
    /// The daemon's name (thread name, logs).
    const NAME: &'static str;
    /// Every path on which the device writes guest memory marks the dirty
    /// log, so the frontend may be offered `VHOST_F_LOG_ALL` and
    /// `PROTOCOL_F_LOG_SHMFD` (live migration).
    const LOGS_DIRTY_PAGES: bool = false;

    /// A fresh backend over `mem` for one connection, and its relay filter.
    /// The backend's workers mark what they write in `log`.
    fn connect(
        &self,
        mem: GuestMemoryShared,
        log: DirtyLog,
    ) -> Result<(Arc<Self::Backend>, Self::Filter), DeviceError>;

    /// Test-only negative control (a hidden flag): accept logging but
    /// never mark, so a migration test can show it detects lost pages.
    fn never_mark_dirty(&self) -> bool {
        false
    }

    /// Wires the backend to the daemon's worker epolls (extra fds to
    /// watch, say) before the frontend's first message.
    fn attach(
        &self,
        backend: &Arc<Self::Backend>,
        handlers: &[Arc<VringEpollHandler<Arc<Self::Backend>>>],
    ) -> Result<(), DeviceError>;

    /// After the connection's worker threads have stopped: finish what they
    /// left in flight (the guest memory is still mapped).
    fn drain(&self, _backend: &Self::Backend) {}

    /// Once the serve loop holds the only reference to the backend: close
    /// what the framework leaked ([`crate::exit_fds`]).
    fn close_leaked_exit_fds(backend: &mut Self::Backend);

    /// Logs the device's counters (after each connection and on SIGUSR1).
    fn report(&self);
}

/// Serves one frontend after another until `shutdown` is requested.
/// Returns the number of connections served.
pub fn serve<D>(
    device: &D,
    listener: &Listener,
    private: &PrivateSocket,
    shutdown: &Shutdown,
) -> Result<u64, ServeError>
where
    D: Device,
    <D::Backend as VhostUserBackend>::Vring: Clone + Send + Sync,
{
    let private_path = private
        .path()
        .to_str()
        .ok_or_else(|| ServeError::Daemon("private socket path is not UTF-8".into()))?
        .to_owned();
    let mut conn = 0u64;
    while wait_for_connection(listener, shutdown)? {
        let front = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("event=accept_failed error=\"{e}\"");
                continue;
            }
        };
        conn += 1;
        serve_one(device, front, &private_path, private, shutdown, conn)?;
        device.report();
    }
    log::info!("event=stopped connections={conn}");
    Ok(conn)
}

fn serve_one<D>(
    device: &D,
    front: UnixStream,
    private_path: &str,
    private: &PrivateSocket,
    shutdown: &Shutdown,
    conn: u64,
) -> Result<(), ServeError>
where
    D: Device,
    <D::Backend as VhostUserBackend>::Vring: Clone + Send + Sync,
{
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let log = DirtyLog::new(device.never_mark_dirty());
    let (backend, filter) = device
        .connect(mem.clone(), log.clone())
        .map_err(ServeError::Device)?;
    let filter = Logging::new(filter, log, D::LOGS_DIRTY_PAGES);
    let mut daemon = VhostUserDaemon::new(D::NAME.into(), Arc::clone(&backend), mem)
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let handlers = daemon.get_epoll_handlers();
    device
        .attach(&backend, &handlers)
        .map_err(ServeError::Device)?;
    // The backend connects to the relay's private socket; the relay only
    // takes a connection made by this process.
    let mut relay = Vec::new();
    let result = match daemon.start_client(private_path) {
        Ok(()) => {
            let back = private.accept_own()?;
            relay = relay::spawn_relay(front, back, filter).map_err(ServeError::Relay)?;
            log::info!("event=frontend_connected conn={conn}");
            *shutdown.current() = daemon.shutdown_handle();
            if shutdown.is_requested() {
                daemon.request_shutdown();
            }
            let r = daemon.wait();
            *shutdown.current() = None;
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => log::info!("event=frontend_disconnected conn={conn}"),
        Err(e) if shutdown.is_requested() => {
            log::info!("event=connection_closed conn={conn} reason=shutdown detail=\"{e}\"")
        }
        Err(e) => log::warn!("event=connection_closed conn={conn} reason=error error=\"{e}\""),
    }
    let faults = crate::memguard::faults();
    if faults > 0 {
        log::warn!("event=guest_memory_faults total={faults}");
    }
    // Stop the worker threads first (dropping the daemon joins them): the
    // guest's ioeventfd may still point at a kick fd, and a worker that
    // took a kick after the drain would start requests nobody waits for.
    // Then the device drains what they left in flight, before the next
    // connection is accepted.
    for handler in &handlers {
        handler.send_exit_event();
    }
    drop(handlers);
    drop(daemon);
    device.drain(&backend);
    for t in relay {
        let _ = t.join();
    }
    let mut backend = backend;
    match Arc::get_mut(&mut backend) {
        Some(b) => D::close_leaked_exit_fds(b),
        None => log::warn!("event=exit_fds_kept reason=backend_still_shared"),
    }
    Ok(())
}
