//! The guest kit: everything Viaduct's end-to-end tests need to boot real
//! Linux guests, provisioned from Debian's packages into a cache outside the
//! repository.
//!
//! - [`provision`]: host packages (QEMU 10 from bookworm-backports, busybox,
//!   cpio, qemu-utils) and the stock guest kernel with its modules;
//! - [`kernel`]: cutting the uncompressed vmlinux out of the bzImage (PVH);
//! - [`modules`]: kernel module lookup with their dependencies;
//! - [`initramfs`]: busybox initramfs images with modules, files, project
//!   binaries (plus the libraries `ldd` names) and a scenario script;
//! - [`console`]: the result protocol guests speak on their serial console;
//! - [`qemu`]: running a QEMU process with a deadline;
//! - [`qmp`]: a QMP client for migrations (`migrate`, `query-migrate`);
//! - [`vm`]: a QEMU process left running (console, stdin, QMP), for migrations;
//! - [`migload`]: the live-migration workload (guest programs, host checks);
//! - [`rarp`]: watching a TAP for a MAC's RARP announcement and first frames;
//! - [`host_a`]: test host A, a TCG guest with vhost-user devices;
//! - [`host_b`]: test host B, a nested KVM host with an IOMMU, an SR-IOV NIC
//!   and an NVMe controller;
//! - [`hugepages`]: host hugepages and a hugetlbfs for a test, restored after;
//! - [`wire`]: the host end of test host B's igb wire (ARP/ICMP responder).

pub mod binaries;
pub mod cache;
pub mod console;
pub mod cpio;
pub mod daemon;
pub mod host_a;
pub mod host_b;
pub mod hugepages;
pub mod initramfs;
pub mod kernel;
pub mod l2;
pub mod migload;
pub mod modules;
pub mod netns;
pub mod provision;
pub mod qemu;
pub mod qmp;
pub mod rarp;
pub mod restart_load;
pub mod selftest;
pub mod shell;
pub mod vm;
pub mod wire;
