//! PCI bus 0 behind configuration mechanism #1 (ports 0xCF8/0xCFC; ECAM
//! in [`super::ecam`] reaches the same functions), and
//! the BAR windows on the MMIO bus. A BAR is mapped while the function's
//! memory decoding is on and its address is sane; every config write to
//! COMMAND or a BAR reconciles the mapping and moves the device's
//! doorbell ioeventfds with it.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use pci::{BarRegion, PciDevice};

use crate::devices::bus::{Bus, BusDevice};

/// Port of CONFIG_ADDRESS; CONFIG_DATA follows at +4.
pub const CONFIG_PORT: u64 = 0xcf8;
pub const CONFIG_PORT_LEN: u64 = 8;
const SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;
const COMMAND: usize = 0x04;
const BAR_FIRST: usize = 0x10;
const BAR_END: usize = 0x28;

/// Why a device could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciRootError {
    #[error("PCI slot {0} is taken or out of range")]
    Slot(u8),
}

/// A device shared by the config space and its BAR windows.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Decoded CONFIG_ADDRESS: (slot, register byte offset) on bus 0 function 0.
pub fn decode_address(address: u32) -> Option<(usize, usize)> {
    let bus = (address >> 16) & 0xff;
    let function = (address >> 8) & 0x7;
    if address & ENABLE == 0 || bus != 0 || function != 0 {
        return None;
    }
    Some((((address >> 11) & 0x1f) as usize, (address & 0xfc) as usize))
}

/// Forwards MMIO in one BAR to its device.
struct BarWindow {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_read(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(self.bar, offset, data);
    }
}

struct Slot {
    device: SharedPciDevice,
    mapped: Vec<BarRegion>,
}

/// Bus 0.
pub struct PciRoot {
    address: u32,
    slots: Vec<Option<Slot>>,
    mmio: Arc<Bus>,
    vm: Option<Arc<VmFd>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let occupied: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        f.debug_struct("PciRoot")
            .field("address", &self.address)
            .field("occupied_slots", &occupied)
            .finish_non_exhaustive()
    }
}

impl PciRoot {
    /// `vm` None: no ioeventfds (unit tests).
    pub fn new(mmio: Arc<Bus>, vm: Option<Arc<VmFd>>) -> Self {
        Self {
            address: 0,
            slots: (0..SLOTS).map(|_| None).collect(),
            mmio,
            vm,
        }
    }

    pub fn add(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciRootError> {
        match self.slots.get_mut(usize::from(slot)) {
            Some(s @ None) => {
                *s = Some(Slot {
                    device,
                    mapped: Vec::new(),
                });
                Ok(())
            }
            _ => Err(PciRootError::Slot(slot)),
        }
    }

    /// Brings the MMIO bus and ioeventfds in line with the device's BARs.
    fn reconcile(&mut self, index: usize) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let dev = slot.device.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = [0u8; 2];
        let mut dev = dev;
        dev.config_read(COMMAND, &mut cmd);
        let enabled = u16::from_le_bytes(cmd) & 0x2 != 0;
        let wanted: Vec<BarRegion> = dev
            .bars()
            .into_iter()
            .filter(|b| enabled && b.addr != 0 && b.addr.checked_add(b.size).is_some())
            .collect();
        if wanted == slot.mapped {
            return;
        }
        for old in std::mem::take(&mut slot.mapped) {
            self.mmio.remove(old.addr);
            if let Some(vm) = &self.vm {
                for (_, off, evt) in dev.doorbells().into_iter().filter(|d| d.0 == old.index) {
                    let _ = vm.unregister_ioevent(
                        evt,
                        &IoEventAddress::Mmio(old.addr + off),
                        NoDatamatch,
                    );
                }
            }
        }
        for b in wanted {
            let window = Arc::new(Mutex::new(BarWindow {
                device: slot.device.clone(),
                bar: b.index,
            }));
            if let Err(e) = self.mmio.insert(window, b.addr, b.size) {
                log::warn!("PCI 00:{index:02x}.0 BAR {} at {:#x}: {e}", b.index, b.addr);
                continue;
            }
            if let Some(vm) = &self.vm {
                for (_, off, evt) in dev.doorbells().into_iter().filter(|d| d.0 == b.index) {
                    if let Err(e) =
                        vm.register_ioevent(evt, &IoEventAddress::Mmio(b.addr + off), NoDatamatch)
                    {
                        log::warn!("ioeventfd at {:#x}: {e}", b.addr + off);
                    }
                }
            }
            slot.mapped.push(b);
        }
    }

    fn device(&self, slot: usize) -> Option<SharedPciDevice> {
        self.slots.get(slot)?.as_ref().map(|s| s.device.clone())
    }

    /// A config read of function 0 in `slot` at `reg` (mechanism #1 or
    /// ECAM); an empty slot reads all-ones.
    pub fn config_read_at(&self, slot: usize, reg: usize, data: &mut [u8]) {
        match self.device(slot) {
            Some(dev) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(reg, data),
            None => data.fill(0xff),
        }
    }

    /// A config write to function 0 in `slot` at `reg`; COMMAND and BAR
    /// writes move the device's BAR windows.
    pub fn config_write_at(&mut self, slot: usize, reg: usize, data: &[u8]) {
        let Some(dev) = self.device(slot) else {
            return;
        };
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(reg, data);
        if reg < COMMAND + 2 && reg + data.len() > COMMAND || (BAR_FIRST..BAR_END).contains(&reg) {
            self.reconcile(slot);
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(off) = usize::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        if off < 4 {
            let bytes = self.address.to_le_bytes();
            match bytes.get(off..off + data.len()) {
                Some(src) => data.copy_from_slice(src),
                None => data.fill(0xff),
            }
            return;
        }
        match decode_address(self.address) {
            Some((slot, reg)) => self.config_read_at(slot, reg + off - 4, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        if off < 4 {
            let mut bytes = self.address.to_le_bytes();
            if let Some(dst) = bytes.get_mut(off..off + data.len()) {
                dst.copy_from_slice(data);
                self.address = u32::from_le_bytes(bytes);
            }
            return;
        }
        if let Some((slot, reg)) = decode_address(self.address) {
            self.config_write_at(slot, reg + off - 4, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;
    use pci::{PciConfig, PciIdentity};
    use vmm_sys_util::eventfd::EventFd;

    struct OneBar(PciConfig, Vec<u8>);
    impl PciDevice for OneBar {
        fn config_read(&mut self, o: usize, d: &mut [u8]) {
            self.0.read(o, d)
        }
        fn config_write(&mut self, o: usize, d: &[u8]) {
            self.0.write(o, d)
        }
        fn bars(&self) -> Vec<BarRegion> {
            self.0.bars()
        }
        fn set_bar_addr(&mut self, i: usize, a: u64) {
            self.0.set_bar_addr(i, a)
        }
        fn bar_read(&mut self, _b: usize, o: u64, d: &mut [u8]) {
            d.fill((o & 0xff) as u8)
        }
        fn bar_write(&mut self, _b: usize, _o: u64, d: &[u8]) {
            self.1.extend_from_slice(d)
        }
        fn doorbells(&self) -> Vec<(usize, u64, &EventFd)> {
            Vec::new()
        }
    }

    fn addr(slot: u32, reg: u32) -> [u8; 4] {
        (ENABLE | slot << 11 | reg).to_le_bytes()
    }

    #[test]
    fn conf1_probe_and_host_bridge() {
        let mut root = PciRoot::new(Arc::new(Bus::new()), None);
        root.add(0, Arc::new(Mutex::new(HostBridge::default())))
            .unwrap();
        assert_eq!(
            root.add(0, Arc::new(Mutex::new(HostBridge::default()))),
            Err(PciRootError::Slot(0))
        );
        // Linux's type-1 check: byte write to 0xCFB, then the address reads back.
        root.write(3, &[1]);
        root.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        root.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        root.write(0, &addr(0, 0x08));
        let mut class = [0u8; 2];
        root.read(6, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
        root.write(0, &addr(5, 0));
        root.read(4, &mut b);
        assert_eq!(b, [0xff; 4], "empty slot");
        assert_eq!(decode_address(ENABLE | 1 << 16), None, "bus 1");
        assert_eq!(decode_address(ENABLE | 1 << 8), None, "function 1");
    }

    #[test]
    fn bar_is_mapped_while_memory_decoding_is_on() {
        let mmio = Arc::new(Bus::new());
        let mut root = PciRoot::new(mmio.clone(), None);
        let mut cfg = PciConfig::new(PciIdentity {
            vendor: 1,
            device: 2,
            revision: 0,
            class: (0xff, 0, 0),
            subsystem_vendor: 0,
            subsystem: 0,
        });
        cfg.add_mem64_bar(0, 0x1000).unwrap();
        cfg.set_bar_addr(0, 0xc000_0000);
        let dev = Arc::new(Mutex::new(OneBar(cfg, Vec::new())));
        root.add(3, dev.clone()).unwrap();
        let mut b = [0u8; 4];
        assert!(!mmio.read(0xc000_0010, &mut b), "decoding off");
        root.write(0, &addr(3, 0x04));
        root.write(4, &[0x06, 0]);
        assert!(mmio.read(0xc000_0010, &mut b));
        assert_eq!(b, [0x10; 4]);
        // The guest moves the BAR.
        root.write(0, &addr(3, 0x10));
        root.write(4, &0xd000_0000u32.to_le_bytes());
        assert!(!mmio.read(0xc000_0010, &mut b));
        assert!(mmio.write(0xd000_0000, &[7]));
        assert_eq!(dev.lock().unwrap().1, vec![7]);
        // Decoding off unmaps.
        root.write(0, &addr(3, 0x04));
        root.write(4, &[0, 0]);
        assert!(!mmio.write(0xd000_0000, &[7]));
    }
}
