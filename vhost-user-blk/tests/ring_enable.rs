//! SET_VRING_ENABLE(0) stops a ring even while its worker busy-polls
//! (issue 13): requests published and kicked on a disabled ring are left
//! alone until the frontend enables it again, then served.

mod common;

use std::process::Command;
use std::time::Duration;

use common::slow_disk::SlowDisk;
use common::*;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserHeaderFlag;

const T: Duration = Duration::from_secs(10);
/// 128 KiB/s: the first request (a 16 KiB qcow2 read and the metadata it
/// needs, done synchronously on the queue's worker) keeps the worker busy
/// for about half a second.
const BPS: u64 = 128 << 10;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_disabled_ring_is_not_processed_even_while_polling() {
    let dir = TempDir::new("enable");
    let image = dir.path("disk.qcow2");
    let img = image.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", img, "8M"]);
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -P 0x5a 0 1M", img],
    );
    let slow = SlowDisk::over(&image, BPS);
    // Poll for a whole second after each request.
    let d = Daemon::start(
        &dir.path("sock"),
        &slow.device,
        &[
            "--format",
            "qcow2",
            "--cache",
            "none",
            "--poll-us",
            "1000000",
        ],
    );
    slow.throttle(d.child.id());
    let mut s = connect(&d.socket, 1, 128, F_VERSION_1);

    // The worker takes a slow read; while it is busy with it (and before
    // it starts polling), the frontend disables the ring, waits for the
    // answer, then publishes four GET_IDs and kicks.
    let q = &mut s.queues[0];
    q.queue_request(0, VIRTIO_BLK_T_IN, 0, &[(0, 16384)]);
    q.kick();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q.used_idx(), 0, "the read was not slow");
    s.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    s.fe.set_vring_enable(0, false).unwrap();
    let q = &mut s.queues[0];
    for i in 1..=4u64 {
        q.queue_request(i, VIRTIO_BLK_T_GET_ID, 0, &[(i, 20)]);
    }
    q.kick();
    std::thread::sleep(Duration::from_millis(2500));
    let served = q.used_idx();
    eprintln!(
        "{served} of 5 requests used while the ring was disabled (the first one was taken before)"
    );
    assert_eq!(q.status(0), S_OK, "the read taken before the disable");
    assert_eq!(served, 1, "requests on a disabled ring were processed");
    for i in 1..=4u64 {
        assert_eq!(q.status(i), 0xff, "request {i} touched");
    }

    // Enabled again: the pending kick gets them served.
    s.fe.set_vring_enable(0, true).unwrap();
    let q = &mut s.queues[0];
    let used = q.wait_used(5, T);
    assert_eq!(used.len(), 5);
    assert_eq!(q.read_buf(0, 16384), vec![0x5a; 16384]);
    for i in 1..=4u64 {
        assert_eq!(q.status(i), S_OK, "request {i}");
    }
    drop(s);
    drop(d);
    drop(slow);
}
