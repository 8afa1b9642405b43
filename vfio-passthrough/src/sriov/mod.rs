//! SR-IOV management: what `viaduct sriov ...` does.
//!
//! - [`pci`]: PCI functions in sysfs (PF lookup, VF creation, driver binding);
//! - [`netlink`]: per-VF settings the PF driver applies (MAC, VLAN, spoof
//!   checking, trust, link state, rate), set and read back over rtnetlink;
//! - [`cli`]: the command-line surface.

pub mod cli;
pub mod netlink;
pub mod pci;
