//! PVH boot from an uncompressed ELF vmlinux: linux-loader places the
//! segments and finds the Xen PVH note; we write `hvm_start_info`, the
//! memory map and the module list (the initramfs), and start at the PVH
//! entry in 32-bit protected mode with EBX = start_info.

use std::fs::File;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::GuestAddress;

use crate::boot::e820::E820Entry;
use crate::boot::layout::{CMDLINE, HIMEM_START, PVH_INFO, PVH_MEMMAP, PVH_MODLIST};
use crate::boot::{BootError, Initrd};
use crate::memory::GuestMemory;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Loads the ELF kernel; returns its PVH entry point.
pub fn load(mem: &GuestMemory, kernel: &mut File) -> Result<u64, BootError> {
    let result = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::LoadKernel)?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry.0),
        _ => Err(BootError::NoPvhEntry),
    }
}

/// The start-info block and its tables (pure, for tests).
pub fn start_info(
    initrd: Option<Initrd>,
    map: &[E820Entry],
    rsdp: u64,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();
    // Cannot truncate: the e820 map has a handful of entries, and there is
    // one module at most.
    #[allow(clippy::cast_possible_truncation)]
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST },
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    (info, memmap, modules)
}

/// Writes start_info, the memory map and the module list.
pub fn write_start_info(
    mem: &GuestMemory,
    initrd: Option<Initrd>,
    map: &[E820Entry],
    rsdp: u64,
) -> Result<(), BootError> {
    let (info, memmap, modules) = start_info(initrd, map, rsdp);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Configure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;
    use crate::memory::ram_ranges;

    #[test]
    fn start_info_points_at_its_tables() {
        let map = memory_map(&ram_ranges(128 << 20));
        let (info, memmap, modules) = start_info(
            Some(Initrd {
                addr: 0x100_0000,
                size: 99,
            }),
            &map,
            0xe0000,
        );
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries as usize, memmap.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST);
        assert_eq!(modules[0].size, 99);
        assert_eq!(info.cmdline_paddr, CMDLINE);
        assert_eq!(info.rsdp_paddr, 0xe0000);
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let (info, _, modules) = start_info(None, &[], 0);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(modules.is_empty());
    }
}
