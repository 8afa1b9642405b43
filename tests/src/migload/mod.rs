//! The live-migration workload (issue 15): four small guest programs that
//! run through a migration and report on the serial console, and the
//! disk layout and data patterns the host checks them against.
//!
//! - [`writer`]: writes numbered blocks and reads each back (O_DIRECT, or
//!   buffered with a flush), so the image must hold every acknowledged write;
//! - [`reader`]: fills buffers spread over guest memory with known disk
//!   blocks by DMA (O_DIRECT) and keeps re-verifying them: only the device
//!   writes those pages, so a daemon that forgets to log them is caught;
//! - [`dirtier`]: keeps dirtying memory with the CPU and checks it;
//! - [`stream`]: a TCP stream both ways with the host, content checked;
//!   [`peer`] is its host end.
//!
//! Every program stops when `/tmp/stop` exists (the scenario creates it
//! when the host says `stop` on the serial console) or after `max_secs`,
//! and prints `VIADUCT-RESULT` lines about once a second.

pub mod dirtier;
pub mod peer;
pub mod reader;
pub mod stream;
pub mod writer;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::console::RESULT_MARKER;

/// Disk blocks the workloads use.
pub const BLOCK: usize = 64 * 1024;
/// Image size.
pub const IMAGE_BYTES: u64 = 64 << 20;
/// The O_DIRECT writer's blocks.
pub const DIRECT_BASE: u64 = 1 << 20;
/// The buffered writer's blocks.
pub const BUFFERED_BASE: u64 = 4 << 20;
/// Blocks each writer cycles through.
pub const WRITER_BLOCKS: u64 = 32;
/// The reader's blocks, written by the host before boot.
pub const READ_BASE: u64 = 16 << 20;
/// How many.
pub const READ_BLOCKS: u64 = 256;
/// Port of the host's stream peer.
pub const STREAM_PORT: u16 = 5001;
/// File whose existence tells the workloads to stop.
pub const STOP_FILE: &str = "/tmp/stop";

/// Pattern tags: the writers' and the reader's blocks never look alike.
pub const TAG_DIRECT: u64 = 1;
/// The buffered writer.
pub const TAG_BUFFERED: u64 = 2;
/// The host-written blocks the reader reads.
pub const TAG_READ: u64 = 3;
/// Guest to host stream bytes.
pub const TAG_UP: u64 = 4;
/// Host to guest stream bytes.
pub const TAG_DOWN: u64 = 5;

/// The 64-bit word at index `j` of the pattern named `tag` / `n`.
pub fn word(tag: u64, n: u64, j: u64) -> u64 {
    let seed = (tag << 56) ^ n.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    seed ^ j.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Fills `buf` (a multiple of 8 bytes) with pattern `tag` / `n`.
pub fn fill(buf: &mut [u8], tag: u64, n: u64) {
    for (j, c) in (0u64..).zip(buf.chunks_exact_mut(8)) {
        c.copy_from_slice(&word(tag, n, j).to_le_bytes());
    }
}

/// Whether `buf` holds pattern `tag` / `n`.
pub fn matches(buf: &[u8], tag: u64, n: u64) -> bool {
    (0u64..)
        .zip(buf.chunks_exact(8))
        .all(|(j, c)| c == word(tag, n, j).to_le_bytes())
}

/// Stream byte at `offset` of the stream named `tag`.
pub fn stream_byte(tag: u64, offset: u64) -> u8 {
    word(tag, 0, offset / 8).to_le_bytes()[usize::try_from(offset % 8).unwrap_or(0)]
}

/// When a workload stops: the stop file, or its time is up.
#[derive(Debug)]
pub struct Until {
    end: Instant,
}

impl Until {
    pub fn new(max_secs: u64) -> Until {
        Until {
            end: Instant::now() + Duration::from_secs(max_secs),
        }
    }

    /// Whether to stop now.
    pub fn stop(&self) -> bool {
        Instant::now() >= self.end || Path::new(STOP_FILE).exists()
    }
}

/// Prints a result line at most once a second (or always when `force`).
#[derive(Debug)]
pub struct Reporter {
    last: Option<Instant>,
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter { last: None }
    }

    /// Prints `pairs` as one result line if a second passed since the last.
    pub fn tick(&mut self, pairs: &[(&str, u64)], force: bool) {
        if !force
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(Instant::now());
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{RESULT_MARKER} {}", body.join(" "));
    }
}

/// The last iteration `< n` that wrote slot `k` of a writer cycling over
/// `slots` slots, if any.
pub fn last_write(n: u64, k: u64, slots: u64) -> Option<u64> {
    (k < n).then(|| k + (n - 1 - k) / slots * slots)
}

/// The host's side of the writers' promise: after `direct` and `buffered`
/// acknowledged iterations, each writer block in `image` holds the last
/// iteration that wrote it. Returns the blocks checked, or what is wrong.
pub fn verify_writes(image: &Path, direct: u64, buffered: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(image).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; BLOCK];
    let mut checked = 0;
    for (base, tag, n) in [
        (DIRECT_BASE, TAG_DIRECT, direct),
        (BUFFERED_BASE, TAG_BUFFERED, buffered),
    ] {
        for k in 0..WRITER_BLOCKS {
            let Some(i) = last_write(n, k, WRITER_BLOCKS) else {
                continue;
            };
            f.read_exact_at(&mut buf, base + k * BLOCK as u64)
                .map_err(|e| e.to_string())?;
            if !matches(&buf, tag, i) {
                return Err(format!(
                    "writer tag {tag} block {k}: iteration {i} (of {n} acknowledged) is not in the image"
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// Writes the reader's blocks into `image` (before boot).
pub fn write_read_area(image: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(image)?;
    let mut buf = vec![0u8; BLOCK];
    for b in 0..READ_BLOCKS {
        fill(&mut buf, TAG_READ, b);
        f.write_all_at(&buf, READ_BASE + b * BLOCK as u64)?;
    }
    f.sync_all()
}

/// An anonymous, page-aligned buffer (O_DIRECT needs the alignment).
#[derive(Debug)]
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> std::io::Result<Aligned> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Aligned {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and ours.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_and_match() {
        let mut a = vec![0u8; 4096];
        fill(&mut a, TAG_DIRECT, 7);
        assert!(matches(&a, TAG_DIRECT, 7));
        assert!(!matches(&a, TAG_DIRECT, 8));
        assert!(!matches(&a, TAG_BUFFERED, 7));
        assert!(!matches(&vec![0u8; 4096], TAG_DIRECT, 0));
        assert_eq!(stream_byte(TAG_UP, 9), word(TAG_UP, 0, 1).to_le_bytes()[1]);
    }

    #[test]
    fn last_write_per_slot() {
        assert_eq!(last_write(0, 0, 4), None);
        assert_eq!(last_write(3, 2, 4), Some(2));
        assert_eq!(last_write(3, 3, 4), None);
        assert_eq!(last_write(10, 1, 4), Some(9));
        assert_eq!(last_write(10, 2, 4), Some(6));
    }
}
