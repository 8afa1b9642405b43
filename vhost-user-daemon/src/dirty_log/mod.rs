//! Dirty-page logging for live migration, once for every daemon.
//!
//! A frontend migrating a guest must learn which guest pages the daemon
//! wrote while memory was being copied. It offers a shared bitmap
//! (`PROTOCOL_F_LOG_SHMFD`, `SET_LOG_BASE`) and turns logging on by acking
//! `VHOST_F_LOG_ALL`; from then on the daemon marks every 4 KiB page it
//! writes, by guest physical address, before the used-ring entry that
//! makes the write visible is published.
//!
//! - [`region`]: the mapped bitmap, checked against its fd, marked with
//!   atomic `fetch_or`;
//! - [`filter`]: the relay filter wrapper that takes SET_LOG_BASE and
//!   SET_LOG_FD itself, follows LOG_ALL and the memory table's extent, and
//!   offers the two feature bits, so vhost-user-backend never sees them;
//! - [`DirtyLog`]: the handle the workers hold. With logging off a worker
//!   pays one atomic load per batch ([`DirtyLog::active`]).
//!
//! We mark explicitly rather than through vm-memory's bitmap
//! (vhost-user-backend's `BitmapMmapRegion`): most of what the daemons
//! write bypasses vm-memory (io_uring, `readv` into guest buffers), the
//! bitmap would take a lock on every vm-memory write even with logging
//! off, and it keeps marking after LOG_ALL is withdrawn.

pub mod filter;
pub mod region;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub use region::{LOG_PAGE, LogRegion, LogRegionError};

/// Size in bytes of a split used ring of `size` entries: flags, idx, the
/// ring, and `avail_event`.
pub fn used_ring_bytes(size: u16) -> u64 {
    4 + 8 * u64::from(size) + 2
}

/// One connection's log state, shared by the relay and the workers.
#[derive(Debug, Clone)]
pub struct DirtyLog {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The frontend acked `VHOST_F_LOG_ALL`.
    log_all: AtomicBool,
    /// `log_all` and a region is installed (and marking is not disabled).
    active: AtomicBool,
    /// Test-only: offer logging but never mark (the negative control).
    never_mark: bool,
    region: RwLock<Option<Arc<LogRegion>>>,
}

impl DirtyLog {
    /// A log with nothing installed. `never_mark` is the test-only switch
    /// that accepts logging and marks nothing, so a migration test can
    /// show it would detect the lost writes.
    pub fn new(never_mark: bool) -> DirtyLog {
        DirtyLog {
            shared: Arc::new(Shared {
                never_mark,
                ..Shared::default()
            }),
        }
    }

    /// The region to mark, if logging is on. One atomic load when off.
    #[inline]
    pub fn active(&self) -> Option<Arc<LogRegion>> {
        if !self.shared.active.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .region
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks `[gpa, gpa + len)` if logging is on.
    pub fn mark(&self, gpa: u64, len: u64) {
        if let Some(log) = self.active() {
            log.mark(gpa, len);
        }
    }

    /// Whether the frontend has logging on (LOG_ALL acked).
    pub fn log_all(&self) -> bool {
        self.shared.log_all.load(Ordering::Acquire)
    }

    /// The installed region (tests, diagnostics).
    pub fn region(&self) -> Option<Arc<LogRegion>> {
        self.shared
            .region
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs (or with `None` removes) the frontend's log region.
    pub fn set_region(&self, region: Option<Arc<LogRegion>>) {
        *self
            .shared
            .region
            .write()
            .unwrap_or_else(|e| e.into_inner()) = region;
        self.update();
    }

    /// Follows LOG_ALL in the frontend's SET_FEATURES.
    pub fn set_log_all(&self, on: bool) {
        self.shared.log_all.store(on, Ordering::Release);
        self.update();
    }

    fn update(&self) {
        let has_region = self
            .shared
            .region
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let on = self.log_all() && has_region && !self.shared.never_mark;
        self.shared.active.store(on, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd};

    fn region() -> Arc<LogRegion> {
        // SAFETY: a fresh memfd with a valid C string name.
        let fd = unsafe { libc::memfd_create(c"dl".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a new fd we own.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.set_len(4096).expect("set_len");
        Arc::new(LogRegion::map(f.as_fd(), 0, 4096).expect("map"))
    }

    #[test]
    fn marks_only_with_log_all_and_a_region() {
        let log = DirtyLog::new(false);
        let r = region();
        log.set_region(Some(r.clone()));
        log.mark(0, 1);
        assert!(!r.is_marked(0), "no LOG_ALL: no marks");
        log.set_log_all(true);
        log.mark(0, 1);
        assert!(r.is_marked(0));
        log.set_log_all(false);
        log.mark(4096, 1);
        assert!(!r.is_marked(4096), "LOG_ALL withdrawn: no marks");
        assert!(log.active().is_none());
    }

    #[test]
    fn the_negative_control_never_marks() {
        let log = DirtyLog::new(true);
        let r = region();
        log.set_region(Some(r.clone()));
        log.set_log_all(true);
        log.mark(0, 1 << 20);
        assert!((0..256).all(|p| !r.is_marked(p * 4096)));
    }

    #[test]
    fn used_ring_size() {
        assert_eq!(used_ring_bytes(256), 4 + 2048 + 2);
    }
}
