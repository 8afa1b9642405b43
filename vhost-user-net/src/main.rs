//! vhost-user-net: command line → [`Config`], start-up, signals, exit codes
//! (0 normal, 1 runtime error, 2 usage/config error).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use landlock::AccessFs;
use vhost_user_net::cli::Args;
use vhost_user_net::config::Config;
use vhost_user_net::counters;
use vhost_user_net::memguard;
use vhost_user_net::private_socket::PrivateSocket;
use vhost_user_net::privileges;
use vhost_user_net::sandbox::{self, FsException, SandboxMode};
use vhost_user_net::serve::{self, Device, Stopper};

const CAPABILITIES: &str = r#"{"type":"net"}"#;

/// Blocks SIGTERM/SIGINT/SIGUSR1 in this thread (and so in every thread it
/// spawns later); a dedicated thread takes them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set points to a valid sigset_t; the calls only modify it and
    // this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn spawn_signal_thread(
    set: libc::sigset_t,
    stop: Arc<Stopper>,
    counters: Vec<Arc<counters::PairCounters>>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait reads the set and writes the signal number.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if sig == libc::SIGUSR1 {
                    counters::log_all(&counters);
                } else {
                    log::info!("event=signal sig={sig} action=stop");
                    stop.stop();
                }
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

fn run(cfg: Config, sandbox_mode: SandboxMode, user: Option<String>) -> anyhow::Result<()> {
    let set = block_signals();
    memguard::install_sigbus_handler().context("SIGBUS handler")?;
    let device = Device::open(&cfg).context("opening the tap")?;
    let listener = serve::bind(&cfg.socket).context("binding the vhost-user socket")?;
    let private = PrivateSocket::new().context("creating the relay socket")?;
    let stop = Stopper::new()?;
    // Everything is open and bound: confine the process before any other
    // thread exists, so Landlock (per thread at creation) covers them all.
    let private_dir = private.path().parent().unwrap_or(private.path());
    let tmp = std::env::temp_dir();
    let exceptions = [
        FsException {
            path: private_dir,
            access: AccessFs::RemoveFile.into(),
        },
        FsException {
            path: &tmp,
            access: AccessFs::RemoveDir.into(),
        },
    ];
    if let Some(user) = &user {
        let ids = privileges::lookup(user)?;
        private
            .give_to(ids.uid, ids.gid)
            .context("handing the relay socket to --user")?;
        privileges::drop_to(ids)?;
        log::info!(
            "event=privileges_dropped user={user} uid={} gid={}",
            ids.uid,
            ids.gid
        );
    }
    sandbox::enter(sandbox_mode, &exceptions).context("sandbox")?;
    spawn_signal_thread(set, stop.clone(), device.counters.clone())?;
    log::info!("event=listening socket={:?}", cfg.socket);
    serve::run_with(&device, listener, &private, &stop)?;
    counters::log_all(&device.counters);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_capabilities {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    let sandbox_mode = args.sandbox;
    let user = args.user.clone();
    let cfg = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-user-net: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(cfg.log_level)
        .format_timestamp_millis()
        .init();
    match run(cfg, sandbox_mode, user) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-net: {e:#}");
            ExitCode::from(1)
        }
    }
}
