//! VFIO PCI passthrough and SR-IOV VF management.
//!
//! - [`sriov`]: creating and destroying VFs (sysfs), configuring them from
//!   the PF (rtnetlink `IFLA_VFINFO_LIST`), binding them to vfio-pci.
//!
//! Passthrough of a device into a guest (container/group/device, DMA maps,
//! config-space virtualization, MSI-X to irqfd) is issue 6's next part.

pub mod sriov;
