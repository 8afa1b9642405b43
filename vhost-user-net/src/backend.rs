//! vhost-user-backend glue: the features and config space the device
//! offers, TAP reconfiguration on every feature negotiation, and dispatch of
//! worker events to the queue pairs. A fresh [`NetBackend`] is built for
//! every frontend connection; the TAP queues outlive it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use log::{debug, info, warn};
use thiserror::Error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use virtio_devices::net::config::{NetConfigSpace, STATUS_LINK_UP};
use virtio_devices::net::features::{MRG_RXBUF, OptionalOffloads, device_features};
use virtio_devices::net::{tap_offload_flags, vnet_hdr_len};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::counters::PairCounters;
use crate::pair::{NetVring, QueuePair};
use crate::pair_types::{Interest, Negotiated, PairCtx, Wake};
use crate::tap::{TapError, TapQueue};
use vhost_user_daemon::exit_fds::LeakedExitFds;

/// The worker epoll of one queue pair.
pub type PairEpoll = VringEpollHandler<Arc<NetBackend>>;

/// Weak references to the worker epolls (the backend must not keep the
/// daemon's handlers alive: they hold the backend).
pub type EpollRefs = Vec<Weak<PairEpoll>>;

/// Device parameters fixed at start-up.
#[derive(Clone, Debug)]
pub struct DeviceParams {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub queue_size: u16,
    pub poll_us: u64,
    pub offloads: OptionalOffloads,
}

/// Why a backend could not be built.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("no tap queues")]
    NoQueues,
    #[error("{0} tap queues: more than virtio-net's max_virtqueue_pairs holds")]
    TooManyQueues(usize),
    #[error("tap queue count {taps} differs from counter count {counters}")]
    Mismatch { taps: usize, counters: usize },
    #[error("resetting tap queue {index}")]
    Tap {
        index: usize,
        #[source]
        source: TapError,
    },
}

/// The vhost-user-net device for one frontend connection.
#[derive(Debug)]
pub struct NetBackend {
    pairs: Vec<QueuePair>,
    config: NetConfigSpace,
    params: DeviceParams,
    features: u64,
    acked: AtomicU64,
    mem: RwLock<GuestMemoryAtomic<GuestMemoryMmap>>,
    epolls: RwLock<EpollRefs>,
    exit_fds: LeakedExitFds,
    /// Guest memory the SIGBUS handler may patch (this connection's).
    guest_ranges: crate::memguard::GuestRanges,
}

impl NetBackend {
    /// Close the exit-event fds vhost-user-backend leaks (see
    /// [`vhost_user_daemon::exit_fds`]); call with the backend exclusively owned.
    pub fn close_leaked_exit_fds(&mut self) {
        self.exit_fds.close_all();
    }

    /// Builds the backend over the persistent TAP queues, resetting their
    /// offloads (a new frontend renegotiates) and attaching only queue 0.
    pub fn new(
        taps: &[Arc<TapQueue>],
        counters: &[Arc<PairCounters>],
        params: DeviceParams,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Result<Self, BackendError> {
        if taps.is_empty() {
            return Err(BackendError::NoQueues);
        }
        if taps.len() != counters.len() {
            return Err(BackendError::Mismatch {
                taps: taps.len(),
                counters: counters.len(),
            });
        }
        let max_virtqueue_pairs =
            u16::try_from(taps.len()).map_err(|_| BackendError::TooManyQueues(taps.len()))?;
        let multiqueue = taps.len() > 1;
        let mut pairs = Vec::with_capacity(taps.len());
        for (index, (tap, c)) in taps.iter().zip(counters).enumerate() {
            let tap_err = |source| BackendError::Tap { index, source };
            tap.set_offload(0).map_err(tap_err)?;
            tap.set_vnet_hdr_len(vnet_hdr_len(0)).map_err(tap_err)?;
            let pair = QueuePair::new(index, tap.clone(), c.clone());
            if multiqueue {
                // Queue 0 always serves; the others join when the guest
                // enables their rings. Errors mean "already so".
                let _ = tap.set_attached(index == 0);
                pair.mark_detached(index != 0);
            }
            pairs.push(pair);
        }
        let config = NetConfigSpace {
            mac: params.mac,
            status: STATUS_LINK_UP,
            max_virtqueue_pairs,
            mtu: params.mtu,
        };
        Ok(Self {
            pairs,
            config,
            features: device_features(params.offloads),
            params,
            acked: AtomicU64::new(0),
            mem: RwLock::new(mem),
            epolls: RwLock::new(Vec::new()),
            exit_fds: LeakedExitFds::default(),
            guest_ranges: crate::memguard::GuestRanges::default(),
        })
    }

    /// Hands the backend the daemon's worker epolls (weakly held), so the
    /// workers can poll their TAP queue.
    pub fn set_epoll_handlers(&self, handlers: &[Arc<PairEpoll>]) {
        if let Ok(mut e) = self.epolls.write() {
            *e = handlers.iter().map(Arc::downgrade).collect();
        }
    }

    /// The worker epoll token of the TAP fd (above every vring index and the
    /// framework's own token, which equals `num_queues`).
    pub fn tap_token(&self) -> u64 {
        self.num_queues() as u64 + 1
    }

    fn negotiated(&self) -> Negotiated {
        let acked = self.acked.load(Ordering::Acquire);
        Negotiated {
            acked,
            hdr_len: vnet_hdr_len(acked),
            mrg_rxbuf: acked & MRG_RXBUF != 0,
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = NetVring;

    fn num_queues(&self) -> usize {
        self.pairs.len() * 2
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.params.queue_size)
    }

    fn features(&self) -> u64 {
        self.features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Release);
        let hdr_len = vnet_hdr_len(features);
        let offload = tap_offload_flags(features);
        for (i, p) in self.pairs.iter().enumerate() {
            if let Err(e) = p
                .tap()
                .set_vnet_hdr_len(hdr_len)
                .and_then(|()| p.tap().set_offload(offload))
            {
                warn!("pair={i} event=tap_reconfigure_failed err={e}");
            }
        }
        info!(
            "event=features_acked features={features:#x} vnet_hdr_len={hdr_len} tap_offload={offload:#x}"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // NET_MTU is not listed here because vhost 0.18 cannot parse
        // VHOST_USER_NET_SET_MTU: the relay in front of the backend
        // (filter.rs) offers it and answers SET_MTU itself.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, enabled: bool) {
        debug!("event=event_idx enabled={enabled}");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config
            .read(offset as usize, size as usize)
            .unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The net config space is read-only for a modern driver; ignoring
        // the write keeps the connection alive.
        debug!(
            "event=config_write_ignored offset={offset} len={}",
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // A table running past the end of its files is refused; the rest
        // becomes memory the SIGBUS handler may patch.
        let snapshot = vm_memory::GuestAddressSpace::memory(&mem).into_inner();
        crate::memguard::check_backing(&snapshot)?;
        self.guest_ranges
            .track(&snapshot)
            .map_err(io::Error::other)?;
        if let Ok(mut m) = self.mem.write() {
            *m = mem;
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs.len()).map(|i| 0b11u64 << (2 * i)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per worker of this (fresh) daemon: a reused,
        // already-signalled one would stop the new workers at once.
        let pair = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok();
        if let Some((consumer, _)) = &pair {
            self.exit_fds
                .note(std::os::fd::AsRawFd::as_raw_fd(consumer));
        }
        pair
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[NetVring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(pair) = self.pairs.get(thread_id) else {
            return Ok(());
        };
        let Ok(mem) = self.mem.read() else {
            return Ok(());
        };
        let ctx = PairCtx {
            mem: &mem,
            neg: self.negotiated(),
            multiqueue: self.pairs.len() > 1,
            poll: Duration::from_micros(self.params.poll_us),
            budget: usize::from(self.params.queue_size),
        };
        let wake = Wake::from_event(device_event, evset, self.tap_token());
        if let Some(change) = pair.handle(wake, vrings, &ctx) {
            let epoll = self
                .epolls
                .read()
                .ok()
                .and_then(|e| e.get(thread_id).and_then(|w| w.upgrade()));
            if let Some(epoll) = epoll {
                pair.registered(self.apply(&epoll, change, thread_id));
            }
        }
        Ok(())
    }
}

impl NetBackend {
    /// (Re)registers a pair's TAP fd on its worker epoll as the pair asked;
    /// returns the events it is registered for afterwards.
    fn apply(&self, epoll: &PairEpoll, change: Interest, pair: usize) -> EventSet {
        let token = self.tap_token();
        if !change.from.is_empty() {
            if let Err(e) = epoll.unregister_listener(change.fd, change.from, token) {
                debug!("pair={pair} event=tap_unregister_failed err={e}");
            }
        }
        if change.to.is_empty() {
            return EventSet::empty();
        }
        match epoll.register_listener(change.fd, change.to, token) {
            Ok(()) => change.to,
            Err(e) => {
                warn!("pair={pair} event=tap_register_failed err={e}");
                EventSet::empty()
            }
        }
    }
}
