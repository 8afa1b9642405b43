//! Guest reader: 256 buffers of 64 KiB, spread over guest memory, filled
//! with the host's known disk blocks by DMA (O_DIRECT reads). Each cycle
//! reads a different block into each buffer, checks it, and at the end of
//! the cycle re-checks every buffer. Only the device writes these pages,
//! so a daemon that does not log its writes during a migration leaves the
//! destination with stale buffers, which the re-check finds.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::{Aligned, BLOCK, READ_BASE, READ_BLOCKS, Reporter, TAG_READ, Until, matches};

/// The block buffer `i` holds in cycle `c`.
fn block_for(i: u64, c: u64) -> u64 {
    (i + c * 37) % READ_BLOCKS
}

/// Runs the reader on `dev` until told to stop.
pub fn run(dev: &str, max_secs: u64) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let n = usize::try_from(READ_BLOCKS).unwrap_or(0);
    let mut bufs = Aligned::new(n * BLOCK)?;
    let until = Until::new(max_secs);
    let mut rep = Reporter::new();
    let (mut reads, mut cycles, mut errors, mut bad) = (0u64, 0u64, 0u64, 0u64);
    // Which block each buffer holds (None: not filled, or its read failed).
    let mut holds: Vec<Option<u64>> = vec![None; n];
    'outer: while !until.stop() {
        for (i, slot) in (0u64..).zip(bufs.as_mut_slice().chunks_exact_mut(BLOCK)) {
            if until.stop() {
                break 'outer;
            }
            let b = block_for(i, cycles);
            let idx = usize::try_from(i).unwrap_or(0);
            holds[idx] = None;
            match f.read_exact_at(slot, READ_BASE + b * BLOCK as u64) {
                Ok(()) => {
                    reads += 1;
                    if matches(slot, TAG_READ, b) {
                        holds[idx] = Some(b);
                    } else {
                        bad += 1;
                    }
                }
                Err(_) => errors += 1,
            }
            rep.tick(&pairs(reads, cycles, errors, bad), false);
        }
        bad += recheck(bufs.as_slice(), &holds);
        cycles += 1;
        rep.tick(&pairs(reads, cycles, errors, bad), false);
    }
    bad += recheck(bufs.as_slice(), &holds);
    rep.tick(&pairs(reads, cycles, errors, bad), true);
    Ok(())
}

/// Buffers that no longer hold the block they were filled with.
fn recheck(bufs: &[u8], holds: &[Option<u64>]) -> u64 {
    let mut bad = 0;
    for (slot, held) in bufs.chunks_exact(BLOCK).zip(holds) {
        if let Some(b) = held
            && !matches(slot, TAG_READ, *b)
        {
            bad += 1;
        }
    }
    bad
}

fn pairs(reads: u64, cycles: u64, errors: u64, bad: u64) -> [(&'static str, u64); 4] {
    [
        ("reader_reads", reads),
        ("reader_cycles", cycles),
        ("reader_errors", errors),
        ("reader_bad", bad),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cycle_moves_every_buffer() {
        for i in 0..READ_BLOCKS {
            assert_ne!(block_for(i, 0), block_for(i, 1));
        }
    }
}
