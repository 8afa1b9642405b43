//! Child processes of the suite (daemons, peers, DPDK): started with their
//! output captured to a log file, stopped with SIGTERM then SIGKILL, and
//! never left behind (killed on drop).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or waiting for a child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("starting {0}: {1}")]
    Start(String, std::io::Error),
    #[error("{what} exited early ({status}); last output:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("{what}: {path} did not appear within {secs:.1}s; last output:\n{log}")]
    NoSocket {
        what: String,
        path: PathBuf,
        secs: f64,
        log: String,
    },
    #[error("log file {0}: {1}")]
    Log(PathBuf, std::io::Error),
}

/// A running child process.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, stdout and stderr appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, SpawnError> {
        let out = std::fs::File::create(log).map_err(|e| SpawnError::Log(log.into(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| SpawnError::Log(log.into(), e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|e| SpawnError::Start(name.into(), e))?;
        Ok(Proc {
            name: name.into(),
            child,
            log: log.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of the child's output.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if the child has already exited.
    pub fn check_alive(&mut self) -> Result<(), SpawnError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(SpawnError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until `path` exists (a listening socket), or the child dies.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<(), SpawnError> {
        let start = Instant::now();
        while !path.exists() {
            self.check_alive()?;
            if start.elapsed() > timeout {
                return Err(SpawnError::NoSocket {
                    what: self.name.clone(),
                    path: path.into(),
                    secs: timeout.as_secs_f64(),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(mut self, grace: Duration) {
        self.terminate(grace);
    }

    fn terminate(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid; it is not reaped
            // yet (try_wait above), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(2));
    }
}

/// True if `prog` is found in PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}
