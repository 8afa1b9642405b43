//! Putting a kernel, its command line, initramfs and platform tables into
//! guest memory. Two formats: a bzImage (64-bit boot protocol) and an ELF
//! vmlinux with a PVH note; which one is decided by the file's magic.

pub mod acpi;
pub mod bzimage;
pub mod e820;
pub mod layout;
pub mod mptable;
pub mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, GuestRam};
use layout::{CMDLINE, CMDLINE_MAX};

/// Why the guest could not be prepared for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {0}")]
    Open(String, #[source] std::io::Error),
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("cannot load the kernel image")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("the kernel image has no setup header (not a bzImage?)")]
    NotBootable,
    #[error("bzImage boot protocol {0:#x} is too old (need 2.12 or later)")]
    OldBootProtocol(u16),
    #[error(
        "the ELF kernel has no PVH entry note (CONFIG_PVH=y is needed); boot the bzImage instead"
    )]
    NoPvhEntry,
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error(
        "initramfs of {size} bytes does not fit in guest RAM below {limit:#x} (kernel ends at {kernel_end:#x})"
    )]
    InitrdTooLarge {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("cannot copy the initramfs into guest memory")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
    #[error("memory map has {0} entries, more than the zero page holds")]
    TooManyE820(usize),
    #[error("{what} {value:#x} does not fit the bzImage header's 32-bit field")]
    HeaderField { what: &'static str, value: u64 },
    #[error("cannot write boot parameters")]
    Configure(#[source] linux_loader::configurator::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("cannot write {0} into guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Where the initramfs sits in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// How the boot vCPU must be set up to enter the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 64-bit long mode, paging on, RSI = zero page.
    Linux64 { zero_page: u64 },
    /// 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh32 { start_info: u64 },
}

/// The kernel's entry point and the CPU mode it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub rip: u64,
    pub mode: BootMode,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub cpus: u8,
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Whether the file at hand is an ELF image (PVH) rather than a bzImage.
fn is_elf(file: &mut File, name: &str) -> Result<bool, BootError> {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| BootError::Read(name.into(), e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BootError::Read(name.into(), e))?;
    Ok(magic == ELF_MAGIC)
}

/// Highest initramfs address: page-aligned, as high as allowed, above the kernel.
pub fn place_initrd(size: u64, limit: u64, kernel_end: u64) -> Result<u64, BootError> {
    let too_large = || BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    Ok(addr)
}

fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<Initrd, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::Open(name.clone(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Read(name.clone(), e))?
        .len();
    let addr = place_initrd(size, limit, kernel_end)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(BootError::WriteInitrd)?;
    Ok(Initrd { addr, size })
}

/// Loads everything the kernel needs and says how to enter it.
pub fn load(ram: &GuestRam, spec: &BootSpec) -> Result<BootEntry, BootError> {
    let mem = &ram.mem;
    let name = spec.kernel.display().to_string();
    let mut kernel = File::open(spec.kernel).map_err(|e| BootError::Open(name.clone(), e))?;

    let cmdline = Cmdline::try_from(spec.cmdline, CMDLINE_MAX).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(BootError::LoadCmdline)?;
    let cmdline_len = spec.cmdline.len() + 1;

    let table = mptable::build(spec.cpus, mptable::MPTABLE_ADDR)?;
    mem.write_slice(&table, GuestAddress(mptable::MPTABLE_ADDR))
        .map_err(|e| BootError::Write("the MP table", e))?;
    for (addr, bytes) in acpi::tables(acpi::RSDP_ADDR, spec.cpus) {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|e| BootError::Write("ACPI tables", e))?;
    }
    let map = e820::memory_map(&ram.ranges);
    let low_end = ram.low_ram_end();

    if is_elf(&mut kernel, &name)? {
        let entry = pvh::load(mem, &mut kernel)?;
        let initrd = spec
            .initramfs
            .map(|p| load_initrd(mem, p, low_end, layout::HIMEM_START))
            .transpose()?;
        pvh::write_start_info(mem, initrd, &map, acpi::RSDP_ADDR)?;
        Ok(BootEntry {
            rip: entry,
            mode: BootMode::Pvh32 {
                start_info: layout::PVH_INFO,
            },
        })
    } else {
        let loaded = bzimage::load(mem, &mut kernel)?;
        let kernel_end = layout::HIMEM_START
            + kernel
                .metadata()
                .map_err(|e| BootError::Read(name.clone(), e))?
                .len();
        let limit = low_end.min(loaded.initrd_addr_max.saturating_add(1));
        let initrd = spec
            .initramfs
            .map(|p| load_initrd(mem, p, limit, kernel_end))
            .transpose()?;
        let mut params = bzimage::zero_page(&loaded, cmdline_len, initrd, &map)?;
        params.acpi_rsdp_addr = acpi::RSDP_ADDR;
        bzimage::write_zero_page(mem, &params)?;
        Ok(BootEntry {
            rip: loaded.entry,
            mode: BootMode::Linux64 {
                zero_page: layout::ZERO_PAGE,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        assert_eq!(
            place_initrd(0x1800, 0x1000_0000, 0x20_0000).ok(),
            Some(0x0fff_e000)
        );
    }

    #[test]
    fn initrd_must_not_overlap_the_kernel() {
        assert!(place_initrd(0x1000_0000, 0x1000_0000, 0x20_0000).is_err());
        assert!(place_initrd(u64::MAX, 0x1000, 0).is_err());
    }

    #[test]
    fn kernel_that_is_neither_format_is_refused() {
        let dir = std::env::temp_dir().join(format!("viaduct-boot-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let ram = GuestRam::new(64 << 20, false).unwrap();
        let spec = BootSpec {
            kernel: &dir,
            initramfs: None,
            cmdline: "console=ttyS0",
            cpus: 1,
        };
        let err = load(&ram, &spec).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(err, BootError::LoadKernel(_)), "{err:?}");
    }
}
