//! Linux 64-bit boot protocol from a bzImage: linux-loader copies the
//! protected-mode kernel to 1 MiB; we fill the zero page (setup header,
//! command line, initramfs, e820) and start at the 64-bit entry.

use std::fs::File;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::GuestAddress;

use crate::boot::e820::E820Entry;
use crate::boot::layout::{CMDLINE, HIMEM_START, ZERO_PAGE, addr32};
use crate::boot::{BootError, Initrd};
use crate::memory::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Offset of the 64-bit entry point from the protected-mode kernel's start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 (Linux 3.8) introduced the 64-bit entry we use.
const MIN_PROTOCOL: u16 = 0x020c;

/// Where the bzImage was put and what its header says.
#[derive(Debug, Clone, Copy)]
pub struct LoadedBzImage {
    pub entry: u64,
    pub header: linux_loader::loader::bootparam::setup_header,
    /// Highest address the initramfs may end at (`initrd_addr_max`).
    pub initrd_addr_max: u64,
}

/// Copies the kernel into guest memory.
pub fn load(mem: &GuestMemory, kernel: &mut File) -> Result<LoadedBzImage, BootError> {
    let result = BzImage::load(mem, Some(GuestAddress(HIMEM_START)), kernel, None)
        .map_err(BootError::LoadKernel)?;
    let header = result.setup_header.ok_or(BootError::NotBootable)?;
    if header.version < MIN_PROTOCOL {
        return Err(BootError::OldBootProtocol(header.version));
    }
    let initrd_addr_max = if header.initrd_addr_max == 0 {
        0x37ff_ffff
    } else {
        u64::from(header.initrd_addr_max)
    };
    Ok(LoadedBzImage {
        entry: result.kernel_load.0 + ENTRY_64_OFFSET,
        header,
        initrd_addr_max,
    })
}

/// Builds the zero page (pure apart from the final write, for tests).
pub fn zero_page(
    loaded: &LoadedBzImage,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    map: &[E820Entry],
) -> Result<boot_params, BootError> {
    let mut params = boot_params {
        hdr: loaded.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    let field =
        |what, value: u64| u32::try_from(value).map_err(|_| BootError::HeaderField { what, value });
    params.hdr.cmd_line_ptr = const { addr32(CMDLINE) };
    params.hdr.cmdline_size = field("command line size", cmdline_len as u64)?;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = field("initramfs address", rd.addr)?;
        params.hdr.ramdisk_size = field("initramfs size", rd.size)?;
    }
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| BootError::TooManyE820(map.len()))?;
    Ok(params)
}

/// Writes the zero page into guest memory.
pub fn write_zero_page(mem: &GuestMemory, params: &boot_params) -> Result<(), BootError> {
    LinuxBootConfigurator::write_bootparams(&BootParams::new(params, GuestAddress(ZERO_PAGE)), mem)
        .map_err(BootError::Configure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;
    use crate::memory::ram_ranges;

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let loaded = LoadedBzImage {
            entry: HIMEM_START + ENTRY_64_OFFSET,
            header: Default::default(),
            initrd_addr_max: 0x7fff_ffff,
        };
        let map = memory_map(&ram_ranges(256 << 20));
        let rd = Initrd {
            addr: 0x0f00_0000,
            size: 0x1234,
        };
        let p = zero_page(&loaded, 42, Some(rd), &map).unwrap();
        let (ptr, size, img, rsize) = (
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
        );
        assert_eq!((ptr, size), (addr32(CMDLINE), 42));
        assert_eq!((img, rsize), (0x0f00_0000, 0x1234));
        assert_eq!(p.e820_entries as usize, map.len());
        let first = p.e820_table[0];
        let addr = first.addr;
        let kind = first.r#type;
        assert_eq!((addr, kind), (0, 1));
        let magic = p.hdr.header;
        assert_eq!(magic, KERNEL_HDR_MAGIC);
    }

    #[test]
    fn too_many_e820_entries_are_refused() {
        let loaded = LoadedBzImage {
            entry: 0,
            header: Default::default(),
            initrd_addr_max: 0,
        };
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            200
        ];
        assert!(matches!(
            zero_page(&loaded, 1, None, &map),
            Err(BootError::TooManyE820(200))
        ));
    }
}
