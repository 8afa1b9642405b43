//! Viaduct's VMM core: KVM set-up, boot (bzImage and PVH), vCPUs, platform
//! devices, and the event loop that runs a VM to its end.

pub mod api;
pub mod backends;
pub mod boot;
pub mod config;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod kvm_check;
pub mod landlock;
pub mod lifecycle;
pub mod memory;
pub mod pci;
pub mod seccomp;
pub mod vfio;
pub mod vm;
