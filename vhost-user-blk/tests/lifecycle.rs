//! Daemon lifecycle: command-line errors before anything starts, the
//! capabilities JSON, --fd hand-over, SIGTERM draining and flushing, SIGUSR1.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn print_capabilities() {
    let (code, out, _) = run(&["--print-capabilities"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        r#"{"type":"block","features":["read-only","blk-file"]}"#
    );
}

#[test]
fn help_explains_options_with_a_qemu_example() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--socket-path",
        "--fd",
        "--blk-file",
        "--format",
        "--read-only",
        "--num-queues",
        "--queue-size",
        "--cache",
        "--logical-block-size",
        "--serial",
        "--poll-us",
        "--log-level",
        "vhost-user-blk-pci",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn bad_startup_is_one_line_and_nonzero() {
    let dir = TempDir::new("cli");
    let img = dir.path("disk.img");
    raw_image(&img, 1 << 20);
    let sock = dir.path("sock");
    let s = sock.to_str().unwrap();
    let i = img.to_str().unwrap();
    let tiny = dir.path("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--socket-path", s, "--blk-file", "/nonexistent/disk.img"],
        vec!["--socket-path", s, "--blk-file", tiny.to_str().unwrap()],
        vec!["--socket-path", s, "--blk-file", i, "--queue-size", "100"],
        vec![
            "--socket-path",
            s,
            "--blk-file",
            i,
            "--logical-block-size",
            "1024",
        ],
        vec!["--socket-path", s, "--fd", "3", "--blk-file", i],
        vec!["--blk-file", i],
    ];
    for args in cases {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!sock.exists(), "{args:?} created the socket");
    }
    // A socket path in use by a live daemon.
    let _d = Daemon::start(&sock, &img, &[]);
    let (code, _, err) = run(&["--socket-path", s, "--blk-file", i]);
    assert_eq!(code, 2);
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn serves_an_inherited_listening_fd() {
    let dir = TempDir::new("fd");
    let img = dir.path("disk.img");
    raw_image(&img, 1 << 20);
    let sock = dir.path("sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    // Clear CLOEXEC so the child inherits it under the same number.
    // SAFETY: fcntl on our own valid fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let child = Command::new(binary())
        .args(["--fd", &fd.to_string(), "--blk-file", img.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        socket: sock.clone(),
    };
    drop(listener);
    let mut s = connect(&sock, 1, 64, !0);
    assert_eq!(s.queues[0].request(VIRTIO_BLK_T_IN, 1, &[(0, 512)]).0, S_OK);
    assert!(
        s.queues[0]
            .read_buf(0, 512)
            .iter()
            .all(|&b| b == pattern(1))
    );
    drop(s);
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
}

#[test]
fn sigterm_with_requests_in_flight_drains_flushes_and_exits_zero() {
    let dir = TempDir::new("term");
    let img = dir.path("disk.img");
    raw_image(&img, 4 << 20);
    let mut d = Daemon::start(&dir.path("sock"), &img, &["--cache", "writeback"]);
    let mut s = connect(&d.socket, 1, 128, !0);
    let q = &mut s.queues[0];
    for i in 0..32u64 {
        q.fill(i, 4096, 0xc0 | (i.to_le_bytes()[0] & 0xf));
        q.queue_request(i, VIRTIO_BLK_T_OUT, i * 8, &[(i, 4096)]);
    }
    q.kick();
    d.signal(libc::SIGUSR1);
    d.signal(libc::SIGTERM);
    let status = d.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // Every request the daemon accepted was completed before it exited.
    let done = q.used_idx();
    for i in 0..u64::from(done) {
        assert_eq!(q.status(i), S_OK);
    }
    let data = std::fs::read(&img).unwrap();
    let completed = (0..32u64).filter(|&i| q.status(i) == S_OK).count();
    assert_eq!(completed, usize::from(done));
    for i in 0..completed as u64 {
        let off = usize::try_from(i * 4096).expect("offset");
        assert!(
            data[off..off + 4096]
                .iter()
                .all(|&b| b == 0xc0 | (i.to_le_bytes()[0] & 0xf))
        );
    }
    assert!(!d.socket.exists(), "socket left behind");
}

#[test]
fn sigusr1_logs_per_queue_counters() {
    let dir = TempDir::new("usr1");
    let img = dir.path("disk.img");
    raw_image(&img, 1 << 20);
    let log = dir.path("log");
    let mut d = Daemon::start_logged(&dir.path("sock"), &img, &["--num-queues", "2"], Some(&log));
    let mut s = connect(&d.socket, 2, 64, !0);
    let q = &mut s.queues[1];
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 4096)]).0, S_OK);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 0, &[(0, 512)]).0, S_OK);
    assert_eq!(q.request(99, 0, &[]).0, S_UNSUPP);
    d.signal(libc::SIGUSR1);
    let want = "queue=1 requests=3 bytes_read=4096 bytes_written=512 errors=1";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().contains(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no counters line {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("queue=0 requests=0")
    );
    drop(s);
    d.signal(libc::SIGINT);
    assert!(d.wait(Duration::from_secs(10)).success());
}
