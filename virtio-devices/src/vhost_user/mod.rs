//! The vhost-user frontend device: a [`VirtioDevice`] whose queues are
//! served by a backend daemon over a unix socket. The VMM only sets up:
//! features and protocol features at connect, config space through
//! GET_CONFIG, and at DRIVER_OK the memory table (all guest RAM, by fd),
//! vring sizes/addresses/bases and the kick (ioeventfd) and call (irqfd)
//! eventfds. A driver reset stops the rings with GET_VRING_BASE.
//!
//! When the backend dies the device keeps what it started (features,
//! rings, the very eventfds KVM uses) and [`VhostUserDevice::reconnect`]
//! gives all of it to the backend that comes back on the same socket,
//! resuming each ring at the used index found in guest memory. With a
//! backend that offers INFLIGHT_SHMFD (ours for block), the device asks for
//! the in-flight region when the driver starts the device
//! (GET_INFLIGHT_FD), hands it over (SET_INFLIGHT_FD) then and at every
//! reconnect, and drops it at driver reset, as QEMU does: the restarted
//! backend resubmits the requests its predecessor had taken but not
//! completed. Without it, those requests are lost.
//!
//! A NIC's control queue (the last queue) never reaches the backend: the
//! VMM serves it ([`ctrl_queue`]) and turns a queue-pair change into
//! SET_VRING_ENABLE on the data rings.

pub mod ctrl_queue;
pub mod features;
pub mod rings;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use ctrl_queue::{CtrlQueue, GuestMem};
pub use features::DeviceKind;
use features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ,
    VIRTIO_RING_F_EVENT_IDX,
};
use rings::{SavedQueue, used_idx};
pub use rings::{ring_hva, ring_sizes};

use crate::net::ctrl::{CtrlCommand, CtrlFeatures};
use crate::transport::{ActivateError, QueueConfig, VirtioDevice};

/// Why the backend could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to vhost-user socket {0}")]
    Connect(String, #[source] vhost::Error),
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    #[error("backend does not offer VHOST_USER_F_PROTOCOL_FEATURES")]
    NoProtocolFeatures,
    #[error("backend does not support the CONFIG protocol feature (device config space)")]
    NoConfig,
    #[error("backend serves at most {max} queues, {want} requested")]
    TooManyQueues { max: u64, want: u16 },
    #[error("queue {0}: ring at {1:#x} is outside guest memory")]
    RingOutsideMemory(u16, u64),
    #[error("the restarted backend lacks features the driver acked ({0:#x})")]
    FeaturesLost(u64),
    #[error("cannot create or duplicate a queue eventfd")]
    DupEventFd(#[source] std::io::Error),
    #[error(transparent)]
    CtrlQueue(#[from] ctrl_queue::CtrlQueueError),
}

/// One piece of guest RAM as the backend must map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    pub gpa: u64,
    pub size: u64,
    /// Where the VMM has it mapped (vring addresses are given in this space).
    pub hva: u64,
    /// The fd backing it (a memfd) and the offset of this region in it.
    pub fd: RawFd,
    pub file_offset: u64,
}

/// What the VMM reports about a vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub socket: PathBuf,
    pub connected: bool,
    /// Features offered to the guest driver.
    pub offered_features: u64,
    /// Features the driver acked (set once its queues started).
    pub acked_features: Option<u64>,
    /// Queues running in the backend.
    pub started_queues: u16,
    /// Times a restarted backend was reconnected.
    pub reconnects: u32,
}

/// A connected, negotiated backend (before any driver).
struct Session {
    frontend: Frontend,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
}

fn handshake(socket: &Path, kind: &DeviceKind) -> Result<Session, VhostUserError> {
    let want = kind.backend_queues();
    let mut fe = Frontend::connect(socket, u64::from(want))
        .map_err(|e| VhostUserError::Connect(socket.display().to_string(), e))?;
    let req = |what| move |e| VhostUserError::Request(what, e);
    fe.set_owner().map_err(req("SET_OWNER"))?;
    let backend_features = fe.get_features().map_err(req("GET_FEATURES"))?;
    if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
        return Err(VhostUserError::NoProtocolFeatures);
    }
    let offered_proto = fe
        .get_protocol_features()
        .map_err(req("GET_PROTOCOL_FEATURES"))?;
    if !offered_proto.contains(VhostUserProtocolFeatures::CONFIG) {
        return Err(VhostUserError::NoConfig);
    }
    // Only what we implement (see the traps in shared/crates.md).
    let wanted = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    let proto = offered_proto & wanted;
    fe.set_protocol_features(proto)
        .map_err(req("SET_PROTOCOL_FEATURES"))?;
    if proto.contains(VhostUserProtocolFeatures::MQ) {
        let max = fe.get_queue_num().map_err(req("GET_QUEUE_NUM"))?;
        if u64::from(want) > max {
            return Err(VhostUserError::TooManyQueues { max, want });
        }
    } else if want > 1 {
        return Err(VhostUserError::TooManyQueues { max: 1, want });
    }
    log::info!(
        "vhost-user {}: backend features {backend_features:#x}, protocol {proto:?}",
        socket.display()
    );
    Ok(Session {
        frontend: fe,
        backend_features,
        protocol: proto,
    })
}

/// Gives the backend the memory table: all guest RAM, by fd.
fn send_mem_table(fe: &mut Frontend, regions: &[GuestRegion]) -> Result<(), VhostUserError> {
    let table: Vec<VhostUserMemoryRegionInfo> = regions
        .iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.gpa,
            memory_size: r.size,
            userspace_addr: r.hva,
            mmap_offset: r.file_offset,
            mmap_handle: r.fd,
        })
        .collect();
    fe.set_mem_table(&table)
        .map(drop)
        .map_err(|e| VhostUserError::Request("SET_MEM_TABLE", e))
}

/// Starts one ring in the backend at `base`, enabled or not; `err` is
/// signalled by a backend that finds the ring corrupt.
fn start_ring(
    fe: &mut Frontend,
    regions: &[GuestRegion],
    max_size: u16,
    q: &SavedQueue,
    (base, enable): (u16, bool),
    err: &EventFd,
) -> Result<(), VhostUserError> {
    let req = |what| move |e| VhostUserError::Request(what, e);
    let i = usize::from(q.index);
    let (dl, al, ul) = ring_sizes(q.size);
    let hva = |gpa, len| {
        ring_hva(regions, gpa, len).ok_or(VhostUserError::RingOutsideMemory(q.index, gpa))
    };
    let cfg = VringConfigData {
        queue_max_size: max_size,
        queue_size: q.size,
        flags: 0,
        desc_table_addr: hva(q.desc, dl)?,
        used_ring_addr: hva(q.used, ul)?,
        avail_ring_addr: hva(q.avail, al)?,
        log_addr: None,
    };
    fe.set_vring_num(i, q.size).map_err(req("SET_VRING_NUM"))?;
    fe.set_vring_addr(i, &cfg).map_err(req("SET_VRING_ADDR"))?;
    fe.set_vring_base(i, base).map_err(req("SET_VRING_BASE"))?;
    fe.set_vring_call(i, &q.call)
        .map_err(req("SET_VRING_CALL"))?;
    fe.set_vring_err(i, err).map_err(req("SET_VRING_ERR"))?;
    fe.set_vring_kick(i, &q.kick)
        .map_err(req("SET_VRING_KICK"))?;
    fe.set_vring_enable(i, enable)
        .map_err(req("SET_VRING_ENABLE"))
}

/// Whether ring `index` runs: a NIC with MQ negotiated starts with one
/// pair (`active_pairs`), and the driver asks for more through the control
/// queue; every ring of a disk runs.
fn ring_enabled(kind: &DeviceKind, active_pairs: u16, index: u16) -> bool {
    index / 2 < active_pairs || !matches!(kind, DeviceKind::Net { .. })
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    socket: PathBuf,
    frontend: Frontend,
    kind: DeviceKind,
    queue_size: u16,
    backend_features: u64,
    offered: u64,
    regions: Vec<GuestRegion>,
    /// Features given to the backend with SET_FEATURES (None: not started).
    acked: Option<u64>,
    saved: Vec<SavedQueue>,
    connected: bool,
    reconnects: u32,
    /// Given to the backend for every ring (SET_VRING_ERR); the VMM's
    /// event loop turns a signal into NEEDS_RESET.
    error: EventFd,
    /// Protocol features the current backend agreed to.
    protocol: VhostUserProtocolFeatures,
    /// The in-flight region (INFLIGHT_SHMFD) while the driver runs.
    inflight: Option<(VhostUserInflight, File)>,
    /// Guest RAM, for the queue the VMM serves itself.
    mem: GuestMem,
    /// A NIC's control queue while the driver runs it.
    ctrl: Option<CtrlQueue>,
    /// Queue pairs whose rings are enabled (a NIC's; all without MQ).
    active_pairs: u16,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("socket", &self.socket)
            .field("kind", &self.kind)
            .field("queue_size", &self.queue_size)
            .field("offered", &self.offered)
            .field("acked", &self.acked)
            .field("connected", &self.connected)
            .field("reconnects", &self.reconnects)
            .field("active_pairs", &self.active_pairs)
            .field("ctrl", &self.ctrl)
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Connects to the backend at `socket` and negotiates what can be
    /// negotiated before the guest driver shows up.
    pub fn connect(
        socket: &Path,
        kind: DeviceKind,
        queue_size: u16,
        regions: Vec<GuestRegion>,
        mem: GuestMem,
    ) -> Result<Self, VhostUserError> {
        let s = handshake(socket, &kind)?;
        let offered = kind.offered_features(s.backend_features);
        log::info!(
            "vhost-user {}: offering the driver {offered:#x}",
            socket.display()
        );
        Ok(Self {
            socket: socket.to_path_buf(),
            frontend: s.frontend,
            kind,
            queue_size,
            backend_features: s.backend_features,
            offered,
            regions,
            acked: None,
            saved: Vec::new(),
            connected: true,
            reconnects: 0,
            error: EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::DupEventFd)?,
            protocol: s.protocol,
            inflight: None,
            mem,
            ctrl: None,
            active_pairs: u16::MAX,
        })
    }

    /// Serves the control queue after its kick (the event loop calls this).
    pub fn process_ctrl_queue(&mut self) {
        let Some(mut ctrl) = self.ctrl.take() else {
            return;
        };
        let result = ctrl.process(|cmd| match cmd {
            CtrlCommand::QueuePairs(n) => self.set_queue_pairs(n),
            _ => true,
        });
        match result {
            Ok(served) => {
                for s in served {
                    log::debug!(
                        "event=ctrl_command socket={} served={s:?}",
                        self.socket.display()
                    );
                }
            }
            Err(e) => log::error!(
                "event=ctrl_queue_stopped socket={} error=\"{e}\"",
                self.socket.display()
            ),
        }
        self.ctrl = Some(ctrl);
    }

    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: enables the rings of pairs
    /// `0..n` and disables the others. A lost backend gets the count when
    /// it comes back.
    fn set_queue_pairs(&mut self, n: u16) -> bool {
        self.active_pairs = n;
        log::info!(
            "event=queue_pairs socket={} pairs={n}",
            self.socket.display()
        );
        if !self.connected {
            return true;
        }
        let rings: Vec<u16> = self.saved.iter().map(|q| q.index).collect();
        for index in rings {
            let enable = ring_enabled(&self.kind, n, index);
            if let Err(e) = self.frontend.set_vring_enable(usize::from(index), enable) {
                log::warn!(
                    "event=ring_enable_failed socket={} queue={index} enable={enable} error=\"{e}\"",
                    self.socket.display()
                );
                return false;
            }
        }
        true
    }

    /// Gets the in-flight region if there is none yet and hands it to the
    /// backend. A backend without INFLIGHT_SHMFD, or one that gives no
    /// region, runs without (requests in flight at a crash are lost).
    fn share_inflight(&mut self) -> Result<(), VhostUserError> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            if self.inflight.is_some() {
                log::warn!(
                    "event=inflight_unsupported socket={} detail=\"restarted backend lacks INFLIGHT_SHMFD\"",
                    self.socket.display()
                );
            }
            return Ok(());
        }
        if self.inflight.is_none() {
            let ask = VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: self.kind.backend_queues(),
                queue_size: self.queue_size,
            };
            match self.frontend.get_inflight_fd(&ask) {
                Ok(region) => self.inflight = Some(region),
                Err(e) => {
                    log::warn!(
                        "event=inflight_unavailable socket={} error=\"{e}\"",
                        self.socket.display()
                    );
                    return Ok(());
                }
            }
        }
        if let Some((info, file)) = &self.inflight {
            self.frontend
                .set_inflight_fd(info, file.as_raw_fd())
                .map_err(|e| VhostUserError::Request("SET_INFLIGHT_FD", e))?;
            log::info!(
                "event=inflight_shared socket={} bytes={}",
                self.socket.display(),
                info.mmap_size
            );
        }
        Ok(())
    }

    /// Readable when the backend reported a broken ring.
    pub fn error_event(&self) -> &EventFd {
        &self.error
    }

    /// The socket to watch for the backend hanging up (None while lost).
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.connected.then(|| self.frontend.as_raw_fd())
    }

    /// The backend hung up: stop talking to it until [`Self::reconnect`].
    pub fn backend_lost(&mut self) {
        if self.connected {
            log::warn!(
                "event=backend_lost socket={} started_queues={}",
                self.socket.display(),
                self.saved.len()
            );
        }
        self.connected = false;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Connects to the backend that came back on the socket and restarts
    /// every ring the driver had running, from the used index in guest
    /// memory, with the same eventfds; then kicks each ring once so the
    /// backend looks at requests queued while it was away.
    pub fn reconnect(&mut self) -> Result<(), VhostUserError> {
        let s = handshake(&self.socket, &self.kind)?;
        if let Some(acked) = self.acked {
            let missing = acked & !s.backend_features;
            if missing != 0 {
                return Err(VhostUserError::FeaturesLost(missing));
            }
        }
        self.frontend = s.frontend;
        self.backend_features = s.backend_features;
        self.protocol = s.protocol;
        if let Some(acked) = self.acked {
            self.share_inflight()?;
            self.frontend
                .set_features(acked)
                .map_err(|e| VhostUserError::Request("SET_FEATURES", e))?;
            send_mem_table(&mut self.frontend, &self.regions)?;
            for q in &self.saved {
                let base = used_idx(&self.regions, q.used)
                    .ok_or(VhostUserError::RingOutsideMemory(q.index, q.used))?;
                start_ring(
                    &mut self.frontend,
                    &self.regions,
                    self.queue_size,
                    q,
                    (base, ring_enabled(&self.kind, self.active_pairs, q.index)),
                    &self.error,
                )?;
                log::info!(
                    "event=ring_restarted socket={} queue={} base={base}",
                    self.socket.display(),
                    q.index
                );
            }
            for q in &self.saved {
                // A full counter already means "look at the ring".
                let _ = q.kick.write(1);
            }
        }
        self.connected = true;
        self.reconnects = self.reconnects.saturating_add(1);
        log::info!(
            "event=backend_reconnected socket={} queues={} reconnects={}",
            self.socket.display(),
            self.saved.len(),
            self.reconnects
        );
        Ok(())
    }

    /// What the VMM's API reports.
    pub fn info(&self) -> BackendInfo {
        BackendInfo {
            socket: self.socket.clone(),
            connected: self.connected,
            offered_features: self.offered,
            acked_features: self.acked,
            started_queues: u16::try_from(self.saved.len()).unwrap_or(u16::MAX),
            reconnects: self.reconnects,
        }
    }

    pub fn kind(&self) -> &DeviceKind {
        &self.kind
    }

    fn config_image(&mut self) -> Result<Vec<u8>, vhost::Error> {
        let size = self.kind.config_size();
        let buf = vec![0u8; size as usize];
        let (_, mut payload) =
            self.frontend
                .get_config(0, size, VhostUserConfigFlags::empty(), &buf)?;
        self.kind.patch_config(&mut payload);
        Ok(payload)
    }

    fn start(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), VhostUserError> {
        // The driver's view (what it acked of our offer) decides the
        // control queue; the backend gets its share without the features
        // the VMM implements itself.
        let driver = features & self.offered;
        let acked = self.kind.backend_features(features & self.backend_features)
            | VHOST_USER_F_PROTOCOL_FEATURES;
        let mq = driver & VIRTIO_NET_F_MQ != 0;
        self.active_pairs = if mq { 1 } else { u16::MAX };
        let ctrl_index = self.kind.ctrl_queue_index();
        let ctrl_cfg = queues.iter().find(|q| Some(q.index) == ctrl_index);
        if let (Some(q), DeviceKind::Net { queue_pairs, .. }) = (ctrl_cfg, &self.kind) {
            if driver & VIRTIO_NET_F_CTRL_VQ != 0 {
                let allowed = CtrlFeatures {
                    rx: driver & VIRTIO_NET_F_CTRL_RX != 0,
                    max_queue_pairs: mq.then_some(*queue_pairs),
                };
                let event_idx = driver & VIRTIO_RING_F_EVENT_IDX != 0;
                self.ctrl = Some(CtrlQueue::new(self.mem.clone(), q, event_idx, allowed)?);
            }
        }
        self.share_inflight()?;
        self.frontend
            .set_features(acked)
            .map_err(|e| VhostUserError::Request("SET_FEATURES", e))?;
        self.acked = Some(acked);
        send_mem_table(&mut self.frontend, &self.regions)?;
        for q in queues
            .iter()
            .filter(|q| q.index < self.kind.backend_queues())
        {
            let saved = SavedQueue {
                index: q.index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: q.kick.try_clone().map_err(VhostUserError::DupEventFd)?,
                call: q.call.try_clone().map_err(VhostUserError::DupEventFd)?,
            };
            start_ring(
                &mut self.frontend,
                &self.regions,
                self.queue_size,
                &saved,
                (0, ring_enabled(&self.kind, self.active_pairs, saved.index)),
                &self.error,
            )?;
            self.saved.push(saved);
        }
        // Commands the driver queued before DRIVER_OK reached us.
        self.process_ctrl_queue();
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type()
    }

    fn num_queues(&self) -> u16 {
        self.kind.num_queues()
    }

    fn queue_max_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !self.connected {
            return;
        }
        match self.config_image() {
            Ok(img) => {
                let src = usize::try_from(offset)
                    .ok()
                    .and_then(|start| img.get(start..start.checked_add(data.len())?));
                if let Some(src) = src {
                    data.copy_from_slice(src);
                }
            }
            Err(e) => log::warn!("vhost-user GET_CONFIG failed: {e}"),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if !self.connected {
            return;
        }
        if let Err(e) = self
            .frontend
            .set_config(off, VhostUserConfigFlags::WRITABLE, data)
        {
            log::warn!("vhost-user SET_CONFIG failed: {e}");
        }
    }

    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), ActivateError> {
        self.start(features, queues)
            .map_err(|e| ActivateError::Backend(Box::new(e)))
    }

    fn reset(&mut self) {
        self.acked = None;
        self.ctrl = None;
        self.active_pairs = u16::MAX;
        // The rings are stopped below with nothing in flight; the next
        // start gets a fresh region, as QEMU does.
        self.inflight = None;
        for q in std::mem::take(&mut self.saved) {
            if !self.connected {
                continue;
            }
            let i = usize::from(q.index);
            let _ = self.frontend.set_vring_enable(i, false);
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = self.frontend.get_vring_base(i) {
                log::warn!("vhost-user GET_VRING_BASE({i}) failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_a_missing_socket_is_a_clear_error() {
        let err = VhostUserDevice::connect(
            Path::new("/nonexistent/viaduct-test.sock"),
            DeviceKind::Block { num_queues: 1 },
            256,
            rings::tests::regions(),
            GuestMem::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/viaduct-test.sock"), "{err}");
    }
}
