//! The PCI host bridge at 00:00.0: nothing but identity, so Linux's
//! `pci=conf1` sanity check (it looks for a host-bridge class on bus 0)
//! accepts configuration mechanism #1.

use pci::{BarRegion, PciConfig, PciDevice, PciIdentity};
use vmm_sys_util::eventfd::EventFd;

/// The host bridge.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfig,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self {
            config: PciConfig::new(PciIdentity {
                vendor: 0x8086,
                device: 0x0d57,
                revision: 0,
                class: (0x06, 0x00, 0x00),
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bars(&self) -> Vec<BarRegion> {
        Vec::new()
    }
    fn set_bar_addr(&mut self, _index: usize, _addr: u64) {}
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn doorbells(&self) -> Vec<(usize, u64, &EventFd)> {
        Vec::new()
    }
}
