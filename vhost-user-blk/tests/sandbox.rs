//! The sandbox is really on in the running daemon: its /proc status shows
//! seccomp filter mode with both filters, and the daemon still serves; with
//! `--sandbox off` there is no filter.

mod common;

use common::*;
use viaduct_test_kit::procfs::seccomp_status;

#[test]
fn daemon_runs_under_seccomp_by_default_and_serves() {
    let (_dir, d) = serve_raw_image("sandbox-on", 1 << 20, &[]);
    // The socket exists before the sandbox goes on: a served request
    // proves start-up finished.
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_eq!(s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
    assert_eq!(
        seccomp_status(d.child.id()),
        ("2".to_owned(), "2".to_owned())
    );
}

#[test]
fn sandbox_off_installs_no_filter() {
    let (_dir, d) = serve_raw_image("sandbox-off", 1 << 20, &["--sandbox", "off"]);
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_eq!(s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
    assert_eq!(seccomp_status(d.child.id()).0, "0");
}

#[test]
fn user_option_drops_root_and_still_serves() {
    let (_dir, d) = serve_raw_image("sandbox-user", 1 << 20, &["--user", "nobody"]);
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    q.fill(0, 512, 0x77);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 3, &[(0, 512)]).0, S_OK);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 3, &[(1, 512)]).0, S_OK);
    assert!(q.read_buf(1, 512).iter().all(|&b| b == 0x77));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let gid = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4]
    );
    assert_eq!(
        gid.split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4]
    );
    assert_eq!(seccomp_status(d.child.id()).0, "2");
}
