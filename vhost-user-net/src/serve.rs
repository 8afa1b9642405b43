//! Start-up and the serve loop: open the TAP queues and the listening socket
//! once, then for every frontend connection build a fresh backend, daemon
//! and worker threads; the TAP queues (and counters) survive reconnects.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::backend::{BackendError, DeviceParams, NetBackend};
use crate::config::{Config, SocketSpec, TapSpec, format_mac};
use crate::counters::{self, PairCounters};
use crate::filter;
use crate::private_socket::{PrivateSocket, RelaySocketError};
use crate::tap::{self, TapError, TapQueue};

/// A start-up or serve-loop failure.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("socket {0:?} is in use by a running process")]
    SocketInUse(String),
    #[error("cannot listen on {path:?}")]
    Listen {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {0} is not a listening unix socket")]
    ListenFd(i32, #[source] io::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("stop eventfd")]
    Event(#[source] io::Error),
    #[error("waiting for a connection")]
    Poll(#[source] io::Error),
    #[error(transparent)]
    RelaySocket(#[from] RelaySocketError),
}

/// The long-lived part of the device: TAP queues and counters.
pub struct Device {
    pub taps: Vec<Arc<TapQueue>>,
    pub counters: Vec<Arc<PairCounters>>,
    pub params: DeviceParams,
}

impl Device {
    /// Opens (or adopts) the TAP queues and configures the host side.
    pub fn open(cfg: &Config) -> Result<Device, ServeError> {
        let pairs = usize::from(cfg.num_queue_pairs);
        let existed = match &cfg.tap {
            TapSpec::Name(name) => std::path::Path::new("/sys/class/net").join(name).exists(),
            TapSpec::Fds(_) => true,
        };
        let queues = match &cfg.tap {
            TapSpec::Name(name) => TapQueue::open_named(name, pairs)?,
            TapSpec::Fds(fds) => fds
                .iter()
                .map(|&fd| TapQueue::from_fd(fd))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let name = queues[0].name().to_owned();
        if matches!(cfg.tap, TapSpec::Name(_)) {
            if !existed {
                // Ours: a MAC that survives a daemon restart (see stable_mac).
                tap::set_mac(&name, tap::stable_mac(&name))?;
            }
            tap::set_mtu(&name, cfg.mtu)?;
            if let Some((addr, prefix)) = cfg.host_ip {
                tap::configure_host(&name, addr, prefix)?;
            }
        } else if let Some((addr, prefix)) = cfg.host_ip {
            tap::configure_host(&name, addr, prefix)?;
        }
        let offloads = queues[0].probe_offloads();
        info!(
            "event=tap_ready tap={name} queues={pairs} mac={} mtu={} ufo={} uso={}",
            format_mac(&cfg.mac),
            cfg.mtu,
            offloads.ufo,
            offloads.uso
        );
        Ok(Device {
            counters: (0..pairs).map(|_| Arc::default()).collect(),
            taps: queues.into_iter().map(Arc::new).collect(),
            params: DeviceParams {
                mac: cfg.mac,
                mtu: cfg.mtu,
                queue_size: cfg.queue_size,
                poll_us: cfg.poll_us,
                offloads,
            },
        })
    }
}

/// Binds the frontend socket. A stale socket file is replaced; one with a
/// live listener behind it is refused.
pub fn bind(spec: &SocketSpec) -> Result<UnixListener, ServeError> {
    match spec {
        SocketSpec::Path(path) => {
            let shown = path.display().to_string();
            if Path::new(path).exists() && UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse(shown));
            }
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(|source| ServeError::Listen {
                path: shown,
                source,
            })?;
            Ok(l)
        }
        SocketSpec::Fd(fd) => {
            let mut ty: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes one int into `ty`, `len` bytes long.
            let r = unsafe {
                libc::getsockopt(
                    *fd,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    (&mut ty as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(ServeError::ListenFd(*fd, io::Error::last_os_error()));
            }
            if ty == 0 {
                return Err(ServeError::ListenFd(
                    *fd,
                    io::ErrorKind::InvalidInput.into(),
                ));
            }
            // SAFETY: the fd is an open, listening socket (checked above)
            // handed to us by the operator; we own it from here on.
            Ok(unsafe { UnixListener::from_raw_fd(*fd) })
        }
    }
}

/// Asks the serve loop to stop, from a signal thread or a test.
pub struct Stopper {
    requested: AtomicBool,
    event: EventFd,
    current: Mutex<Option<ShutdownHandle>>,
}

impl Stopper {
    pub fn new() -> Result<Arc<Self>, ServeError> {
        Ok(Arc::new(Self {
            requested: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(ServeError::Event)?,
            current: Mutex::new(None),
        }))
    }

    /// Ends the current connection (if any) and the serve loop.
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.event.write(1);
        if let Ok(cur) = self.current.lock() {
            if let Some(h) = cur.as_ref() {
                h.shutdown();
            }
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Waits until the listener has a connection (true) or a stop was asked.
fn wait_for_connection(listener: &UnixListener, stop: &Stopper) -> Result<bool, ServeError> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if stop.requested() {
            return Ok(false);
        }
        // SAFETY: poll reads/writes the two pollfds of our stack array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ServeError::Poll(e));
        }
        if fds[1].revents != 0 || stop.requested() {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Serves one frontend after another until [`Stopper::stop`].
pub fn run(device: &Device, listener: UnixListener, stop: &Stopper) -> Result<(), ServeError> {
    run_with(device, listener, &PrivateSocket::new()?, stop)
}

/// [`run`] with the relay's private socket made beforehand (before the
/// sandbox forbids creating sockets on the filesystem).
pub fn run_with(
    device: &Device,
    listener: UnixListener,
    private: &PrivateSocket,
    stop: &Stopper,
) -> Result<(), ServeError> {
    let private_path = private
        .path()
        .to_str()
        .ok_or_else(|| ServeError::Daemon("private socket path is not UTF-8".into()))?
        .to_owned();
    let mut conn = 0u64;
    while wait_for_connection(&listener, stop)? {
        let front = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("event=accept_failed err={e}");
                continue;
            }
        };
        conn += 1;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(NetBackend::new(
            &device.taps,
            &device.counters,
            device.params.clone(),
            mem.clone(),
        )?);
        let mut daemon = VhostUserDaemon::new("vhost-user-net".into(), backend.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        backend.set_epoll_handlers(&daemon.get_epoll_handlers());
        // The backend connects to the relay's private socket; the relay
        // only takes a connection made by this process.
        daemon
            .start_client(&private_path)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let back = private.accept_own()?;
        let num_queues = u32::try_from(2 * device.taps.len()).unwrap_or(u32::MAX);
        let relay = filter::spawn_relay(front, back, device.params.mtu, num_queues)
            .map_err(ServeError::Event)?;
        info!("event=frontend_connected conn={conn}");
        if let Ok(mut cur) = stop.current.lock() {
            *cur = daemon.shutdown_handle();
        }
        if stop.requested() {
            daemon.request_shutdown();
        }
        match daemon.wait() {
            Ok(()) => info!("event=frontend_disconnected conn={conn}"),
            Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("event=frontend_disconnected conn={conn}"),
            Err(e) => warn!("event=connection_closed conn={conn} err={e}"),
        }
        if let Ok(mut cur) = stop.current.lock() {
            *cur = None;
        }
        drop(daemon);
        for t in relay {
            let _ = t.join();
        }
        let mut backend = backend;
        match Arc::get_mut(&mut backend) {
            Some(b) => b.close_leaked_exit_fds(),
            None => warn!("event=exit_fds_kept reason=backend_still_shared"),
        }
        let faults = crate::memguard::faults();
        if faults > 0 {
            warn!("event=guest_memory_faults total={faults}");
        }
        counters::log_all(&device.counters);
    }
    info!("event=stopped connections={conn}");
    Ok(())
}
