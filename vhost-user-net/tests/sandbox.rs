//! The sandbox is really on in the running daemon binary: its /proc status
//! shows seccomp filter mode with both filters once it listens, and the
//! relay's private directory is removed on exit despite Landlock.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viaduct_test_kit::hostile::{GET_FEATURES, Raw};
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::procfs::seccomp_status;

/// GET_FEATURES over a raw connection: the relay and the backend answer.
fn features(sock: &Path) -> u64 {
    let reply = Raw::connect(sock)
        .get(GET_FEATURES, &[])
        .expect("GET_FEATURES answered");
    u64::from_le_bytes(reply[..8].try_into().expect("an 8-byte reply"))
}

fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().to_owned()
}

#[test]
fn daemon_binary_runs_under_seccomp_and_cleans_up() {
    run_sandboxed("vsb0", &[], "0");
}

#[test]
fn user_option_drops_root_serves_and_cleans_up() {
    run_sandboxed("vsb1", &["--user", "nobody"], "65534");
}

fn run_sandboxed(tap: &str, extra: &[&str], euid: &str) {
    enter_private_netns().expect("private network namespace");
    let sock = std::env::temp_dir().join(format!("vun-sandbox-{}-{tap}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-net"))
        .arg("--socket-path")
        .arg(&sock)
        .args(["--tap", tap, "--log-level", "debug"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spawned = std::time::SystemTime::now();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    // This daemon's relay directory: named after its pid and made after
    // it started (a daemon SIGKILLed long ago by another test may have
    // left one under the same, since reused, pid).
    let relay_dir = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("viaduct-relay-{pid}-"))
            })
            .any(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t + Duration::from_secs(1) >= spawned)
            })
    };
    // Filters go on after the socket is bound, one after the other; wait
    // for all of it.
    while !(sock.exists() && seccomp_status(pid) == ("2".to_owned(), "2".to_owned())) {
        assert!(Instant::now() < deadline, "daemon never got sandboxed");
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seccomp_status(pid).1, "2");
    assert_eq!(uid_of(pid), euid);
    assert!(relay_dir(), "relay socket directory missing");
    assert_ne!(features(&sock) & (1 << 32), 0, "VERSION_1 offered");
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: SIGTERM to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!relay_dir(), "relay socket directory left behind");
    let _ = std::fs::remove_file(&sock);
}
