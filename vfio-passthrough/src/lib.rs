//! VFIO PCI passthrough and SR-IOV VF management.
//!
//! - [`sriov`]: creating and destroying VFs (sysfs), configuring them from
//!   the PF (rtnetlink `IFLA_VFINFO_LIST`), binding them to vfio-pci.
//! - Passthrough of a device into a guest: [`group`] (is it usable?),
//!   [`session`] (container, DMA, open/reset/shutdown), [`device`] (the
//!   PCI function the VMM's bus drives), [`config`] (config-space
//!   virtualization; [`cap_extent`]: where hidden capabilities lie),
//!   [`bars`] (BARs as KVM memory slots),
//!   [`interrupts`] (MSI-X to irqfd), [`msi`] (MSI, over `pci::msi_cap`),
//!   [`intx`] (INTx with a resampling irqfd), [`dma`],
//!   [`reset`], [`vf`] (mac/vlan).

pub mod bars;
pub mod cap_extent;
pub mod config;
pub mod device;
pub mod dma;
pub mod group;
pub mod interrupts;
pub mod intx;
pub mod msi;
pub mod reset;
pub mod session;
pub mod sriov;
pub mod vf;
