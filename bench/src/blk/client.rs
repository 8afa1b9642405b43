//! The block client: libblkio's `virtio-blk-vhost-user` driver (the pure-Rust
//! libblkio published on crates.io as `blkio`), one thread per virtqueue,
//! each keeping `qd` requests in flight and timing every request. The
//! window starts after the warm-up; only completions inside it count.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

use crate::model::Measurement;
use crate::proc::{self, Task};
use crate::stats::percentile;

/// Errors of the block client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("libblkio {step}: {msg}")]
    Blkio { step: &'static str, msg: String },
    #[error("cpu accounting: {0}")]
    Proc(#[from] proc::ProcError),
    #[error("a client thread panicked")]
    Panic,
    #[error("device too small: {0} bytes")]
    TooSmall(u64),
    #[error("{0} queues: more than libblkio takes")]
    Queues(usize),
    #[error("memory region alignment of {0} bytes")]
    Alignment(u64),
}

fn bk(step: &'static str) -> impl Fn(blkio::Error) -> ClientError {
    move |e| ClientError::Blkio {
        step,
        msg: format!("{e} ({:?})", e.errno()),
    }
}

/// What the client issues.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub write: bool,
    pub random: bool,
    pub block: usize,
    /// Requests in flight per queue.
    pub qd: usize,
    pub queues: usize,
}

/// Per-thread tallies inside the window.
#[derive(Default)]
struct Tally {
    ios: u64,
    errors: u64,
    lat_ns: Vec<u32>,
    cpu_s: f64,
}

/// xorshift64: cheap, deterministic offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Connects to `socket`, drives `w` for `warmup` + `window`, and returns
/// the window's figures; `server` are the daemon tasks to account.
pub fn run(
    socket: &Path,
    w: Workload,
    warmup: Duration,
    window: Duration,
    server: &[Task],
) -> Result<Measurement, ClientError> {
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(bk("new"))?;
    b.set_str("path", &socket.to_string_lossy())
        .map_err(bk("path"))?;
    b.connect().map_err(bk("connect"))?;
    let queues = i32::try_from(w.queues).map_err(|_| ClientError::Queues(w.queues))?;
    b.set_i32("num-queues", queues).map_err(bk("num-queues"))?;
    let capacity = b.get_u64("capacity").map_err(bk("capacity"))?;
    let blocks = capacity / w.block as u64;
    if blocks < 16 {
        return Err(ClientError::TooSmall(capacity));
    }
    let align = b
        .get_u64("mem-region-alignment")
        .map_err(bk("alignment"))?
        .max(4096);
    let align = usize::try_from(align).map_err(|_| ClientError::Alignment(align))?;
    let started = b.start().map_err(bk("start"))?;
    let per_queue = w.qd * w.block;
    let len = (per_queue * w.queues).div_ceil(align) * align;
    let region = b.alloc_mem_region(len).map_err(bk("alloc"))?;
    b.map_mem_region(&region).map_err(bk("map"))?;

    let t0 = Instant::now() + warmup;
    let t1 = t0 + window;
    let (tallies, server_cpu) =
        std::thread::scope(|s| -> Result<(Vec<Tally>, f64), ClientError> {
            let mut handles = Vec::new();
            for (i, q) in started.queues.into_iter().enumerate() {
                let base = region.addr + i * per_queue;
                let start_block = blocks / w.queues as u64 * i as u64;
                handles
                    .push(s.spawn(move || queue_loop(q, w, base, blocks, start_block, i, t0, t1)));
            }
            // Server CPU over exactly the window.
            sleep_until(t0);
            let a = proc::total_cpu_seconds(server)?;
            sleep_until(t1);
            let z = proc::total_cpu_seconds(server)?;
            let mut out = Vec::new();
            for h in handles {
                out.push(h.join().map_err(|_| ClientError::Panic)??);
            }
            Ok((out, z - a))
        })?;
    let secs = window.as_secs_f64();
    let ios: u64 = tallies.iter().map(|t| t.ios).sum();
    let mut lat: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.lat_ns.iter().copied())
        .collect();
    let us = |v: Option<u32>| v.map(|ns| f64::from(ns) / 1000.0);
    Ok(Measurement {
        ops_per_s: ios as f64 / secs,
        bytes_per_s: (ios * w.block as u64) as f64 / secs,
        p50_us: us(percentile(&mut lat, 0.50)),
        p99_us: us(percentile(&mut lat, 0.99)),
        server_cpu_s: server_cpu,
        client_cpu_s: tallies.iter().map(|t| t.cpu_s).sum(),
        secs,
        errors: tallies.iter().map(|t| t.errors).sum(),
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[allow(clippy::too_many_arguments)]
fn queue_loop(
    mut q: blkio::Blkioq,
    w: Workload,
    base: usize,
    blocks: u64,
    start_block: u64,
    index: usize,
    t0: Instant,
    t1: Instant,
) -> Result<Tally, ClientError> {
    let me = Task::current_thread();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x2545_f491));
    let mut cursor = start_block;
    let mut next_offset = || {
        let blk = if w.random {
            rng.next() % blocks
        } else {
            cursor = (cursor + 1) % blocks;
            cursor
        };
        blk * w.block as u64
    };
    let submit = |q: &mut blkio::Blkioq, slot: usize, off: u64| {
        let buf = (base + slot * w.block) as *mut u8;
        if w.write {
            q.write(off, buf, w.block, slot, ReqFlags::empty());
        } else {
            q.read(off, buf, w.block, slot, ReqFlags::empty());
        }
    };
    let mut issued = vec![Instant::now(); w.qd];
    for (slot, at) in issued.iter_mut().enumerate() {
        *at = Instant::now();
        submit(&mut q, slot, next_offset());
    }
    let mut tally = Tally {
        lat_ns: Vec::with_capacity(1 << 20),
        ..Tally::default()
    };
    let mut outstanding = w.qd;
    let mut cpu_start: Option<f64> = None;
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..w.qd).map(|_| MaybeUninit::uninit()).collect();
    while outstanding > 0 {
        let n = q.do_io(&mut comps, 1, None, None).map_err(bk("do_io"))?;
        let now = Instant::now();
        if cpu_start.is_none() && now >= t0 {
            cpu_start = Some(proc::cpu_seconds(me)?);
        }
        let in_window = now >= t0 && now < t1;
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_ref() };
            let slot = c.user_data;
            if slot >= w.qd {
                continue;
            }
            if in_window {
                tally.ios += 1;
                if c.ret != 0 {
                    tally.errors += 1;
                }
                let ns = now.duration_since(issued[slot]).as_nanos();
                tally.lat_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            if now < t1 {
                issued[slot] = Instant::now();
                submit(&mut q, slot, next_offset());
            } else {
                outstanding -= 1;
            }
        }
    }
    let end = proc::cpu_seconds(me)?;
    tally.cpu_s = end - cpu_start.unwrap_or(end);
    Ok(tally)
}
