//! The MSI (not MSI-X) capability of a passed-through function, as the
//! guest sees it: every register after the capability header is emulated
//! here (message control, address, data, mask bits), none is forwarded to
//! the device, whose MSI the VMM programs through VFIO instead
//! (`vfio_passthrough::msi::MsiInterrupts`). Pure register logic.
//!
//! Layout (PCI Local Bus 3.0, 6.8.1), offsets from the capability:
//!
//! ```text
//! +2 control: bit 0 enable, 3:1 multiple message capable (RO),
//!    6:4 multiple message enable, 7 64-bit (RO), 8 per-vector mask (RO)
//! +4 address low (bits 1:0 zero)
//! 32-bit: +8 data, +12 mask, +16 pending
//! 64-bit: +8 address high, +12 data, +16 mask, +20 pending
//! ```

use crate::MsiMessage;

const CTRL_ENABLE: u16 = 1;
const CTRL_64BIT: u16 = 1 << 7;
const CTRL_MASKABLE: u16 = 1 << 8;

/// What the device's capability offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    /// Offset of the capability in config space.
    pub cap: u64,
    pub is64: bool,
    pub maskable: bool,
    /// log2 of the vectors the device can send (0..=5).
    pub mmc: u8,
}

impl MsiCap {
    /// Reads the capability at `cap` of a raw config space image.
    pub fn parse(raw: &[u8], cap: u64) -> Option<MsiCap> {
        let off = usize::try_from(cap).ok()?;
        let ctrl = u16::from_le_bytes([*raw.get(off + 2)?, *raw.get(off + 3)?]);
        let c = MsiCap {
            cap,
            is64: ctrl & CTRL_64BIT != 0,
            maskable: ctrl & CTRL_MASKABLE != 0,
            mmc: ((ctrl >> 1) & 7).min(5) as u8,
        };
        // The whole structure must fit in the standard space (`cap` is below
        // `raw.len()`, so the sum cannot overflow).
        (cap + c.size() <= 256).then_some(c)
    }

    /// Bytes of the capability, header included.
    pub fn size(&self) -> u64 {
        match (self.is64, self.maskable) {
            (false, false) => 0x0c,
            (true, false) => 0x10,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    /// Most vectors the device can send (1 … 32).
    pub fn max_vectors(&self) -> u16 {
        1 << self.mmc
    }

    fn data_off(&self) -> u64 {
        if self.is64 { 12 } else { 8 }
    }

    fn mask_off(&self) -> Option<u64> {
        self.maskable.then_some(self.data_off() + 4)
    }
}

/// The guest's MSI registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRegs {
    pub cap: MsiCap,
    /// Guest-owned control bits: enable and multiple message enable.
    control: u16,
    addr_lo: u32,
    addr_hi: u32,
    data: u16,
    mask: u32,
}

impl MsiRegs {
    /// Reset state: disabled, one vector, nothing masked.
    pub fn new(cap: MsiCap) -> MsiRegs {
        MsiRegs {
            cap,
            control: 0,
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            mask: 0,
        }
    }

    /// Whether config offset `off` is one of the emulated registers (the
    /// id and next pointer belong to the capability chain).
    pub fn owns(&self, off: u64) -> bool {
        off >= self.cap.cap + 2 && off < self.cap.cap + self.cap.size()
    }

    fn control_word(&self) -> u16 {
        let ro = u16::from(self.cap.mmc) << 1
            | if self.cap.is64 { CTRL_64BIT } else { 0 }
            | if self.cap.maskable { CTRL_MASKABLE } else { 0 };
        ro | self.control
    }

    /// The 32-bit register at `rel` (4-aligned, relative to the capability).
    fn dword(&self, rel: u64) -> u32 {
        let data_off = self.cap.data_off();
        match rel {
            0 => u32::from(self.control_word()) << 16,
            4 => self.addr_lo,
            8 if self.cap.is64 => self.addr_hi,
            r if r == data_off => u32::from(self.data),
            r if Some(r) == self.cap.mask_off() => self.mask,
            // Pending bits: the device's signals wait in their eventfds;
            // Linux never reads this, we report none.
            _ => 0,
        }
    }

    /// One emulated byte.
    pub fn read_byte(&self, off: u64) -> u8 {
        let rel = off - self.cap.cap;
        self.dword(rel & !3).to_le_bytes()[(rel & 3) as usize]
    }

    /// A guest write of one byte; true if the interrupt setup changed.
    pub fn write_byte(&mut self, off: u64, byte: u8) -> bool {
        let rel = off - self.cap.cap;
        let before = *self;
        let set = |v: u32, shift: u64| (v & !(0xff << shift)) | u32::from(byte) << shift;
        let shift = (rel & 3) * 8;
        match rel & !3 {
            0 => {
                let mut c = u32::from(self.control) << 16;
                c = set(c, shift);
                let c = (c >> 16) as u16;
                // MME beyond what the device can do is clamped, as hardware does.
                let mme = ((c >> 4) & 7).min(u16::from(self.cap.mmc));
                self.control = (c & CTRL_ENABLE) | mme << 4;
            }
            4 => self.addr_lo = set(self.addr_lo, shift) & !3,
            8 if self.cap.is64 => self.addr_hi = set(self.addr_hi, shift),
            r if r == self.cap.data_off() && shift < 16 => {
                self.data = (set(u32::from(self.data), shift) & 0xffff) as u16;
            }
            r if Some(r) == self.cap.mask_off() => {
                let vectors_mask = if self.cap.mmc >= 5 {
                    u32::MAX
                } else {
                    (1u32 << (1u32 << self.cap.mmc)) - 1
                };
                self.mask = set(self.mask, shift) & vectors_mask;
            }
            _ => {}
        }
        *self != before
    }

    pub fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    /// Vectors the guest enabled (1, 2, 4 … 32).
    pub fn vectors(&self) -> u16 {
        1 << ((self.control >> 4) & 7)
    }

    /// Vector `v`'s message: the data's low bits carry the vector number.
    pub fn message(&self, v: u16) -> MsiMessage {
        let n = u32::from(self.vectors());
        let data = (u32::from(self.data) & !(n - 1)) | (u32::from(v) & (n - 1));
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data,
        }
    }

    pub fn masked(&self, v: u16) -> bool {
        self.cap.maskable && v < 32 && self.mask & (1 << v) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_with(ctrl: u16) -> Vec<u8> {
        let mut raw = vec![0u8; 256];
        raw[0x50] = 0x05;
        raw[0x52..0x54].copy_from_slice(&ctrl.to_le_bytes());
        raw
    }

    fn write32(r: &mut MsiRegs, off: u64, v: u32) -> bool {
        let mut changed = false;
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            changed |= r.write_byte(off + i as u64, b);
        }
        changed
    }

    fn read32(r: &MsiRegs, off: u64) -> u32 {
        u32::from_le_bytes(std::array::from_fn(|i| r.read_byte(off + i as u64)))
    }

    #[test]
    fn layouts_by_flags() {
        let c = MsiCap::parse(&raw_with(0x0180 | 3 << 1), 0x50).unwrap();
        assert!(c.is64 && c.maskable);
        assert_eq!((c.mmc, c.size()), (3, 0x18));
        let c = MsiCap::parse(&raw_with(0), 0x50).unwrap();
        assert_eq!(
            (c.is64, c.maskable, c.mmc, c.size()),
            (false, false, 0, 0x0c)
        );
        // Does not fit below 256.
        let mut raw = vec![0u8; 256];
        raw[0xf2] = 0x80;
        raw[0xf3] = 0x01;
        assert!(MsiCap::parse(&raw, 0xf0).is_none());
        assert!(MsiCap::parse(&raw, 0xfff).is_none());
    }

    #[test]
    fn sixty_four_bit_maskable_registers() {
        let cap = MsiCap::parse(&raw_with(0x0180 | 2 << 1), 0x50).unwrap();
        let mut r = MsiRegs::new(cap);
        assert!(!r.owns(0x50) && !r.owns(0x51) && r.owns(0x52) && r.owns(0x67));
        assert!(!r.owns(0x68));
        // Read-only capability bits show; the guest's bits start clear.
        assert_eq!(read32(&r, 0x50) >> 16, 0x0180 | 2 << 1);
        assert!(write32(&mut r, 0x54, 0xfee0_0003));
        assert_eq!(read32(&r, 0x54), 0xfee0_0000, "address bits 1:0 are zero");
        write32(&mut r, 0x58, 0x1);
        write32(&mut r, 0x5c, 0x4025);
        // Enable with 8 vectors asked: clamped to the 4 the device has.
        assert!(write32(&mut r, 0x50, (1 | 3 << 4) << 16));
        assert!(r.enabled());
        assert_eq!(r.vectors(), 4);
        assert_eq!(read32(&r, 0x50) >> 16, 0x0180 | 2 << 1 | 1 | 2 << 4);
        assert_eq!(
            r.message(3),
            MsiMessage {
                addr: 0x1_fee0_0000,
                data: 0x4027
            }
        );
        // Mask bits beyond the device's vectors read as zero.
        write32(&mut r, 0x60, 0xffff_ffff);
        assert_eq!(read32(&r, 0x60), 0xf);
        assert!(r.masked(2) && !r.masked(4));
        // Pending reads as zero; an identical write changes nothing.
        assert_eq!(read32(&r, 0x64), 0);
        assert!(!write32(&mut r, 0x5c, 0x4025));
    }

    #[test]
    fn thirty_two_bit_without_mask() {
        let cap = MsiCap::parse(&raw_with(0), 0x50).unwrap();
        let mut r = MsiRegs::new(cap);
        write32(&mut r, 0x54, 0xfee0_1000);
        write32(&mut r, 0x58, 0x0041);
        // The data register's upper half is reserved.
        write32(&mut r, 0x58, 0xffff_0041);
        assert_eq!(read32(&r, 0x58), 0x41);
        r.write_byte(0x52, 1);
        assert!(r.enabled() && r.vectors() == 1);
        assert_eq!(r.message(0).addr, 0xfee0_1000);
        assert!(!r.masked(0));
    }
}
