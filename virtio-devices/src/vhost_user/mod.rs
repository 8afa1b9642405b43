//! The vhost-user frontend device: a [`VirtioDevice`] whose queues are
//! served by a backend daemon over a unix socket. The VMM only sets up:
//! features and protocol features at connect, config space through
//! GET_CONFIG, and at DRIVER_OK the memory table (all guest RAM, by fd),
//! vring sizes/addresses/bases and the kick (ioeventfd) and call (irqfd)
//! eventfds. A driver reset stops the rings with GET_VRING_BASE.

pub mod features;

use std::os::fd::RawFd;
use std::path::Path;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

pub use features::DeviceKind;
use features::VHOST_USER_F_PROTOCOL_FEATURES;

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

/// Translates a guest ring of `len` bytes at `gpa` to a VMM address.
pub fn ring_hva(regions: &[GuestRegion], gpa: u64, len: u64) -> Option<u64> {
    let r = regions
        .iter()
        .find(|r| gpa >= r.gpa && gpa - r.gpa < r.size)?;
    let end = (gpa - r.gpa).checked_add(len)?;
    (end <= r.size).then(|| r.hva + (gpa - r.gpa))
}

/// Bytes of the descriptor table, avail ring and used ring for `size` entries
/// (with the event-idx fields).
pub fn ring_sizes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    frontend: Frontend,
    kind: DeviceKind,
    queue_size: u16,
    backend_features: u64,
    offered: u64,
    protocol: bool,
    regions: Vec<GuestRegion>,
    active: Vec<u16>,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket` and negotiates what can be
    /// negotiated before the guest driver shows up.
    pub fn connect(
        socket: &Path,
        kind: DeviceKind,
        queue_size: u16,
        regions: Vec<GuestRegion>,
    ) -> Result<Self, VhostUserError> {
        let want = kind.num_queues();
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
        let wanted = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
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
        let offered = kind.offered_features(backend_features);
        log::info!(
            "vhost-user {}: backend features {backend_features:#x}, offering {offered:#x}, protocol {proto:?}",
            socket.display()
        );
        Ok(Self {
            frontend: fe,
            kind,
            queue_size,
            backend_features,
            offered,
            protocol: true,
            regions,
            active: Vec::new(),
        })
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
        let req = |what| move |e| VhostUserError::Request(what, e);
        let mut acked = features & self.backend_features;
        if self.protocol {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(acked)
            .map_err(req("SET_FEATURES"))?;
        let table: Vec<VhostUserMemoryRegionInfo> = self
            .regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa,
                memory_size: r.size,
                userspace_addr: r.hva,
                mmap_offset: r.file_offset,
                mmap_handle: r.fd,
            })
            .collect();
        self.frontend
            .set_mem_table(&table)
            .map_err(req("SET_MEM_TABLE"))?;
        for q in queues {
            let i = usize::from(q.index);
            let (dl, al, ul) = ring_sizes(q.size);
            let hva = |gpa, len| {
                ring_hva(&self.regions, gpa, len)
                    .ok_or(VhostUserError::RingOutsideMemory(q.index, gpa))
            };
            let cfg = VringConfigData {
                queue_max_size: self.queue_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: hva(q.desc, dl)?,
                used_ring_addr: hva(q.used, ul)?,
                avail_ring_addr: hva(q.avail, al)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(req("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(req("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(req("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, q.call)
                .map_err(req("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, q.kick)
                .map_err(req("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(req("SET_VRING_ENABLE"))?;
            }
            self.active.push(q.index);
        }
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
        match self.config_image() {
            Ok(img) => {
                let start = offset as usize;
                if let Some(src) = img.get(start..start + data.len()) {
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
        for q in std::mem::take(&mut self.active) {
            let i = usize::from(q);
            if self.protocol {
                let _ = self.frontend.set_vring_enable(i, false);
            }
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

    fn regions() -> Vec<GuestRegion> {
        vec![
            GuestRegion {
                gpa: 0,
                size: 0x1000_0000,
                hva: 0x7f00_0000_0000,
                fd: 3,
                file_offset: 0,
            },
            GuestRegion {
                gpa: 1 << 32,
                size: 0x1000_0000,
                hva: 0x7f10_0000_0000,
                fd: 3,
                file_offset: 0x1000_0000,
            },
        ]
    }

    #[test]
    fn rings_translate_inside_one_region() {
        let r = regions();
        assert_eq!(ring_hva(&r, 0x1000, 0x100), Some(0x7f00_0000_1000));
        assert_eq!(ring_hva(&r, (1 << 32) + 0x10, 8), Some(0x7f10_0000_0010));
        assert_eq!(ring_hva(&r, 0x0fff_fff0, 0x20), None, "straddles the end");
        assert_eq!(ring_hva(&r, 0xc000_0000, 1), None, "in the MMIO hole");
        assert_eq!(ring_hva(&r, u64::MAX, 2), None);
        assert_eq!(ring_sizes(256), (4096, 518, 2054));
    }

    #[test]
    fn connect_to_a_missing_socket_is_a_clear_error() {
        let err = VhostUserDevice::connect(
            Path::new("/nonexistent/viaduct-test.sock"),
            DeviceKind::Block { num_queues: 1 },
            256,
            regions(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/viaduct-test.sock"), "{err}");
    }
}
