//! A type-0 PCI configuration space (256 bytes): identity registers,
//! command/status, memory BARs with the sizing protocol, and a capability
//! list. Writes go through per-register masks, so read-only bits stay put
//! and a BAR reads back its size mask after the guest writes all-ones.

/// Offsets of the standard header registers.
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const BAR0: usize = 0x10;
pub const CAPABILITIES_PTR: usize = 0x34;
/// Size of the configuration space we emulate.
pub const CONFIG_SIZE: usize = 256;
const NUM_BARS: usize = 6;
const FIRST_CAP: usize = 0x40;
const STATUS_CAP_LIST: u32 = 1 << 4;
/// Command bits the guest may set: I/O, memory, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
const BAR_MEM64: u32 = 0x4;

/// Why a BAR or capability could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    #[error("BAR {0} is out of range or already used")]
    BadBar(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BadBarSize(u64),
    #[error("capability of {0} bytes does not fit in configuration space")]
    NoRoom(usize),
}

/// Identity of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A memory BAR as programmed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    pub index: usize,
    pub addr: u64,
    pub size: u64,
}

/// The configuration space of one function.
#[derive(Debug, Clone)]
pub struct PciConfig {
    regs: [u32; CONFIG_SIZE / 4],
    masks: [u32; CONFIG_SIZE / 4],
    bar_sizes: [u64; NUM_BARS],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfig {
    pub fn new(id: PciIdentity) -> Self {
        let mut c = Self {
            regs: [0; CONFIG_SIZE / 4],
            masks: [0; CONFIG_SIZE / 4],
            bar_sizes: [0; NUM_BARS],
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.regs[0] = u32::from(id.vendor) | u32::from(id.device) << 16;
        let (class, sub, prog) = id.class;
        c.regs[2] = u32::from(id.revision)
            | u32::from(prog) << 8
            | u32::from(sub) << 16
            | u32::from(class) << 24;
        c.regs[0x2c / 4] = u32::from(id.subsystem_vendor) | u32::from(id.subsystem) << 16;
        c.masks[COMMAND / 4] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the OS; the pin stays 0 (no INTx).
        c.masks[0x3c / 4] = 0xff;
        c
    }

    /// Adds a 64-bit memory BAR at `index` (uses `index` and `index + 1`).
    pub fn add_mem64_bar(&mut self, index: usize, size: u64) -> Result<(), PciConfigError> {
        if index + 1 >= NUM_BARS || self.bar_sizes[index] != 0 || self.bar_sizes[index + 1] != 0 {
            return Err(PciConfigError::BadBar(index));
        }
        if !size.is_power_of_two() || size < 16 {
            return Err(PciConfigError::BadBarSize(size));
        }
        let mask = !(size - 1);
        let reg = BAR0 / 4 + index;
        self.regs[reg] = BAR_MEM64;
        self.masks[reg] = (mask & 0xffff_fff0) as u32;
        self.masks[reg + 1] = (mask >> 32) as u32;
        self.bar_sizes[index] = size;
        // The upper half is marked used with a size of 1 (never reported).
        self.bar_sizes[index + 1] = 1;
        Ok(())
    }

    /// Places a BAR (the VMM's initial allocation).
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) {
        let reg = BAR0 / 4 + index;
        if index + 1 < NUM_BARS && self.bar_sizes[index] > 1 {
            self.regs[reg] = ((addr & 0xffff_ffff) as u32 & self.masks[reg]) | BAR_MEM64;
            self.regs[reg + 1] = (addr >> 32) as u32 & self.masks[reg + 1];
        }
    }

    /// The memory BARs and where they are now.
    pub fn bars(&self) -> Vec<BarRegion> {
        (0..NUM_BARS)
            .filter(|i| self.bar_sizes[*i] > 1)
            .map(|i| {
                let reg = BAR0 / 4 + i;
                let lo = u64::from(self.regs[reg] & !0xf);
                let hi = u64::from(self.regs[reg + 1]);
                BarRegion {
                    index: i,
                    addr: hi << 32 | lo,
                    size: self.bar_sizes[i],
                }
            })
            .collect()
    }

    /// Appends a capability (`body` starts with its id; the next pointer is
    /// filled in). Returns its offset. `writable` masks are per dword of the body.
    pub fn add_capability(
        &mut self,
        body: &[u8],
        writable: &[u32],
    ) -> Result<usize, PciConfigError> {
        let len = body.len().div_ceil(4) * 4;
        let off = self.next_cap;
        if body.len() < 2 || off + len > CONFIG_SIZE {
            return Err(PciConfigError::NoRoom(body.len()));
        }
        // A capability pointer is one byte: the standard space is 256 bytes.
        let Ok(ptr) = u8::try_from(off) else {
            return Err(PciConfigError::NoRoom(body.len()));
        };
        let mut bytes = body.to_vec();
        bytes.resize(len, 0);
        bytes[1] = 0;
        for (i, chunk) in bytes.chunks(4).enumerate() {
            self.regs[off / 4 + i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.masks[off / 4 + i] = writable.get(i).copied().unwrap_or(0);
        }
        match self.last_cap {
            None => self.regs[CAPABILITIES_PTR / 4] = u32::from(ptr),
            Some(prev) => {
                let reg = prev / 4;
                let shift = (prev % 4 + 1) * 8;
                self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | u32::from(ptr) << shift;
            }
        }
        self.regs[STATUS / 4] |= STATUS_CAP_LIST << 16;
        self.last_cap = Some(off);
        self.next_cap = off + len;
        Ok(off)
    }

    /// Reads dword register `reg` (0..64); out of range reads all-ones.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// Writes `data` (1, 2 or 4 bytes, not crossing a dword) at byte `offset`.
    /// Odd or out-of-range writes are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let len = data.len();
        if !matches!(len, 1 | 2 | 4) || offset % len != 0 || offset + len > CONFIG_SIZE {
            return;
        }
        let reg = offset / 4;
        let shift = (offset % 4) * 8;
        let mut value = [0u8; 4];
        value[..len].copy_from_slice(data);
        let value = u32::from_le_bytes(value) << shift;
        let lane = if len == 4 {
            u32::MAX
        } else {
            ((1u32 << (len * 8)) - 1) << shift
        };
        let mask = self.masks[reg] & lane;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }

    /// Reads `data.len()` bytes (1, 2 or 4, aligned) at `offset`; odd reads give all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let len = data.len();
        if !matches!(len, 1 | 2 | 4) || offset % len != 0 || offset + len > CONFIG_SIZE {
            data.fill(0xff);
            return;
        }
        let v = self.regs[offset / 4] >> ((offset % 4) * 8);
        data.copy_from_slice(&v.to_le_bytes()[..len]);
    }

    /// Whether the guest enabled memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.regs[COMMAND / 4] & 0x2 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciIdentity {
        PciIdentity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: (0x01, 0x00, 0x00),
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    fn rd32(c: &PciConfig, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfig::new(id());
        assert_eq!(rd32(&c, 0), 0x1042_1af4);
        assert_eq!(rd32(&c, 8) >> 24, 0x01);
        c.write(0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(rd32(&c, 0), 0x1042_1af4);
        c.write(COMMAND, &[0x07, 0xff]);
        assert_eq!(
            rd32(&c, COMMAND) & 0xffff,
            0x0407,
            "only I/O, memory, master, INTx-disable"
        );
        assert!(c.memory_enabled());
    }

    #[test]
    fn bar_sizing_and_placement() {
        let mut c = PciConfig::new(id());
        c.add_mem64_bar(0, 0x8000).unwrap();
        c.set_bar_addr(0, 0xc000_0000);
        assert_eq!(
            c.bars(),
            vec![BarRegion {
                index: 0,
                addr: 0xc000_0000,
                size: 0x8000
            }]
        );
        c.write(BAR0, &u32::MAX.to_le_bytes());
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(rd32(&c, BAR0), 0xffff_8000 | BAR_MEM64);
        assert_eq!(rd32(&c, BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &1u32.to_le_bytes());
        assert_eq!(c.bars()[0].addr, 0x1_d000_0000);
        assert!(
            c.add_mem64_bar(1, 0x1000).is_err(),
            "BAR 1 is BAR 0's upper half"
        );
        assert!(c.add_mem64_bar(5, 0x1000).is_err());
        assert_eq!(
            c.add_mem64_bar(2, 0x1001),
            Err(PciConfigError::BadBarSize(0x1001))
        );
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = PciConfig::new(id());
        let a = c.add_capability(&[0x11, 0, 1, 2], &[0]).unwrap();
        let b = c
            .add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0], &[])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_eq!(rd32(&c, CAPABILITIES_PTR) & 0xff, 0x40);
        assert_eq!((rd32(&c, 0x40) >> 8) & 0xff, 0x44);
        assert_eq!((rd32(&c, 0x44) >> 8) & 0xff, 0);
        assert_ne!(rd32(&c, 4) >> 16 & STATUS_CAP_LIST, 0);
        assert!(c.add_capability(&[0; 300], &[]).is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut c = PciConfig::new(id());
        let mut three = [0u8; 3];
        c.read(0, &mut three);
        assert_eq!(three, [0xff; 3]);
        let mut b = [0u8; 2];
        c.read(1, &mut b);
        assert_eq!(b, [0xff; 2], "misaligned");
        c.read(255, &mut [0u8; 1]);
        c.write(254, &[1, 2, 3, 4]);
        c.write(COMMAND + 1, &[0xff, 0xff]);
        assert_eq!(c.read_reg(64), u32::MAX);
    }
}
