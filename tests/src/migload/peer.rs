//! The host end of the guest's [`super::stream`]: accepts one connection
//! (run it inside the test's network namespace), checks the guest's
//! `TAG_UP` bytes, sends `TAG_DOWN` bytes until the guest closes its side,
//! then closes. Counters are live, so the test can watch the stream stall
//! and resume across a migration.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{TAG_DOWN, TAG_UP, stream_byte};

/// Live counters of the host end.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub connected: AtomicBool,
    /// Bytes received from the guest.
    pub received: AtomicU64,
    /// Of them, bytes that differ from the pattern.
    pub bad: AtomicU64,
    /// Bytes sent to the guest.
    pub sent: AtomicU64,
    /// The guest closed its sending side (clean EOF).
    pub eof: AtomicBool,
    /// A read or write failed (other than after the guest's EOF).
    pub errors: AtomicU64,
}

impl PeerStats {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Serves one guest connection on `0.0.0.0:port` in the calling thread's
/// namespace, waiting up to `accept_within` for it.
pub fn serve(port: u16, accept_within: Duration, stats: &Arc<PeerStats>) -> std::io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + accept_within;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_nonblocking(false)?;
    // A guest that stalls (the negative control) must not hang the test.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    stats.connected.store(true, Ordering::Relaxed);
    let sender = {
        let (mut s, stats) = (s.try_clone()?, stats.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while !stats.eof.load(Ordering::Relaxed) {
                let off = stats.sent.load(Ordering::Relaxed);
                for (k, b) in (0u64..).zip(buf.iter_mut()) {
                    *b = stream_byte(TAG_DOWN, off + k);
                }
                if s.write_all(&buf).is_err() {
                    if !stats.eof.load(Ordering::Relaxed) {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                stats
                    .sent
                    .fetch_add(u64::try_from(buf.len()).unwrap_or(0), Ordering::Relaxed);
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    };
    let mut r = &s;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => {
                stats.eof.store(true, Ordering::Relaxed);
                break;
            }
            Ok(n) => {
                let off = stats.received();
                let wrong = (0u64..)
                    .zip(&buf[..n])
                    .filter(|&(k, &b)| b != stream_byte(TAG_UP, off + k))
                    .count();
                stats
                    .bad
                    .fetch_add(u64::try_from(wrong).unwrap_or(0), Ordering::Relaxed);
                stats
                    .received
                    .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.eof.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = sender.join();
    Ok(())
}
