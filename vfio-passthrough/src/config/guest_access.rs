//! Guest accesses: each byte is either owned by the VMM (BARs, ROM, the
//! capability pointers, INTx line and pin, MSI-X control, the MSI
//! registers, rewritten extended headers, hidden capabilities) or forwarded
//! to the device with its exact offset and size.

use pci::msi_cap::MsiRegs;

use super::{
    BAR_END, BAR0, CAP_PTR, COMMAND, ConfigSpace, INT_LINE, INT_PIN, MSIX_CTRL_GUEST, ROM,
    VirtualConfig,
};

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

impl VirtualConfig {
    fn access_ok(&self, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.size as u64)
    }

    /// The value of one byte if the VMM owns it, `None` if the device does.
    fn virtual_byte(&self, off: u64) -> Option<u8> {
        // `off` lies in the dword register at `base`.
        let byte_of = |v: u32, base: u64| v.to_le_bytes()[((off - base) & 3) as usize];
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
}
