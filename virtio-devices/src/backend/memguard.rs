//! Guest memory the frontend can pull out from under us.
//!
//! Guest memory is the frontend's fd, mapped MAP_SHARED. A hostile frontend
//! can hand over a file shorter than the region it describes, or truncate
//! the memfd after SET_MEM_TABLE; touching such a page raises SIGBUS
//! (BUS_ADRERR), which would kill the daemon and every later connection.
//!
//! Two defences: [`check_backing`] refuses a memory table whose regions run
//! past the end of their file (SET_MEM_TABLE / ADD_MEM_REG fail), and
//! [`install_sigbus_handler`] catches the truncate-later case — it maps an
//! anonymous zero page over the faulting page and lets the access retry,
//! so the worker reads zeros (a garbage ring, handled like any other) and
//! the daemon survives. Only BUS_ADRERR is handled; any other SIGBUS keeps
//! its default action. The connection's guest memory is unmapped at
//! disconnect, so the patch dies with it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// SIGBUS faults on guest memory survived since start (for logs/tests).
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Installing the SIGBUS handler failed.
#[derive(Debug, thiserror::Error)]
pub enum MemGuardError {
    #[error("sigaction(SIGBUS)")]
    Sigaction(#[source] io::Error),
}

/// Faults survived so far.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Every region must be file-backed and lie within its file.
pub fn check_backing<B: Bitmap>(mem: &GuestMemoryMmap<B>) -> io::Result<()> {
    for region in mem.iter() {
        let Some(fo) = region.file_offset() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest memory region without a file",
            ));
        };
        let file_len = fo.file().metadata()?.len();
        let end = fo.start().checked_add(region.len());
        if end.is_none_or(|end| end > file_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "guest memory region at {:#x} ends past its file ({file_len} bytes)",
                    region.start_addr().0
                ),
            ));
        }
    }
    Ok(())
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr()) };
    if code == libc::BUS_ADRERR && !addr.is_null() {
        // SAFETY: sysconf is async-signal-safe.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let base = (addr as usize) & !(page - 1);
        // SAFETY: replaces exactly the one faulting page, which belongs to
        // a shared file mapping past its file's end (BUS_ADRERR), with
        // anonymous memory; mmap is async-signal-safe. Nothing else in the
        // process refers to that page's contents.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not ours: default action (terminate with a core).
    // SAFETY: signal() and raise() are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the process-wide SIGBUS handler (idempotent).
pub fn install_sigbus_handler() -> Result<(), MemGuardError> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting point.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigbus as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t inside `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: installs a handler that only makes async-signal-safe calls.
    let rc = unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(MemGuardError::Sigaction(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::FromRawFd;

    use vm_memory::{Bytes, FileOffset, GuestAddress};

    use super::*;

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create with a valid C string; checked below.
        let fd = unsafe { libc::memfd_create(c"memguard".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: we own the fresh fd.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn region_past_the_end_of_its_file_is_refused() {
        let f = memfd(0x4000);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            0x4000,
            Some(FileOffset::new(f.try_clone().unwrap(), 0x1000)),
        )])
        .unwrap();
        assert!(check_backing(&mem).is_err());
        let ok = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            0x3000,
            Some(FileOffset::new(f, 0x1000)),
        )])
        .unwrap();
        assert!(check_backing(&ok).is_ok());
    }

    #[test]
    fn truncated_memory_reads_zero_instead_of_killing() {
        install_sigbus_handler().unwrap();
        let f = memfd(0x4000);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            0x4000,
            Some(FileOffset::new(f.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x3000)).unwrap();
        let before = faults();
        f.set_len(0x1000).unwrap();
        let v: u8 = mem.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(v, 0);
        assert!(faults() > before);
    }
}
