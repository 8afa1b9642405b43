//! Guest dirtier: keeps rewriting a 32 MiB region with the CPU, one
//! pass after another (throttled so pre-copy converges under TCG), and
//! checks before each pass that every page still holds the last pass's
//! words. QEMU tracks CPU writes itself: this checks QEMU's side of the
//! migration, and that the guest's memory as a whole came across.

use std::time::{Duration, Instant};

use super::{Aligned, Reporter, Until, word};

const REGION: usize = 32 << 20;
const PAGE: usize = 4096;
/// Words written at the start of each page.
const WORDS: usize = 8;
/// Tag of the dirtier's words.
const TAG: u64 = 6;

/// Runs the dirtier until told to stop; each pass takes at least
/// `pass_ms` (a pass dirties every page of the region).
pub fn run(max_secs: u64, pass_ms: u64) -> std::io::Result<()> {
    let mut mem = Aligned::new(REGION)?;
    let until = Until::new(max_secs);
    let mut rep = Reporter::new();
    let (mut passes, mut bad) = (0u64, 0u64);
    while !until.stop() {
        let t0 = Instant::now();
        for (p, page) in (0u64..).zip(mem.as_mut_slice().chunks_exact_mut(PAGE)) {
            for (j, c) in (0u64..).zip(page[..WORDS * 8].chunks_exact_mut(8)) {
                if passes > 0 && c != word(TAG, passes - 1, p * 64 + j).to_le_bytes() {
                    bad += 1;
                }
                c.copy_from_slice(&word(TAG, passes, p * 64 + j).to_le_bytes());
            }
        }
        passes += 1;
        rep.tick(&[("dirtier_passes", passes), ("dirtier_bad", bad)], false);
        if let Some(rest) = Duration::from_millis(pass_ms).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    rep.tick(&[("dirtier_passes", passes), ("dirtier_bad", bad)], true);
    Ok(())
}
