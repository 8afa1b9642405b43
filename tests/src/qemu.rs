//! Running a guest process (QEMU, or later our own VMM) with a deadline,
//! collecting its serial console from stdout.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console::Console;

/// Why a guest run could not be carried out (not: why the guest failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("waiting for {0} failed")]
    Wait(String, #[source] std::io::Error),
}

/// What happened to one guest run.
#[derive(Debug)]
pub struct GuestRun {
    pub console: Console,
    /// Non-console output (QEMU's own stderr), filtered of known noise.
    pub stderr: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// Where the console was saved.
    pub log: Option<PathBuf>,
}

impl GuestRun {
    /// A one-paragraph description for failures.
    pub fn describe(&self) -> String {
        format!(
            "status={:?} timed_out={} elapsed={:.1}s log={}\n--- stderr ---\n{}\n--- console tail ---\n{}",
            self.status.and_then(|s| s.code()),
            self.timed_out,
            self.elapsed.as_secs_f64(),
            self.log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            self.stderr.trim(),
            self.console.tail(40)
        )
    }
}

/// QEMU warnings that say nothing about the run (see shared/testbed.md).
fn is_noise(line: &str) -> bool {
    line.contains("TCG doesn't support requested feature")
}

fn verbose() -> bool {
    std::env::var_os("VIADUCT_VERBOSE").is_some_and(|v| v != "0")
}

pub(crate) fn pump<R: Read + Send + 'static>(
    src: R,
    sink: Arc<Mutex<String>>,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if echo {
                        eprint!("  | {line}");
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                    }
                }
            }
        }
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` until it exits or `timeout` passes; stdout is the console.
/// The console is saved to `log` when given.
pub fn run_guest(
    mut cmd: Command,
    timeout: Duration,
    log: Option<&Path>,
) -> Result<GuestRun, RunError> {
    let name = cmd.get_program().to_string_lossy().to_string();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Spawn(name.clone(), e))?;
    let console = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, console.clone(), verbose()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, stderr.clone(), verbose()));
    }
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill(&mut child);
                return Err(RunError::Wait(name, e));
            }
        }
        if start.elapsed() > timeout {
            timed_out = true;
            kill(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for p in pumps {
        let _ = p.join();
    }
    let text = console.lock().map(|s| s.clone()).unwrap_or_default();
    let err_text: String = stderr
        .lock()
        .map(|s| {
            s.lines()
                .filter(|l| !is_noise(l))
                .map(|l| format!("{l}\n"))
                .collect()
        })
        .unwrap_or_default();
    let log = log.map(|p| {
        let _ = std::fs::write(p, &text);
        p.to_path_buf()
    });
    Ok(GuestRun {
        console: Console::new(text),
        stderr: err_text,
        status,
        timed_out,
        elapsed: start.elapsed(),
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo VIADUCT-RESULT a=1; echo warn >&2; exit 3"]);
        let run = run_guest(cmd, Duration::from_secs(10), None).unwrap();
        assert_eq!(run.console.get("a").unwrap(), "1");
        assert_eq!(run.status.and_then(|s| s.code()), Some(3));
        assert!(run.stderr.contains("warn"));
        assert!(!run.timed_out);
    }

    #[test]
    fn kills_on_timeout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let run = run_guest(cmd, Duration::from_millis(300), None).unwrap();
        assert!(run.timed_out);
        assert!(run.elapsed < Duration::from_secs(10));
        assert!(run.console.text().contains("started"));
    }
}
