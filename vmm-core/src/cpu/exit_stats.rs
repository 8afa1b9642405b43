//! Counts of the vCPU exits the VMM process handled, by kind, shared by
//! all vCPU threads. With ioeventfds and irqfds in place the data path
//! causes none: these counters (and each virtio-pci device's doorbell
//! counter) are how that is shown.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;
use serde::Serialize;

/// Exits by kind.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pio: AtomicU64,
    mmio: AtomicU64,
    other: AtomicU64,
}

/// A consistent-enough copy for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitSnapshot {
    pub total: u64,
    pub pio: u64,
    pub mmio: u64,
    pub other: u64,
}

impl ExitCounters {
    /// Counts one exit returned by KVM_RUN.
    pub fn record(&self, exit: &VcpuExit) {
        let c = match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &self.pio,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &self.mmio,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExitSnapshot {
        let pio = self.pio.load(Ordering::Relaxed);
        let mmio = self.mmio.load(Ordering::Relaxed);
        let other = self.other.load(Ordering::Relaxed);
        ExitSnapshot {
            total: pio + mmio + other,
            pio,
            mmio,
            other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_kind() {
        let c = ExitCounters::default();
        let mut b = [0u8; 1];
        c.record(&VcpuExit::IoIn(0x3f8, &mut b));
        c.record(&VcpuExit::IoOut(0x3f8, b"x"));
        c.record(&VcpuExit::MmioWrite(0xd000_0000, &[0; 4]));
        c.record(&VcpuExit::Hlt);
        assert_eq!(
            c.snapshot(),
            ExitSnapshot {
                total: 4,
                pio: 2,
                mmio: 1,
                other: 1
            }
        );
    }
}
