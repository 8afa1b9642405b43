//! The frontend's side of dirty logging, as a migrating QEMU does it: a
//! memfd bitmap handed over with SET_LOG_BASE (`PROTOCOL_F_LOG_SHMFD`),
//! then `VHOST_F_LOG_ALL` acked; the test reads back which 4 KiB guest
//! pages the daemon marked.

use std::os::fd::AsRawFd;

use vhost::vhost_user::Frontend;

use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::guest_memory;

/// `VHOST_F_LOG_ALL`.
pub const F_LOG_ALL: u64 = 1 << 26;
/// The page a log bit stands for.
pub const PAGE: u64 = 4096;

/// A dirty-page bitmap the daemon maps, read back by the test.
#[derive(Debug)]
pub struct LogBitmap {
    /// The bitmap itself, mapped here like guest memory (one memfd).
    map: GuestMemoryMmap,
    bytes: u64,
}

impl LogBitmap {
    /// A zeroed bitmap covering guest memory up to `mem_end`.
    pub fn new(mem_end: u64) -> LogBitmap {
        let bytes = mem_end.div_ceil(PAGE * 8).next_multiple_of(PAGE);
        let map = guest_memory(c"dirty-log", usize::try_from(bytes).expect("log size"))
            .expect("log memfd");
        LogBitmap { map, bytes }
    }

    /// Hands the bitmap to the daemon (SET_LOG_BASE, fd + size + offset 0).
    /// The protocol feature `LOG_SHMFD` must have been acked.
    pub fn install(&self, fe: &mut Frontend) -> vhost::Result<()> {
        let region = vm_memory::GuestMemoryBackend::find_region(&self.map, GuestAddress(0))
            .expect("log region");
        let fd = vm_memory::GuestMemoryRegion::file_offset(region)
            .expect("memfd backed")
            .file()
            .as_raw_fd();
        fe.set_log_base(
            0,
            Some(VhostUserDirtyLogRegion {
                mmap_size: self.bytes,
                mmap_offset: 0,
                mmap_handle: fd,
            }),
        )
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / PAGE;
        let byte: u8 = self
            .map
            .read_obj(GuestAddress(page / 8))
            .expect("inside the log");
        byte & (1 << (page % 8)) != 0
    }

    /// Every marked page's first address, ascending.
    pub fn marked(&self) -> Vec<u64> {
        (0..self.bytes * 8)
            .map(|p| p * PAGE)
            .filter(|&gpa| self.is_marked(gpa))
            .collect()
    }

    /// Clears every bit (what a frontend does after it copied a pass).
    pub fn clear(&self) {
        let zeros = vec![0u8; usize::try_from(self.bytes).expect("log size")];
        self.map
            .write_slice(&zeros, GuestAddress(0))
            .expect("inside the log");
    }
}

/// Turns logging on: SET_FEATURES with `features | LOG_ALL`.
pub fn log_all(fe: &mut Frontend, features: u64, on: bool) -> vhost::Result<()> {
    let f = if on {
        features | F_LOG_ALL
    } else {
        features & !F_LOG_ALL
    };
    fe.set_features(f)
}
