//! The Intel MultiProcessor table (spec 1.4): how Linux finds N CPUs, the
//! IOAPIC and the ISA interrupt wiring without ACPI. Built as plain bytes
//! (no unsafe), placed at the start of the EBDA where Linux scans for it.

use crate::boot::layout::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR, addr32};

/// Why an MP table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit an MP table (1..=254)")]
    TooManyCpus(u8),
    #[error("MP table of {0} bytes does not fit below 640 KiB")]
    TooLarge(usize),
    #[error("MP table base {0:#x} is not below 640 KiB")]
    Base(u64),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const PCI_BUS_ID: u8 = 1;
/// Legacy ISA IRQs routed through the IOAPIC, pin = IRQ (KVM's default routing).
const ISA_IRQS: u8 = 16;
/// Size of the floating pointer structure.
const MPF_SIZE: usize = 16;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's id: right after the CPUs' APIC ids.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// Builds the floating pointer + configuration table for `cpus` vCPUs,
/// APIC ids 0..cpus, meant to be written at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let table_addr = base + MPF_SIZE as u64;
    let table_ptr = u32::try_from(table_addr).map_err(|_| MpTableError::Base(base))?;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(ISA_BUS_ID, b"ISA   "), (PCI_BUS_ID, b"PCI   ")] {
        entries.extend_from_slice(&[1, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[2, ioapic_id(cpus), IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&const { addr32(IOAPIC_ADDR) }.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // Interrupt source: default polarity/trigger for the bus (ISA: edge, high).
        entries.extend_from_slice(&[3, MP_INT, 0, 0, ISA_BUS_ID, irq, ioapic_id(cpus), irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1, for every CPU.
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    let len = 44 + entries.len();
    let len16 = u16::try_from(len).map_err(|_| MpTableError::TooLarge(len))?;
    table.extend_from_slice(&len16.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, patched below
    table.extend_from_slice(b"VIADUCT ");
    table.extend_from_slice(b"KVM-VMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&const { addr32(LAPIC_ADDR) }.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_ptr.to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, rev 1.4, no default config
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    if base + out.len() as u64 > 0xa0000 {
        return Err(MpTableError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Where the table goes.
pub const MPTABLE_ADDR: u64 = EBDA_START;

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let t = build(2, MPTABLE_ADDR).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, MPTABLE_ADDR + 16);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn lists_every_cpu_with_one_bsp() {
        let cpus = 4;
        let t = build(cpus, MPTABLE_ADDR).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, u16::from(cpus) + 2 + 1 + 16 + 2);
        let procs: Vec<&[u8]> = table[44..].chunks(20).take(cpus as usize).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p[0], 0, "processor entry");
            assert_eq!(p[1] as usize, i, "APIC id");
        }
        assert_eq!(procs.iter().filter(|p| p[3] & CPU_BSP != 0).count(), 1);
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert_eq!(build(0, 0), Err(MpTableError::TooManyCpus(0)));
        assert_eq!(build(255, 0), Err(MpTableError::TooManyCpus(255)));
        assert!(
            build(254, MPTABLE_ADDR).is_err(),
            "254 CPUs overflow base memory here"
        );
    }
}
