//! The crash-restart workload shared by the QEMU and viaduct runs: a guest
//! write-verify loop on a virtio disk while the host SIGKILLs and restarts
//! the vhost-user-blk daemon, and the host-side checks that every write the
//! guest was told had completed is in the image.
//!
//! The guest runs [`WORKERS`] writers in parallel (so requests complete
//! out of order, the case where a restarted backend that only knew the
//! used index would lose one request and complete another twice). Writer
//! `w`'s iteration `i` writes 64 KiB block `1 + w * PER_WORKER + i %
//! PER_WORKER` with the pattern `viaduct-<w>-<i>\n` repeated, through
//! O_DIRECT with a flush after it (`conv=fsync`), reads the block back
//! (O_DIRECT) and compares checksums. Sector 0 carries the loop's start
//! mark (the host starts killing), the host's stop mark (its kills are
//! done: the writers finish their iteration and stop) and the end mark.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::selftest::read_at;

/// Parallel writers in the guest.
pub const WORKERS: u64 = 4;
/// Blocks each writer cycles through.
pub const PER_WORKER: u64 = 16;
/// Blocks in all.
pub const BLOCKS: u64 = WORKERS * PER_WORKER;
/// Block size.
pub const BLOCK: usize = 64 * 1024;
/// Sector-0 marker while the loop runs.
pub const START_MARK: &[u8] = b"LOOP-START";
/// Sector-0 marker once it is done.
pub const DONE_MARK: &[u8] = b"LOOP-DONE!";

/// The host writes this over sector 0 (in the image file) when its kills
/// are done; the writers stop when they read it.
pub const STOP_MARK: &[u8] = b"LOOP-STOP!";

/// The guest's shell loop on `dev`: the writers run until the host writes
/// [`STOP_MARK`] into sector 0 (they read it back, O_DIRECT, before every
/// iteration) or `max_secs` of guest time pass; `prefix` goes in front of
/// its result keys (`iterations_<w>` per writer, then the sums of errors
/// and verify failures).
pub fn guest_script(dev: &str, max_secs: u32, prefix: &str) -> String {
    format!(
        r#"
mark() {{ printf "$1" > /tmp/mark; dd if=/tmp/mark of={dev} bs=512 count=1 conv=sync,fsync oflag=direct 2>/dev/null; }}
writer() {{
  w=$1; i=0; errs=0; bad=0
  while :; do
    now=$(cut -d. -f1 /proc/uptime)
    [ $((now - start)) -ge {max_secs} ] && break
    [ "$(dd if={dev} bs=512 count=1 iflag=direct 2>/dev/null | head -c 10)" = LOOP-STOP! ] && break
    b=$((1 + w * {PER_WORKER} + i % {PER_WORKER}))
    yes "viaduct-$w-$i" | head -c {BLOCK} > /tmp/p$w
    if dd if=/tmp/p$w of={dev} bs={BLOCK} seek=$b count=1 oflag=direct conv=fsync 2>/dev/null; then
      want=$(md5sum < /tmp/p$w | cut -d' ' -f1)
      got=$(dd if={dev} bs={BLOCK} skip=$b count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
      [ "$want" = "$got" ] || bad=$((bad + 1))
    else
      errs=$((errs + 1))
    fi
    i=$((i + 1))
  done
  echo "$i $errs $bad" > /tmp/res$w
}}
mark LOOP-START
start=$(cut -d. -f1 /proc/uptime)
w=0
while [ $w -lt {WORKERS} ]; do writer $w & w=$((w + 1)); done
wait
errs=0; bad=0; w=0
while [ $w -lt {WORKERS} ]; do
  read n e v < /tmp/res$w
  result {prefix}iterations_$w=$n
  errs=$((errs + e)); bad=$((bad + v)); w=$((w + 1))
done
result {prefix}io_errors=$errs
result {prefix}verify_failures=$bad
result {prefix}kernel_io_errors=$(dmesg | grep -ci 'i/o error')
mark LOOP-DONE!
"#
    )
}

/// Writer `w`'s iteration `i`'s block content.
pub fn block_pattern(w: u64, i: u64) -> Vec<u8> {
    let unit = format!("viaduct-{w}-{i}\n");
    unit.bytes().cycle().take(BLOCK).collect()
}

/// Checks the image after writer `w` completed `iterations[w]`
/// iterations: each block holds the pattern of the last iteration that
/// wrote it. Returns the number of blocks checked, or what is wrong.
pub fn verify_image(image: &Path, iterations: &[u64]) -> Result<u64, String> {
    let mut checked = 0;
    for (w, &n) in (0u64..).zip(iterations) {
        for k in 0..PER_WORKER.min(n) {
            // The last i < n with i % PER_WORKER == k.
            let last = k + (n - 1 - k) / PER_WORKER * PER_WORKER;
            let b = 1 + w * PER_WORKER + k;
            let got = read_at(image, b * BLOCK as u64, BLOCK).map_err(|e| e.to_string())?;
            if got != block_pattern(w, last) {
                let shown = String::from_utf8_lossy(&got[..32]).into_owned();
                return Err(format!(
                    "block {b}: want writer {w} iteration {last}'s pattern, found {shown:?}..."
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// Tells the guest's writers to stop (see [`STOP_MARK`]).
pub fn write_stop_mark(image: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)?
        .write_all_at(STOP_MARK, 0)
}

/// Whether sector 0 of `image` starts with `mark`.
pub fn marked(image: &Path, mark: &[u8]) -> bool {
    read_at(image, 0, mark.len()).is_ok_and(|b| b == mark)
}

/// Waits up to `timeout` for `mark` in sector 0.
pub fn wait_mark(image: &Path, mark: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if marked(image, mark) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The in-flight region (INFLIGHT_SHMFD) process `pid` has open, found
/// by its memfd name.
fn inflight_region(pid: u32) -> Option<std::fs::File> {
    let dir = format!("/proc/{pid}/fd");
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let target = std::fs::read_link(e.path()).ok()?;
        if target.to_string_lossy().contains("viaduct-inflight") {
            return std::fs::File::open(e.path()).ok();
        }
    }
    None
}

/// Waits until daemon `pid`'s in-flight region shows a request taken and
/// not yet returned (any queue), for at most `timeout`. The caller kills
/// the daemon right after, so the kill lands with requests in flight
/// (mostly: one may complete in between).
pub fn wait_in_flight(pid: u32, timeout: Duration) -> bool {
    use std::os::unix::fs::FileExt;
    let deadline = Instant::now() + timeout;
    let mut region = None;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        let Some(f) = region.as_ref() else {
            region = inflight_region(pid);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(n) = f.read_at(&mut buf, 0) else {
            return false;
        };
        // Per queue: a 16-byte header, then 16 bytes per descriptor whose
        // first byte is the in-flight flag; queues at 64-byte aligned
        // strides of 16 + 16 * desc_num bytes.
        let mut base = 0usize;
        while base + 16 <= n {
            let desc_num = usize::from(u16::from_le_bytes([buf[base + 10], buf[base + 11]]));
            if desc_num == 0 {
                break;
            }
            let end = (base + 16 + 16 * desc_num).min(n);
            if (base + 16..end).step_by(16).any(|o| buf[o] == 1) {
                return true;
            }
            base += (16 + 16 * desc_num).div_ceil(64) * 64;
        }
        std::hint::spin_loop();
    }
    false
}

/// A small deterministic generator for kill timings (seed printed by the
/// test, so a failing schedule can be replayed).
#[derive(Debug)]
pub struct Schedule(u64);

impl Schedule {
    /// Seeded from the clock.
    pub fn from_clock() -> Schedule {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Schedule(nanos | 1)
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.0
    }

    /// A duration uniformly in `[lo, hi)` milliseconds.
    pub fn between_ms(&mut self, lo: u64, hi: u64) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_writer_per_block() {
        let dir = std::env::temp_dir().join(format!("restart-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img");
        let iterations = [150u64, 3, 16, 0];
        let mut data = vec![0u8; (usize::try_from(BLOCKS).unwrap() + 1) * BLOCK];
        for (w, &n) in (0u64..).zip(&iterations) {
            for i in 0..n {
                let b = usize::try_from(1 + w * PER_WORKER + i % PER_WORKER).unwrap();
                data[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&block_pattern(w, i));
            }
        }
        std::fs::write(&img, &data).unwrap();
        assert_eq!(verify_image(&img, &iterations), Ok(16 + 3 + 16));
        // One iteration more than happened would need data that is not there.
        assert!(verify_image(&img, &[151, 3, 16, 0]).is_err());
        assert!(verify_image(&img, &[150, 3, 16, 1]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
