//! The frontend's socket: bound once at start-up, before the sandbox, and
//! kept across connections.
//!
//! The rules, the same for every daemon: a path that exists and is not a
//! socket is refused (never delete an operator's file); a socket a live
//! daemon listens on is refused; a stale socket of a dead daemon is
//! replaced. `--fd` must be a listening socket. A bound path is removed
//! when the daemon exits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vhost::vhost_user::{Error as VhostUserError, Listener};

use crate::shutdown::Shutdown;

/// Where the vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Bind and listen on this path.
    Path(PathBuf),
    /// An already-listening socket handed over by the caller.
    Fd(RawFd),
}

impl Listen {
    /// The directory a bound socket lives in (the sandbox lets the daemon
    /// remove its socket there at exit).
    pub fn socket_dir(&self) -> Option<PathBuf> {
        match self {
            Listen::Path(p) => p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            }),
            Listen::Fd(_) => None,
        }
    }
}

/// Why the socket could not be bound or adopted.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something is listening on the socket path already.
    #[error("socket path {0} is in use")]
    InUse(String),
    /// The socket path exists and is not a socket.
    #[error("socket path {0} exists and is not a socket")]
    NotASocket(String),
    /// bind/listen failed.
    #[error("cannot listen on {0}")]
    Bind(String, #[source] VhostUserError),
    /// --fd is not a listening unix socket.
    #[error("--fd {0} is not a listening socket")]
    BadFd(RawFd),
    /// poll(2) on the listener.
    #[error("waiting for a connection failed")]
    Poll(#[source] io::Error),
}

/// A bound listener; the socket path (if we made one) is removed on drop.
pub struct Bound {
    listener: Listener,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("path", &self.path).finish()
    }
}

impl std::ops::Deref for Bound {
    type Target = Listener;
    fn deref(&self) -> &Listener {
        &self.listener
    }
}

impl std::ops::DerefMut for Bound {
    fn deref_mut(&mut self) -> &mut Listener {
        &mut self.listener
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds `listen` by the rules above.
pub fn bind(listen: &Listen) -> Result<Bound, ListenError> {
    match listen {
        Listen::Path(path) => {
            let shown = path.display().to_string();
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(ListenError::NotASocket(shown));
                }
                if UnixStream::connect(path).is_ok() {
                    return Err(ListenError::InUse(shown));
                }
                // Stale socket of a dead daemon.
                let _ = std::fs::remove_file(path);
            }
            let listener = bind_whole(path)
                .map_err(|e| ListenError::Bind(shown, VhostUserError::SocketError(e)))?;
            Ok(Bound {
                listener,
                path: Some(path.clone()),
            })
        }
        Listen::Fd(fd) => {
            if !is_listening_socket(*fd) {
                return Err(ListenError::BadFd(*fd));
            }
            // SAFETY: the caller handed this fd over for our exclusive use
            // (backend program conventions) and we checked it is a listening
            // socket; the Listener becomes its only owner.
            let listener = unsafe { Listener::from_raw_fd(*fd) };
            Ok(Bound {
                listener,
                path: None,
            })
        }
    }
}

/// Binds and listens under a temporary name beside `path`, then renames it
/// into place (never over anything), so the socket appears already
/// listening: a frontend that connects as soon as the path exists (libvirt,
/// test harnesses) is never refused in the gap between bind and listen.
fn bind_whole(path: &Path) -> io::Result<Listener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.binding", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let (from, to) = (cstr(&tmp)?, cstr(path)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // SAFETY: a listening socket we just made; the Listener becomes its
    // only owner.
    Ok(unsafe { Listener::from_raw_fd(listener.into_raw_fd()) })
}

fn cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in socket path"))
}

fn is_listening_socket(fd: RawFd) -> bool {
    let mut val: libc::c_int = 0;
    let Ok(mut len) = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()) else {
        return false;
    };
    // SAFETY: getsockopt writes at most `len` bytes into `val`; an invalid
    // fd just returns an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && val != 0
}

/// Blocks until a connection is pending (true) or shutdown is requested
/// (false).
pub fn wait_for_connection(listener: &Listener, shutdown: &Shutdown) -> Result<bool, ListenError> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shutdown.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if shutdown.is_requested() {
            return Ok(false);
        }
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ListenError::Poll(e));
        }
        if shutdown.is_requested() || fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vud-listen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let d = tmp("file");
        let p = d.join("s");
        std::fs::write(&p, b"operator's file").unwrap();
        assert!(matches!(
            bind(&Listen::Path(p.clone())),
            Err(ListenError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"operator's file");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let d = tmp("sock");
        let p = d.join("s");
        let live = UnixListener::bind(&p).unwrap();
        assert!(matches!(
            bind(&Listen::Path(p.clone())),
            Err(ListenError::InUse(_))
        ));
        drop(live); // the file stays: now stale
        let l = bind(&Listen::Path(p.clone())).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        drop(l);
        assert!(!p.exists(), "a bound path is removed at exit");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_path_appears_already_listening() {
        // A frontend that connects the moment the path exists must never
        // be refused (it was, under load, between bind and listen).
        let d = tmp("race");
        for i in 0..200 {
            let p = d.join(format!("s{i}"));
            let watcher = {
                let p = p.clone();
                std::thread::spawn(move || {
                    loop {
                        if p.exists() {
                            return UnixStream::connect(&p).map(|_| ());
                        }
                        std::hint::spin_loop();
                    }
                })
            };
            let l = bind(&Listen::Path(p.clone())).unwrap();
            let r = watcher.join().unwrap();
            assert!(r.is_ok(), "connect the moment {p:?} appeared: {r:?}");
            drop(l);
        }
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert!(left.is_empty(), "no temporary names left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fd_must_be_listening() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            bind(&Listen::Fd(a.as_raw_fd())),
            Err(ListenError::BadFd(_))
        ));
    }

    #[test]
    fn socket_dir_of_a_bare_name_is_the_current_directory() {
        assert_eq!(
            Listen::Path("s".into()).socket_dir(),
            Some(PathBuf::from("."))
        );
        assert_eq!(
            Listen::Path("/run/x/s".into()).socket_dir(),
            Some(PathBuf::from("/run/x"))
        );
        assert_eq!(Listen::Fd(3).socket_dir(), None);
    }
}
