//! PCIe enhanced configuration access (ECAM, "MMCONFIG") for bus 0: the
//! MCFG table points the guest at a 1 MiB MMIO window where function `f`
//! of device `d` has its 4 KiB configuration space at `d << 15 | f << 12`.
//! That is how a guest reaches extended configuration space (offsets
//! 256-4095: AER, and the extended capabilities of passed-through
//! functions the VMM filters). Accesses land on the same [`PciRoot`] as
//! mechanism #1; only function 0 exists; sizes other than 1, 2 and 4 bytes
//! and misaligned accesses read all-ones and write nothing.

use std::sync::{Arc, Mutex};

use crate::devices::bus::BusDevice;
use crate::pci::root::PciRoot;

/// The ECAM window of bus 0.
#[derive(Debug)]
pub struct Ecam {
    root: Arc<Mutex<PciRoot>>,
}

impl Ecam {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

/// (slot, register) of an access of `len` bytes at window offset `offset`,
/// if it addresses function 0 on bus 0 with a proper size and alignment.
fn decode(offset: u64, len: usize) -> Option<(usize, usize)> {
    let bus = offset >> 20;
    let function = (offset >> 12) & 7;
    let reg = (offset & 0xfff) as usize;
    let ok = bus == 0 && function == 0 && matches!(len, 1 | 2 | 4) && reg % len == 0;
    ok.then_some((((offset >> 15) & 0x1f) as usize, reg))
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match decode(offset, data.len()) {
            Some((slot, reg)) => self
                .root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read_at(slot, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((slot, reg)) = decode(offset, data.len()) {
            self.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write_at(slot, reg, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::Bus;
    use crate::pci::host_bridge::HostBridge;

    #[test]
    fn offsets_decode_to_slot_and_register() {
        assert_eq!(decode(0, 4), Some((0, 0)));
        assert_eq!(decode(3 << 15 | 0x104, 4), Some((3, 0x104)));
        assert_eq!(decode(31 << 15 | 0xffc, 4), Some((31, 0xffc)));
        assert_eq!(decode(1 << 12, 4), None, "function 1");
        assert_eq!(decode(1 << 20, 4), None, "bus 1");
        assert_eq!(decode(0x102, 4), None, "misaligned");
        assert_eq!(decode(0x100, 8), None, "8-byte access");
        assert_eq!(decode(0x101, 1), Some((0, 0x101)));
    }

    #[test]
    fn same_functions_as_mechanism_one() {
        let mut root = PciRoot::new(Arc::new(Bus::new()), None);
        root.add(0, Arc::new(Mutex::new(HostBridge::default())))
            .unwrap();
        let mut ecam = Ecam::new(Arc::new(Mutex::new(root)));
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_ne!(id, [0xff; 4], "host bridge identity");
        let mut empty = [0u8; 4];
        ecam.read(5 << 15, &mut empty);
        assert_eq!(empty, [0xff; 4], "empty slot");
        let mut ext = [0u8; 4];
        ecam.read(0x100, &mut ext);
        assert_eq!(
            ext, [0xff; 4],
            "no extended space on a conventional function"
        );
        let mut odd = [0u8; 4];
        ecam.read(0x2, &mut odd);
        assert_eq!(odd, [0xff; 4]);
        ecam.write(1 << 12, &[0; 4]);
    }
}
