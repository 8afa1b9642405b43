//! PCI function emulation shared by the VMM, the virtio-pci transport and
//! VFIO passthrough: a type-0 configuration space with BARs and a
//! capability list, the MSI-X table and PBA, the MSI capability's
//! registers, BAR placement, the `PciDevice` trait the VMM's PCI bus
//! drives, and the `MsiRoutes` trait through which a function's vectors
//! reach the guest (implemented by the VMM over KVM irqfds and GSI routes).
//!
//! It never depends on virtio, KVM, VFIO or vhost-user: those build on it.

pub mod bars;
pub mod config;
pub mod msi_cap;
pub mod msix;

use vmm_sys_util::eventfd::EventFd;

pub use bars::{BarAllocError, BarAllocator};
pub use config::{BarRegion, PciConfig, PciIdentity};
pub use msix::{MsiMessage, Msix};

/// A PCI function as the VMM's bus sees it.
pub trait PciDevice: Send {
    /// Reads `data.len()` bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Writes configuration space at `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// The memory BARs and where the guest put them.
    fn bars(&self) -> Vec<BarRegion>;
    /// Places BAR `index` (initial allocation by the VMM).
    fn set_bar_addr(&mut self, index: usize, addr: u64);
    /// A read inside BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write inside BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Doorbells the VMM should turn into ioeventfds: (BAR, offset, eventfd).
    fn doorbells(&self) -> Vec<(usize, u64, &EventFd)>;
}

/// How a device's MSI-X vectors reach the guest.
pub trait MsiRoutes: Send {
    /// Points `vector` at `msg`; a masked vector must not interrupt (the
    /// event stays pending until it is unmasked).
    fn update(&mut self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()>;
    /// The eventfd that raises `vector`: handed to backends as a call fd.
    fn notifier(&self, vector: u16) -> Option<&EventFd>;
}
