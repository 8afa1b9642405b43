//! The block case matrix: which workloads, cache modes and queue counts run
//! in a full suite and in `--quick`.

use crate::blk::client::Workload;
use crate::blk::systems::Cache;

/// One block case.
#[derive(Debug, Clone, Copy)]
pub struct BlkCase {
    pub w: Workload,
    pub cache: Cache,
    /// Served by null backends (no I/O): only the null systems run.
    pub null: bool,
}

impl BlkCase {
    pub fn name(&self) -> String {
        let op = match (self.w.write, self.w.random) {
            (false, true) => "randread",
            (true, true) => "randwrite",
            (false, false) => "seqread",
            (true, false) => "seqwrite",
        };
        let backing = if self.null {
            "null".to_string()
        } else {
            format!("cache={}", self.cache.name())
        };
        format!(
            "{op} {}k QD{} {}q {backing}",
            self.w.block / 1024,
            self.w.qd,
            self.w.queues
        )
    }
}

const fn w(write: bool, random: bool, block: usize, qd: usize, queues: usize) -> Workload {
    Workload {
        write,
        random,
        block,
        qd,
        queues,
    }
}

/// Cases of the suite.
pub fn cases(quick: bool) -> Vec<BlkCase> {
    let file = |w, cache| BlkCase {
        w,
        cache,
        null: false,
    };
    if quick {
        return vec![
            file(w(false, true, 4096, 32, 1), Cache::Writeback),
            file(w(true, true, 4096, 1, 1), Cache::Writeback),
        ];
    }
    let mut out = Vec::new();
    for wl in [
        w(false, true, 4096, 1, 1),
        w(false, true, 4096, 32, 1),
        w(true, true, 4096, 1, 1),
        w(true, true, 4096, 32, 1),
        w(false, false, 128 << 10, 8, 1),
        w(true, false, 128 << 10, 8, 1),
        w(false, true, 4096, 32, 2),
        w(true, true, 4096, 32, 2),
    ] {
        out.push(file(wl, Cache::Writeback));
    }
    // O_DIRECT: the subset where the device, not the page cache, dominates.
    for wl in [
        w(false, true, 4096, 1, 1),
        w(false, true, 4096, 32, 1),
        w(true, true, 4096, 32, 1),
        w(false, false, 128 << 10, 8, 1),
        w(false, true, 4096, 32, 2),
    ] {
        out.push(file(wl, Cache::None));
    }
    out.push(BlkCase {
        w: w(false, true, 4096, 32, 1),
        cache: Cache::Writeback,
        null: true,
    });
    out
}
