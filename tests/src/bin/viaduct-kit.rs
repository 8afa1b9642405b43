//! `viaduct-kit`: provisions the guest kit and runs the test hosts' self-tests.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use guest_kit::cache::Cache;
use guest_kit::l2::DiskBackend;
use guest_kit::provision;
use guest_kit::selftest::{self, Report};

/// Viaduct's guest kit: what the end-to-end tests boot.
///
/// Everything comes from Debian's packages (QEMU 10 from bookworm-backports,
/// busybox-static, the stock linux-image-6.12.95+deb12-amd64 kernel) and is
/// cached in $VIADUCT_CACHE (default ~/.cache/viaduct). Every step is
/// idempotent.
///
/// Examples:
///   viaduct-kit provision          # install packages, fetch and unpack the guest kernel
///   viaduct-kit demo               # viaduct + both daemons boot a guest (in test host B)
///   viaduct-kit selftest           # boot both test hosts and report what they can do
///   VIADUCT_VERBOSE=1 viaduct-kit selftest host-b   # ...echoing the guest consoles
#[derive(Parser, Debug)]
#[command(name = "viaduct-kit", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install host packages (as root) and provision the guest kernel; print the paths.
    Provision,
    /// The whole stack: inside test host B (host KVM here cannot boot Linux),
    /// `viaduct` boots a guest whose disk comes from `vhost-user-blk` and NIC
    /// from `vhost-user-net`, drives it through its API (pause, resume,
    /// daemon restart, shutdown) and prints what the guest saw.
    Demo,
    /// Boot the test hosts for real and check what each must be able to do.
    Selftest {
        /// Which host to test.
        #[arg(value_enum, default_value_t = Which::All)]
        which: Which,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Which {
    /// Test host A: QEMU TCG guest with a vhost-user-blk disk (qemu-storage-daemon).
    HostA,
    /// Test host B: nested KVM host with intel-iommu, igb SR-IOV and NVMe.
    HostB,
    All,
}

fn print_report(r: &Report) {
    println!("PASS  {}  ({:.1}s)", r.name, r.elapsed.as_secs_f64());
    for fact in &r.facts {
        println!("      - {fact}");
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viaduct-kit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cache = Cache::locate()?;
    let kernel = provision::ensure_all(&cache).context("provisioning the guest kit")?;
    match cli.command {
        Cmd::Provision => {
            println!("cache={}", cache.root().display());
            println!("kernel_version={}", kernel.version);
            println!("bzimage={}", kernel.bzimage.display());
            println!("vmlinux={}", kernel.vmlinux.display());
            println!("modules={}", kernel.modules.display());
        }
        Cmd::Demo => {
            let work = cache.scratch("demo")?;
            println!("....  booting test host B; viaduct runs the guest inside it");
            match guest_kit::l2::boot_l2_with_disk(&kernel, &work, &[DiskBackend::Viaduct]) {
                Ok(report) => print_report(&report),
                Err(e) => {
                    println!("FAIL  demo: {e}");
                    println!("      logs kept in {}", work.keep().display());
                    anyhow::bail!("the demo failed");
                }
            }
        }
        Cmd::Selftest { which } => {
            let start = Instant::now();
            let mut failed = 0;
            let hosts: Vec<(Which, &str)> =
                vec![(Which::HostA, "host-a"), (Which::HostB, "host-b")];
            for (host, tag) in hosts {
                if which != Which::All && which != host {
                    continue;
                }
                let work = cache.scratch(tag)?;
                println!("....  booting {tag} (scratch {})", work.display());
                let result = match host {
                    Which::HostA => selftest::host_a(&kernel, &work),
                    _ => selftest::host_b(&kernel, &work),
                };
                match result {
                    Ok(report) => print_report(&report),
                    Err(e) => {
                        failed += 1;
                        println!("FAIL  {tag}: {e}");
                        println!("      logs kept in {}", work.keep().display());
                    }
                }
            }
            println!("self-tests done in {:.1}s", start.elapsed().as_secs_f64());
            anyhow::ensure!(failed == 0, "{failed} self-test(s) failed");
        }
    }
    Ok(())
}
