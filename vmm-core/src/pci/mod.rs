//! The VMM's PCI side: bus 0 with config mechanism #1 and ECAM, the host
//! bridge, BAR windows, INTx GSIs, and MSI routing over KVM (the PCI
//! functions themselves are built on the `pci` crate).

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
