//! The switch-over of a live migration (issue 15), as QEMU 10 does it on
//! the source: dirty logging on, then SET_VRING_ENABLE 0 and
//! GET_VRING_BASE. On a backing slow enough to keep reads and writes in
//! flight for seconds, the reply may only come once every request of the
//! queue has completed — data in guest memory and marked in the log,
//! status bytes and used entries published, writes in the image, the
//! image flushed — so the destination daemon finds nothing left to do;
//! and nothing changes after the reply.

mod common;

use std::time::{Duration, Instant};

use common::dirty::*;
use common::slow_disk::SlowDisk;
use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;

/// 32 KiB/s: the 24 requests of 4 KiB below take 3 s.
const BPS: u64 = 32 << 10;
const IMG: usize = 8 << 20;
const QS: u16 = 128;
const READS: u64 = 16;
const WRITES: u64 = 8;
/// Where the writes go on the disk (sector).
const WRITE_AT: u64 = 4096;

#[test]
fn get_vring_base_answers_once_every_request_is_complete_marked_and_flushed() {
    let dir = TempDir::new("switch");
    let backing = dir.path("backing.img");
    let slow = SlowDisk::new(&backing, IMG, BPS);
    let sock = dir.path("sock");
    let daemon_log = dir.path("daemon.log");
    let daemon = Daemon::start_logged(
        &sock,
        &slow.device,
        &["--cache", "none", "--poll-us", "0", "--queue-size", "128"],
        Some(&daemon_log),
    );
    slow.throttle(daemon.child.id());
    let (mut s, log) = logged(&sock, QS, F_VERSION_1, true);
    let q = &mut s.queues[0];
    for i in 0..READS {
        q.fill(i, 4096, 0xff);
        q.queue_request(i, VIRTIO_BLK_T_IN, 8 * i, &[(i, 4096)]);
    }
    let byte = |i: u64| 0xc0 + u8::try_from(i).unwrap();
    for i in READS..READS + WRITES {
        q.fill(i, 4096, byte(i));
        q.queue_request(i, VIRTIO_BLK_T_OUT, WRITE_AT + 8 * i, &[(i, 4096)]);
    }
    q.kick();
    std::thread::sleep(Duration::from_millis(300));
    let done_before = q.used_idx();
    assert!(
        u64::from(done_before) < (READS + WRITES) / 2,
        "the backing is not slow: {done_before} requests done in 300 ms"
    );

    s.fe.set_vring_enable(0, false).unwrap();
    let asked = Instant::now();
    let base = s.fe.get_vring_base(0).unwrap();
    let took = asked.elapsed();
    // Everything below is read at the reply, before anything could land
    // later.
    let q = &s.queues[0];
    let used_at_reply = q.used_idx();
    let marked_at_reply = log.marked();
    let image_at_reply = std::fs::read(&backing).unwrap();
    eprintln!(
        "GET_VRING_BASE answered after {took:?}, {done_before} of {} done when asked",
        READS + WRITES
    );
    assert_eq!(u64::from(base), READS + WRITES);
    assert_eq!(
        u64::from(used_at_reply),
        READS + WRITES,
        "requests left in flight at the reply"
    );
    let mut want = vec![used_ring(q)];
    for i in 0..READS + WRITES {
        assert_eq!(q.status(i), S_OK, "request {i}");
        want.push((q.scratch(i) + 16, 1));
    }
    for i in 0..READS {
        let data: Vec<u8> = (0..4096u64).map(|b| pattern(8 * i + b / 512)).collect();
        assert!(q.read_buf(i, 4096) == data, "read {i}'s data");
        want.push((q.buf(i), 4096));
    }
    let want: Vec<u64> = pages(&want).into_iter().collect();
    assert_eq!(marked_at_reply, want, "marks at the reply");
    for i in READS..READS + WRITES {
        let at = usize::try_from((WRITE_AT + 8 * i) * 512).unwrap();
        assert!(
            image_at_reply[at..at + 4096].iter().all(|&b| b == byte(i)),
            "write {i} not in the image at the reply"
        );
    }
    let text = std::fs::read_to_string(&daemon_log).unwrap();
    let stopped = text
        .lines()
        .find(|l| l.contains("event=vring_stopped queue=0"))
        .unwrap_or_else(|| panic!("no vring_stopped event in the daemon log:\n{text}"));
    assert!(stopped.contains("image=flushed"), "{stopped}");
    assert!(!stopped.contains("completed_inflight=0 "), "{stopped}");

    // Nothing changes after the reply.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(q.used_idx(), used_at_reply);
    assert_eq!(log.marked(), marked_at_reply);
    assert!(std::fs::read(&backing).unwrap() == image_at_reply);
    drop(s);
    drop(daemon);
    drop(slow);
}
