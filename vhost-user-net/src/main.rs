//! vhost-user-net: command line → [`Config`], start-up, signals, exit codes
//! (0 normal, 1 runtime error, 2 usage/config error).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use vhost_user_daemon::cli::CommonArgs;
use vhost_user_daemon::sandbox::Sandbox;
use vhost_user_daemon::shutdown::Shutdown;
use vhost_user_daemon::{listen, logging, signals};
use vhost_user_net::cli::Args;
use vhost_user_net::config::Config;
use vhost_user_net::counters;
use vhost_user_net::memguard;
use vhost_user_net::private_socket::PrivateSocket;
use vhost_user_net::sandbox;
use vhost_user_net::serve::{self, Device};

const CAPABILITIES: &str = r#"{"type":"net"}"#;

fn run(cfg: Config, common: CommonArgs) -> anyhow::Result<()> {
    signals::block().context("signals")?;
    memguard::install_sigbus_handler().context("SIGBUS handler")?;
    let mut device = Device::open(&cfg).context("opening the tap")?;
    device.never_mark_dirty = common.test_never_mark_dirty;
    let listener = listen::bind(&cfg.socket).context("binding the vhost-user socket")?;
    let private = PrivateSocket::new().context("creating the relay socket")?;
    let shutdown = Arc::new(Shutdown::new().context("shutdown eventfd")?);
    // Everything is open and bound: confine the process before any other
    // thread exists, so Landlock (per thread at creation) covers them all.
    Sandbox::new(&common, &cfg.socket, &private, sandbox::SECCOMP).apply()?;
    let report = device.counters.clone();
    signals::spawn(Arc::clone(&shutdown), move || counters::log_all(&report))?;
    log::info!("event=listening socket={:?}", cfg.socket);
    serve::run_with(&device, &listener, &private, &shutdown)?;
    counters::log_all(&device.counters);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.common.print_capabilities {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    let common = args.common.clone();
    let cfg = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-user-net: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(common.log_level);
    match run(cfg, common) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-net: {e:#}");
            ExitCode::from(1)
        }
    }
}
