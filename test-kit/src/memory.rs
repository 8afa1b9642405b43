//! Shared guest memory for the frontends: one memfd mapped at guest
//! physical address 0, so the daemon can map the same pages.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Errors making guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the memfd")]
    Size(#[source] std::io::Error),
    #[error("mapping guest memory: {0}")]
    Map(String),
}

/// A memfd named `name` of `len` bytes.
pub fn memfd(name: &CStr, len: u64) -> Result<File, MemoryError> {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this fd; File takes ownership.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).map_err(MemoryError::Size)?;
    Ok(file)
}

/// `size` bytes of guest memory at GPA 0, backed by a fresh memfd
/// (MAP_SHARED, so what the daemon writes shows up here).
pub fn guest_memory(name: &CStr, size: usize) -> Result<GuestMemoryMmap, MemoryError> {
    let file = memfd(name, size as u64)?;
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn guest_memory_is_one_region_of_the_asked_size() {
        let mem = guest_memory(c"kit-test", 1 << 20).expect("guest memory");
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xabu8, GuestAddress((1 << 20) - 1))
            .expect("last byte is mapped");
        assert!(mem.write_obj(0u8, GuestAddress(1 << 20)).is_err());
    }
}
