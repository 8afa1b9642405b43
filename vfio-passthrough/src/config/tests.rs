//! Unit tests of the configuration-space virtualization on a fabricated,
//! igb-like configuration space.

use super::*;
use std::cell::RefCell;

/// A fabricated configuration space that records writes.
struct Fake {
    bytes: RefCell<Vec<u8>>,
    writes: RefCell<Vec<(u64, Vec<u8>)>>,
}

impl ConfigSpace for Fake {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let b = self.bytes.borrow();
        let o = usize::try_from(offset).unwrap();
        data.copy_from_slice(&b[o..o + data.len()]);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.writes.borrow_mut().push((offset, data.to_vec()));
        let o = usize::try_from(offset).unwrap();
        self.bytes.borrow_mut()[o..o + data.len()].copy_from_slice(data);
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// An igb-like PF: BAR0 32-bit 128K, BAR1 64-bit prefetchable 1M
/// (regs 1+2), BAR3 I/O, BAR4 32-bit 16K with the MSI-X table at 0
/// and the PBA at 0x2000; capabilities PM -> vendor -> MSI -> MSI-X
/// -> PCIe; extended AER(0x100) -> SR-IOV -> ARI -> REBAR.
fn fake() -> (Fake, [u64; 6]) {
    let mut b = vec![0u8; 4096];
    put32(&mut b, 0, 0x10c9_8086);
    put32(&mut b, 4, 0x0010_0000); // status: capability list
    put32(&mut b, 8, 0x0200_0001);
    put32(&mut b, 0x10, 0xfeb0_0000);
    put32(&mut b, 0x14, 0xfe00_000c);
    put32(&mut b, 0x18, 0x0000_0000);
    put32(&mut b, 0x1c, 0x0000_c001);
    put32(&mut b, 0x20, 0xfeb2_0000);
    put32(&mut b, 0x30, 0xfff8_0001);
    b[0x34] = 0x40;
    put32(&mut b, 0x3c, 0x0000_010b); // pin A, line 11
    // PM at 0x40 -> vendor at 0x48 -> MSI at 0x50 -> MSI-X at 0x70 -> PCIe at 0xa0.
    b[0x40] = CAP_PM;
    b[0x41] = 0x48;
    b[0x48] = 0x09;
    b[0x49] = 0x50;
    b[0x4a] = 0xaa;
    b[0x50] = CAP_MSI;
    b[0x51] = 0x70;
    b[0x52..0x54].copy_from_slice(&0x0180u16.to_le_bytes()); // 64-bit, maskable, 1 vector
    b[0x70] = CAP_MSIX;
    b[0x71] = 0xa0;
    b[0x72..0x74].copy_from_slice(&9u16.to_le_bytes()); // 10 vectors
    put32(&mut b, 0x74, 0x4); // table in BAR4 at 0
    put32(&mut b, 0x78, 0x2004); // PBA in BAR4 at 0x2000
    b[0xa0] = CAP_PCIE;
    b[0xa1] = 0;
    put32(&mut b, 0x100, 0x1401_0001); // AER v1 -> 0x140
    put32(&mut b, 0x140, 0x1601_0010); // SR-IOV -> 0x160
    put32(&mut b, 0x160, 0x1801_000e); // ARI -> 0x180
    put32(&mut b, 0x180, 0x0001_0015); // REBAR, end
    let sizes = [0x20000, 0x10_0000, 0, 0x20, 0x4000, 0];
    (
        Fake {
            bytes: RefCell::new(b),
            writes: RefCell::new(Vec::new()),
        },
        sizes,
    )
}

fn rd(c: &VirtualConfig, d: &Fake, off: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    c.read(d, off, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wr32(c: &mut VirtualConfig, d: &Fake, off: u64, v: u32) -> WriteEffect {
    c.write(d, off, &v.to_le_bytes())
}

#[test]
fn bars_are_decoded_by_kind() {
    let (d, sizes) = fake();
    let c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    assert_eq!(c.bar(0).unwrap().kind, BarKind::Mem32 { prefetch: false });
    assert_eq!(c.bar(1).unwrap().kind, BarKind::Mem64 { prefetch: true });
    assert_eq!(c.bar(2).unwrap().kind, BarKind::Unused, "upper half");
    assert_eq!(c.bar(3).unwrap().kind, BarKind::Unused, "I/O BAR hidden");
    let sizes: Vec<(usize, u64)> = c.bars().iter().map(|b| (b.index, b.size)).collect();
    assert_eq!(sizes, vec![(0, 0x20000), (1, 0x10_0000), (4, 0x4000)]);
    assert_eq!(rd(&c, &d, 0x10, 4), 0, "host address not leaked");
    assert_eq!(rd(&c, &d, 0x1c, 4), 0, "I/O BAR reads 0");
    assert_eq!(rd(&c, &d, 0x30, 4), 0, "no option ROM");
}

#[test]
fn bar_sizing_32bit() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    c.set_bar_addr(0, 0xc000_0000);
    assert!(wr32(&mut c, &d, 0x10, u32::MAX).remap);
    assert_eq!(rd(&c, &d, 0x10, 4), 0xfffe_0000);
    wr32(&mut c, &d, 0x10, 0xc004_0000);
    assert_eq!(rd(&c, &d, 0x10, 4), 0xc004_0000);
    assert_eq!(c.bars()[0].addr, 0xc004_0000);
    // Unaligned address bits are dropped.
    wr32(&mut c, &d, 0x10, 0xc004_1234);
    assert_eq!(c.bars()[0].addr, 0xc004_0000);
    assert!(
        d.writes.borrow().is_empty(),
        "BAR writes never reach the device"
    );
}

#[test]
fn bar_sizing_64bit_prefetchable() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    wr32(&mut c, &d, 0x14, u32::MAX);
    wr32(&mut c, &d, 0x18, u32::MAX);
    assert_eq!(
        rd(&c, &d, 0x14, 4),
        0xfff0_000c,
        "size mask | 64-bit | prefetch"
    );
    assert_eq!(rd(&c, &d, 0x18, 4), 0xffff_ffff);
    wr32(&mut c, &d, 0x14, 0xd000_0000);
    wr32(&mut c, &d, 0x18, 0x1);
    assert_eq!(c.bars()[1].addr, 0x1_d000_0000);
    assert_eq!(rd(&c, &d, 0x14, 4), 0xd000_000c);
    // A 16-bit write into the upper dword.
    c.write(&d, 0x1a, &[0x2, 0]);
    assert_eq!(c.bars()[1].addr, 0x0002_0001_d000_0000);
    // Writes to the I/O BAR and the ROM are ignored.
    wr32(&mut c, &d, 0x1c, u32::MAX);
    wr32(&mut c, &d, 0x30, u32::MAX);
    assert_eq!(rd(&c, &d, 0x1c, 4), 0);
    assert_eq!(rd(&c, &d, 0x30, 4), 0);
}

#[test]
fn msi_registers_are_emulated_and_msix_can_be_hidden() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::with_msix(&d, sizes, 4096, false).unwrap();
    let mut chain = vec![];
    let mut p = rd(&c, &d, 0x34, 1) as u64;
    while p != 0 {
        chain.push(u8::try_from(rd(&c, &d, p, 1)).unwrap());
        p = rd(&c, &d, p + 1, 1) as u64;
    }
    assert_eq!(chain, vec![CAP_PM, CAP_MSI, CAP_PCIE], "MSI-X hidden");
    assert!(c.msix().is_none());
    d.writes.borrow_mut().clear();
    assert_eq!(
        wr32(&mut c, &d, 0x54, 0xfee0_0000).msi.map(|m| m.enabled()),
        Some(false)
    );
    wr32(&mut c, &d, 0x5c, 0x4041);
    let effect = c.write(&d, 0x52, &[1, 0]);
    let regs = effect.msi.expect("enable reported");
    assert!(regs.enabled());
    assert_eq!(regs.message(0).data, 0x4041);
    assert_eq!(rd(&c, &d, 0x50, 4) >> 16, 0x0181);
    assert_eq!(rd(&c, &d, 0x54, 4), 0xfee0_0000);
    assert!(
        d.writes.borrow().is_empty(),
        "MSI registers reached the device"
    );
    // With MSI-X kept, both are in the list and MSI is still emulated.
    let c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    assert!(c.msix().is_some() && c.msi().is_some());
}

#[test]
fn capability_lists_are_filtered() {
    let (d, sizes) = fake();
    let c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    assert_eq!(rd(&c, &d, 0x34, 1), 0x40);
    let mut chain = vec![];
    let mut p = rd(&c, &d, 0x34, 1) as u64;
    while p != 0 {
        chain.push(u8::try_from(rd(&c, &d, p, 1)).unwrap());
        p = rd(&c, &d, p + 1, 1) as u64;
    }
    assert_eq!(
        chain,
        vec![CAP_PM, CAP_MSI, CAP_MSIX, CAP_PCIE],
        "vendor cap hidden"
    );
    // Extended: AER kept at 0x100 with no next; SR-IOV/ARI/REBAR gone.
    assert_eq!(rd(&c, &d, 0x100, 4), 0x0001_0001);
    assert_eq!(rd(&c, &d, 0x140, 4), 0, "SR-IOV header hidden");
    assert_eq!(rd(&c, &d, 0x180, 4), 0, "REBAR header hidden");
    assert_eq!(rd(&c, &d, 0x3d, 1), 0, "no INTx pin");
}

/// The guest's view of all of config space, dword by dword.
fn view(c: &VirtualConfig, d: &Fake) -> Vec<u32> {
    (0..c.size() as u64 / 4)
        .map(|i| rd(c, d, 4 * i, 4))
        .collect()
}

#[test]
fn hidden_capabilities_read_as_absent_and_drop_writes() {
    // Give every hidden capability a body: vendor at 0x48 (length 8),
    // SR-IOV at 0x140 (control/status, VF counts), ARI at 0x160,
    // REBAR at 0x180 (one BAR).
    let (d, sizes) = fake();
    {
        let mut b = d.bytes.borrow_mut();
        b[0x4a] = 8;
        put32(&mut b, 0x4c, 0xdead_beef);
        put32(&mut b, 0x148, 0x0000_0019); // VF enable, MSE, ARI hierarchy
        put32(&mut b, 0x14c, 0x0007_0007); // total VFs, initial VFs
        put32(&mut b, 0x15c, 0x0000_1234);
        put32(&mut b, 0x164, 0x0000_0102);
        put32(&mut b, 0x184, 0x0000_fff0);
        put32(&mut b, 0x188, 0x0000_0020);
        put32(&mut b, 0x190, 0x1234_5678); // past REBAR: device-specific
    }
    // The same device without them (lists relinked past them).
    let (without, _) = fake();
    {
        let mut b = without.bytes.borrow_mut();
        let src = d.bytes.borrow();
        b.copy_from_slice(&src);
        b[0x41] = 0x50; // PM -> MSI
        b[0x48..0x50].fill(0);
        put32(&mut b, 0x100, 0x0001_0001); // AER, end
        b[0x140..0x168].fill(0);
        b[0x180..0x18c].fill(0);
    }
    for keep_msix in [true, false] {
        if !keep_msix {
            let mut b = without.bytes.borrow_mut();
            b[0x51] = 0xa0; // MSI -> PCIe
            b[0x70..0x7c].fill(0);
        }
        let mut c = VirtualConfig::with_msix(&d, sizes, 4096, keep_msix).unwrap();
        let mut absent = VirtualConfig::with_msix(&without, sizes, 4096, keep_msix).unwrap();
        let (got, want) = (view(&c, &d), view(&absent, &without));
        let differ: Vec<String> = (0..got.len())
            .filter(|&i| got[i] != want[i])
            .map(|i| format!("{:#x}: {:#x} != {:#x}", 4 * i, got[i], want[i]))
            .collect();
        assert!(differ.is_empty(), "msix={keep_msix}: {differ:?}");
        // Writes of every size to the hidden ranges reach nothing.
        d.writes.borrow_mut().clear();
        let mut hidden = vec![0x48..0x50, 0x140..0x168, 0x180..0x18c];
        if !keep_msix {
            hidden.push(0x70..0x7c);
        }
        for r in &hidden {
            for off in r.clone().step_by(4) {
                c.write(&d, off, &[0xff; 4]);
                c.write(&d, off + 2, &[0xff; 2]);
                c.write(&d, off + 1, &[0xff]);
            }
        }
        assert!(
            d.writes.borrow().is_empty(),
            "msix={keep_msix}: {:?}",
            d.writes.borrow()
        );
        // Next to them, the device's own registers are still reached.
        for (cfg, dev) in [(&mut c, &d), (&mut absent, &without)] {
            cfg.write(dev, 0x190, &[0xaa]);
            cfg.write(dev, 0x104, &[0xbb]);
        }
        assert_eq!(
            *d.writes.borrow(),
            vec![(0x190, vec![0xaa]), (0x104, vec![0xbb])]
        );
        assert_eq!(rd(&c, &d, 0x190, 4), 0x1234_56aa);
    }
}

#[test]
fn hidden_first_extended_capability_becomes_a_null_header() {
    let (d, sizes) = fake();
    put32(&mut d.bytes.borrow_mut(), 0x100, 0x1401_0010); // SR-IOV first
    put32(&mut d.bytes.borrow_mut(), 0x140, 0x0002_0001); // then AER v2, end
    let c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    assert_eq!(rd(&c, &d, 0x100, 4), 0x1400_0000);
    assert_eq!(rd(&c, &d, 0x140, 4), 0x0002_0001);
    // Without extended space the guest sees 256 bytes only.
    let c = VirtualConfig::new(&d, sizes, 256).unwrap();
    assert_eq!(rd(&c, &d, 0x100, 4), u32::MAX);
}

#[test]
fn msix_layout_and_control_are_virtual() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    let m = c.msix().unwrap();
    assert_eq!((m.vectors, m.table_bar, m.table_offset), (10, 4, 0));
    assert_eq!((m.pba_bar, m.pba_offset, m.pba_size()), (4, 0x2000, 8));
    assert_eq!(rd(&c, &d, 0x72, 2), 9);
    // The guest enables MSI-X with the function masked (a dword write
    // over id/next/control, as Linux does with a word write).
    let e = c.write(&d, 0x72, &0xc000u16.to_le_bytes());
    assert_eq!(e.msix_control, Some(0xc009));
    assert_eq!(rd(&c, &d, 0x70, 4) >> 16, 0xc009);
    assert_eq!(rd(&c, &d, 0x71, 1), 0xa0, "next pointer is read-only");
    let e = wr32(&mut c, &d, 0x70, 0x8000_ffff);
    assert_eq!(e.msix_control, Some(0x8009), "table size bits stay");
    assert_eq!(wr32(&mut c, &d, 0x70, 0x8000_0000).msix_control, None);
    assert!(
        d.writes
            .borrow()
            .iter()
            .all(|(o, w)| *o + w.len() as u64 <= 0x72 || *o >= 0x74),
        "MSI-X control never reaches the device"
    );
    // The table offset/BIR registers are the device's.
    assert_eq!(rd(&c, &d, 0x78, 4), 0x2004);
}

#[test]
fn other_registers_are_forwarded_exactly() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    let e = c.write(&d, COMMAND, &0x0006u16.to_le_bytes());
    assert!(e.remap, "memory enable changes mappings");
    c.write(&d, 0xa8, &[0x12, 0x34, 0x56, 0x78]);
    c.write(&d, 0xe5, &[0x55]); // device-specific, outside every capability
    assert_eq!(
        *d.writes.borrow(),
        vec![
            (4, vec![6, 0]),
            (0xa8, vec![0x12, 0x34, 0x56, 0x78]),
            (0xe5, vec![0x55])
        ]
    );
    assert_eq!(rd(&c, &d, 0, 4), 0x10c9_8086);
    assert_eq!(rd(&c, &d, 0xa8, 4), 0x7856_3412);
    // A dword write at 0x3c: line is virtual, pin/min_gnt/max_lat read-only.
    wr32(&mut c, &d, INT_LINE, 0xffff_ff05);
    assert_eq!(rd(&c, &d, INT_LINE, 1), 5);
    assert_eq!(
        d.writes.borrow().len(),
        5,
        "min_gnt and max_lat forwarded bytewise"
    );
}

#[test]
fn odd_and_out_of_range_accesses() {
    let (d, sizes) = fake();
    let mut c = VirtualConfig::new(&d, sizes, 256).unwrap();
    let mut three = [0u8; 3];
    c.read(&d, 0, &mut three);
    assert_eq!(three, [0xff; 3]);
    assert_eq!(rd(&c, &d, 2, 4), u32::MAX, "misaligned dword");
    assert_eq!(rd(&c, &d, 1, 2), 0xffff, "misaligned word");
    assert_eq!(rd(&c, &d, 256, 4), u32::MAX, "past the end");
    let mut eight = [0u8; 8];
    c.read(&d, 0, &mut eight);
    assert_eq!(eight, [0xff; 8]);
    assert_eq!(c.write(&d, 0x10, &[0xff; 3]), WriteEffect::default());
    assert_eq!(c.write(&d, 0x12, &[0xff; 4]), WriteEffect::default());
    assert_eq!(c.write(&d, 0x100, &[0xff; 4]), WriteEffect::default());
    assert_eq!(
        c.write(&d, u64::MAX - 1, &[0xff; 2]),
        WriteEffect::default()
    );
    assert!(d.writes.borrow().is_empty());
}

#[test]
fn broken_devices_are_refused() {
    let (d, sizes) = fake();
    d.bytes.borrow_mut()[0x0e] = 1;
    assert_eq!(
        VirtualConfig::new(&d, sizes, 256).unwrap_err(),
        ConfigError::NotEndpoint(1)
    );
    d.bytes.borrow_mut()[0x0e] = 0;
    put32(&mut d.bytes.borrow_mut(), 0x78, 0x4004); // PBA past BAR4's 16K
    assert!(matches!(
        VirtualConfig::new(&d, sizes, 256),
        Err(ConfigError::MsixOutsideBar { bar: 4, .. })
    ));
    put32(&mut d.bytes.borrow_mut(), 0, u32::MAX);
    assert_eq!(
        VirtualConfig::new(&d, sizes, 256).unwrap_err(),
        ConfigError::NoDevice
    );
}

#[test]
fn capability_loops_terminate() {
    let (d, sizes) = fake();
    d.bytes.borrow_mut()[0xa1] = 0x40; // PCIe -> PM: a loop
    put32(&mut d.bytes.borrow_mut(), 0x180, 0x1001_0015); // REBAR -> AER: a loop
    let c = VirtualConfig::new(&d, sizes, 4096).unwrap();
    assert_eq!(c.std_chain.len(), 4);
    assert_eq!(rd(&c, &d, 0xa1, 1), 0, "the loop is cut");
    assert_eq!(rd(&c, &d, 0x100, 4), 0x0001_0001);
}
