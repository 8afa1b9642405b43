//! `viaduct-migload`: the guest side of the live-migration test (issue 15).
//! Runs inside a test guest; each subcommand is one workload of
//! `guest_kit::migload` and prints `VIADUCT-RESULT` lines.

use anyhow::Context;
use clap::{Parser, Subcommand};
use guest_kit::migload::{STREAM_PORT, dirtier, reader, stream, writer};

#[derive(Parser, Debug)]
#[command(name = "viaduct-migload")]
struct Cli {
    /// Stop after this many seconds even if never told to.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write and verify numbered blocks with O_DIRECT.
    WriteDirect { dev: String },
    /// Write numbered blocks through the page cache, flush, verify.
    WriteBuffered { dev: String },
    /// Fill buffers with known blocks by O_DIRECT reads and re-verify them.
    Read { dev: String },
    /// Keep dirtying a memory region and check it.
    Dirty {
        /// Minimum milliseconds per pass over the region.
        #[arg(long, default_value_t = 200)]
        pass_ms: u64,
    },
    /// A TCP stream both ways with the host.
    Stream { host: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::WriteDirect { dev } => writer::run(&dev, true, cli.max_secs).context("writer"),
        Cmd::WriteBuffered { dev } => writer::run(&dev, false, cli.max_secs).context("writer"),
        Cmd::Read { dev } => reader::run(&dev, cli.max_secs).context("reader"),
        Cmd::Dirty { pass_ms } => dirtier::run(cli.max_secs, pass_ms).context("dirtier"),
        Cmd::Stream { host } => stream::run(&host, STREAM_PORT, cli.max_secs).context("stream"),
    }
}
