//! A minimal QMP client for driving QEMU migrations from the host:
//! commands, `migrate-set-capabilities`, `migrate` and `query-migrate`
//! polling until the migration completes or fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP sent malformed JSON: {0}")]
    Json(String),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP command {0} failed: {1}")]
    Command(String, String),
    #[error("migration ended with status {0}: {1}")]
    Migration(String, String),
    #[error("migration did not finish within {0:?}")]
    Timeout(Duration),
}

/// QEMU's figures for one finished migration (`query-migrate`).
#[derive(Debug, Clone, Default)]
pub struct MigrationStats {
    pub status: String,
    pub total_time_ms: u64,
    pub downtime_ms: u64,
    pub setup_time_ms: u64,
    pub ram_transferred: u64,
    pub dirty_sync_count: u64,
}

impl MigrationStats {
    fn from_json(v: &Value) -> Self {
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let ram = v.get("ram").cloned().unwrap_or(Value::Null);
        let ram_num = |k: &str| ram.get(k).and_then(Value::as_u64).unwrap_or(0);
        Self {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string(),
            total_time_ms: num("total-time"),
            downtime_ms: num("downtime"),
            setup_time_ms: num("setup-time"),
            ram_transferred: ram_num("transferred"),
            dirty_sync_count: ram_num("dirty-sync-count"),
        }
    }
}

/// One QMP connection (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path`, retrying until `wait` passes (QEMU creates the
    /// socket shortly after start), and leaves capability negotiation mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > wait => {
                    return Err(QmpError::Connect(path.display().to_string(), e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let writer = stream.try_clone()?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read_reply()?; // the greeting
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Reads messages until one that is not an event.
    fn read_reply(&mut self) -> Result<Value, QmpError> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(QmpError::Closed);
            }
            let v: Value = serde_json::from_str(&line).map_err(|_| QmpError::Json(line.clone()))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// Runs `cmd` with `args`; returns its `return` value or its error.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        let msg = json!({ "execute": cmd, "arguments": args });
        writeln!(self.writer, "{msg}")?;
        let reply = self.read_reply()?;
        if let Some(err) = reply.get("error") {
            let desc = err
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("(no description)");
            return Err(QmpError::Command(cmd.to_string(), desc.to_string()));
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Turns migration capabilities on or off.
    pub fn set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": list }))?;
        Ok(())
    }

    /// Destination side of `-incoming defer`.
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", json!({ "uri": uri }))?;
        Ok(())
    }

    /// Starts an outgoing migration.
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", json!({ "uri": uri }))?;
        Ok(())
    }

    /// The current `query-migrate` figures.
    pub fn query_migrate(&mut self) -> Result<(MigrationStats, Value), QmpError> {
        let v = self.execute("query-migrate", json!({}))?;
        Ok((MigrationStats::from_json(&v), v))
    }

    /// Polls `query-migrate` until the migration completes (Ok) or fails.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<MigrationStats, QmpError> {
        let start = Instant::now();
        loop {
            let (stats, raw) = self.query_migrate()?;
            match stats.status.as_str() {
                "completed" => return Ok(stats),
                "failed" | "cancelled" => {
                    let why = raw
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    return Err(QmpError::Migration(stats.status, why));
                }
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(QmpError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the VM is running (`query-status`).
    pub fn running(&mut self) -> Result<bool, QmpError> {
        let v = self.execute("query-status", json!({}))?;
        Ok(v.get("running").and_then(Value::as_bool).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A real QEMU (no guest) answers commands, reports no migration,
    /// reports command errors, and migrates to a file.
    #[test]
    fn drives_a_real_qemu() {
        let dir = std::env::temp_dir().join(format!("viaduct-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-display", "none", "-S", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/test.sh installs it)");
        let result = (|| -> Result<(), QmpError> {
            let mut q = Qmp::connect(&sock, Duration::from_secs(10))?;
            assert!(!q.running()?);
            assert_eq!(q.query_migrate()?.0.status, "none");
            assert!(matches!(
                q.execute("no-such-command", json!({})),
                Err(QmpError::Command(_, _))
            ));
            q.set_capabilities(&[("events", true)])?;
            let file = dir.join("state");
            q.migrate(&format!("file:{}", file.display()))?;
            let stats = q.wait_migration(Duration::from_secs(30))?;
            assert_eq!(stats.status, "completed");
            assert!(std::fs::metadata(&file)?.len() > 0);
            Ok(())
        })();
        let _ = qemu.kill();
        let _ = qemu.wait();
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
    }
}
