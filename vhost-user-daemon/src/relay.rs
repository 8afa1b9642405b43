//! A vhost-user message relay between a frontend and vhost-user-backend,
//! for the messages vhost-user-backend 0.24 cannot handle itself.
//!
//! vhost-user-backend owns its socket end to end and rejects what it does
//! not know (GET_INFLIGHT_FD, NET_SET_MTU, SET_VRING_ENABLE before
//! SET_FEATURES). Instead of forking it, each daemon puts a relay in front:
//! the frontend talks to the relay, the relay to the backend over a
//! private socket ([`crate::private_socket`]). A daemon's [`Filter`] sees
//! every frontend message and decides: pass it on (maybe rewritten),
//! answer it itself, or both; backend replies pass through
//! [`Filter::to_frontend`] (to add a protocol feature bit, say).
//! The kick, call and error fds of SET_VRING_KICK/CALL/ERR must be
//! eventfds and are made non-blocking ([`crate::notify_fd`]); a message
//! with any other fd is refused (a failed REPLY_ACK if one was asked for)
//! before the filter sees it. Everything else, fds included, passes
//! unchanged. Framing is checked
//! (12-byte header, payload at most [`MAX_PAYLOAD`], at most [`MAX_FDS`]
//! fds); a malformed message ends the connection, as it would in the
//! backend.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, warn};
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::notify_fd::{self, NotifyFdError};

/// Header length of every vhost-user message.
pub const HDR_LEN: usize = 12;
/// Largest payload accepted (vhost-user messages are far smaller).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most fds one message may carry.
pub const MAX_FDS: usize = 32;

/// `VHOST_USER_SET_FEATURES`.
pub const REQ_SET_FEATURES: u32 = 2;
/// `VHOST_USER_RESET_OWNER`.
pub const REQ_RESET_OWNER: u32 = 4;
/// `VHOST_USER_GET_PROTOCOL_FEATURES`.
pub const REQ_GET_PROTOCOL_FEATURES: u32 = 15;
/// `VHOST_USER_SET_PROTOCOL_FEATURES`.
pub const REQ_SET_PROTOCOL_FEATURES: u32 = 16;
/// `VHOST_USER_SET_VRING_ENABLE`.
pub const REQ_SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_RESET_DEVICE`.
pub const REQ_RESET_DEVICE: u32 = 34;
/// Header flag: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the frontend wants a REPLY_ACK.
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// A relay failure (ends the connection).
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("socket")]
    Io(#[from] io::Error),
    #[error("message payload of {0} bytes")]
    TooBig(usize),
    #[error("refused: {0}")]
    Refused(String),
}

/// One vhost-user message with its fds.
#[derive(Debug)]
pub struct Msg {
    /// Request, flags and payload size, little endian.
    pub hdr: [u8; HDR_LEN],
    /// The payload (`size` bytes).
    pub payload: Vec<u8>,
    /// File descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    /// A message from the relay itself.
    pub fn new(request: u32, flags: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Msg {
        let mut hdr = [0u8; HDR_LEN];
        hdr[0..4].copy_from_slice(&request.to_le_bytes());
        hdr[4..8].copy_from_slice(&flags.to_le_bytes());
        // Payloads the relay builds are a few bytes long; one too long for
        // the header saturates here and `write_msg` refuses it (MAX_PAYLOAD).
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        hdr[8..12].copy_from_slice(&size.to_le_bytes());
        Msg { hdr, payload, fds }
    }

    /// A reply to `request` carrying a u64 (REPLY_ACK: 0 is success).
    pub fn reply_u64(request: u32, value: u64) -> Msg {
        Msg::new(
            request,
            FLAG_VERSION | FLAG_REPLY,
            value.to_le_bytes().to_vec(),
            Vec::new(),
        )
    }

    /// The request code.
    pub fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }

    /// The header flags.
    pub fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }

    /// Whether the frontend asked for a REPLY_ACK.
    pub fn needs_reply(&self) -> bool {
        self.flags() & FLAG_NEED_REPLY != 0
    }

    /// The payload as one u64, if it is exactly that.
    pub fn payload_u64(&self) -> Option<u64> {
        let b: [u8; 8] = self.payload.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The same message with its payload replaced by `value`.
    pub fn with_payload_u64(self, value: u64) -> Msg {
        Msg {
            payload: value.to_le_bytes().to_vec(),
            ..self
        }
    }
}

/// Where a message the filter produced goes.
#[derive(Debug)]
pub enum Routed {
    /// On to vhost-user-backend.
    ToBackend(Msg),
    /// Back to the frontend (a reply the relay gives itself).
    ToFrontend(Msg),
    /// End the connection: the frontend asked for something refused in a
    /// way the protocol has no error reply for.
    Hangup(String),
}

/// A daemon's message policy.
pub trait Filter: Send + 'static {
    /// A message from the frontend; push what should happen into `out`
    /// (nothing: the message is swallowed).
    fn on_frontend(&mut self, m: Msg, out: &mut Vec<Routed>);
    /// A backend reply on its way to the frontend.
    fn to_frontend(&self, m: Msg) -> Msg {
        m
    }
}

/// Reads one message; `None` on a clean hang-up.
pub fn read_msg(s: &UnixStream, with_fds: bool) -> Result<Option<Msg>, RelayError> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = Vec::new();
    let mut got = 0usize;
    if with_fds {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [crate::iovec::of_buf(&mut hdr)];
        // SAFETY: the iovec points at `hdr`, alive and writable for the call.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        fds = raw[..nfds]
            .iter()
            // SAFETY: recvmsg just installed these fds for us; we own them.
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Ok(None);
        }
        got = n;
    }
    let mut reader = s;
    if got == 0 {
        match reader.read(&mut hdr) {
            Ok(0) => return Ok(None),
            Ok(n) => got = n,
            Err(e) => return Err(e.into()),
        }
    }
    reader.read_exact(&mut hdr[got..])?;
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(RelayError::TooBig(size));
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

/// Writes one message (fds with its first bytes).
pub fn write_msg(s: &UnixStream, m: &Msg) -> Result<(), RelayError> {
    if m.payload.len() > MAX_PAYLOAD {
        return Err(RelayError::TooBig(m.payload.len()));
    }
    let mut buf = Vec::with_capacity(HDR_LEN + m.payload.len());
    buf.extend_from_slice(&m.hdr);
    buf.extend_from_slice(&m.payload);
    if m.fds.is_empty() {
        let mut w = s;
        w.write_all(&buf)?;
        return Ok(());
    }
    let raw: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = s
        .send_with_fds(&[&buf[..]], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let mut w = s;
    w.write_all(&buf[n..])?;
    Ok(())
}

/// Checks the fds of SET_VRING_KICK/CALL/ERR ([`notify_fd::prepare`]):
/// every one must be an eventfd, and is made non-blocking.
fn screen_notify_fds(m: &Msg) -> Result<(), NotifyFdError> {
    match m.request() {
        notify_fd::REQ_SET_VRING_KICK
        | notify_fd::REQ_SET_VRING_CALL
        | notify_fd::REQ_SET_VRING_ERR => m
            .fds
            .iter()
            .try_for_each(|fd| notify_fd::prepare(fd.as_fd())),
        _ => Ok(()),
    }
}

/// Frontend → backend direction, where the filtering happens. The
/// filter's lock is held only while it decides, never across socket I/O.
fn inbound<F: Filter>(
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<()>,
    filter: &Mutex<F>,
) -> Result<(), RelayError> {
    let mut out = Vec::new();
    while let Some(m) = read_msg(front, true)? {
        if let Err(e) = screen_notify_fds(&m) {
            // Refused: neither the filter nor the backend ever sees it.
            warn!(
                "event=notify_fd_refused request={} err=\"{e}\"",
                m.request()
            );
            if m.needs_reply() {
                let _guard = front_writer.lock();
                write_msg(front, &Msg::reply_u64(m.request(), 1))?;
            }
            continue;
        }
        filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_frontend(m, &mut out);
        for routed in out.drain(..) {
            match routed {
                Routed::ToBackend(m) => write_msg(back, &m)?,
                Routed::ToFrontend(m) => {
                    let _guard = front_writer.lock();
                    write_msg(front, &m)?;
                }
                Routed::Hangup(why) => {
                    warn!("event=frontend_refused err=\"{why}\"");
                    return Err(RelayError::Refused(why));
                }
            }
        }
    }
    Ok(())
}

/// Backend → frontend direction: whole replies, so the relay's own replies
/// never land inside one.
fn outbound<F: Filter>(
    back: &UnixStream,
    front: &UnixStream,
    front_writer: &Mutex<()>,
    filter: &Mutex<F>,
) -> Result<(), RelayError> {
    while let Some(m) = read_msg(back, false)? {
        let m = filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_frontend(m);
        let _guard = front_writer.lock();
        write_msg(front, &m)?;
    }
    Ok(())
}

/// Relays between `front` (the frontend) and `back` (the backend's end)
/// through `filter` until either side closes; then shuts both down.
pub fn spawn_relay<F: Filter>(
    front: UnixStream,
    back: UnixStream,
    filter: F,
) -> io::Result<Vec<JoinHandle<()>>> {
    let front = Arc::new(front);
    let back = Arc::new(back);
    let lock = Arc::new(Mutex::new(()));
    let filter = Arc::new(Mutex::new(filter));
    let (f1, b1, l1, filter1) = (front.clone(), back.clone(), lock.clone(), filter.clone());
    let down = |a: &UnixStream, b: &UnixStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let t1 = std::thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || {
            let result = inbound(&f1, &b1, &l1, &filter1);
            if let Err(e) = result {
                debug!("event=relay_end dir=frontend_to_backend err={e}");
            }
            down(&f1, &b1);
        })?;
    let t2 = std::thread::Builder::new()
        .name("vu-relay-out".into())
        .spawn(move || {
            if let Err(e) = outbound(&back, &front, &lock, &filter) {
                debug!("event=relay_end dir=backend_to_frontend err={e}");
            }
            down(&back, &front);
        })?;
    Ok(vec![t1, t2])
}
