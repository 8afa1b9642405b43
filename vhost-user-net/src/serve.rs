//! The net device on the daemon skeleton's serve loop
//! ([`vhost_user_daemon::serve`]): the TAP queues are opened once and
//! survive reconnects (so do the counters); every frontend connection gets a
//! fresh backend, its pair workers, and the relay filter for early enables
//! and NET_MTU ([`crate::filter`]).

use std::sync::Arc;

use log::info;
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VringEpollHandler;
use vhost_user_daemon::dirty_log::DirtyLog;
use vhost_user_daemon::private_socket::PrivateSocket;
use vhost_user_daemon::serve::{self as skeleton, DeviceError, GuestMemoryShared};
use vhost_user_daemon::shutdown::Shutdown;

use crate::backend::{BackendError, DeviceParams, NetBackend};
use crate::config::{Config, TapSpec, format_mac};
use crate::counters::{self, PairCounters};
use crate::filter::NetFilter;
use crate::tap::{self, TapError, TapQueue};

/// A start-up or serve-loop failure.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Serve(#[from] skeleton::ServeError),
    #[error("relay socket")]
    RelaySocket(#[from] vhost_user_daemon::private_socket::RelaySocketError),
}

/// The long-lived part of the device: TAP queues and counters.
#[derive(Debug)]
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

impl skeleton::Device for Device {
    type Backend = NetBackend;
    type Filter = NetFilter;
    const NAME: &'static str = "vhost-user-net";

    fn connect(
        &self,
        mem: GuestMemoryShared,
        _log: DirtyLog,
    ) -> Result<(Arc<NetBackend>, NetFilter), DeviceError> {
        let backend = Arc::new(NetBackend::new(
            &self.taps,
            &self.counters,
            self.params.clone(),
            mem,
        )?);
        let num_queues = u32::try_from(2 * self.taps.len()).unwrap_or(u32::MAX);
        Ok((backend, NetFilter::new(self.params.mtu, num_queues)))
    }

    fn attach(
        &self,
        backend: &Arc<NetBackend>,
        handlers: &[Arc<VringEpollHandler<Arc<NetBackend>>>],
    ) -> Result<(), DeviceError> {
        backend.set_epoll_handlers(handlers);
        Ok(())
    }

    fn close_leaked_exit_fds(backend: &mut NetBackend) {
        backend.close_leaked_exit_fds();
    }

    fn report(&self) {
        counters::log_all(&self.counters);
    }
}

/// Serves one frontend after another until `shutdown` is requested, with a
/// relay socket made here (tests; the daemon makes it before the sandbox).
pub fn run(device: &Device, listener: &Listener, shutdown: &Shutdown) -> Result<(), ServeError> {
    run_with(device, listener, &PrivateSocket::new()?, shutdown)
}

/// [`run`] with the relay's private socket made beforehand (before the
/// sandbox forbids creating sockets on the filesystem).
pub fn run_with(
    device: &Device,
    listener: &Listener,
    private: &PrivateSocket,
    shutdown: &Shutdown,
) -> Result<(), ServeError> {
    skeleton::serve(device, listener, private, shutdown)?;
    Ok(())
}
