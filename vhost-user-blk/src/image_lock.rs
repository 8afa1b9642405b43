//! The image's advisory lock (`flock`, exclusive; shared when read-only):
//! two daemons never serve one image at once — except that a live
//! migration hands the image over. The source daemon releases the lock at
//! the switch-over, once every queue is stopped and the image flushed; a
//! destination daemon (`--incoming`) opens the image without the lock and
//! takes it when its frontend starts the first queue, which QEMU does only
//! after the switch-over. If the migration fails and the source resumes,
//! the source takes the lock back the same way.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Taking the lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock descriptor could not be opened.
    #[error("cannot open {path} to lock it")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the image.
    #[error("{0} is in use by another process (advisory lock held)")]
    Held(PathBuf),
}

/// The lock, through a descriptor of its own (closing an image descriptor
/// elsewhere never drops it).
#[derive(Debug)]
pub struct ImageLock {
    /// `None`: nothing to lock here (an RBD image: librbd's exclusive
    /// lock arbitrates between clients in the cluster).
    file: Option<File>,
    path: PathBuf,
    op: libc::c_int,
    held: AtomicBool,
}

impl ImageLock {
    /// Opens the lock descriptor for `path` without locking.
    pub fn open(path: &Path, read_only: bool) -> Result<ImageLock, LockError> {
        let file = File::open(path).map_err(|source| LockError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(ImageLock {
            file: Some(file),
            path: path.to_owned(),
            op: if read_only {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            },
            held: AtomicBool::new(false),
        })
    }

    /// A lock that always succeeds, for an image with no file on this
    /// host (the storage cluster arbitrates between its clients).
    pub fn none(name: &Path) -> ImageLock {
        ImageLock {
            file: None,
            path: name.to_owned(),
            op: libc::LOCK_SH,
            held: AtomicBool::new(false),
        }
    }

    /// Takes the lock without waiting; taking a held lock again is a no-op.
    pub fn acquire(&self) -> Result<(), LockError> {
        if self.held.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = self.file.as_ref().map_or(0, |file| unsafe {
            libc::flock(file.as_raw_fd(), self.op | libc::LOCK_NB)
        });
        if rc != 0 {
            return Err(LockError::Held(self.path.clone()));
        }
        self.held.store(true, Ordering::Release);
        Ok(())
    }

    /// Releases the lock (the switch-over of a live migration).
    pub fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = self.file.as_ref().map_or(0, |file| unsafe {
                libc::flock(file.as_raw_fd(), libc::LOCK_UN)
            });
            if rc != 0 {
                log::warn!(
                    "event=image_unlock_failed path={} error=\"{}\"",
                    self.path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// Whether this daemon holds the lock.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// Hands the lock over as the frontend starts and stops queues: taken
/// when a queue starts (SET_VRING_KICK), released when GET_VRING_BASE has
/// stopped the last running queue (after the drain and the flush, before
/// the frontend reads the reply).
#[derive(Debug)]
pub struct LockFollower {
    lock: Arc<ImageLock>,
    /// Bit `i`: queue `i` started and not stopped since.
    running: AtomicU64,
}

impl LockFollower {
    /// Follows `lock` for one connection.
    pub fn new(lock: Arc<ImageLock>) -> LockFollower {
        LockFollower {
            lock,
            running: AtomicU64::new(0),
        }
    }

    /// Queue `index` is being started: the daemon must hold the image.
    pub fn queue_starting(&self, index: u32) -> Result<(), LockError> {
        if !self.lock.is_held() {
            self.lock.acquire()?;
            log::info!(
                "event=image_lock_taken path={} queue={index}",
                self.lock.path.display()
            );
        }
        self.running.fetch_or(bit(index), Ordering::AcqRel);
        Ok(())
    }

    /// Queue `index` stopped (its GET_VRING_BASE reply is on its way):
    /// with no queue left running the image is released.
    pub fn queue_stopped(&self, index: u32) {
        let before = self.running.fetch_and(!bit(index), Ordering::AcqRel);
        if before & !bit(index) == 0 && self.lock.is_held() {
            self.lock.release();
            log::info!(
                "event=image_lock_released path={} reason=all_queues_stopped",
                self.lock.path.display()
            );
        }
    }
}

/// The running-mask bit of a queue (indices past 63 share the top bit:
/// the daemon has at most 64 queues).
fn bit(index: u32) -> u64 {
    1u64 << index.min(63)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn one_holder_at_a_time_and_the_handover() {
        let f = TempFile::new().expect("temp file");
        let source = ImageLock::open(f.as_path(), false).expect("open");
        let dest = ImageLock::open(f.as_path(), false).expect("open");
        source.acquire().expect("first holder");
        source.acquire().expect("again: no-op");
        assert!(matches!(dest.acquire(), Err(LockError::Held(_))));
        assert!(!dest.is_held());
        source.release();
        assert!(!source.is_held());
        dest.acquire().expect("handed over");
        assert!(matches!(source.acquire(), Err(LockError::Held(_))));
    }

    #[test]
    fn readers_share() {
        let f = TempFile::new().expect("temp file");
        let a = ImageLock::open(f.as_path(), true).expect("open");
        let b = ImageLock::open(f.as_path(), true).expect("open");
        a.acquire().expect("shared");
        b.acquire().expect("shared");
        let w = ImageLock::open(f.as_path(), false).expect("open");
        assert!(w.acquire().is_err());
    }

    #[test]
    fn the_follower_releases_when_the_last_queue_stops() {
        let f = TempFile::new().expect("temp file");
        let lock = Arc::new(ImageLock::open(f.as_path(), false).expect("open"));
        let other = ImageLock::open(f.as_path(), false).expect("open");
        let follow = LockFollower::new(Arc::clone(&lock));
        follow.queue_starting(0).expect("take");
        follow.queue_starting(1).expect("again");
        follow.queue_stopped(0);
        assert!(lock.is_held(), "queue 1 still runs");
        follow.queue_stopped(1);
        assert!(!lock.is_held());
        other.acquire().expect("the destination takes it");
        assert!(matches!(follow.queue_starting(0), Err(LockError::Held(_))));
    }
}
