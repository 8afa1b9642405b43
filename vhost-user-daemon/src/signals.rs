//! Signals: SIGTERM/SIGINT request a graceful shutdown, SIGUSR1 runs the
//! daemon's counter report. They are blocked in every thread and taken
//! synchronously by one thread with sigwait(2): no async-signal-safety
//! games.

use std::io;
use std::sync::Arc;

use crate::shutdown::Shutdown;

/// Signal setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// pthread_sigmask failed.
    #[error("cannot block signals")]
    Mask(#[source] io::Error),
    /// The signal thread could not be spawned.
    #[error("cannot spawn the signal thread")]
    Spawn(#[source] io::Error),
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
    }
    set
}

/// Blocks the handled signals in the calling thread (and every thread it
/// spawns later). Call first thing in `main`.
pub fn block() -> Result<(), SignalError> {
    let set = handled_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SignalError::Mask(io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Spawns the thread that turns signals into actions: `report` on
/// SIGUSR1, `shutdown.request()` on SIGTERM and SIGINT.
pub fn spawn(
    shutdown: Arc<Shutdown>,
    report: impl Fn() + Send + 'static,
) -> Result<(), SignalError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut sig = 0;
                // SAFETY: `set` is initialised and `sig` is a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                match sig {
                    libc::SIGUSR1 => report(),
                    _ => {
                        log::info!("event=signal sig={sig} action=shutdown");
                        shutdown.request();
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(SignalError::Spawn)
}
