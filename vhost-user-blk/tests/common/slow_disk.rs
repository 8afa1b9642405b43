//! A block device slow enough to keep requests in flight for seconds: a
//! loop device over a file, throttled for the processes put in a cgroup-v1
//! blkio group (`blkio.throttle.{read,write}_bps_device`). Needs root (the
//! test hosts run tests as root) and a blkio hierarchy mounted at
//! /sys/fs/cgroup/blkio; a test that cannot build one fails, it does not
//! skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A throttled loop device; detached and its cgroup removed on drop.
pub struct SlowDisk {
    /// The loop device (`/dev/loopN`).
    pub device: PathBuf,
    backing: PathBuf,
    cgroup: PathBuf,
}

impl SlowDisk {
    /// A loop device over a fresh `size`-byte file at `backing` holding
    /// [`super::raw_image`]'s pattern; reads and writes by processes in its
    /// cgroup run at `bps` bytes per second.
    pub fn new(backing: &Path, size: usize, bps: u64) -> SlowDisk {
        super::raw_image(backing, size);
        Self::over(backing, bps)
    }

    /// Like [`SlowDisk::new`], over the existing file `backing` (removed
    /// on drop).
    pub fn over(backing: &Path, bps: u64) -> SlowDisk {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup failed (root needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let name = device.file_name().unwrap().to_string_lossy().into_owned();
        let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_owned();
        let cgroup = Path::new(BLKIO).join(format!("vub-slow-{}-{name}", std::process::id()));
        let disk = SlowDisk {
            device,
            backing: backing.to_owned(),
            cgroup,
        };
        std::fs::create_dir_all(&disk.cgroup)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", disk.cgroup.display()));
        for knob in ["read_bps_device", "write_bps_device"] {
            let path = disk.cgroup.join(format!("blkio.throttle.{knob}"));
            std::fs::write(&path, format!("{dev} {bps}"))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        disk
    }

    /// Put process `pid` (all its threads, and the threads it starts
    /// later) under the throttle.
    pub fn throttle(&self, pid: u32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // Processes still in the group go back to the root group first.
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}
