//! What a queue worker is told about the device.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use vhost_user_daemon::dirty_log::DirtyLog;
use vhost_user_daemon::inflight::SharedRegion;
use virtio_devices::block::{ID_BYTES, RequestLimits};

/// Device-wide settings a worker needs.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Validation limits.
    pub limits: RequestLimits,
    /// GET_ID answer.
    pub serial: [u8; ID_BYTES],
    /// Busy-poll window (zero = off).
    pub poll: Duration,
    /// Guest-visible write cache enabled (CONFIG_WCE); when the guest turns it
    /// off, writes are made durable before they complete.
    pub writeback: Arc<AtomicBool>,
    /// `--null-io`: reads and writes complete at once, no I/O.
    pub null_io: bool,
    /// The connection's in-flight region (INFLIGHT_SHMFD), if the frontend
    /// negotiated one; read at every ring start.
    pub inflight: SharedRegion,
    /// The connection's dirty-page log (live migration): every guest page
    /// the worker writes is marked while the frontend has logging on.
    pub log: DirtyLog,
}
