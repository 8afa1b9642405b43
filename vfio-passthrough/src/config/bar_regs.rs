//! The emulated BAR registers: decoding the device's BARs, the guest's
//! sizing (all-ones writes) and relocation, and the VMM's placement.

use pci::BarRegion;

use super::{BAR0, NUM_BARS, VirtualConfig, le32};

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
    pub(super) const UNUSED: Bar = Bar {
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

impl VirtualConfig {
    pub(super) fn decode_bars(raw: &[u8], sizes: [u64; NUM_BARS]) -> [Bar; NUM_BARS] {
        let mut bars = [Bar::UNUSED; NUM_BARS];
        let mut i = 0;
        while i < NUM_BARS {
            let reg = le32(raw, BAR0 + 4 * i as u64);
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

    /// The guest's view of BAR register `reg` (0..6).
    pub(super) fn bar_reg(&self, reg: usize) -> u32 {
        let b = self.bars[reg];
        match b.kind {
            BarKind::Mem32 { .. } | BarKind::Mem64 { .. } => {
                ((b.addr & 0xffff_fff0) as u32) | b.flags()
            }
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

    pub(super) fn write_bar_byte(&mut self, off: u64, byte: u8) {
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
}
