//! The client side of the control API, for `viaduct ctl`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::http::parse_response;

/// Why a call failed before an answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the VMM's API socket {0} (is viaduct running with --api-socket?)")]
    Connect(String, #[source] std::io::Error),
    #[error("API socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the VMM sent a malformed reply")]
    BadReply,
}

/// Sends one request; returns the status and body.
pub fn call(socket: &Path, method: &str, path: &str) -> Result<(u16, String), ClientError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| ClientError::Connect(socket.display().to_string(), e))?;
    // A pause waits for every vCPU to park: allow it a few seconds.
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or(ClientError::BadReply)
}
