//! Guest stream: one TCP connection to the host's [`super::peer`], both
//! ways at once. The guest sends the `TAG_UP` byte stream and checks the
//! `TAG_DOWN` stream it receives (the receive side is where the net
//! daemon writes guest memory). On stop it closes its sending side and
//! reads on until the host closes too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Reporter, TAG_DOWN, TAG_UP, Until, stream_byte};

const CHUNK: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    bad: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn pairs(&self) -> [(&'static str, u64); 4] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("stream_sent", g(&self.sent)),
            ("stream_received", g(&self.received)),
            ("stream_bad", g(&self.bad)),
            ("stream_errors", g(&self.errors)),
        ]
    }
}

/// Connects to `host:port` (retrying for up to 30 s) and streams until
/// told to stop.
pub fn run(host: &str, port: u16, max_secs: u64) -> std::io::Result<()> {
    let t0 = Instant::now();
    let s = loop {
        match TcpStream::connect((host, port)) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let c = Arc::new(Counters::default());
    let sender = {
        let (mut s, c) = (s.try_clone()?, c.clone());
        std::thread::spawn(move || send(&mut s, &c, max_secs))
    };
    let until = Until::new(max_secs);
    let mut rep = Reporter::new();
    let mut buf = vec![0u8; CHUNK];
    let mut r = &s;
    let mut stopped: Option<Instant> = None;
    loop {
        if stopped.is_none() && until.stop() {
            stopped = Some(Instant::now());
        }
        if stopped.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            break;
        }
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let off = c.received.load(Ordering::Relaxed);
                let wrong = (0u64..)
                    .zip(&buf[..n])
                    .filter(|&(k, &b)| b != stream_byte(TAG_DOWN, off + k))
                    .count();
                c.bad
                    .fetch_add(u64::try_from(wrong).unwrap_or(0), Ordering::Relaxed);
                c.received
                    .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        rep.tick(&c.pairs(), false);
    }
    if sender.join().is_err() {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    rep.tick(&c.pairs(), true);
    Ok(())
}

fn send(s: &mut TcpStream, c: &Counters, max_secs: u64) {
    let until = Until::new(max_secs);
    let mut buf = vec![0u8; CHUNK];
    while !until.stop() {
        let off = c.sent.load(Ordering::Relaxed);
        for (k, b) in (0u64..).zip(buf.iter_mut()) {
            *b = stream_byte(TAG_UP, off + k);
        }
        if s.write_all(&buf).is_err() {
            c.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        c.sent
            .fetch_add(u64::try_from(CHUNK).unwrap_or(0), Ordering::Relaxed);
    }
    let _ = s.shutdown(Shutdown::Write);
}
