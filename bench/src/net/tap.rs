//! The host side of the wire: TAP devices opened directly (the raw-TAP
//! limit), link state, per-interface counters from
//! /proc/thread-self/net/dev, and a flooder on the test kit's AF_PACKET
//! socket that makes the kernel transmit into a TAP (the TAP→guest
//! direction).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use viaduct_test_kit::frames::frame;
use viaduct_test_kit::packet::{PacketError, PacketSocket};

/// Errors on the host side.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{0}: {1}")]
    Os(&'static str, std::io::Error),
    #[error("interface {0} not found")]
    NoIface(String),
    #[error("bad interface name {0:?}")]
    Name(String),
    #[error(transparent)]
    Packet(#[from] PacketError),
}

fn os(what: &'static str) -> TapError {
    TapError::Os(what, std::io::Error::last_os_error())
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str) -> Result<IfReq, TapError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 15 {
        return Err(TapError::Name(name.into()));
    }
    let mut r = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Opens (creating) TAP `name` with IFF_VNET_HDR (12-byte header).
pub fn open_tap(name: &str) -> Result<OwnedFd, TapError> {
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os("open /dev/net/tun"));
    }
    // SAFETY: open just returned this fd; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = ifreq(name)?;
    r.flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)
        .expect("TUN flags fit the ifreq's short");
    // SAFETY: TUNSETIFF reads and writes one ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut r) } != 0 {
        return Err(os("TUNSETIFF"));
    }
    let len: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &len) } != 0 {
        return Err(os("TUNSETVNETHDRSZ"));
    }
    Ok(fd)
}

/// Brings `name` up with IPv6 off (no router solicitations in the counts).
pub fn set_up(name: &str) -> Result<(), TapError> {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(os("socket"));
    }
    // SAFETY: socket() just returned it.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut r = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS writes into our ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) } != 0 {
        return Err(os("SIOCGIFFLAGS"));
    }
    r.flags |= libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
    // SAFETY: SIOCSIFFLAGS reads our ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &r) } != 0 {
        return Err(os("SIOCSIFFLAGS"));
    }
    Ok(())
}

/// Waits up to `timeout` for `name` to exist in this namespace.
pub fn wait_iface(name: &str, timeout: Duration) -> Result<(), TapError> {
    let start = Instant::now();
    while counters(name).is_err() {
        if start.elapsed() > timeout {
            return Err(TapError::NoIface(name.into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Interface counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Frames the kernel received on the interface: for a TAP, frames
    /// written by its user (guest→TAP).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the kernel sent through the interface: for a TAP, frames
    /// handed to its user (TAP→guest).
    pub tx_packets: u64,
}

/// Parses one interface's line of /proc/net/dev.
pub fn parse_net_dev(text: &str, name: &str) -> Option<Counters> {
    text.lines().find_map(|l| {
        let (iface, rest) = l.split_once(':')?;
        if iface.trim() != name {
            return None;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        Some(Counters {
            rx_bytes: *v.first()?,
            rx_packets: *v.get(1)?,
            tx_packets: *v.get(9)?,
        })
    })
}

/// Counters of `name` in the calling thread's namespace.
pub fn counters(name: &str) -> Result<Counters, TapError> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|e| TapError::Os("/proc/thread-self/net/dev", e))?;
    parse_net_dev(&text, name).ok_or_else(|| TapError::NoIface(name.into()))
}

/// A thread sending `len`-byte frames into `ifname` until dropped.
pub struct Flooder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flooder {
    pub fn start(ifname: &str, len: usize) -> Result<Flooder, TapError> {
        let s = PacketSocket::open(ifname, false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let f = frame(len, 0);
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    // A full queue drops the frame; the counters tell.
                    let _ = s.send(&f);
                }
            }
        });
        Ok(Flooder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `pkt` (vnet header + frame) to `fd` in a loop until `stop`;
/// returns the writes that succeeded.
pub fn write_loop(fd: &OwnedFd, pkt: &[u8], stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            // SAFETY: write reads `pkt`.
            if unsafe { libc::write(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) } > 0 {
                n += 1;
            }
        }
    }
    n
}

/// Reads frames from `fd` until `stop`; returns the count.
pub fn read_loop(fd: &OwnedFd, stop: &AtomicBool) -> u64 {
    let mut buf = vec![0u8; 70_000];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, 10) } <= 0 {
            continue;
        }
        // SAFETY: read writes at most buf.len() bytes into buf.
        if unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let t = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n  vbt0: 6400 100 0 0 0 0 0 0 1280 20 0 0 0 0 0 0\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let c = parse_net_dev(t, "vbt0").unwrap();
        assert_eq!((c.rx_bytes, c.rx_packets, c.tx_packets), (6400, 100, 20));
        assert!(parse_net_dev(t, "eth9").is_none());
    }
}
