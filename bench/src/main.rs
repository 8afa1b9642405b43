//! viaduct-bench: guest-less benchmarks of Viaduct's vhost-user daemons
//! against their peers and the host's limits.
//!
//!     cargo run --release --bin viaduct-bench -- blk|net|all [--quick] [--only TEXT] [--out DIR]
//!
//! Writes `<suite>.json`, `<suite>.svg` and `<suite>.md` into `--out`
//! (default `bench-results/`).

mod bins;
mod blk;
mod model;
mod net;
mod proc;
mod report;
mod runner;
mod spawn;
mod stats;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};

use model::{CaseResult, SuiteResult};
use runner::Timing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Blk,
    Net,
    All,
}

/// Benchmarks Viaduct's vhost-user daemons against their peers.
#[derive(Debug, Parser)]
#[command(name = "viaduct-bench", version)]
struct Args {
    /// Which suite to run.
    #[arg(value_enum)]
    suite: Which,
    /// A subset with shorter runs (under 2 minutes for `all`).
    #[arg(long)]
    quick: bool,
    /// Where results and work files go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Repetitions per system and case (default 3, quick 2).
    #[arg(long)]
    reps: Option<u32>,
    /// Measured window per run in milliseconds (default 2000, quick 1000).
    #[arg(long)]
    window_ms: Option<u64>,
    /// Run only the cases whose name contains TEXT (e.g. "null", "qd1 ").
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    let timing = Timing {
        reps: args.reps.unwrap_or(if args.quick { 2 } else { 3 }).max(1),
        warmup: Duration::from_millis(if args.quick { 300 } else { 500 }),
        window: Duration::from_millis(
            args.window_ms
                .unwrap_or(if args.quick { 1000 } else { 2000 })
                .max(200),
        ),
    };
    let command = format!(
        "viaduct-bench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut failed = 0;
    if matches!(args.suite, Which::Blk | Which::All) {
        let r = suite("blk", &args, &timing, &command, |notes| {
            notes.extend(blk_notes());
            blk::run(args.quick, args.only.as_deref(), &timing, &args.out).context("block suite")
        })?;
        failed += count_failed(&r);
    }
    if matches!(args.suite, Which::Net | Which::All) {
        let r = suite("net", &args, &timing, &command, |notes| {
            net::run(args.quick, args.only.as_deref(), &timing, &args.out, notes)
                .context("net suite")
        })?;
        failed += count_failed(&r);
    }
    if failed > 0 {
        anyhow::bail!("{failed} system(s) failed; see the tables above");
    }
    Ok(())
}

fn blk_notes() -> Vec<String> {
    vec![
        "Client: libblkio's virtio-blk-vhost-user driver (crate `blkio` 0.5.1, pure Rust, from crates.io), \
         one thread per queue, completion eventfd (interrupt-style) waits, latency timed per request."
            .into(),
        format!(
            "Image: {} MiB raw file of random data; cache=writeback runs start from a warm page cache.",
            blk::IMAGE_BYTES >> 20
        ),
    ]
}

fn count_failed(r: &SuiteResult) -> usize {
    r.cases
        .iter()
        .flat_map(|c| &c.systems)
        .filter(|s| matches!(s.status, model::Status::Failed(_)))
        .count()
}

fn suite(
    name: &str,
    args: &Args,
    timing: &Timing,
    command: &str,
    body: impl FnOnce(&mut Vec<String>) -> anyhow::Result<Vec<CaseResult>>,
) -> anyhow::Result<SuiteResult> {
    let loadavg_before = proc::loadavg();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut notes = Vec::new();
    let cases = body(&mut notes)?;
    let r = SuiteResult {
        suite: name.into(),
        command: command.into(),
        quick: args.quick,
        started_unix,
        loadavg_before,
        loadavg_after: proc::loadavg(),
        reps: timing.reps,
        warmup_s: timing.warmup.as_secs_f64(),
        window_s: timing.window.as_secs_f64(),
        notes,
        cases,
    };
    let md = report::table::suite_markdown(&r);
    println!("{md}");
    report::json::write(&args.out.join(format!("{name}.json")), &r)?;
    report::svg::write(&args.out.join(format!("{name}.svg")), &r)?;
    std::fs::write(args.out.join(format!("{name}.md")), &md)
        .with_context(|| format!("writing {name}.md"))?;
    Ok(r)
}
