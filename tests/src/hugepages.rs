//! 2 MiB hugepages on this host for a test, put back as they were: the
//! pool grows by what the test needs (`vm.nr_hugepages`), and a hugetlbfs
//! is mounted on a scratch directory when none is mounted at
//! `/dev/hugepages`. Dropping the guard unmounts what it mounted and
//! shrinks the pool to its old size.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why hugepages could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HugePagesError {
    #[error("cannot read or write {0}")]
    Proc(&'static str, #[source] std::io::Error),
    #[error("only {got} of {want} hugepages could be reserved")]
    Short { got: u64, want: u64 },
    #[error("cannot mount hugetlbfs on {0}: {1}")]
    Mount(PathBuf, String),
}

const NR: &str = "/proc/sys/vm/nr_hugepages";

/// Free 2 MiB hugepages right now (`HugePages_Free` in /proc/meminfo).
pub fn free_pages() -> Result<u64, HugePagesError> {
    let info = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| HugePagesError::Proc("/proc/meminfo", e))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn read_nr() -> Result<u64, HugePagesError> {
    let s = std::fs::read_to_string(NR).map_err(|e| HugePagesError::Proc(NR, e))?;
    Ok(s.trim().parse().unwrap_or(0))
}

fn write_nr(n: u64) -> Result<(), HugePagesError> {
    std::fs::write(NR, n.to_string()).map_err(|e| HugePagesError::Proc(NR, e))
}

fn hugetlbfs_at(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, at, fs) = (f.next(), f.next(), f.next());
            at == dir.to_str() && fs == Some("hugetlbfs")
        })
    })
}

/// Hugepages reserved and a hugetlbfs to put files on, for one test.
#[derive(Debug)]
pub struct HugePages {
    old_nr: u64,
    dir: PathBuf,
    mounted_by_us: bool,
}

impl HugePages {
    /// Adds `pages` to the pool and finds or mounts a hugetlbfs
    /// (`scratch` is where it mounts one).
    pub fn reserve(pages: u64, scratch: &Path) -> Result<Self, HugePagesError> {
        let old_nr = read_nr()?;
        let before = free_pages()?;
        write_nr(old_nr + pages)?;
        let mut guard = Self {
            old_nr,
            dir: PathBuf::from("/dev/hugepages"),
            mounted_by_us: false,
        };
        let got = free_pages()?.saturating_sub(before);
        if got < pages {
            return Err(HugePagesError::Short { got, want: pages });
        }
        if !hugetlbfs_at(&guard.dir) {
            let dir = scratch.join("hugetlbfs");
            std::fs::create_dir_all(&dir)
                .map_err(|e| HugePagesError::Mount(dir.clone(), e.to_string()))?;
            let out = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
                .arg(&dir)
                .output()
                .map_err(|e| HugePagesError::Mount(dir.clone(), e.to_string()))?;
            if !out.status.success() {
                return Err(HugePagesError::Mount(
                    dir,
                    String::from_utf8_lossy(&out.stderr).into(),
                ));
            }
            guard.dir = dir;
            guard.mounted_by_us = true;
        }
        Ok(guard)
    }

    /// Where hugetlbfs files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = write_nr(self.old_nr);
    }
}
