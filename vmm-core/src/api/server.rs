//! The control API's unix socket: bound before the VM starts (a socket a
//! live VMM still serves is "in use"; a dead one's file is replaced),
//! non-blocking, served from the VMM's event loop. One request per
//! connection; at most [`MAX_CONNS`] open at once, and a connection that
//! sends nothing for [`IDLE_LIMIT`] is closed to make room.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::http::{MAX_REQUEST, Parsed, Response, parse};
use super::routes::{VmControl, route};

/// Open connections at most.
pub const MAX_CONNS: usize = 16;
/// A connection silent this long is dropped when room is needed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {0} is in use by a running process")]
    InUse(String),
    #[error("{0} exists and is not a socket")]
    NotASocket(String),
    #[error("cannot bind the API socket {0}")]
    Bind(String, #[source] std::io::Error),
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

/// The listening socket and its open connections.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Binds `path` (mode 0600).
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let shown = || path.display().to_string();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ApiError::NotASocket(shown()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(shown()));
            }
            // Left behind by a VMM that died.
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(shown(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::Bind(shown(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiError::Bind(shown(), e))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            conns: BTreeMap::new(),
            next_id: 0,
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts what is pending; returns the new connections (id, fd) to
    /// watch. Closing a connection's fd removes it from any epoll set.
    pub fn accept(&mut self) -> Vec<(u64, RawFd)> {
        let mut fresh = Vec::new();
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock, or a transient accept error
            };
            self.evict_idle();
            if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                log::warn!("event=api_connection_refused open={}", self.conns.len());
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            fresh.push((id, stream.as_raw_fd()));
            self.conns.insert(
                id,
                Conn {
                    stream,
                    buf: Vec::new(),
                    since: Instant::now(),
                },
            );
        }
        fresh
    }

    fn evict_idle(&mut self) {
        self.conns.retain(|_, c| c.since.elapsed() < IDLE_LIMIT);
    }

    /// Reads what connection `id` sent and answers once a request is
    /// complete (or bad); the connection is closed after answering.
    pub fn serve(&mut self, id: u64, vm: &dyn VmControl) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let eof = loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > MAX_REQUEST {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let reply = match parse(&conn.buf) {
            Parsed::Incomplete if !eof => return,
            Parsed::Incomplete => None,
            Parsed::Bad(code, why) => Some(Response::error(code, why)),
            Parsed::Request(req) => {
                let r = route(&req, vm);
                log::info!(
                    "event=api_request method={} path={} status={}",
                    req.method,
                    req.path,
                    r.status
                );
                Some(r)
            }
        };
        if let Some(r) = reply {
            // Replies are small; a client that does not read gets cut off.
            let _ = conn.stream.set_nonblocking(false);
            let _ = conn
                .stream
                .set_write_timeout(Some(Duration::from_millis(500)));
            let _ = conn.stream.write_all(&r.to_bytes());
        }
        self.conns.remove(&id);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::ControlError;

    struct Fixed;
    impl VmControl for Fixed {
        fn info(&self) -> serde_json::Value {
            serde_json::json!({"state": "running"})
        }
        fn pause(&self) -> Result<(), ControlError> {
            Ok(())
        }
        fn resume(&self) -> Result<(), ControlError> {
            Ok(())
        }
        fn shutdown(&self) {}
    }

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("viaduct-api-{}-{name}.sock", std::process::id()))
    }

    /// Serves until the client's reply arrived (a real socket pair, no epoll).
    fn exchange(server: &mut ApiServer, request: &[u8]) -> String {
        let mut client = UnixStream::connect(&server.path).unwrap();
        client.write_all(request).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for (id, _) in server.accept() {
            server.serve(id, &Fixed);
        }
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_over_a_real_socket_and_cleans_up() {
        let path = socket_path("serve");
        let mut server = ApiServer::bind(&path).unwrap();
        let out = exchange(&mut server, b"GET /vm/info HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("{\"state\":\"running\"}"), "{out}");
        let out = exchange(&mut server, b"BREW /pot HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        let out = exchange(&mut server, b"GET /vm/info HTTP/1.1\r\n");
        assert_eq!(out, "", "a truncated request gets no answer, only a close");
        assert!(server.conns.is_empty());
        drop(server);
        assert!(!path.exists(), "socket file removed");
    }

    #[test]
    fn a_live_socket_is_in_use_and_a_stale_one_is_replaced() {
        let path = socket_path("stale");
        let first = ApiServer::bind(&path).unwrap();
        let err = ApiServer::bind(&path).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("in use"));
        drop(first);
        // A dead VMM's socket: the file stays, nobody listens.
        let stale = socket_path("stale2");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let again = ApiServer::bind(&stale);
        assert!(again.is_ok(), "{:?}", again.err());
        let file = socket_path("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ApiServer::bind(&file),
            Err(ApiError::NotASocket(_))
        ));
        let _ = std::fs::remove_file(file);
    }
}
