//! Watching one TAP for what a migrated guest sends first: an AF_PACKET
//! socket (run it in a thread inside the TAP's namespace) records, for
//! frames coming from the guest's MAC, when the first RARP announcement
//! (ethertype 0x8035) and the first other frame arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Why the capture could not run.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("packet socket on {0}")]
    Socket(String, #[source] std::io::Error),
    #[error("no interface {0}")]
    NoInterface(String),
}

/// What came from the MAC.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// RARP frames from the MAC.
    pub rarps: u64,
    pub first_rarp: Option<Instant>,
    /// First non-RARP frame from the MAC.
    pub first_other: Option<Instant>,
}

const ETH_P_RARP: u16 = 0x8035;

/// Captures frames that enter the host on `ifname` from `mac` until
/// `stop` is set.
pub fn watch(ifname: &str, mac: [u8; 6], stop: &Arc<AtomicBool>) -> Result<Seen, CaptureError> {
    let proto = u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be();
    // SAFETY: plain socket(2); the fd is owned below and closed at the end.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(CaptureError::Socket(
            ifname.into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let cname =
        std::ffi::CString::new(ifname).map_err(|_| CaptureError::NoInterface(ifname.into()))?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(CaptureError::NoInterface(ifname.into()));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    // SAFETY: sll is a valid sockaddr_ll of `len` bytes.
    let rc = unsafe { libc::bind(fd, (&raw const sll).cast(), len) };
    if rc != 0 {
        return Err(CaptureError::Socket(
            ifname.into(),
            std::io::Error::last_os_error(),
        ));
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    let tvlen = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(0);
    // SAFETY: SO_RCVTIMEO with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            tvlen,
        )
    };
    let mut seen = Seen::default();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut flen = len;
        // SAFETY: buf and from are valid for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut flen,
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        if n < 14 || from.sll_pkttype == libc::PACKET_OUTGOING || buf[6..12] != mac {
            continue;
        }
        let now = Instant::now();
        if u16::from_be_bytes([buf[12], buf[13]]) == ETH_P_RARP {
            seen.rarps += 1;
            seen.first_rarp.get_or_insert(now);
        } else {
            seen.first_other.get_or_insert(now);
        }
    }
    drop(owned);
    Ok(seen)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}
