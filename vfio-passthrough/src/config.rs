//! Configuration-space virtualization for a passed-through function: what
//! the guest sees is the device's own configuration space with the BAR
//! registers emulated (sizing with all-ones writes, relocation), no I/O
//! BARs and no option ROM, the INTx pin only once the VMM has wired INTx
//! ([`VirtualConfig::expose_int_pin`]), the capability lists filtered
//! (standard: PM, MSI, PCIe and MSI-X kept; extended: SR-IOV, ARI and
//! resizable BAR hidden) and the MSI-X message control word virtualized
//! (the VMM enables MSI-X through VFIO, not through the register), the MSI
//! capability's registers emulated ([`MsiRegs`]), and, on request, MSI-X
//! hidden (the guest then uses MSI). A hidden capability is gone as a whole,
//! not only unlinked: its header and body read as zero, as on a device
//! without it, and writes to them are dropped ([`crate::cap_extent`] says
//! where it lies). Every
//! other byte is forwarded to the device's config region with the exact
//! offset and size. Pure: the device is reached through [`ConfigSpace`],
//! so unit tests run on a fabricated configuration space.

use pci::BarRegion;

use pci::msi_cap::{MsiCap, MsiRegs};

use crate::cap_extent::{HiddenRanges, ext_extent, std_extent};

/// Where the real configuration space is read and written (the VFIO
/// config region in production, a byte array in tests).
pub trait ConfigSpace {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// Why a device's configuration space cannot be virtualized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration space reads as all-ones (device gone or in reset)")]
    NoDevice,
    #[error("header type {0:#x} is not a type-0 endpoint (bridges are not passed through)")]
    NotEndpoint(u8),
    #[error("MSI-X table or PBA of {vectors} vectors lies outside BAR {bar} ({size:#x} bytes)")]
    MsixOutsideBar { bar: u8, size: u64, vectors: u16 },
}

pub const COMMAND: u64 = 0x04;
const HEADER_TYPE: usize = 0x0e;
const BAR0: u64 = 0x10;
const BAR_END: u64 = 0x28;
const ROM: u64 = 0x30;
const CAP_PTR: u64 = 0x34;
const INT_LINE: u64 = 0x3c;
const INT_PIN: u64 = 0x3d;
const STD_SIZE: usize = 256;
/// Extended configuration space size (PCIe).
pub const EXT_SIZE: usize = 4096;
const NUM_BARS: usize = 6;

/// Standard capabilities the guest sees.
pub const CAP_PM: u8 = 0x01;
pub const CAP_MSI: u8 = 0x05;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;
const KEPT_CAPS: [u8; 4] = [CAP_PM, CAP_MSI, CAP_PCIE, CAP_MSIX];
/// Extended capabilities hidden from the guest.
pub const ECAP_ARI: u16 = 0x0e;
pub const ECAP_SRIOV: u16 = 0x10;
pub const ECAP_REBAR: u16 = 0x15;
pub const ECAP_VF_REBAR: u16 = 0x24;
const HIDDEN_ECAPS: [u16; 4] = [ECAP_ARI, ECAP_SRIOV, ECAP_REBAR, ECAP_VF_REBAR];
/// MSI-X message control bits the guest owns (enable, function mask).
const MSIX_CTRL_GUEST: u16 = 0xc000;

/// What kind of BAR a register pair describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Not implemented, an I/O BAR (not passed through), or the upper half of a 64-bit BAR.
    Unused,
    Mem32 {
        prefetch: bool,
    },
    Mem64 {
        prefetch: bool,
    },
}

/// One emulated BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
    /// The value the guest programmed (address bits only).
    pub addr: u64,
}

impl Bar {
    const UNUSED: Bar = Bar {
        kind: BarKind::Unused,
        size: 0,
        addr: 0,
    };

    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Unused => 0,
            BarKind::Mem32 { prefetch } => u32::from(prefetch) << 3,
            BarKind::Mem64 { prefetch } => 0x4 | u32::from(prefetch) << 3,
        }
    }
}

/// Where the MSI-X table and PBA are, from the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Offset of the capability in config space.
    pub cap: u64,
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u64,
    pub pba_bar: u8,
    pub pba_offset: u64,
}

impl MsixLayout {
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * 16
    }
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// What a guest config write changed that the device model must act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// A BAR register or the COMMAND register was written: re-place mappings.
    pub remap: bool,
    /// The guest-owned MSI-X control bits changed to this value.
    pub msix_control: Option<u16>,
    /// The guest changed its MSI registers to these.
    pub msi: Option<MsiRegs>,
}

/// The guest's view of one function's configuration space.
#[derive(Debug, Clone)]
pub struct VirtualConfig {
    bars: [Bar; NUM_BARS],
    /// (offset of a kept standard capability, next kept offset).
    std_chain: Vec<(u64, u8)>,
    first_cap: u8,
    /// (offset, virtual header) of every extended capability header we rewrite.
    ext_headers: Vec<(u64, u32)>,
    /// Where the hidden capabilities (standard and extended) lie.
    hidden: HiddenRanges,
    size: usize,
    msix: Option<MsixLayout>,
    /// Device's message control (table size bits) with the guest's bits.
    msix_control: u16,
    msi: Option<MsiRegs>,
    int_line: u8,
    /// The device's INTx pin (1-4, 0: none).
    device_pin: u8,
    /// The pin the guest sees: the device's once INTx is wired, else 0.
    int_pin: u8,
}

/// The standard capability list as the guest sees it.
struct StdCaps {
    /// (offset of a kept capability, next kept offset).
    chain: Vec<(u64, u8)>,
    first: u8,
    msix: Option<MsixLayout>,
    msi: Option<MsiCap>,
    /// Where the capabilities left out lie.
    hidden: HiddenRanges,
}

fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => u32::MAX,
    }
}

impl VirtualConfig {
    /// Reads the device's configuration space and builds the guest's view.
    /// `bar_sizes` are the sizes VFIO reports for regions 0-5;
    /// `region_size` is the config region's size (256 or 4096).
    pub fn new(
        dev: &dyn ConfigSpace,
        bar_sizes: [u64; NUM_BARS],
        region_size: u64,
    ) -> Result<Self, ConfigError> {
        Self::with_msix(dev, bar_sizes, region_size, true)
    }

    /// Like [`Self::new`]; with `keep_msix` false the MSI-X capability is
    /// left out of the guest's list (the guest falls back to MSI).
    pub fn with_msix(
        dev: &dyn ConfigSpace,
        bar_sizes: [u64; NUM_BARS],
        region_size: u64,
        keep_msix: bool,
    ) -> Result<Self, ConfigError> {
        let size = if region_size >= EXT_SIZE as u64 {
            EXT_SIZE
        } else {
            STD_SIZE
        };
        let mut raw = vec![0u8; size];
        for (i, chunk) in raw.chunks_mut(4).enumerate() {
            dev.read(i as u64 * 4, chunk);
        }
        if le32(&raw, 0) == u32::MAX {
            return Err(ConfigError::NoDevice);
        }
        if raw[HEADER_TYPE] & 0x7f != 0 {
            return Err(ConfigError::NotEndpoint(raw[HEADER_TYPE]));
        }
        let bars = Self::decode_bars(&raw, bar_sizes);
        let StdCaps {
            chain: std_chain,
            first: first_cap,
            msix,
            msi,
            mut hidden,
        } = Self::filter_std_caps(&raw, keep_msix);
        let has_pcie = std_chain
            .iter()
            .any(|(off, _)| raw.get(*off as usize) == Some(&CAP_PCIE));
        let ext_headers = if size == EXT_SIZE && has_pcie {
            Self::filter_ext_caps(&raw, &mut hidden)
        } else {
            Vec::new()
        };
        let msix_control = msix
            .map(|m| {
                u16::from_le_bytes([raw[m.cap as usize + 2], raw[m.cap as usize + 3]]) & 0x07ff
            })
            .unwrap_or(0);
        if let Some(m) = msix {
            for (bar, off, len) in [
                (m.table_bar, m.table_offset, m.table_size()),
                (m.pba_bar, m.pba_offset, m.pba_size()),
            ] {
                let b = bars.get(usize::from(bar)).copied().unwrap_or(Bar::UNUSED);
                let fits = off.checked_add(len).is_some_and(|end| end <= b.size);
                if b.kind == BarKind::Unused || !fits {
                    return Err(ConfigError::MsixOutsideBar {
                        bar,
                        size: b.size,
                        vectors: m.vectors,
                    });
                }
            }
        }
        Ok(Self {
            bars,
            std_chain,
            first_cap,
            ext_headers,
            hidden,
            size,
            msix,
            msix_control,
            msi: msi.map(MsiRegs::new),
            int_line: 0,
            device_pin: match raw[INT_PIN as usize] {
                p @ 1..=4 => p,
                _ => 0,
            },
            int_pin: 0,
        })
    }

    fn decode_bars(raw: &[u8], sizes: [u64; NUM_BARS]) -> [Bar; NUM_BARS] {
        let mut bars = [Bar::UNUSED; NUM_BARS];
        let mut i = 0;
        while i < NUM_BARS {
            let reg = le32(raw, BAR0 as usize + 4 * i);
            let size = sizes[i];
            let io = reg & 1 != 0;
            let prefetch = reg & 0x8 != 0;
            let is64 = !io && (reg >> 1) & 3 == 2;
            // Memory BARs are powers of two of at least 16 bytes.
            let usable = !io && size >= 16 && size.is_power_of_two();
            if is64 {
                if usable && i + 1 < NUM_BARS {
                    bars[i] = Bar {
                        kind: BarKind::Mem64 { prefetch },
                        size,
                        addr: 0,
                    };
                }
                i += 2;
                continue;
            }
            if usable && size <= 1 << 31 {
                bars[i] = Bar {
                    kind: BarKind::Mem32 { prefetch },
                    size,
                    addr: 0,
                };
            }
            i += 1;
        }
        bars
    }

    fn filter_std_caps(raw: &[u8], keep_msix: bool) -> StdCaps {
        let status = u16::from_le_bytes([raw[6], raw[7]]);
        let mut kept = Vec::new();
        let mut msix = None;
        let mut msi = None;
        // (offset, id) of every capability on the device's list.
        let mut listed: Vec<(u64, u8)> = Vec::new();
        if status & 0x10 != 0 {
            let mut ptr = raw[CAP_PTR as usize] & 0xfc;
            let mut seen = Vec::new();
            // 48 capabilities at most fit in 192 bytes; a loop ends here.
            for _ in 0..48 {
                if ptr < 0x40 || seen.contains(&ptr) {
                    break;
                }
                seen.push(ptr);
                let off = usize::from(ptr);
                let id = raw[off];
                listed.push((off as u64, id));
                let hidden = id == CAP_MSIX && !keep_msix;
                if id == CAP_MSI {
                    // Kept only if its registers fit in the standard space.
                    msi = MsiCap::parse(raw, off as u64);
                    if msi.is_some() {
                        kept.push(off as u64);
                    }
                } else if KEPT_CAPS.contains(&id) && !hidden {
                    kept.push(off as u64);
                }
                if id == CAP_MSIX && !hidden && off + 12 <= STD_SIZE {
                    let ctrl = u16::from_le_bytes([raw[off + 2], raw[off + 3]]);
                    let table = le32(raw, off + 4);
                    let pba = le32(raw, off + 8);
                    msix = Some(MsixLayout {
                        cap: off as u64,
                        vectors: (ctrl & 0x7ff) + 1,
                        table_bar: (table & 7) as u8,
                        table_offset: u64::from(table & !7),
                        pba_bar: (pba & 7) as u8,
                        pba_offset: u64::from(pba & !7),
                    });
                }
                ptr = raw[off + 1] & 0xfc;
            }
        }
        let mut chain = Vec::with_capacity(kept.len());
        for (i, off) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |n| *n as u8);
            chain.push((*off, next));
        }
        let first = kept.first().map_or(0, |f| *f as u8);
        let offsets: Vec<u64> = listed.iter().map(|(o, _)| *o).collect();
        let mut hidden = HiddenRanges::default();
        for &(off, id) in listed.iter().filter(|(o, _)| !kept.contains(o)) {
            hidden.push(std_extent(raw, id, off, &offsets, STD_SIZE as u64));
        }
        StdCaps {
            chain,
            first,
            msix,
            msi,
            hidden,
        }
    }

    /// The virtual headers of the extended list; adds the hidden
    /// capabilities' extents to `hidden`.
    fn filter_ext_caps(raw: &[u8], hidden: &mut HiddenRanges) -> Vec<(u64, u32)> {
        let mut all = Vec::new();
        let mut off = 0x100usize;
        // 4 KiB holds at most 960 four-byte headers; a loop ends here.
        for _ in 0..960 {
            let h = le32(raw, off);
            if h == 0 || h == u32::MAX || all.iter().any(|(o, _)| *o == off as u64) {
                break;
            }
            all.push((off as u64, h));
            let next = ((h >> 20) & 0xffc) as usize;
            if next < 0x100 {
                break;
            }
            off = next;
        }
        let kept: Vec<(u64, u32)> = all
            .iter()
            .copied()
            .filter(|(_, h)| !HIDDEN_ECAPS.contains(&((h & 0xffff) as u16)))
            .collect();
        if kept.len() == all.len() {
            return Vec::new();
        }
        let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
        for (off, h) in &all {
            let id = (h & 0xffff) as u16;
            if HIDDEN_ECAPS.contains(&id) {
                hidden.push(ext_extent(raw, id, *off, &offsets, EXT_SIZE as u64));
            }
        }
        let mut headers = Vec::new();
        for (i, (off, h)) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |n| n.0 as u32);
            headers.push((*off, (h & 0x000f_ffff) | next << 20));
        }
        // The list must start at 0x100: a hidden first capability becomes
        // a null header that links to the first one kept.
        if kept.first().map(|k| k.0) != Some(0x100) {
            let next = kept.first().map_or(0, |k| k.0 as u32);
            headers.push((0x100, next << 20));
        }
        // Hidden headers elsewhere read as zero, so a scan by offset finds nothing.
        for (off, h) in &all {
            if *off != 0x100 && HIDDEN_ECAPS.contains(&((h & 0xffff) as u16)) {
                headers.push((*off, 0));
            }
        }
        headers
    }

    /// Size of the configuration space the guest can reach.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn msix(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// The emulated BARs (index = BAR number).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied()
    }

    /// The memory BARs and where the guest put them.
    pub fn bars(&self) -> Vec<BarRegion> {
        self.bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.kind != BarKind::Unused)
            .map(|(index, b)| BarRegion {
                index,
                addr: b.addr,
                size: b.size,
            })
            .collect()
    }

    /// Places a BAR (the VMM's initial allocation); bits below the size are dropped.
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) {
        if let Some(b) = self.bars.get_mut(index) {
            if b.kind != BarKind::Unused {
                b.addr = addr & !(b.size - 1);
            }
        }
    }

    fn access_ok(&self, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.size as u64)
    }

    /// The guest's view of BAR register `reg` (0..6).
    fn bar_reg(&self, reg: usize) -> u32 {
        let b = self.bars[reg];
        match b.kind {
            BarKind::Mem32 { .. } | BarKind::Mem64 { .. } => (b.addr as u32 & !0xf) | b.flags(),
            BarKind::Unused => match reg.checked_sub(1).map(|r| self.bars[r]) {
                Some(
                    lo @ Bar {
                        kind: BarKind::Mem64 { .. },
                        ..
                    },
                ) => (lo.addr >> 32) as u32,
                _ => 0,
            },
        }
    }

    /// The value of one byte if the VMM owns it, `None` if the device does.
    fn virtual_byte(&self, off: u64) -> Option<u8> {
        let byte_of = |v: u32, base: u64| v.to_le_bytes()[(off - base) as usize];
        if (BAR0..BAR_END).contains(&off) {
            let reg = ((off - BAR0) / 4) as usize;
            return Some(byte_of(self.bar_reg(reg), BAR0 + reg as u64 * 4));
        }
        match off {
            ROM..CAP_PTR => return Some(0),
            CAP_PTR => return Some(self.first_cap),
            INT_LINE => return Some(self.int_line),
            INT_PIN => return Some(self.int_pin),
            _ => {}
        }
        if let Some((_, next)) = self.std_chain.iter().find(|(c, _)| *c + 1 == off) {
            return Some(*next);
        }
        if let Some(m) = self.msix {
            if off == m.cap + 2 || off == m.cap + 3 {
                return Some(byte_of(u32::from(self.msix_control), m.cap + 2));
            }
        }
        if let Some(msi) = self.msi.as_ref().filter(|m| m.owns(off)) {
            return Some(msi.read_byte(off));
        }
        if let Some((base, h)) = self
            .ext_headers
            .iter()
            .find(|(base, _)| (*base..*base + 4).contains(&off))
        {
            return Some(byte_of(*h, *base));
        }
        if self.hidden.contains(off) {
            // A hidden capability: absent, as on a device without it.
            return Some(0);
        }
        None
    }

    /// A guest read: odd-sized, misaligned or out-of-range reads give all-ones.
    pub fn read(&self, dev: &dyn ConfigSpace, offset: u64, data: &mut [u8]) {
        if !self.access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let virt: Vec<Option<u8>> = (0..data.len() as u64)
            .map(|i| self.virtual_byte(offset + i))
            .collect();
        if virt.iter().any(Option::is_none) {
            dev.read(offset, data);
        }
        for (d, v) in data.iter_mut().zip(virt) {
            if let Some(v) = v {
                *d = v;
            }
        }
    }

    /// A guest write: virtual registers are updated here, the rest goes to
    /// the device; odd-sized, misaligned or out-of-range writes are ignored.
    pub fn write(&mut self, dev: &dyn ConfigSpace, offset: u64, data: &[u8]) -> WriteEffect {
        let mut effect = WriteEffect::default();
        if !self.access_ok(offset, data.len()) {
            return effect;
        }
        let owned: Vec<bool> = (0..data.len() as u64)
            .map(|i| self.virtual_byte(offset + i).is_some())
            .collect();
        if !owned.iter().any(|o| *o) {
            dev.write(offset, data);
            effect.remap = offset < COMMAND + 2 && offset + data.len() as u64 > COMMAND;
            return effect;
        }
        for (i, (&byte, own)) in data.iter().zip(owned).enumerate() {
            let off = offset + i as u64;
            if !own {
                dev.write(off, &[byte]);
                effect.remap |= off == COMMAND || off == COMMAND + 1;
                continue;
            }
            if (BAR0..BAR_END).contains(&off) {
                self.write_bar_byte(off, byte);
                effect.remap = true;
            } else if let Some(msi) = self.msi.as_mut().filter(|m| m.owns(off)) {
                if msi.write_byte(off, byte) {
                    effect.msi = Some(*msi);
                }
            } else if off == INT_LINE {
                self.int_line = byte;
            } else if let Some(m) = self.msix {
                if off == m.cap + 3 {
                    let guest = u16::from(byte) << 8 & MSIX_CTRL_GUEST;
                    let ctrl = (self.msix_control & !MSIX_CTRL_GUEST) | guest;
                    if ctrl != self.msix_control {
                        self.msix_control = ctrl;
                        effect.msix_control = Some(ctrl);
                    }
                }
            }
            // Everything else owned here (ROM, pin, chain pointers, extended
            // headers, the table-size half of MSI-X control, hidden
            // capabilities) is read-only: the write is dropped.
        }
        effect
    }

    fn write_bar_byte(&mut self, off: u64, byte: u8) {
        let reg = ((off - BAR0) / 4) as usize;
        let shift = ((off - BAR0) % 4) * 8;
        let mut value = self.bar_reg(reg);
        value = (value & !(0xff << shift)) | u32::from(byte) << shift;
        match self.bars[reg].kind {
            BarKind::Mem32 { .. } => {
                let b = &mut self.bars[reg];
                b.addr = u64::from(value & !0xf) & !(b.size - 1);
            }
            BarKind::Mem64 { .. } => {
                let b = &mut self.bars[reg];
                b.addr = ((b.addr & !0xffff_ffff) | u64::from(value & !0xf)) & !(b.size - 1);
            }
            BarKind::Unused => {
                if let Some(lo) = reg.checked_sub(1).map(|r| &mut self.bars[r]) {
                    if matches!(lo.kind, BarKind::Mem64 { .. }) {
                        lo.addr =
                            ((lo.addr & 0xffff_ffff) | u64::from(value) << 32) & !(lo.size - 1);
                    }
                }
            }
        }
    }

    /// The MSI-X message control word the guest sees.
    pub fn msix_control(&self) -> u16 {
        self.msix_control
    }

    /// The device's INTx pin (1 = INTA … 4 = INTD), 0 if it has none.
    pub fn device_int_pin(&self) -> u8 {
        self.device_pin
    }

    /// INTx is wired to the guest: show the device's pin.
    pub fn expose_int_pin(&mut self) {
        self.int_pin = self.device_pin;
    }

    /// The MSI capability the guest sees, if the device has one.
    pub fn msi(&self) -> Option<MsiRegs> {
        self.msi
    }
}

#[cfg(test)]
mod tests {
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
            let o = offset as usize;
            data.copy_from_slice(&b[o..o + data.len()]);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.writes.borrow_mut().push((offset, data.to_vec()));
            let o = offset as usize;
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
            chain.push(rd(&c, &d, p, 1) as u8);
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
            chain.push(rd(&c, &d, p, 1) as u8);
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
}
