//! Viaduct's VMM core: KVM set-up, boot, platform devices and the PCI bus.
//!
//! Only the KVM capability check exists so far; booting guests is issue 5.

pub mod kvm_check;
