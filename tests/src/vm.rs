//! A QEMU process left running while the test drives it: its console is
//! collected in the background, its serial input is a pipe the test can
//! write lines to, and it has a QMP socket (migrations need two of these).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::qemu::pump;

/// Why a VM could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("cannot write to {0}'s serial input")]
    Input(String, #[source] std::io::Error),
}

/// A running QEMU; killed and reaped on drop.
#[derive(Debug)]
pub struct Vm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    qmp: PathBuf,
    log: PathBuf,
}

impl Vm {
    /// Starts `cmd` (a QEMU command with `-serial stdio`) with a QMP
    /// server on `qmp`; the console is saved to `log` on drop.
    pub fn spawn(name: &str, mut cmd: Command, qmp: &Path, log: &Path) -> Result<Vm, VmError> {
        let _ = std::fs::remove_file(qmp);
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| VmError::Spawn(name.into(), e))?;
        let console = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let verbose = std::env::var_os("VIADUCT_VERBOSE").is_some_and(|v| v != "0");
        if let Some(out) = child.stdout.take() {
            pump(out, console.clone(), verbose);
        }
        if let Some(err) = child.stderr.take() {
            pump(err, stderr.clone(), verbose);
        }
        Ok(Vm {
            name: name.into(),
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            qmp: qmp.into(),
            log: log.into(),
        })
    }

    pub fn qmp_path(&self) -> &Path {
        &self.qmp
    }

    /// The console so far.
    pub fn console(&self) -> Console {
        Console::new(self.console.lock().map(|s| s.clone()).unwrap_or_default())
    }

    /// QEMU's own stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the console contains `needle`; false after `timeout`
    /// or when QEMU exits.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console().text().contains(needle) {
                return true;
            }
            if !self.alive() {
                return self.console().text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Types `line` on the guest's serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), VmError> {
        let name = self.name.clone();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| VmError::Input(name.clone(), std::io::ErrorKind::BrokenPipe.into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| VmError::Input(name, e))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The console's tail and stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- {} stderr ---\n{}\n--- {} console tail ---\n{}",
            self.name,
            self.stderr().trim(),
            self.name,
            self.console().tail(30)
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::write(&self.log, self.console().text());
    }
}
