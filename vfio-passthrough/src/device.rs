//! A passed-through PCI function as the VMM's bus sees it: configuration
//! space through [`VirtualConfig`], BARs mapped into the guest where the
//! region allows it ([`BarMaps`]), MSI-X table and PBA emulated
//! ([`MsixInterrupts`]), MSI emulated ([`MsiInterrupts`]), INTx through a
//! resampling irqfd ([`IntxInterrupts`]) whenever neither is on, and every
//! other BAR access forwarded to the VFIO region with the guest's exact
//! offset and size.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use pci::{BarRegion, MsiRoutes, PciDevice};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use crate::bars::{Area, BarMaps, SlotAllocator, mappable_areas};
use crate::config::{COMMAND, ConfigError, ConfigSpace, MsixLayout, VirtualConfig};
use crate::interrupts::{MsixBackend, MsixInterrupts};
use crate::intx::{IntxBackend, IntxInterrupts};
use crate::msi::{MsiBackend, MsiInterrupts};
use crate::reset;

/// Why a device model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}: configuration space")]
    Config(String, #[source] ConfigError),
    #[error("{0}: cannot create MSI-X routes")]
    Routes(String, #[source] std::io::Error),
    #[error("{0}: cannot create MSI routes")]
    MsiRoutes(String, #[source] std::io::Error),
}

const PAGE: u64 = 4096;

/// The device's config region as a [`ConfigSpace`].
struct ConfigRegion<'a>(&'a VfioDevice);

impl ConfigSpace for ConfigRegion<'_> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        // A failed region read leaves the buffer alone: all-ones, like a
        // missing device.
        data.fill(0xff);
        self.0
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.0
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
    }
}

/// MSI-X on and off through VFIO_DEVICE_SET_IRQS.
struct VfioMsix(Arc<VfioDevice>);

impl MsixBackend for VfioMsix {
    fn enable_msix(&self, fds: Vec<&EventFd>) -> std::io::Result<()> {
        self.0.enable_msix(fds).map_err(std::io::Error::other)
    }
    fn disable_msix(&self) -> std::io::Result<()> {
        self.0.disable_msix().map_err(std::io::Error::other)
    }
}

/// MSI on and off through VFIO_DEVICE_SET_IRQS.
struct VfioMsi(Arc<VfioDevice>);

impl MsiBackend for VfioMsi {
    fn enable_msi(&self, fds: Vec<&EventFd>) -> std::io::Result<()> {
        self.0.enable_msi(fds).map_err(std::io::Error::other)
    }
    fn disable_msi(&self) -> std::io::Result<()> {
        self.0.disable_msi().map_err(std::io::Error::other)
    }
}

/// INTx on and off through VFIO_DEVICE_SET_IRQS (trigger and unmask
/// eventfds).
struct VfioIntx(Arc<VfioDevice>);

impl IntxBackend for VfioIntx {
    fn enable(&self, trigger: &EventFd, resample: &EventFd) -> std::io::Result<()> {
        self.0
            .enable_irq(VFIO_PCI_INTX_IRQ_INDEX, vec![trigger])
            .map_err(std::io::Error::other)?;
        self.0
            .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![resample])
            .map_err(std::io::Error::other)
    }
    fn disable(&self) -> std::io::Result<()> {
        self.0
            .disable_irq(VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(std::io::Error::other)
    }
}

/// Where a trapped BAR access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Table(u64),
    Pba(u64),
    Region,
}

fn target(m: Option<MsixLayout>, bar: usize, offset: u64) -> Target {
    let Some(m) = m else {
        return Target::Region;
    };
    let within = |b: u8, start: u64, len: u64| {
        usize::from(b) == bar && offset >= start && offset - start < len
    };
    if within(m.table_bar, m.table_offset, m.table_size()) {
        Target::Table(offset - m.table_offset)
    } else if within(m.pba_bar, m.pba_offset, m.pba_size()) {
        Target::Pba(offset - m.pba_offset)
    } else {
        Target::Region
    }
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    // Dropped first: the BAR mmaps hold the device file open, and the
    // group can only leave the container once the device is released.
    maps: BarMaps,
    name: String,
    dev: Arc<VfioDevice>,
    config: VirtualConfig,
    msix: Option<MsixInterrupts>,
    msi: Option<MsiInterrupts>,
    intx: Option<IntxInterrupts>,
    vm: Arc<VmFd>,
    bar_sizes: [u64; 6],
    /// Counters an operator can read in the log at shutdown.
    trapped_reads: u64,
    trapped_writes: u64,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("name", &self.name)
            .field("bar_sizes", &self.bar_sizes)
            .field("maps", &self.maps)
            .field("msix", &self.msix)
            .field("msi", &self.msi)
            .field("intx", &self.intx)
            .field("trapped_reads", &self.trapped_reads)
            .field("trapped_writes", &self.trapped_writes)
            .finish_non_exhaustive()
    }
}

impl VfioPciDevice {
    /// Builds the model of an opened (and reset) device. `routes` gives
    /// MSI routes for a number of vectors (called for MSI-X and for MSI);
    /// `keep_msix` false hides MSI-X from the guest; `intx_gsi` maps the
    /// device's INTx pin (1-4) to the IOAPIC GSI the guest's firmware
    /// tables give it (`None`: no INTx).
    pub fn new(
        name: &str,
        dev: Arc<VfioDevice>,
        vm: Arc<VmFd>,
        slots: Arc<Mutex<SlotAllocator>>,
        keep_msix: bool,
        mut routes: impl FnMut(u16) -> std::io::Result<Box<dyn MsiRoutes>>,
        intx_gsi: &dyn Fn(u8) -> Option<u32>,
    ) -> Result<Self, DeviceError> {
        let mut bar_sizes = [0u64; 6];
        // VFIO's regions 0-5 are the BARs.
        for (i, s) in (0u32..).zip(bar_sizes.iter_mut()) {
            *s = dev.get_region_size(i);
        }
        let cfg_size = dev.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX);
        let mut config =
            VirtualConfig::with_msix(&ConfigRegion(&dev), bar_sizes, cfg_size, keep_msix)
                .map_err(|e| DeviceError::Config(name.into(), e))?;
        let layout = config.msix();
        let mut maps = BarMaps::new(vm.clone(), slots);
        for bar in config.bars() {
            // A BAR number (0-5) is its VFIO region index.
            let Ok(i) = u32::try_from(bar.index) else {
                continue;
            };
            let mmap = dev.get_region_flags(i) & VFIO_REGION_INFO_FLAG_MMAP != 0;
            let caps = dev.get_region_caps(i);
            let sparse: Option<Vec<Area>> = caps.iter().find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(
                    s.areas
                        .iter()
                        .map(|a| Area {
                            offset: a.offset,
                            size: a.size,
                        })
                        .collect(),
                ),
                _ => None,
            });
            let msix_mappable = caps.contains(&VfioRegionInfoCap::MsixMappable);
            let mut trapped = Vec::new();
            if let Some(m) = layout {
                if usize::from(m.table_bar) == bar.index {
                    trapped.push(Area {
                        offset: m.table_offset,
                        size: m.table_size(),
                    });
                }
                if usize::from(m.pba_bar) == bar.index {
                    trapped.push(Area {
                        offset: m.pba_offset,
                        size: m.pba_size(),
                    });
                }
            }
            // MSIX_MAPPABLE lets the pages around the table be mapped; the
            // table and PBA themselves are emulated either way.
            let sparse = if msix_mappable { None } else { sparse };
            let areas = mappable_areas(bar.size, mmap, sparse.as_deref(), &trapped, PAGE);
            for area in areas {
                if let Err(e) =
                    maps.mmap(dev.as_raw_fd(), bar.index, dev.get_region_offset(i), area)
                {
                    log::warn!("{name}: {e}; the area stays trapped");
                }
            }
        }
        let msix = match layout {
            Some(m) => {
                let r = routes(m.vectors).map_err(|e| DeviceError::Routes(name.into(), e))?;
                Some(MsixInterrupts::new(
                    m.vectors,
                    r,
                    Box::new(VfioMsix(dev.clone())),
                ))
            }
            None => None,
        };
        let msi = match config.msi() {
            Some(regs) => {
                let r = routes(regs.cap.max_vectors())
                    .map_err(|e| DeviceError::MsiRoutes(name.into(), e))?;
                Some(MsiInterrupts::new(r, Box::new(VfioMsi(dev.clone()))))
            }
            None => None,
        };
        let intx = Self::wire_intx(name, &dev, &vm, &mut config, intx_gsi);
        if msix.is_none() && msi.is_none() && intx.is_none() {
            log::warn!("{name}: no MSI-X, MSI or INTx; the guest gets no interrupts from it");
        }
        log::info!(
            "{name}: interrupts to the guest: MSI-X {}, MSI {}, INTx {}",
            layout.map_or("none".to_string(), |m| format!("{} vectors", m.vectors)),
            config.msi().map_or("none".to_string(), |m| format!(
                "{} vectors",
                m.cap.max_vectors()
            )),
            intx.as_ref().map_or("none".to_string(), |i| format!(
                "pin {} on GSI {}",
                config.device_int_pin(),
                i.gsi()
            ))
        );
        Ok(Self {
            name: name.into(),
            dev,
            config,
            msix,
            msi,
            intx,
            vm,
            maps,
            bar_sizes,
            trapped_reads: 0,
            trapped_writes: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// INTx: the device's pin on its GSI through a resampling irqfd, on
    /// from the start (the guest's first interrupt type). Any failure
    /// leaves the function without INTx, logged.
    fn wire_intx(
        name: &str,
        dev: &Arc<VfioDevice>,
        vm: &VmFd,
        config: &mut VirtualConfig,
        intx_gsi: &dyn Fn(u8) -> Option<u32>,
    ) -> Option<IntxInterrupts> {
        let pin = config.device_int_pin();
        let has_line = dev
            .get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)
            .is_some_and(|i| i.count == 1);
        if pin == 0 || !has_line {
            return None;
        }
        let gsi = intx_gsi(pin)?;
        let mut intx = match IntxInterrupts::new(gsi, Box::new(VfioIntx(dev.clone()))) {
            Ok(i) => i,
            Err(e) => {
                log::warn!("{name}: INTx eventfds: {e}");
                return None;
            }
        };
        if let Err(e) = vm.register_irqfd_with_resample(intx.trigger(), intx.resample(), gsi) {
            log::warn!("{name}: INTx irqfd on GSI {gsi}: {e}");
            return None;
        }
        if let Err(e) = intx.set(true) {
            log::warn!("{name}: INTx: {e}");
            let _ = vm.unregister_irqfd(intx.trigger(), gsi);
            return None;
        }
        config.expose_int_pin();
        Some(intx)
    }

    /// VFIO takes one interrupt type at a time: INTx is on exactly when
    /// neither MSI-X nor MSI is.
    fn msi_active(&self) -> bool {
        self.msix
            .as_ref()
            .is_some_and(MsixInterrupts::device_enabled)
            || self.msi.as_ref().is_some_and(|m| m.device_vectors() > 0)
    }

    fn set_intx(&mut self, on: bool) {
        if let Some(i) = &mut self.intx {
            if let Err(e) = i.set(on) {
                log::warn!("{}: INTx {}: {e}", self.name, if on { "on" } else { "off" });
            }
        }
    }

    /// BAR areas in the guest: (BAR, area, guest address if placed).
    pub fn mapped_areas(&self) -> Vec<(usize, Area, Option<u64>)> {
        self.maps.areas()
    }

    fn memory_enabled(&self) -> bool {
        let mut cmd = [0u8; 2];
        ConfigRegion(&self.dev).read(COMMAND, &mut cmd);
        u16::from_le_bytes(cmd) & 0x2 != 0
    }

    fn remap(&mut self) {
        let placed: Vec<BarRegion> = if self.memory_enabled() {
            self.config
                .bars()
                .into_iter()
                .filter(|b| b.addr != 0 && b.addr.checked_add(b.size).is_some())
                .collect()
        } else {
            Vec::new()
        };
        if let Err(e) = self.maps.reconcile(&placed) {
            log::warn!("{}: {e}; accesses there are trapped", self.name);
        }
    }

    /// The VFIO region index of BAR `bar` if an access of `len` bytes at
    /// `offset` lies inside it.
    fn region_of(&self, bar: usize, offset: u64, len: usize) -> Option<u32> {
        let inside = matches!(len, 1 | 2 | 4 | 8)
            && self
                .bar_sizes
                .get(bar)
                .is_some_and(|s| offset.checked_add(len as u64).is_some_and(|e| e <= *s));
        if !inside {
            return None;
        }
        u32::try_from(bar).ok()
    }

    /// Ends the device's part in the VM: MSI-X off, BARs out of the guest,
    /// function reset. The device stays bound to vfio-pci.
    pub fn shutdown(&mut self) {
        if let Some(m) = &mut self.msix {
            if let Err(e) = m.shutdown() {
                log::warn!("{}: {e}", self.name);
            }
        }
        if let Some(m) = &mut self.msi {
            if let Err(e) = m.shutdown() {
                log::warn!("{}: {e}", self.name);
            }
        }
        self.set_intx(false);
        if let Some(i) = &self.intx {
            if let Err(e) = self.vm.unregister_irqfd(i.trigger(), i.gsi()) {
                log::warn!("{}: INTx irqfd: {e}", self.name);
            }
        }
        if let Err(e) = self.maps.reconcile(&[]) {
            log::warn!("{}: {e}", self.name);
        }
        match reset::reset(&*self.dev) {
            Ok(()) => log::info!(
                "{}: reset after the guest ({} trapped reads, {} trapped writes)",
                self.name,
                self.trapped_reads,
                self.trapped_writes
            ),
            Err(e) => log::warn!("{}: reset after the guest: {e}", self.name),
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config
            .read(&ConfigRegion(&self.dev), offset as u64, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let effect = self
            .config
            .write(&ConfigRegion(&self.dev), offset as u64, data);
        if effect.remap {
            self.remap();
        }
        let irq_change = effect.msix_control.is_some() || effect.msi.is_some();
        if irq_change {
            // Off before MSI/MSI-X can be enabled (VFIO refuses both at once).
            self.set_intx(false);
        }
        if let (Some(ctrl), Some(m)) = (effect.msix_control, &mut self.msix) {
            if let Err(e) = m.set_control(ctrl) {
                log::warn!("{}: MSI-X control {ctrl:#x}: {e}", self.name);
            }
        }
        if let (Some(regs), Some(m)) = (effect.msi, &mut self.msi) {
            let before = m.device_vectors();
            match m.apply(&regs) {
                Ok(()) if m.device_vectors() != before => log::info!(
                    "{}: MSI {} vectors in the device",
                    self.name,
                    m.device_vectors()
                ),
                Ok(()) => {}
                Err(e) => log::warn!("{}: MSI: {e}", self.name),
            }
        }
        if irq_change && !self.msi_active() {
            self.set_intx(true);
        }
    }

    fn bars(&self) -> Vec<BarRegion> {
        self.config.bars()
    }

    fn set_bar_addr(&mut self, index: usize, addr: u64) {
        self.config.set_bar_addr(index, addr);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.trapped_reads += 1;
        let region = self.region_of(bar, offset, data.len());
        match (target(self.config.msix(), bar, offset), &mut self.msix) {
            (Target::Table(o), Some(m)) => m.table_read(o, data),
            (Target::Pba(o), Some(m)) => m.pba_read(o, data),
            _ => {
                data.fill(0xff);
                if let Some(region) = region {
                    self.dev.region_read(region, data, offset);
                }
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.trapped_writes += 1;
        let region = self.region_of(bar, offset, data.len());
        match (target(self.config.msix(), bar, offset), &mut self.msix) {
            (Target::Table(o), Some(m)) => {
                if let Err(e) = m.table_write(o, data) {
                    log::warn!("{}: MSI-X table write at {o:#x}: {e}", self.name);
                }
            }
            (Target::Pba(_), _) => {}
            _ => {
                if let Some(region) = region {
                    self.dev.region_write(region, data, offset);
                }
            }
        }
    }

    fn doorbells(&self) -> Vec<(usize, u64, &EventFd)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_table_and_pba_are_found_in_their_bar() {
        let m = MsixLayout {
            cap: 0x70,
            vectors: 10,
            table_bar: 3,
            table_offset: 0,
            pba_bar: 3,
            pba_offset: 0x2000,
        };
        assert_eq!(target(Some(m), 3, 0x10), Target::Table(0x10));
        assert_eq!(target(Some(m), 3, 159), Target::Table(159));
        assert_eq!(
            target(Some(m), 3, 160),
            Target::Region,
            "past the last entry"
        );
        assert_eq!(target(Some(m), 3, 0x2004), Target::Pba(4));
        assert_eq!(target(Some(m), 3, 0x2008), Target::Region);
        assert_eq!(target(Some(m), 0, 0x10), Target::Region, "other BAR");
        assert_eq!(target(None, 3, 0), Target::Region);
    }
}
