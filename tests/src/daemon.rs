//! Background processes the tests start (vhost-user daemons, peers): started
//! with a socket to wait for, killed and reaped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a daemon did not come up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{name} exited ({status}) before creating {socket}; its stderr:\n{stderr}")]
    Exited {
        name: String,
        status: ExitStatus,
        socket: PathBuf,
        stderr: String,
    },
    #[error("{0} did not create its socket {1} within 10 s")]
    NoSocket(String, PathBuf),
}

/// A running background process; killed (SIGKILL) and reaped on drop unless
/// stopped first.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Starts `cmd` with stdout/stderr to `log` and waits until `socket`
    /// exists.
    pub fn start(mut cmd: Command, socket: &Path, log: &Path) -> Result<Self, DaemonError> {
        let name = cmd.get_program().to_string_lossy().to_string();
        let out = std::fs::File::create(log).map_err(|e| DaemonError::Spawn(name.clone(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| DaemonError::Spawn(name.clone(), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| DaemonError::Spawn(name.clone(), e))?;
        let mut me = Self {
            name,
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if socket.exists() {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(DaemonError::Exited {
                    name: me.name.clone(),
                    status,
                    socket: socket.into(),
                    stderr: me.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(DaemonError::NoSocket(me.name.clone(), socket.into()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the daemon printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit.
    pub fn terminate(mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
