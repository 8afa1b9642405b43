//! Per-queue counters: requests, bytes, errors, in-flight high-water mark.
//! Lock-free, shared by every connection's workers for the daemon's lifetime,
//! logged at exit and on SIGUSR1.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one queue. Only that queue's worker writes them.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Requests completed (any status, dropped included).
    pub requests: AtomicU64,
    /// Bytes read from the disk into guest memory.
    pub bytes_read: AtomicU64,
    /// Bytes written from guest memory to the disk.
    pub bytes_written: AtomicU64,
    /// Requests completed with IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Chains dropped because no status could be written.
    pub dropped: AtomicU64,
    /// Highest number of requests in flight at once.
    pub inflight_max: AtomicU64,
    /// Times the ring was found corrupt (queue stopped until reset).
    pub ring_errors: AtomicU64,
    /// Requests resubmitted from the in-flight region at ring start.
    pub resubmitted: AtomicU64,
}

impl QueueCounters {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Raise the in-flight high-water mark.
    pub fn note_inflight(&self, n: usize) {
        self.inflight_max.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// One `key=value` log line.
    pub fn summary(&self, queue: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "queue={queue} requests={} bytes_read={} bytes_written={} errors={} dropped={} inflight_max={} ring_errors={} resubmitted={}",
            get(&self.requests),
            get(&self.bytes_read),
            get(&self.bytes_written),
            get(&self.errors),
            get(&self.dropped),
            get(&self.inflight_max),
            get(&self.ring_errors),
            get(&self.resubmitted),
        )
    }
}

/// Log every queue's counters at info level.
pub fn log_all(counters: &[QueueCounters]) {
    for (i, c) in counters.iter().enumerate() {
        log::info!("counters {}", c.summary(i));
    }
}
