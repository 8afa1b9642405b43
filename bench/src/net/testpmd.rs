//! DPDK's dpdk-testpmd as a peer: 2 MiB hugepages (reserved and mounted by
//! the suite), command lines for the virtio_user client and the vhost PMD
//! host, and its periodic port statistics read back from its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::spawn;

/// Errors around DPDK.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("dpdk-testpmd is not installed (Debian package dpdk-dev)")]
    Missing,
    #[error("hugepages: {0}")]
    Huge(String),
    #[error("no port statistics from testpmd within {0:?}")]
    NoStats(Duration),
}

/// Hugepages the suite reserves (2 MiB each): 2 × 256 MiB of DPDK memory.
pub const HUGEPAGES: u32 = 512;

/// Reserves [`HUGEPAGES`] 2 MiB pages and mounts hugetlbfs at
/// /dev/hugepages if nothing is mounted; returns what it did.
pub fn setup_hugepages() -> Result<String, DpdkError> {
    if !spawn::have("dpdk-testpmd") {
        return Err(DpdkError::Missing);
    }
    let nr = "/proc/sys/vm/nr_hugepages";
    let have: u32 = std::fs::read_to_string(nr)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut did = Vec::new();
    if have < HUGEPAGES {
        std::fs::write(nr, HUGEPAGES.to_string())
            .map_err(|e| DpdkError::Huge(format!("writing {nr}: {e}")))?;
        did.push(format!("set {nr} {have} -> {HUGEPAGES}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
    {
        let _ = std::fs::create_dir_all("/dev/hugepages");
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "nodev", "/dev/hugepages"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(DpdkError::Huge(
                "mounting hugetlbfs on /dev/hugepages failed".into(),
            ));
        }
        did.push("mounted hugetlbfs on /dev/hugepages".into());
    }
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    if free < 256 {
        return Err(DpdkError::Huge(format!("only {free} free 2 MiB hugepages")));
    }
    if did.is_empty() {
        did.push(format!("{have} hugepages already reserved"));
    }
    Ok(did.join(", "))
}

/// Which core polls: the two DPDK processes of a run never share one.
#[derive(Debug, Clone, Copy)]
pub enum Core {
    Zero,
    One,
}

/// A testpmd command line: `vdevs` as ports, `fwd` forwarding mode,
/// forwarding on `core` (the main lcore, mostly asleep, on the other).
pub fn command(
    prefix: &str,
    vdevs: &[String],
    fwd: &str,
    txpkts: Option<usize>,
    core: Core,
) -> Command {
    let main = match core {
        Core::Zero => "1",
        Core::One => "0",
    };
    let mut c = Command::new("dpdk-testpmd");
    c.args([
        "-l",
        "0,1",
        "--main-lcore",
        main,
        "--no-pci",
        "--file-prefix",
        prefix,
    ])
    .args([
        "--single-file-segments",
        "-m",
        "256",
        "--log-level",
        "lib.eal:error",
    ]);
    for v in vdevs {
        c.args(["--vdev", v]);
    }
    c.arg("--")
        .arg(format!("--forward-mode={fwd}"))
        .args(["--nb-cores=1", "--stats-period=1", "--txd=256", "--rxd=256"])
        .arg("--total-num-mbufs=16384");
    if let Some(n) = txpkts {
        c.arg(format!("--txpkts={n}"));
    }
    c
}

/// One sample of a port's counters and when it was seen.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub rx: u64,
}

/// The last "NIC statistics for port N" block of a testpmd log: (blocks
/// seen, RX-packets, TX-packets).
pub fn parse_stats(log: &str, port: u32) -> Option<(usize, u64, u64)> {
    let marker = format!("NIC statistics for port {port} ");
    let blocks = log.matches(&marker).count();
    let last = &log[log.rfind(&marker)?..];
    let field = |name: &str| -> Option<u64> {
        let at = last.find(name)? + name.len();
        last[at..].split_whitespace().next()?.parse().ok()
    };
    Some((blocks, field("RX-packets:")?, field("TX-packets:")?))
}

/// Port counters as testpmd prints them once a second.
pub struct Stats {
    log: PathBuf,
    port: u32,
    seen: usize,
}

impl Stats {
    pub fn new(log: &Path, port: u32) -> Stats {
        Stats {
            log: log.into(),
            port,
            seen: 0,
        }
    }

    /// Waits for the next statistics block printed after now.
    pub fn next(&mut self, timeout: Duration) -> Result<Sample, DpdkError> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some((blocks, rx, _tx)) = parse_stats(&text, self.port) {
                if self.seen == 0 {
                    self.seen = blocks;
                } else if blocks > self.seen {
                    self.seen = blocks;
                    return Ok(Sample {
                        at: Instant::now(),
                        rx,
                    });
                }
            }
            if start.elapsed() > timeout {
                return Err(DpdkError::NoStats(timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_stats_block() {
        let log = "  ######################## NIC statistics for port 0  ########\n  RX-packets: 10   RX-missed: 0\n  TX-packets: 5   TX-errors: 0\n\
                   ######################## NIC statistics for port 0  ########\n  RX-packets: 30   RX-missed: 0\n  TX-packets: 7   TX-errors: 0\n";
        assert_eq!(parse_stats(log, 0), Some((2, 30, 7)));
        assert_eq!(parse_stats(log, 1), None);
    }
}
