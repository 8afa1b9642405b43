//! The guest's physical memory map as the kernel is told it (e820 for
//! bzImage, the same entries as a PVH memmap).

use crate::boot::layout::{EBDA_START, HIMEM_START, PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::memory::RamRange;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for `ranges` of RAM: base memory up to the EBDA (where
/// the MP table lives), the legacy hole reserved, then the rest of RAM,
/// and the PCI ECAM window reserved.
pub fn memory_map(ranges: &[RamRange]) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(ranges.len() + 2);
    for r in ranges {
        let end = r.guest_addr + r.size;
        if r.guest_addr == 0 {
            map.push(E820Entry {
                addr: 0,
                size: EBDA_START.min(end),
                kind: E820_RAM,
            });
            map.push(E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820_RESERVED,
            });
            if end > HIMEM_START {
                map.push(E820Entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: r.guest_addr,
                size: r.size,
                kind: E820_RAM,
            });
        }
    }
    // Linux only trusts MMCONFIG that firmware reserved.
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ram_ranges;

    #[test]
    fn low_memory_map_has_base_hole_and_high() {
        let m = memory_map(&ram_ranges(256 << 20));
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[3],
            E820Entry {
                addr: PCI_ECAM_START,
                size: PCI_ECAM_SIZE,
                kind: E820_RESERVED
            },
            "ECAM reserved"
        );
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(m[1].kind, E820_RESERVED);
        assert_eq!(m[2].addr, HIMEM_START);
        assert_eq!(m[2].addr + m[2].size, 256 << 20);
    }

    #[test]
    fn high_ram_is_listed_after_the_hole() {
        let m = memory_map(&ram_ranges(5 << 30));
        assert_eq!(m.len(), 5);
        assert_eq!(m[3].addr, PCI_ECAM_START, "sorted: ECAM below 4 GiB");
        assert_eq!(m[4].addr, 1 << 32);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the legacy hole is usable.
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
    }
}
