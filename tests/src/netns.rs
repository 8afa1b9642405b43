//! Private network namespaces for tests: the TAP of a vhost-user-net daemon
//! lives in one, so tests never touch the host's own interfaces. Host-side
//! peers run in threads that joined the namespace (setns affects only the
//! calling thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("ip netns add {0} failed: {1}")]
    Create(String, String),
    #[error("cannot open namespace {0}")]
    Open(String, #[source] std::io::Error),
    #[error("setns into {0} failed")]
    Enter(String, #[source] std::io::Error),
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `viaduct-<tag>-<pid>` (removing a stale one of that name).
    pub fn create(tag: &str) -> Result<Self, NetNsError> {
        let name = format!("vd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| NetNsError::Create(name.clone(), e.to_string()))?;
        if !out.status.success() {
            return Err(NetNsError::Create(
                name,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let me = Self { name };
        let _ = me.command("ip").args(["link", "set", "lo", "up"]).output();
        Ok(me)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> Result<(), NetNsError> {
        let path = format!("/var/run/netns/{}", self.name);
        let f = File::open(&path).map_err(|e| NetNsError::Open(self.name.clone(), e))?;
        // SAFETY: setns on a valid namespace fd we own; it changes only this
        // thread's network namespace and touches no memory of ours.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetNsError::Enter(
                self.name.clone(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, NetNsError>> {
        let path = format!("/var/run/netns/{}", self.name);
        let name = self.name.clone();
        std::thread::spawn(move || {
            let ns = File::open(&path).map_err(|e| NetNsError::Open(name.clone(), e))?;
            // SAFETY: as in `enter`: a valid namespace fd, thread-local effect.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetNsError::Enter(name, std::io::Error::last_os_error()));
            }
            Ok(f())
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
