//! The image lock across a live migration (issue 15): a second daemon on
//! an image in use is refused, unless it is a migration destination
//! (`--incoming`), which opens the image and takes the lock only when its
//! frontend starts a queue — after the source's GET_VRING_BASE has
//! stopped its last queue, flushed and released the lock.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;

const QS: u16 = 128;

/// Connects and starts every queue, or `None` if the daemon hung up (the
/// kick is not acked: a request that needs a reply shows the hang-up).
fn try_connect(sock: &std::path::Path) -> Option<Session> {
    let s = catch_unwind(AssertUnwindSafe(|| connect(sock, 1, QS, F_VERSION_1))).ok()?;
    s.fe.get_features().ok()?;
    Some(s)
}

#[test]
fn the_lock_moves_from_source_to_destination_at_the_switch_over() {
    let dir = TempDir::new("handover");
    let image = dir.path("disk.img");
    raw_image(&image, 4 << 20);
    let source = Daemon::start(&dir.path("src.sock"), &image, &[]);
    let mut s = connect(&source.socket, 1, QS, F_VERSION_1);
    let q = &mut s.queues[0];
    q.fill(0, 4096, 0x5a);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 0, &[(0, 4096)]), (S_OK, 1));

    // An ordinary second daemon is refused at start (exit 2, the reason).
    let out = Command::new(binary())
        .arg("--socket-path")
        .arg(dir.path("other.sock"))
        .arg("--blk-file")
        .arg(&image)
        .stdout(Stdio::null())
        .output()
        .expect("run the daemon");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");

    // A destination starts, but cannot start a queue while the source runs.
    let dest_log = dir.path("dest.log");
    let mut dest = Daemon::start_logged(
        &dir.path("dst.sock"),
        &image,
        &["--incoming"],
        Some(&dest_log),
    );
    assert!(try_connect(&dest.socket).is_none(), "queue started early");
    assert!(dest.alive(), "a refused frontend must not end the daemon");
    let log = std::fs::read_to_string(&dest_log).expect("destination log");
    assert!(log.contains("cannot start queue 0"), "{log}");

    // The switch-over: the source stops its queue and lets go.
    s.fe.set_vring_enable(0, false).expect("disable");
    s.fe.get_vring_base(0).expect("GET_VRING_BASE");
    let mut d = try_connect(&dest.socket).expect("the destination takes the image");
    let q = &mut d.queues[0];
    q.fill(1, 4096, 0);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(1, 4096)]), (S_OK, 4097));
    assert_eq!(q.read_buf(1, 4096), vec![0x5a; 4096], "the source's write");

    // A source that tries to resume now is refused: one writer at a time.
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    assert!(try_connect(&source.socket).is_none(), "two writers");
}
