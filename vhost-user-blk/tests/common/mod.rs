//! Test harness: start the real daemon binary (this file), throttle its
//! disk (`slow_disk`), and play the test kit's virtio-blk frontend against
//! it (re-exported here with the kit's disk images).

// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod dirty;
pub mod slow_disk;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use viaduct_test_kit::frontend::blk::*;
pub use viaduct_test_kit::images::{pattern, raw_image};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vub-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_vhost-user-blk")
}

/// A running daemon; SIGKILLed on drop if still alive.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(socket: &Path, image: &Path, extra: &[&str]) -> Daemon {
        Self::start_logged(socket, image, extra, None)
    }

    /// Like [`Daemon::start`], with stderr (the log) going to `log` if given.
    pub fn start_logged(socket: &Path, image: &Path, extra: &[&str], log: Option<&Path>) -> Daemon {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(binary());
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--blk-file")
            .arg(image)
            .args(extra)
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "daemon did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            socket: socket.to_owned(),
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(libc::pid_t::try_from(self.child.id()).expect("pid"), sig) };
        assert_eq!(rc, 0);
    }

    /// Wait for exit (with a timeout).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// A daemon serving a fresh `size`-byte [`raw_image`] (`disk.img`, socket
/// `sock`) in a new temp dir tagged `tag`, with `extra` flags.
pub fn serve_raw_image(tag: &str, size: usize, extra: &[&str]) -> (TempDir, Daemon) {
    let dir = TempDir::new(tag);
    raw_image(&dir.path("disk.img"), size);
    let d = Daemon::start(&dir.path("sock"), &dir.path("disk.img"), extra);
    (dir, d)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
