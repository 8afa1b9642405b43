//! vhost-user-blk: command line → validated config → open image → bind →
//! serve. Exit codes: 0 normal, 1 runtime error, 2 usage or configuration
//! error (bad option, unusable image, socket in use), all before serving.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use vhost_user_blk::cli::{Args, CAPABILITIES_JSON};
use vhost_user_blk::config::Config;
use vhost_user_blk::counters::{self, QueueCounters};
use vhost_user_blk::disk::Disk;
use vhost_user_blk::memguard;
use vhost_user_blk::private_socket::PrivateSocket;
use vhost_user_blk::sandbox;
use vhost_user_blk::serve::Server;
use vhost_user_daemon::sandbox::Sandbox;
use vhost_user_daemon::shutdown::Shutdown;
use vhost_user_daemon::{listen, logging, signals};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.common.print_capabilities {
        println!("{CAPABILITIES_JSON}");
        return ExitCode::SUCCESS;
    }
    logging::init(args.common.log_level);
    let mut server = match setup(args) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("vhost-user-blk: {e:#}");
            return ExitCode::from(2);
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-blk: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    }
}

/// Everything that must succeed before serving starts.
fn setup(args: Args) -> anyhow::Result<Server> {
    signals::block().context("signals")?;
    memguard::install_sigbus_handler().context("signals")?;
    let common = args.common.clone();
    let config = Config::try_from(args)?;
    // The sandbox's rules are known (the policy is in `config`): only now
    // is anything the image names opened.
    let mut disk = Disk::open(&config)?;
    let listener = listen::bind(&config.listen)?;
    let private = PrivateSocket::new().context("creating the relay socket")?;
    let counters: Arc<Vec<QueueCounters>> = Arc::new(
        (0..config.num_queues)
            .map(|_| QueueCounters::default())
            .collect(),
    );
    let shutdown = Arc::new(Shutdown::new().context("shutdown eventfd")?);
    if config.null_io {
        log::warn!("event=null_io reads and writes complete without I/O: data is not stored");
    }
    // Everything is open and bound: confine the process before any other
    // thread exists, so Landlock (per thread at creation) covers them all.
    // Landlock lists exactly the image's files; the duplicate descriptors
    // kept for it close once the ruleset is in force.
    let chain = std::mem::take(&mut disk.chain);
    Sandbox::new(
        &common,
        &config.listen,
        &private,
        sandbox::seccomp_for(&disk),
    )
    .files(&sandbox::file_rules(&chain))
    .apply()?;
    drop(chain);
    let report = Arc::clone(&counters);
    signals::spawn(Arc::clone(&shutdown), move || counters::log_all(&report))?;
    Ok(Server::new(
        config, disk, listener, private, counters, shutdown,
    ))
}
