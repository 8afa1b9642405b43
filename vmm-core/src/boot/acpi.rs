//! Minimal ACPI for power management and PCI discovery: RSDP → XSDT →
//! FADT (hardware-reduced, with sleep control/status and reset registers
//! on ports the VMM decodes) → DSDT (`\_S5` and the PCI host bridge with
//! its bus, config-port and memory windows in `_CRS` and its INTx routing
//! in `_PRT`) and MADT (one
//! local APIC per vCPU, the IOAPIC, NMI on LINT1; ISA IRQs map 1:1 to GSIs
//! as KVM wires them), MCFG (ECAM for bus 0: extended config space). The MP table stays for guests booted `acpi=off`.
//! Hand-assembled bytes, checksummed; pure, so tests check the layout.

use crate::boot::layout::{
    IOAPIC_ADDR, LAPIC_ADDR, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START,
    PCI_MMIO64_SIZE, PCI_MMIO64_START, addr32,
};
use crate::boot::mptable::ioapic_id;

/// Where the tables go: the BIOS area Linux scans for the RSDP.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// Ports of the sleep control, sleep status and reset registers.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;
pub const RESET_PORT: u16 = 0x602;
/// Value written to the reset register to reset.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP for S5 as `\_S5` declares it.
pub const S5_SLEEP_TYPE: u8 = 5;

const OEM_ID: &[u8; 6] = b"VIADCT";
const OEM_TABLE_ID: &[u8; 8] = b"VIADUCT ";
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: no VGA. No 8042 bit: Linux then skips probing a keyboard
/// controller (the reset line at 0x64 still works for `reboot=k`).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const SCI_IRQ: u16 = 9;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A table with its 36-byte header; the length and checksum are fixed up.
// Cannot truncate: the tables here are fixed templates or grow with the
// vCPU count (at most 255 MADT entries of 8 bytes): a few KiB at most.
#[allow(clippy::cast_possible_truncation)]
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"VDCT");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure for a byte-wide I/O port.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// AML PkgLength for a package whose contents (after the PkgLength) are `len` bytes.
fn pkg_length(len: usize) -> Vec<u8> {
    // Longer than any encoding holds (2^28 bytes): no encoding.
    let Ok(len) = u32::try_from(len) else {
        return Vec::new();
    };
    // The encoding counts its own bytes.
    for n in 1..=4u8 {
        let total = len.saturating_add(u32::from(n));
        let fits = match n {
            1 => total < 0x40,
            2 => total < 0x1000,
            3 => total < 0x10_0000,
            _ => total < 0x1000_0000,
        };
        if fits {
            if n == 1 {
                return vec![(total & 0x3f) as u8];
            }
            let mut v = vec![(n - 1) << 6 | (total & 0xf) as u8];
            for i in 0..u32::from(n - 1) {
                v.push(((total >> (4 + 8 * i)) & 0xff) as u8);
            }
            return v;
        }
    }
    Vec::new()
}

fn aml_package(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len()));
    v.extend_from_slice(body);
    v
}

fn aml_name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(name);
    v.extend_from_slice(value);
    v
}

/// `_CRS` of the host bridge: bus 0, ports 0xCF8-0xCFF, the 32-bit and
/// the 64-bit windows.
fn host_bridge_crs() -> Vec<u8> {
    let mut r = Vec::new();
    // WordBusNumber: producer, min/max fixed, bus 0..0.
    r.extend_from_slice(&[0x88, 13, 0, 2, 0x0c, 0]);
    for v in [0u16, 0, 0, 0, 1] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    // IO (Decode16, 0xCF8, 0xCF8, 1, 8).
    r.extend_from_slice(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    // DWordMemory: producer, min/max fixed, read-write, non-cacheable.
    r.extend_from_slice(&[0x87, 23, 0, 0, 0x0c, 0x01]);
    let start = const { addr32(PCI_MMIO32_START) };
    let len = const { addr32(PCI_MMIO32_SIZE) };
    for v in [0u32, start, start + (len - 1), 0, len] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    // QWordMemory: the same, for the window above RAM.
    r.extend_from_slice(&[0x8a, 43, 0, 0, 0x0c, 0x01]);
    let (start, len) = (PCI_MMIO64_START, PCI_MMIO64_SIZE);
    for v in [0u64, start, start + (len - 1), 0, len] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    r.extend_from_slice(&[0x79, 0]); // end tag
    // Buffer (size) { bytes }
    let mut body = vec![0x0b];
    // Cannot truncate: the template above is under a hundred bytes.
    #[allow(clippy::cast_possible_truncation)]
    body.extend_from_slice(&(r.len() as u16).to_le_bytes());
    body.extend_from_slice(&r);
    aml_package(&[0x11], &body)
}

/// COM1 as firmware describes it: with hardware-reduced ACPI there is no
/// legacy PIC, so Linux maps ISA IRQ 4 to its GSI only for a device that
/// declares it (the 8250 PNP driver then takes over the legacy ttyS0).
fn com1_device() -> Vec<u8> {
    let mut dev = b"COM1".to_vec();
    // EisaId ("PNP0501")
    dev.extend(aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
    dev.extend(aml_name(b"_UID", &[0x00]));
    let mut r = vec![0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]; // IO 0x3F8, 8 ports
    r.extend_from_slice(&[0x22, 0x10, 0x00]); // IRQNoFlags () { 4 }
    r.extend_from_slice(&[0x79, 0]);
    // Cannot truncate: the template above is 13 bytes.
    #[allow(clippy::cast_possible_truncation)]
    let mut body = vec![0x0a, r.len() as u8];
    body.extend_from_slice(&r);
    dev.extend(aml_name(b"_CRS", &aml_package(&[0x11], &body)));
    aml_package(&[0x5b, 0x82], &dev)
}

/// The CMOS clock at 0x70 (no interrupt: the alarm is not emulated).
fn rtc_device() -> Vec<u8> {
    let mut dev = b"RTC_".to_vec();
    // EisaId ("PNP0B00")
    dev.extend(aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
    let r = [0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79, 0x00];
    // Cannot truncate: the template above is 10 bytes.
    #[allow(clippy::cast_possible_truncation)]
    let mut body = vec![0x0a, r.len() as u8];
    body.extend_from_slice(&r);
    dev.extend(aml_name(b"_CRS", &aml_package(&[0x11], &body)));
    aml_package(&[0x5b, 0x82], &dev)
}

/// `_PRT` of the host bridge: every slot's INTA-INTD to its IOAPIC GSI
/// ([`crate::pci::intx_gsi`]); static GSIs, so level-triggered, active low.
fn pci_routing_table() -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count = 0u8;
    for slot in 0..32u8 {
        for pin in 1..=4u8 {
            // IOAPIC GSIs are below 24: each fits the ByteConst below.
            let Some(gsi) = crate::pci::intx_gsi(slot, pin).and_then(|g| u8::try_from(g).ok())
            else {
                continue;
            };
            // Package (4) { 0xSSSSFFFF, pin, Zero, gsi }
            let mut e = vec![0x04, 0x0c];
            e.extend_from_slice(&(u32::from(slot) << 16 | 0xffff).to_le_bytes());
            e.extend_from_slice(&[0x0a, pin - 1, 0x00, 0x0a, gsi]);
            entries.extend(aml_package(&[0x12], &e));
            count += 1;
        }
    }
    let mut body = vec![count];
    body.extend(entries);
    aml_package(&[0x12], &body)
}

/// The DSDT's AML.
pub fn dsdt_aml() -> Vec<u8> {
    let mut aml = Vec::new();
    // Name (_S5, Package (4) { 5, 5, 0, 0 })
    let s5 = [0x04, 0x0a, S5_SLEEP_TYPE, 0x0a, S5_SLEEP_TYPE, 0x00, 0x00];
    aml.extend(aml_name(b"_S5_", &aml_package(&[0x12], &s5)));
    let mut dev = b"PCI0".to_vec();
    // EisaId ("PNP0A03")
    dev.extend(aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
    dev.extend(aml_name(b"_UID", &[0x00]));
    dev.extend(aml_name(b"_SEG", &[0x00]));
    dev.extend(aml_name(b"_BBN", &[0x00]));
    dev.extend(aml_name(b"_CRS", &host_bridge_crs()));
    dev.extend(aml_name(b"_PRT", &pci_routing_table()));
    let device = aml_package(&[0x5b, 0x82], &dev);
    let mut scope = b"\\_SB_".to_vec();
    scope.extend(device);
    scope.extend(com1_device());
    scope.extend(rtc_device());
    aml.extend(aml_package(&[0x10], &scope));
    aml
}

/// The FADT (revision 6) pointing at the DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let mut put =
        |off: usize, bytes: &[u8]| b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    // The 32-bit DSDT field is zero when the table is above 4 GiB (the
    // 64-bit X_DSDT at 140 always holds it).
    put(40, &u32::try_from(dsdt_addr).unwrap_or(0).to_le_bytes());
    put(46, &SCI_IRQ.to_le_bytes());
    put(109, &IAPC_BOOT_ARCH_NO_VGA.to_le_bytes());
    put(
        112,
        &(FADT_FLAG_HW_REDUCED_ACPI | FADT_FLAG_RESET_REG_SUP).to_le_bytes(),
    );
    put(116, &gas_io(RESET_PORT));
    put(128, &[RESET_VALUE]);
    put(131, &[5]); // FADT minor version (ACPI 6.5)
    put(140, &dsdt_addr.to_le_bytes());
    put(244, &gas_io(SLEEP_CONTROL_PORT));
    put(256, &gas_io(SLEEP_STATUS_PORT));
    put(268, b"VIADUCT\0");
    sdt(b"FACP", 6, &b)
}

/// The MADT for `cpus` vCPUs with APIC ids 0..cpus.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&const { addr32(LAPIC_ADDR) }.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s
    for id in 0..cpus {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, ioapic_id(cpus), 0]);
    b.extend_from_slice(&const { addr32(IOAPIC_ADDR) }.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    // Local APIC NMI: all processors, LINT1.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &b)
}

/// The last bus the ECAM window holds (1 MiB per bus).
// Cannot truncate: checked just above, when compiling.
#[allow(clippy::cast_possible_truncation)]
const LAST_BUS: u8 = {
    let last = (PCI_ECAM_SIZE >> 20) - 1;
    assert!(last <= u8::MAX as u64);
    last as u8
};

/// The MCFG: ECAM for segment 0, buses 0 to the last the window holds.
pub fn mcfg() -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b.extend_from_slice(&PCI_ECAM_START.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // segment
    b.push(0); // first bus
    b.push(LAST_BUS);
    b.extend_from_slice(&[0; 4]);
    sdt(b"MCFG", 1, &b)
}

/// All tables laid out from `base` for `cpus` vCPUs: (address, bytes)
/// pairs, RSDP first.
pub fn tables(base: u64, cpus: u8) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| (a + 15) & !15;
    let xsdt_addr = base + 64;
    let fadt_addr = align(xsdt_addr + 36 + 24);
    let madt = madt(cpus);
    let madt_addr = align(fadt_addr + 276);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let dsdt = sdt(b"DSDT", 2, &dsdt_aml());
    let mcfg = mcfg();
    let mcfg_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let mut entries = fadt_addr.to_le_bytes().to_vec();
    entries.extend_from_slice(&madt_addr.to_le_bytes());
    entries.extend_from_slice(&mcfg_addr.to_le_bytes());
    let xsdt = sdt(b"XSDT", 1, &entries);
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2);
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_addr.to_le_bytes());
    rsdp.extend_from_slice(&[0, 0, 0, 0]);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    vec![
        (base, rsdp),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (dsdt_addr, dsdt),
        (mcfg_addr, mcfg),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
    }

    #[test]
    fn tables_chain_and_checksum() {
        let t = tables(RSDP_ADDR, 32);
        let (rsdp_addr, rsdp) = &t[0];
        assert_eq!(*rsdp_addr, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let find = |addr: u64| t.iter().find(|(a, _)| *a == addr).map(|(_, b)| b.clone());
        let xsdt = find(u64_at(rsdp, 24)).unwrap();
        assert_eq!(&xsdt[..4], b"XSDT");
        let fadt = find(u64_at(&xsdt, 36)).unwrap();
        assert_eq!((&fadt[..4], fadt.len()), (&b"FACP"[..], 276));
        let dsdt = find(u64_at(&fadt, 140)).unwrap();
        assert_eq!(&dsdt[..4], b"DSDT");
        let madt = find(u64_at(&xsdt, 44)).unwrap();
        assert_eq!(&madt[..4], b"APIC");
        let mcfg = find(u64_at(&xsdt, 52)).unwrap();
        assert_eq!(&mcfg[..4], b"MCFG");
        assert_eq!(u64_at(&mcfg, 44), PCI_ECAM_START);
        assert_eq!((mcfg[54], mcfg[55]), (0, 0), "bus 0 only");
        for (_, table) in &t[1..] {
            assert_eq!(u32_at(table, 4) as usize, table.len());
            assert_eq!(sum(table), 0, "{:?}", &table[..4]);
        }
        assert_ne!(u32_at(&fadt, 112) & FADT_FLAG_HW_REDUCED_ACPI, 0);
        assert_eq!(u64_at(&fadt, 244 + 4), u64::from(SLEEP_CONTROL_PORT));
        // Everything fits below the end of the BIOS area.
        let (last, bytes) = t.last().unwrap();
        assert!(last + bytes.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = madt(3);
        let mut off = 44;
        let (mut lapics, mut ioapics) = (Vec::new(), 0);
        while off < m.len() {
            match m[off] {
                0 => lapics.push(m[off + 3]),
                1 => {
                    ioapics += 1;
                    assert_eq!(m[off + 2], 3, "IOAPIC id follows the CPUs");
                    assert_eq!(u32_at(&m, off + 4) as u64, IOAPIC_ADDR);
                }
                _ => {}
            }
            off += usize::from(m[off + 1]);
        }
        assert_eq!((lapics, ioapics), (vec![0, 1, 2], 1));
        assert_eq!(off, m.len());
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0x3e), vec![0x3f]);
        assert_eq!(pkg_length(0x3f), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x100), vec![0x42, 0x10]);
        assert_eq!(
            pkg_length(0x1000),
            vec![0x83, 0x00, 0x01],
            "0x1003 with its 3 bytes"
        );
    }

    #[test]
    fn dsdt_declares_s5_and_the_host_bridge() {
        let aml = dsdt_aml();
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(&[0x08, b'_', b'S', b'5', b'_', 0x12]));
        assert!(has(b"PCI0"));
        assert!(has(b"_PRT"));
        // Slot 3 INTB: Package (4) { 0x0003FFFF, 1, Zero, GSI 20 }.
        assert!(has(&[
            0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x0a, 0x01, 0x00, 0x0a, 20
        ]));
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0a, 0x03]), "PNP0A03");
        assert!(has(&[0x47, 0x01, 0xf8, 0x0c]), "config ports in _CRS");
        assert!(has(&addr32(PCI_MMIO32_START).to_le_bytes()));
        assert!(has(&PCI_MMIO64_START.to_le_bytes()));
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), "PNP0501");
        assert!(has(&[0x22, 0x10, 0x00]), "COM1 on IRQ 4");
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]), "PNP0B00");
    }
}
