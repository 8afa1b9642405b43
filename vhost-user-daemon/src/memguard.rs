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
//! the daemon survives.
//!
//! The handler only does that inside guest memory: the ranges a
//! [`GuestRanges`] registered when the connection's memory table was
//! mapped, kept in a fixed array of [`MAX_RANGES`] atomic (start, length)
//! slots the handler can read without locks or allocation. Anything else
//! (another BUS_* code, an address outside guest memory: the daemon's own
//! bug, or a file of its own shrinking) restores the default action and
//! re-raises, so the process dies with SIGBUS as it would without a
//! handler. The page size is read once, before the handler is installed.
//! A snapshot's ranges are unregistered once nothing maps it any more
//! (checked at the next table change and when the connection ends).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// SIGBUS faults on guest memory survived since start (for logs/tests).
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// The page size, read before the handler is installed (0: not yet).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Guest memory ranges the handler may patch, at most this many at once.
pub const MAX_RANGES: usize = 1024;

/// One registered range; `len == 0` means free. A slot is claimed by
/// swapping `start` from 0, then given its length; freed length first.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};

static RANGES: [Slot; MAX_RANGES] = [FREE; MAX_RANGES];

/// Installing the SIGBUS handler or registering guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum MemGuardError {
    #[error("sigaction(SIGBUS)")]
    Sigaction(#[source] io::Error),
    #[error("sysconf(_SC_PAGESIZE)")]
    PageSize,
    #[error("more than {MAX_RANGES} guest memory ranges registered")]
    Full,
    #[error("guest memory region of {0} bytes does not fit the address space")]
    RegionLen(u64),
}

/// Faults survived so far.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Registers `[start, start + len)` as guest memory; returns its slot.
/// Allocation-free (usable in a forked child).
pub fn register(start: usize, len: usize) -> Result<usize, MemGuardError> {
    if start == 0 || len == 0 {
        return Ok(usize::MAX);
    }
    for (i, slot) in RANGES.iter().enumerate() {
        if slot
            .start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.len.store(len, Ordering::Release);
            return Ok(i);
        }
    }
    Err(MemGuardError::Full)
}

/// Frees a slot [`register`] returned.
pub fn unregister(slot: usize) {
    if let Some(s) = RANGES.get(slot) {
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Release);
    }
}

/// Whether `addr` lies in a registered range (async-signal-safe).
fn in_guest_memory(addr: usize) -> bool {
    RANGES.iter().any(|s| {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        len != 0 && addr >= start && addr - start < len
    })
}

/// A memory table snapshot (weakly held) and the slots of its regions.
type Tracked<B> = (Weak<GuestMemoryMmap<B>>, Vec<usize>);

/// One connection's guest memory snapshots and the ranges registered for
/// them; everything is unregistered on drop.
#[derive(Debug, Default)]
pub struct GuestRanges<B: Bitmap + 'static = ()> {
    tracked: Mutex<Vec<Tracked<B>>>,
}

impl<B: Bitmap + 'static> GuestRanges<B> {
    /// Registers every region of a new memory table and drops the
    /// registrations of snapshots nothing holds any more.
    pub fn track(&self, mem: &Arc<GuestMemoryMmap<B>>) -> Result<(), MemGuardError> {
        let mut slots = Vec::new();
        for region in mem.iter() {
            let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
                continue;
            };
            let registered = usize::try_from(region.len())
                .map_err(|_| MemGuardError::RegionLen(region.len()))
                .and_then(|len| register(host as usize, len));
            match registered {
                Ok(slot) => slots.push(slot),
                Err(e) => {
                    slots.into_iter().for_each(unregister);
                    return Err(e);
                }
            }
        }
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        tracked.retain(|(snapshot, slots)| {
            let alive = snapshot.strong_count() > 0;
            if !alive {
                slots.iter().copied().for_each(unregister);
            }
            alive
        });
        tracked.push((Arc::downgrade(mem), slots));
        Ok(())
    }
}

impl<B: Bitmap + 'static> Drop for GuestRanges<B> {
    fn drop(&mut self) {
        let tracked = self.tracked.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, slots) in tracked.drain(..) {
            slots.into_iter().for_each(unregister);
        }
    }
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
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    if code == libc::BUS_ADRERR && page != 0 && in_guest_memory(addr) {
        let base = addr & !(page - 1);
        // SAFETY: replaces exactly the one faulting page, which lies in a
        // registered guest memory mapping (shared, file-backed) past its
        // file's end (BUS_ADRERR), with anonymous memory; mmap is
        // async-signal-safe. Guest memory is only ever accessed through
        // volatile copies, so nothing holds a reference into that page.
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
    // Not guest memory: default action (terminate with a core), as if no
    // handler were installed.
    // SAFETY: signal() and raise() are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the process-wide SIGBUS handler (idempotent).
pub fn install_sigbus_handler() -> Result<(), MemGuardError> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .ok_or(MemGuardError::PageSize)?;
    PAGE_SIZE.store(page, Ordering::Relaxed);
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
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges_with_files(&[(
                GuestAddress(0),
                0x4000,
                Some(FileOffset::new(f.try_clone().unwrap(), 0)),
            )])
            .unwrap(),
        );
        let ranges = GuestRanges::default();
        ranges.track(&mem).unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x3000)).unwrap();
        let before = faults();
        f.set_len(0x1000).unwrap();
        let v: u8 = mem.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(v, 0);
        assert!(faults() > before);
    }

    #[test]
    fn ranges_go_when_their_snapshot_goes() {
        let used = || {
            RANGES
                .iter()
                .filter(|s| s.len.load(Ordering::Acquire) != 0)
                .count()
        };
        let table = || {
            Arc::new(
                GuestMemoryMmap::<()>::from_ranges_with_files(&[(
                    GuestAddress(0),
                    0x4000,
                    Some(FileOffset::new(memfd(0x4000), 0)),
                )])
                .unwrap(),
            )
        };
        let ranges = GuestRanges::default();
        let (first, second) = (table(), table());
        let host = |m: &Arc<GuestMemoryMmap>| m.get_host_address(GuestAddress(0)).unwrap() as usize;
        ranges.track(&first).unwrap();
        assert!(in_guest_memory(host(&first) + 0x3fff));
        assert!(!in_guest_memory(host(&first) + 0x4000));
        let (a, b) = (host(&first), host(&second));
        drop(first);
        ranges.track(&second).unwrap();
        assert!(!in_guest_memory(a) || a == b, "the dropped table went");
        assert!(in_guest_memory(b));
        drop(ranges);
        assert!(!in_guest_memory(b));
        // Other tests of this binary may hold ranges meanwhile; none of ours.
        assert!(used() < MAX_RANGES);
    }

    /// A shared mapping of a memfd truncated to nothing: touching it faults.
    /// Raw libc only (runs in a forked child of a threaded process).
    fn truncated_mapping(len: usize) -> *mut u8 {
        let file_len = libc::off_t::try_from(len).unwrap();
        // SAFETY: memfd_create/ftruncate/mmap with valid arguments; results
        // checked; the fd stays open (the child exits soon).
        unsafe {
            let fd = libc::memfd_create(c"memguard-child".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, file_len), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::ftruncate(fd, 0), 0);
            p.cast()
        }
    }

    /// In a child: a SIGBUS inside a registered (guest memory) range is
    /// survived (reads zero); one outside every registered range kills the
    /// child with SIGBUS, as it would without the handler. Exit code 3
    /// means the outside fault was survived too (the old handler patched
    /// any page in the process).
    #[test]
    fn sigbus_outside_guest_memory_kills_inside_is_survived() {
        install_sigbus_handler().unwrap();
        let mut p = [-1; 2];
        // SAFETY: pipe2 fills the two ints.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fork; the child only makes raw libc calls and
        // allocation-free registrations, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let len = 0x4000;
            let guest = truncated_mapping(len);
            let other = truncated_mapping(len);
            let code = match register(guest as usize, len) {
                Ok(_) => {
                    // SAFETY: a read of our own (truncated) mapping: the
                    // handler patches the page.
                    let v = unsafe { std::ptr::read_volatile(guest.add(0x2000)) };
                    let mark = [v.wrapping_add(b'A')];
                    // SAFETY: one byte from `mark` to our pipe.
                    unsafe { libc::write(p[1], mark.as_ptr().cast(), 1) };
                    // SAFETY: a read of a mapping that is not guest memory:
                    // must kill us here.
                    let _ = unsafe { std::ptr::read_volatile(other.add(0x2000)) };
                    3
                }
                Err(_) => 4,
            };
            // SAFETY: leave the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: close our copy of the write end.
        unsafe { libc::close(p[1]) };
        let mut status = 0;
        // SAFETY: wait for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut mark = [0u8; 1];
        // SAFETY: read one byte into `mark` from our pipe.
        let n = unsafe { libc::read(p[0], mark.as_mut_ptr().cast(), 1) };
        // SAFETY: close the read end.
        unsafe { libc::close(p[0]) };
        assert_eq!(
            (n, mark[0]),
            (1, b'A'),
            "the fault inside guest memory was not survived as zeros (status {status:#x})"
        );
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "a fault outside guest memory did not kill the child with SIGBUS (status {status:#x})"
        );
    }
}
