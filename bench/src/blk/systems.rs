//! The block systems: our daemon (interrupt and polling), qemu-storage-daemon
//! (main loop, and a polling iothread), their null-backend variants
//! (`--null-io` and `null-co`), each
//! started fresh for one run; fio is the limit and runs in `fio.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::{self, BinError};
use crate::proc::Task;
use crate::spawn::{self, Proc, SpawnError};

/// Errors starting a block system.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{0} is not installed")]
    Missing(&'static str),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Bin(#[from] BinError),
}

/// Host cache mode of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    Writeback,
    None,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Writeback => "writeback",
            Cache::None => "none",
        }
    }
}

/// A vhost-user-blk server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// Ours; `poll_us` 0 = interrupt mode.
    Viaduct { poll_us: u32 },
    /// Ours with `--null-io` (no I/O at all).
    ViaductNull { poll_us: u32 },
    /// qemu-storage-daemon, aio=io_uring; with a polling iothread or in its
    /// main loop.
    Qsd { iothread_poll: bool },
    /// qemu-storage-daemon with `driver=null-co` (no I/O at all).
    QsdNull { iothread_poll: bool },
}

impl Server {
    pub fn label(self) -> String {
        match self {
            Server::Viaduct { poll_us: 0 } => "viaduct irq".into(),
            Server::Viaduct { poll_us } => format!("viaduct poll-us={poll_us}"),
            Server::ViaductNull { poll_us: 0 } => "viaduct null-io".into(),
            Server::ViaductNull { poll_us } => format!("viaduct null-io poll-us={poll_us}"),
            Server::Qsd {
                iothread_poll: false,
            } => "qsd".into(),
            Server::Qsd {
                iothread_poll: true,
            } => "qsd iothread+poll".into(),
            Server::QsdNull {
                iothread_poll: false,
            } => "qsd null-co".into(),
            Server::QsdNull {
                iothread_poll: true,
            } => "qsd null-co iothread+poll".into(),
        }
    }
}

/// Polling budget given to qsd's iothread (its adaptive poll upper bound).
const QSD_POLL_MAX_NS: u32 = 50_000;

/// A started server.
pub struct Running {
    pub socket: PathBuf,
    pub proc: Proc,
}

impl Running {
    pub fn tasks(&self) -> Vec<Task> {
        vec![Task::Process(self.proc.pid())]
    }
}

/// Starts `server` on `image` in `dir`.
pub fn start(
    server: Server,
    image: &Path,
    image_bytes: u64,
    cache: Cache,
    queues: usize,
    dir: &Path,
) -> Result<Running, SystemError> {
    let socket = dir.join("blk.sock");
    let _ = std::fs::remove_file(&socket);
    let log = dir.join("server.log");
    let (name, cmd) = match server {
        Server::Viaduct { poll_us } | Server::ViaductNull { poll_us } => {
            let exe = bins::daemon("vhost-user-blk")?;
            let mut c = Command::new(exe);
            c.arg("--socket-path")
                .arg(&socket)
                .arg("--blk-file")
                .arg(image)
                .args(["--format", "raw", "--cache", cache.name()])
                .args(["--num-queues", &queues.to_string()])
                .args(["--poll-us", &poll_us.to_string(), "--log-level", "warn"]);
            if let Server::ViaductNull { .. } = server {
                c.arg("--null-io");
            }
            ("vhost-user-blk", c)
        }
        Server::Qsd { iothread_poll } | Server::QsdNull { iothread_poll } => {
            if !spawn::have("qemu-storage-daemon") {
                return Err(SystemError::Missing("qemu-storage-daemon (qemu-utils)"));
            }
            let mut c = Command::new("qemu-storage-daemon");
            if let Server::QsdNull { .. } = server {
                c.args([
                    "--blockdev",
                    &format!("driver=null-co,node-name=disk,size={image_bytes}"),
                ]);
            } else {
                let direct = if cache == Cache::None { "on" } else { "off" };
                c.args([
                    "--blockdev",
                    &format!(
                        "driver=file,node-name=file,filename={},aio=io_uring,cache.direct={direct}",
                        image.display()
                    ),
                    "--blockdev",
                    "driver=raw,node-name=disk,file=file",
                ]);
            }
            let mut export = format!(
                "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},num-queues={queues},writable=on",
                socket.display()
            );
            if iothread_poll {
                c.args([
                    "--object",
                    &format!("iothread,id=io0,poll-max-ns={QSD_POLL_MAX_NS}"),
                ]);
                export.push_str(",iothread=io0");
            }
            c.args(["--export", &export]);
            ("qemu-storage-daemon", c)
        }
    };
    let mut proc = Proc::start(name, cmd, &log)?;
    proc.wait_for_path(&socket, Duration::from_secs(10))?;
    Ok(Running { socket, proc })
}
