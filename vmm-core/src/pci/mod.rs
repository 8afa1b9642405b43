//! The VMM's PCI side: bus 0 with config mechanism #1 and ECAM, the host
//! bridge, BAR placement, INTx GSIs, and MSI routing over KVM.

pub mod ecam;
pub mod host_bridge;
pub mod msi;
pub mod root;

/// First IOAPIC pin for PCI INTx (16-23, level-triggered, active low).
pub const FIRST_INTX_GSI: u32 = 16;
/// IOAPIC pins shared by PCI INTx.
pub const INTX_GSIS: u32 = 8;

/// The IOAPIC GSI of INTx pin `pin` (1 = INTA … 4 = INTD) of the function
/// in `slot`: swizzled over pins 16-23, so neighbouring slots' INTA lines
/// do not share. The DSDT's `_PRT` publishes the same mapping.
pub fn intx_gsi(slot: u8, pin: u8) -> Option<u32> {
    if !(1..=4).contains(&pin) || slot >= 32 {
        return None;
    }
    Some(FIRST_INTX_GSI + (u32::from(slot) + u32::from(pin) - 1) % INTX_GSIS)
}

/// Why a BAR could not be placed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BarAllocError {
    #[error("no room for a BAR of {0:#x} bytes in the PCI window")]
    NoRoom(u64),
}

/// Hands out naturally aligned BAR addresses from a window.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    pub fn new(start: u64, size: u64) -> Self {
        Self {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// `size` must be a power of two (PCI BARs are).
    pub fn allocate(&mut self, size: u64) -> Result<u64, BarAllocError> {
        let err = BarAllocError::NoRoom(size);
        if !size.is_power_of_two() {
            return Err(err);
        }
        let addr = self.next.checked_add(size - 1).ok_or(err.clone())? & !(size - 1);
        let end = addr.checked_add(size).ok_or(err.clone())?;
        if end > self.end {
            return Err(err);
        }
        self.next = end;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_and_bounded() {
        let mut a = BarAllocator::new(0xc000_1000, 0x10000);
        assert_eq!(a.allocate(0x8000), Ok(0xc000_8000));
        assert_eq!(a.allocate(0x1000), Ok(0xc001_0000));
        assert_eq!(a.allocate(0x8000), Err(BarAllocError::NoRoom(0x8000)));
        assert_eq!(a.allocate(0x3000), Err(BarAllocError::NoRoom(0x3000)));
    }
}
