//! Dirty-page logging from the frontend's side (issue 15): a session with
//! the test kit's [`LogBitmap`] installed, and the pages a test expects
//! marked.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use viaduct_test_kit::dirty_log::log_all;
pub use viaduct_test_kit::dirty_log::{F_LOG_ALL, LogBitmap, PAGE};
use viaduct_test_kit::frontend::blk::{GUEST_MEM_SIZE, Session, TestQueue, connect};

/// LOG_ALL on or off, waiting for the daemon's ack as QEMU does (the
/// test's kicks go straight to the worker, past the relay that takes it).
pub fn set_log_all(s: &mut Session, on: bool) {
    s.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    log_all(&mut s.fe, s.features, on).unwrap();
    s.fe.set_hdr_flags(VhostUserHeaderFlag::empty());
}

/// A one-queue session on `sock` (queues of `size`) with a log
/// installed; LOG_ALL acked if `on`.
pub fn logged(sock: &std::path::Path, size: u16, want: u64, on: bool) -> (Session, LogBitmap) {
    let mut s = connect(sock, 1, size, want & !F_LOG_ALL);
    let offered = s.fe.get_protocol_features().unwrap();
    assert!(
        offered.contains(VhostUserProtocolFeatures::LOG_SHMFD),
        "LOG_SHMFD offered"
    );
    assert_ne!(
        s.fe.get_features().unwrap() & F_LOG_ALL,
        0,
        "LOG_ALL offered"
    );
    s.fe.set_protocol_features(s.protocol | VhostUserProtocolFeatures::LOG_SHMFD)
        .unwrap();
    let log = LogBitmap::new(GUEST_MEM_SIZE as u64);
    log.install(&mut s.fe).unwrap();
    if on {
        set_log_all(&mut s, true);
    }
    (s, log)
}

/// The pages `[gpa, gpa + len)` touches, for each range.
pub fn pages(ranges: &[(u64, u64)]) -> BTreeSet<u64> {
    ranges
        .iter()
        .flat_map(|&(gpa, len)| (gpa / PAGE..=(gpa + len - 1) / PAGE).map(|p| p * PAGE))
        .collect()
}

/// The used ring's extent: flags, idx, the ring, avail_event.
pub fn used_ring(q: &TestQueue) -> (u64, u64) {
    (q.used, 4 + 8 * u64::from(q.size) + 2)
}

/// Waits until the log holds exactly `want` (the used ring is marked just
/// after the entry is published), then checks nothing more arrives.
pub fn assert_marked(log: &LogBitmap, want: &BTreeSet<u64>) {
    let want: Vec<u64> = want.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while log.marked() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let got = log.marked();
    let hex = |v: &[u64]| v.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>();
    assert_eq!(
        hex(&got),
        hex(&want),
        "marked pages (left) vs written (right)"
    );
}
