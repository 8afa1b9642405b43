//! Guest RAM: one memfd, mapped `MAP_SHARED`, split around the 32-bit MMIO
//! hole. The memfd is what a vhost-user backend later maps too, so the VMM,
//! KVM and every daemon see the same pages.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{MMIO32_START, RAM_64BIT_START};

/// Guest memory as the whole VMM sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is too small (need at least 64 MiB)")]
    TooSmall(u64),
    #[error(
        "guest memory size {0} bytes is too large (at most 63 GiB: the 64-bit PCI window starts at 64 GiB)"
    )]
    TooLarge(u64),
    #[error("guest memory size {0} bytes is not a multiple of the page size {1}")]
    Unaligned(u64, u64),
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory memfd to {0} bytes (not enough hugepages reserved?)")]
    Truncate(u64, #[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// One contiguous piece of guest RAM: where it sits in the guest and where
/// it starts in the memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Splits `size` bytes of RAM around the MMIO hole (pure, for tests).
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    if size <= MMIO32_START {
        return vec![RamRange {
            guest_addr: 0,
            size,
            file_offset: 0,
        }];
    }
    vec![
        RamRange {
            guest_addr: 0,
            size: MMIO32_START,
            file_offset: 0,
        },
        RamRange {
            guest_addr: RAM_64BIT_START,
            size: size - MMIO32_START,
            file_offset: MMIO32_START,
        },
    ]
}

/// Guest RAM: the mapping plus the memfd that backs it.
#[derive(Debug)]
pub struct GuestRam {
    pub mem: GuestMemory,
    pub memfd: File,
    pub ranges: Vec<RamRange>,
}

const MIB: u64 = 1 << 20;

impl GuestRam {
    /// Creates `size` bytes of memfd-backed RAM (2 MiB hugepages if asked).
    pub fn new(size: u64, hugepages: bool) -> Result<Self, MemoryError> {
        if size < 64 * MIB {
            return Err(MemoryError::TooSmall(size));
        }
        if size > crate::boot::layout::MAX_RAM {
            return Err(MemoryError::TooLarge(size));
        }
        let page = if hugepages { 2 * MIB } else { 4096 };
        if size % page != 0 {
            return Err(MemoryError::Unaligned(size, page));
        }
        let memfd = create_memfd(hugepages)?;
        memfd
            .set_len(size)
            .map_err(|e| MemoryError::Truncate(size, e))?;
        let ranges = ram_ranges(size);
        let shared = std::sync::Arc::new(memfd.try_clone().map_err(MemoryError::Memfd)?);
        let mut regions = Vec::with_capacity(ranges.len());
        for r in &ranges {
            let len = usize::try_from(r.size).map_err(|_| MemoryError::TooLarge(size))?;
            let file = FileOffset::from_arc(shared.clone(), r.file_offset);
            regions.push((GuestAddress(r.guest_addr), len, Some(file)));
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)?;
        Ok(Self { mem, memfd, ranges })
    }

    /// The last byte address + 1 of RAM below the MMIO hole.
    pub fn low_ram_end(&self) -> u64 {
        self.ranges.first().map_or(0, |r| r.guest_addr + r.size)
    }
}

fn create_memfd(hugepages: bool) -> Result<File, MemoryError> {
    let name = CString::new("viaduct-guest-ram").unwrap_or_default();
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `name` is a valid NUL-terminated string and the flags are
    // valid memfd flags; the return value is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(
            ram_ranges(256 * MIB),
            vec![RamRange {
                guest_addr: 0,
                size: 256 * MIB,
                file_offset: 0
            }]
        );
    }

    #[test]
    fn large_ram_skips_the_hole() {
        let r = ram_ranges(4096 * MIB);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].size, MMIO32_START);
        assert_eq!(r[1].guest_addr, RAM_64BIT_START);
        assert_eq!(r[1].file_offset, MMIO32_START);
        assert_eq!(r[0].size + r[1].size, 4096 * MIB);
    }

    #[test]
    fn memfd_ram_is_shared_with_the_file() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(64 * MIB, false).unwrap();
        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.mem.num_regions(), 1);
        assert_eq!(ram.low_ram_end(), 64 * MIB);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            GuestRam::new(MIB, false),
            Err(MemoryError::TooSmall(_))
        ));
        assert!(matches!(
            GuestRam::new(64 * MIB + 1, false),
            Err(MemoryError::Unaligned(..))
        ));
        assert!(matches!(
            GuestRam::new(64 << 30, false),
            Err(MemoryError::TooLarge(_))
        ));
    }
}
