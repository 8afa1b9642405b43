//! The private socket between a daemon's message relay ([`crate::relay`])
//! and vhost-user-backend. vhost-user-backend 0.24 can only be handed a
//! listener or a path to connect to, never an already-connected stream, so
//! the daemon connects as a client (`start_client`) to a socket the relay
//! listens on. That socket lives in a fresh mode-0700 directory, and every
//! accepted connection must come from this very process (SO_PEERCRED pid);
//! anything else is closed and logged, so no other local process can slip
//! its own messages to the backend.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::warn;
use thiserror::Error;

/// Setting up or accepting on the private socket failed.
#[derive(Debug, Error)]
pub enum RelaySocketError {
    #[error("cannot create the private socket directory {0:?}")]
    Dir(PathBuf, #[source] io::Error),
    #[error("cannot listen on the private socket {0:?}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("accepting on the private socket")]
    Accept(#[source] io::Error),
}

/// A listening socket only this process may use.
#[derive(Debug)]
pub struct PrivateSocket {
    listener: UnixListener,
    dir: PathBuf,
    path: PathBuf,
}

impl PrivateSocket {
    /// Creates `<tmp>/viaduct-relay-<pid>-<nonce>/relay.sock` (directory 0700).
    pub fn new() -> Result<PrivateSocket, RelaySocketError> {
        let mut nonce = [0u8; 8];
        // getrandom cannot fail for 8 bytes once the pool is initialised; a
        // zero nonce would still be safe (0700 + peer check), just guessable.
        // SAFETY: getrandom writes at most `nonce.len()` bytes into `nonce`.
        let _ = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
        let dir = std::env::temp_dir().join(format!(
            "viaduct-relay-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(nonce)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RelaySocketError::Dir(dir.clone(), e))?;
        let path = dir.join("relay.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(RelaySocketError::Bind(path, e));
            }
        };
        Ok(PrivateSocket {
            listener,
            dir,
            path,
        })
    }

    /// Where the backend connects.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the directory and socket to `uid`/`gid` (for `--user`), so
    /// the daemon can still connect to it and remove it after dropping root.
    pub fn give_to(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }

    /// The next connection made by this process; connections from any
    /// other process are closed.
    pub fn accept_own(&self) -> Result<UnixStream, RelaySocketError> {
        accept_from(&self.listener, std::process::id())
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The pid of the process at the other end of `s` (SO_PEERCRED).
fn peer_pid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(cred.pid).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// Accepts until a connection from process `pid` arrives.
fn accept_from(listener: &UnixListener, pid: u32) -> Result<UnixStream, RelaySocketError> {
    loop {
        let (s, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelaySocketError::Accept(e)),
        };
        match peer_pid(&s) {
            Ok(p) if p == pid => return Ok(s),
            Ok(p) => warn!("event=relay_peer_rejected pid={p}"),
            Err(e) => warn!("event=relay_peer_rejected err={e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Forks a child that connects to `path`, reports on `ready`, then
    /// waits for EOF; it exits 0 if the daemon closed its connection.
    fn foreign_client(path: &Path) -> (libc::pid_t, UnixStream) {
        let (mut parent_end, child_end) = UnixStream::pair().unwrap();
        let mut addr: libc::sockaddr_un =
            // SAFETY: sockaddr_un is plain data; all-zero is valid.
            unsafe { std::mem::zeroed() };
        addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap();
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = libc::c_char::from_ne_bytes([*s]);
        }
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap();
        // SAFETY: the child only makes raw syscalls (socket, connect, write,
        // read, _exit), all async-signal-safe, before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw syscalls on fds and memory this child owns.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                    libc::_exit(2);
                }
                libc::write(child_end.as_raw_fd(), [1u8].as_ptr().cast(), 1);
                let mut b = [0u8; 1];
                let n = libc::read(fd, b.as_mut_ptr().cast(), 1);
                libc::_exit(if n == 0 { 0 } else { 3 });
            }
        }
        drop(child_end);
        let mut b = [0u8; 1];
        parent_end.read_exact(&mut b).unwrap();
        (pid, parent_end)
    }

    #[test]
    fn only_this_process_gets_through() {
        let sock = PrivateSocket::new().unwrap();
        let mode = std::fs::metadata(sock.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Another process connects first and sits in the backlog.
        let (child, _keep) = foreign_client(sock.path());
        let mut ours = UnixStream::connect(sock.path()).unwrap();
        let accepted = sock.accept_own().unwrap();
        // The accepted stream is ours: what we write arrives there.
        std::io::Write::write_all(&mut ours, b"x").unwrap();
        let mut b = [0u8; 1];
        (&accepted).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        // The foreign connection was closed on it.
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "foreign peer not closed");
        let dir = sock.path().parent().unwrap().to_owned();
        drop(sock);
        assert!(!dir.exists());
    }
}
