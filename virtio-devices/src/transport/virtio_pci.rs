//! The modern virtio-pci transport (virtio 1.x §4.1): one 64-bit memory
//! BAR holding the common config, ISR, device config, notify doorbells and
//! the MSI-X table/PBA, described by vendor capabilities. Queue
//! notifications are eventfds the VMM turns into KVM ioeventfds; interrupts
//! go through [`MsiRoutes`]. DRIVER_OK activates the device, writing 0 to
//! the status resets it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::transport::common_cfg::{
    COMMON_CFG_SIZE, CommonCfg, CommonEvent, NO_VECTOR, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
};
use crate::transport::{QueueConfig, VirtioDevice};
use pci::config::PciConfigError;
use pci::msix::MsixChange;
use pci::{BarRegion, MsiRoutes, Msix, PciConfig, PciDevice, PciIdentity};

/// The BAR everything lives in, and its layout.
pub const BAR: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' doorbells.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most queues the layout fits (doorbells and vectors).
pub const MAX_QUEUES: u16 = 256;

const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_MODERN_BASE: u16 = 0x1040;
const PCI_CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// VIRTIO_F_VERSION_1: a modern device always offers it.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("{0} queues do not fit the transport (1..={MAX_QUEUES})")]
    Queues(u16),
    #[error("virtio device type {0} has no virtio-pci device id")]
    DeviceType(u32),
    #[error("cannot lay out PCI configuration space")]
    Config(#[from] PciConfigError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A virtio vendor capability for `offset..offset + length` of [`BAR`].
// Cannot truncate: callers pass this file's layout constants (windows inside
// the 32 KiB BAR; the notify window is at most MAX_QUEUES * 4 bytes) and
// `extra` of at most 4 bytes.
#[allow(clippy::cast_possible_truncation)]
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        PCI_CAP_VENDOR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        BAR as u8,
        0,
        0,
        0,
    ];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

/// Whether an eventfd holds a count, without consuming it.
fn is_signalled(evt: &EventFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

fn class_of(device_type: u32) -> (u8, u8, u8) {
    match device_type {
        1 => (0x02, 0x00, 0x00), // network controller
        2 => (0x01, 0x00, 0x00), // mass storage
        _ => (0xff, 0x00, 0x00),
    }
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: PciConfig,
    msix_cap: usize,
    msix: Msix,
    common: CommonCfg,
    device: Box<dyn VirtioDevice>,
    routes: Box<dyn MsiRoutes>,
    kicks: Vec<EventFd>,
    /// Call fd for queues without a vector: nobody listens to it.
    no_vector: EventFd,
    active: bool,
    /// Doorbell writes that reached the VMM instead of an ioeventfd.
    notify_exits: Arc<AtomicU64>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("common", &self.common)
            .field("active", &self.active)
            .field("notify_exits", &self.notify_exits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl VirtioPciDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        routes: Box<dyn MsiRoutes>,
    ) -> Result<Self, VirtioPciError> {
        let queues = device.num_queues();
        if queues == 0 || queues > MAX_QUEUES {
            return Err(VirtioPciError::Queues(queues));
        }
        let dtype = device.device_type();
        let pci_device = u16::try_from(dtype)
            .ok()
            .and_then(|t| VIRTIO_PCI_MODERN_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType(dtype))?;
        let mut config = PciConfig::new(PciIdentity {
            vendor: VIRTIO_PCI_VENDOR,
            device: pci_device,
            revision: 1,
            class: class_of(dtype),
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x1100,
        });
        config.add_mem64_bar(BAR, BAR_SIZE)?;
        // One vector per queue plus one for configuration changes.
        let msix = Msix::new(queues + 1);
        // Cannot truncate: layout constants (BAR 0, offsets inside its 32 KiB).
        #[allow(clippy::cast_possible_truncation)]
        let (cap, writable) = msix.capability(
            (BAR as u8, MSIX_TABLE_OFFSET as u32),
            (BAR as u8, MSIX_PBA_OFFSET as u32),
        );
        let msix_cap = config.add_capability(&cap, &writable)?;
        let notify_len = u64::from(queues) * u64::from(NOTIFY_MULTIPLIER);
        config.add_capability(
            &virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_CFG_SIZE, &[]),
            &[],
        )?;
        config.add_capability(&virtio_cap(CAP_ISR, ISR_OFFSET, 1, &[]), &[])?;
        config.add_capability(
            &virtio_cap(CAP_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE, &[]),
            &[],
        )?;
        config.add_capability(
            &virtio_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        // The spec's mandatory config-access window; Linux never uses it.
        config.add_capability(&virtio_cap(CAP_PCI_CFG, 0, 0, &[0; 4]), &[])?;
        let kicks = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let common = CommonCfg::new(
            device.features() | VIRTIO_F_VERSION_1,
            queues,
            device.queue_max_size(),
        );
        Ok(Self {
            config,
            msix_cap,
            msix,
            common,
            device,
            routes,
            kicks,
            no_vector: EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?,
            active: false,
            notify_exits: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Counts doorbell writes the VMM had to handle itself (zero when
    /// every kick goes through a KVM ioeventfd, as it should).
    pub fn notify_exit_counter(&self) -> Arc<AtomicU64> {
        self.notify_exits.clone()
    }

    /// The device (its backend) can no longer serve the driver: set
    /// DEVICE_NEEDS_RESET and, the driver running, send a configuration
    /// change interrupt (virtio 1.2 §2.1.2). Returns whether anything changed.
    pub fn signal_needs_reset(&mut self) -> bool {
        if self.common.status & STATUS_DRIVER_OK == 0
            || self.common.status & STATUS_NEEDS_RESET != 0
        {
            return false;
        }
        self.common.status |= STATUS_NEEDS_RESET;
        self.common.config_generation = self.common.config_generation.wrapping_add(1);
        if let Some(evt) = self.routes.notifier(self.common.msix_config) {
            let _ = evt.write(1);
        }
        true
    }

    /// The eventfd queue `index`'s doorbell signals (its KVM ioeventfd),
    /// for a queue the VMM serves itself.
    pub fn queue_kick(&self, index: u16) -> Option<&EventFd> {
        self.kicks.get(usize::from(index))
    }

    /// The driver's status byte (DRIVER_OK = 4 once it runs the device).
    pub fn driver_status(&self) -> u8 {
        self.common.status
    }

    fn update_route(&mut self, vector: u16) {
        let Some(msg) = self.msix.message(vector) else {
            return;
        };
        let masked = self.msix.masked(vector);
        if let Err(e) = self.routes.update(vector, msg, masked) {
            log::warn!("virtio-pci: cannot route MSI-X vector {vector}: {e}");
        }
    }

    /// Pending bits: a masked vector whose eventfd holds a signal (its
    /// irqfd is detached while masked, so the signal waits there).
    fn refresh_pending(&mut self) {
        for v in 0..self.msix.vectors() {
            let pending = self.msix.masked(v) && self.routes.notifier(v).is_some_and(is_signalled);
            self.msix.set_pending(v, pending);
        }
    }

    fn msix_changed(&mut self, change: MsixChange) {
        match change {
            MsixChange::None => {}
            MsixChange::Vector(v) => self.update_route(v),
            MsixChange::All => (0..self.msix.vectors()).for_each(|v| self.update_route(v)),
        }
    }

    fn activate(&mut self) {
        let features = self.common.driver_features;
        let mut queues = Vec::new();
        for (i, q) in (0u16..).zip(&self.common.queues) {
            if !q.enabled {
                continue;
            }
            let call = match q.msix_vector {
                NO_VECTOR => &self.no_vector,
                v => self.routes.notifier(v).unwrap_or(&self.no_vector),
            };
            queues.push(QueueConfig {
                index: i,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: &self.kicks[usize::from(i)],
                call,
            });
        }
        match self.device.activate(features, &queues) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("virtio-pci: activation failed: {e}");
                self.common.status |= STATUS_NEEDS_RESET;
                self.common.config_generation = self.common.config_generation.wrapping_add(1);
            }
        }
    }

    fn status_changed(&mut self, old: u8, new: u8) {
        if new == 0 {
            if self.active {
                self.device.reset();
                self.active = false;
            }
            for k in &self.kicks {
                // Drop notifications of the previous driver instance.
                let _ = k.read();
            }
            self.common.reset();
            return;
        }
        let ready = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        if new & ready == ready && old & STATUS_DRIVER_OK == 0 && !self.active {
            self.activate();
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        if let CommonEvent::Status { old, new } = self.common.write(offset, data) {
            self.status_changed(old, new);
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let ctrl_at = self.msix_cap + 2;
        if offset <= ctrl_at + 1 && offset + data.len() > ctrl_at {
            let reg = self.config.read_reg(self.msix_cap / 4);
            let change = self.msix.set_control((reg >> 16) as u16);
            self.msix_changed(change);
        }
    }

    fn bars(&self) -> Vec<BarRegion> {
        self.config.bars()
    }

    fn set_bar_addr(&mut self, index: usize, addr: u64) {
        self.config.set_bar_addr(index, addr);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != BAR {
            data.fill(0xff);
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.common.read(o - COMMON_OFFSET, data),
            o if o < DEVICE_CFG_OFFSET => {
                // ISR: with MSI-X nothing is ever set; reading clears it anyway.
                data.fill(0);
            }
            o if o < NOTIFY_OFFSET => self.device.read_config(o - DEVICE_CFG_OFFSET, data),
            o if o < MSIX_TABLE_OFFSET => data.fill(0),
            o if o < MSIX_PBA_OFFSET => self.msix.table_read(o - MSIX_TABLE_OFFSET, data),
            o => {
                self.refresh_pending();
                self.msix.pba_read(o - MSIX_PBA_OFFSET, data)
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BAR {
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.common_write(o - COMMON_OFFSET, data),
            o if o < DEVICE_CFG_OFFSET => {}
            o if o < NOTIFY_OFFSET => self.device.write_config(o - DEVICE_CFG_OFFSET, data),
            o if o < MSIX_TABLE_OFFSET => {
                // Only reached when the ioeventfd is not (yet) registered.
                self.notify_exits.fetch_add(1, Ordering::Relaxed);
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(k) = usize::try_from(q).ok().and_then(|q| self.kicks.get(q)) {
                    let _ = k.write(1);
                }
            }
            o if o < MSIX_PBA_OFFSET => {
                let change = self.msix.table_write(o - MSIX_TABLE_OFFSET, data);
                self.msix_changed(change);
            }
            _ => {} // the PBA is read-only
        }
    }

    fn doorbells(&self) -> Vec<(usize, u64, &EventFd)> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(q, k)| {
                (
                    BAR,
                    NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER),
                    k,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ActivateError;
    use pci::MsiMessage;
    use std::sync::{Arc, Mutex};

    /// (features, [(queue, size, desc)]) per activation.
    type Activation = (u64, Vec<(u16, u16, u64)>);

    #[derive(Default)]
    struct Log {
        activated: Vec<Activation>,
        resets: u32,
        routes: Vec<(u16, MsiMessage, bool)>,
    }

    struct Fake(Arc<Mutex<Log>>);
    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            2
        }
        fn num_queues(&self) -> u16 {
            2
        }
        fn queue_max_size(&self) -> u16 {
            128
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            data.fill((offset & 0xff) as u8 + 1);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, f: u64, q: &[QueueConfig]) -> Result<(), ActivateError> {
            let qs = q.iter().map(|q| (q.index, q.size, q.desc)).collect();
            self.0.lock().unwrap().activated.push((f, qs));
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    struct Routes(Arc<Mutex<Log>>, Vec<EventFd>);
    impl MsiRoutes for Routes {
        fn update(&mut self, v: u16, m: MsiMessage, masked: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().routes.push((v, m, masked));
            Ok(())
        }
        fn notifier(&self, v: u16) -> Option<&EventFd> {
            self.1.get(usize::from(v))
        }
    }

    fn device() -> (VirtioPciDevice, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let evts = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let d = VirtioPciDevice::new(
            Box::new(Fake(log.clone())),
            Box::new(Routes(log.clone(), evts)),
        )
        .unwrap();
        (d, log)
    }

    fn w16(d: &mut VirtioPciDevice, off: u64, v: u16) {
        d.bar_write(BAR, off, &v.to_le_bytes());
    }
    fn w32(d: &mut VirtioPciDevice, off: u64, v: u32) {
        d.bar_write(BAR, off, &v.to_le_bytes());
    }

    #[test]
    fn pci_identity_and_capabilities() {
        let (mut d, _) = device();
        let mut id = [0u8; 4];
        d.config_read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
        // Walk the capability list: MSI-X first, then five virtio caps.
        let mut ptr = [0u8];
        d.config_read(0x34, &mut ptr);
        let mut kinds = Vec::new();
        let mut p = ptr[0] as usize;
        while p != 0 {
            let mut hdr = [0u8; 4];
            d.config_read(p, &mut hdr);
            kinds.push(if hdr[0] == PCI_CAP_VENDOR {
                hdr[3]
            } else {
                hdr[0]
            });
            p = hdr[1] as usize;
        }
        assert_eq!(
            kinds,
            vec![
                0x11,
                CAP_COMMON,
                CAP_ISR,
                CAP_DEVICE,
                CAP_NOTIFY,
                CAP_PCI_CFG
            ]
        );
        assert_eq!(d.bars()[0].size, BAR_SIZE);
        assert_eq!(d.doorbells()[1].1, NOTIFY_OFFSET + 4);
    }

    #[test]
    fn driver_ok_activates_and_reset_resets() {
        let (mut d, log) = device();
        w32(&mut d, 0x00, 1);
        let mut f = [0u8; 4];
        d.bar_read(BAR, 0x04, &mut f);
        assert_eq!(u32::from_le_bytes(f), 1, "VERSION_1 offered");
        d.bar_write(BAR, 0x14, &[1 | 2]);
        w32(&mut d, 0x08, 1);
        w32(&mut d, 0x0c, 1);
        d.bar_write(BAR, 0x14, &[1 | 2 | 8]);
        w16(&mut d, 0x16, 1);
        w16(&mut d, 0x18, 64);
        w16(&mut d, 0x1a, 2);
        w32(&mut d, 0x20, 0x10_0000);
        w16(&mut d, 0x1c, 1);
        d.bar_write(BAR, 0x14, &[1 | 2 | 4 | 8]);
        {
            let l = log.lock().unwrap();
            assert_eq!(l.activated, vec![(1 << 32, vec![(1, 64, 0x10_0000)])]);
        }
        d.bar_write(BAR, 0x14, &[0]);
        assert_eq!(log.lock().unwrap().resets, 1);
        let mut s = [0xffu8];
        d.bar_read(BAR, 0x14, &mut s);
        assert_eq!(s, [0]);
    }

    #[test]
    fn needs_reset_is_set_once_and_raises_the_config_vector() {
        let (mut d, _) = device();
        assert!(!d.signal_needs_reset(), "no driver yet");
        w16(&mut d, 0x10, 2);
        d.bar_write(BAR, 0x14, &[1 | 2 | 8]);
        d.bar_write(BAR, 0x14, &[1 | 2 | 4 | 8]);
        assert!(d.signal_needs_reset());
        let mut s = [0u8];
        d.bar_read(BAR, 0x14, &mut s);
        assert_eq!(s[0] & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        assert_eq!(d.routes.notifier(2).unwrap().read().unwrap(), 1);
        assert!(!d.signal_needs_reset(), "already set");
        d.bar_write(BAR, 0x14, &[0]);
        d.bar_read(BAR, 0x14, &mut s);
        assert_eq!(s, [0], "a reset clears it");
    }

    #[test]
    fn msix_programming_reaches_the_routes() {
        let (mut d, log) = device();
        // Vector 1's message, then unmask it, then enable MSI-X.
        w32(&mut d, MSIX_TABLE_OFFSET + 16, 0xfee0_0000);
        w32(&mut d, MSIX_TABLE_OFFSET + 24, 0x31);
        w32(&mut d, MSIX_TABLE_OFFSET + 28, 0);
        let masked_while_disabled = log.lock().unwrap().routes.last().unwrap().2;
        assert!(masked_while_disabled);
        let cap = d.msix_cap;
        d.config_write(cap + 2, &0x8000u16.to_le_bytes());
        let l = log.lock().unwrap();
        assert!(l.routes.contains(&(
            1,
            MsiMessage {
                addr: 0xfee0_0000,
                data: 0x31
            },
            false
        )));
        assert!(
            l.routes.iter().any(|r| r.0 == 0 && r.2),
            "vector 0 stays masked"
        );
    }

    #[test]
    fn pba_shows_signals_held_while_masked() {
        let (mut d, _) = device();
        let mut pba = [0u8; 8];
        d.bar_read(BAR, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        d.routes.notifier(2).unwrap().write(1).unwrap();
        d.bar_read(BAR, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(
            u64::from_le_bytes(pba),
            0b100,
            "vector 2 masked with a signal waiting"
        );
        // Unmasked and enabled: KVM owns delivery, nothing pending here.
        w32(&mut d, MSIX_TABLE_OFFSET + 2 * 16 + 12, 0);
        let cap = d.msix_cap;
        d.config_write(cap + 2, &0x8000u16.to_le_bytes());
        d.bar_read(BAR, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
    }

    #[test]
    fn notify_without_ioeventfd_still_kicks_and_config_reads_forward() {
        let (mut d, _) = device();
        w16(&mut d, NOTIFY_OFFSET + 4, 1);
        assert_eq!(d.notify_exit_counter().load(Ordering::Relaxed), 1);
        assert_eq!(d.kicks[1].read().unwrap(), 1);
        let mut c = [0u8; 4];
        d.bar_read(BAR, DEVICE_CFG_OFFSET + 8, &mut c);
        assert_eq!(c, [9; 4]);
        d.bar_read(1, 0, &mut c);
        assert_eq!(c, [0xff; 4]);
    }
}
