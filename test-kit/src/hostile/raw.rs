//! One raw vhost-user connection played by hand: send anything, read
//! replies, judge whether the daemon still serves; plus the fds a hostile
//! session hands over (memfds, eventfds).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::proto::*;
use super::scenario::Outcome;

/// Guest memory of the hostile sessions.
pub const MEM: u64 = 1 << 20;

/// One raw connection.
#[derive(Debug)]
pub struct Raw {
    pub s: UnixStream,
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    crate::memory::memfd(c"hostile", len).expect("hostile memfd")
}

/// An eventfd (kick/call).
pub fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd(2); checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we own the fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Raw {
    /// Connects to `path` with 5 s read and write timeouts.
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s }
    }

    /// A message whose header size is the payload's; errors (the daemon
    /// already hung up) are returned. A header that lies about the size:
    /// [`write_message`] on `self.s`.
    pub fn send(&mut self, req: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let size = u32::try_from(payload.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        write_message(&mut self.s, req, flags, size, payload, fds)
    }

    /// The next reply (request, payload), or None if the daemon hung up or
    /// said nothing within the timeout.
    pub fn recv(&mut self) -> Option<(u32, Vec<u8>)> {
        let mut hdr = [0u8; 12];
        self.s.read_exact(&mut hdr).ok()?;
        let req = u32::from_le_bytes(hdr[0..4].try_into().ok()?);
        let size = u32::from_le_bytes(hdr[8..12].try_into().ok()?) as usize;
        if size > 0x1000 {
            return None;
        }
        let mut p = vec![0u8; size];
        self.s.read_exact(&mut p).ok()?;
        Some((req, p))
    }

    /// Sends with NEED_REPLY and reads the u64 ack: Some(0) on success.
    pub fn acked(&mut self, req: u32, payload: &[u8], fds: &[RawFd]) -> Option<u64> {
        self.send(req, V1 | NEED_REPLY, payload, fds).ok()?;
        let (_, p) = self.recv()?;
        Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
    }

    /// A request that has a reply (GET_*): the reply payload.
    pub fn get(&mut self, req: u32, payload: &[u8]) -> Option<Vec<u8>> {
        self.send(req, V1, payload, &[]).ok()?;
        self.recv().map(|(_, p)| p)
    }

    /// Is the connection still served? (GET_FEATURES gets an answer.)
    pub fn probe(&mut self) -> Outcome {
        match self.get(GET_FEATURES, &[]) {
            Some(p) if p.len() == 8 => Outcome::Served,
            _ => Outcome::Closed,
        }
    }

    /// Outcome of an acked message, then of the probe.
    pub fn judge(&mut self, ack: Option<u64>) -> Outcome {
        match ack {
            Some(0) => self.probe(),
            Some(_) => Outcome::Nacked,
            None => Outcome::Closed,
        }
    }

    /// SET_OWNER, features (VERSION_1 + PROTOCOL_FEATURES), protocol
    /// features (REPLY_ACK, MQ, CONFIG where offered).
    pub fn hello(&mut self) {
        self.hello_with(0);
    }

    /// [`Raw::hello`], also asking for the protocol features in `extra`
    /// (where offered).
    pub fn hello_with(&mut self, extra: u64) {
        self.send(SET_OWNER, V1, &[], &[]).unwrap();
        let offered = u64::from_le_bytes(
            self.get(GET_FEATURES, &[]).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let f = offered & (F_VERSION_1 | F_PROTOCOL_FEATURES);
        self.send(SET_FEATURES, V1, &f.to_le_bytes(), &[]).unwrap();
        let pf = u64::from_le_bytes(
            self.get(GET_PROTOCOL_FEATURES, &[]).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let want = pf & (PF_REPLY_ACK | PF_MQ | PF_CONFIG | extra);
        self.send(SET_PROTOCOL_FEATURES, V1, &want.to_le_bytes(), &[])
            .unwrap();
    }

    /// hello + a valid 1 MiB memory table at GPA 0 (user address 0x4000_0000).
    pub fn hello_with_memory(&mut self, mem: &File) -> Outcome {
        self.hello();
        let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 0)]);
        let ack = self.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
        self.judge(ack)
    }
}
