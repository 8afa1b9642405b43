//! The host side of a TAP: an AF_PACKET socket bound to the interface.
//! What the daemon writes into the TAP shows up here; what is sent here is
//! read by the daemon.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::frames::ETHERTYPE;

/// Errors of the packet socket.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
    #[error("bad interface name {0:?}")]
    Name(String),
    #[error("interface {0} not found")]
    NoIface(String),
    #[error("sent {sent} of {len} bytes")]
    Short { sent: usize, len: usize },
}

/// `sizeof(struct sockaddr_ll)` (20).
const SOCKADDR_LL_LEN: libc::socklen_t = 20;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_ll>() == SOCKADDR_LL_LEN as usize);

fn os(what: &'static str) -> PacketError {
    PacketError::Os(what, std::io::Error::last_os_error())
}

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Binds to `ifname`; with `vnet_hdr`, frames carry a virtio-net
    /// header (PACKET_VNET_HDR).
    pub fn open(ifname: &str, vnet_hdr: bool) -> Result<PacketSocket, PacketError> {
        let proto = u16::try_from(libc::ETH_P_ALL)
            .expect("ETH_P_ALL is 3")
            .to_be();
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(os("packet socket"));
        }
        // SAFETY: socket() just returned it; OwnedFd takes ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one int from our stack.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                )
            };
            if r != 0 {
                return Err(os("PACKET_VNET_HDR"));
            }
        }
        let name = CString::new(ifname).map_err(|_| PacketError::Name(ifname.into()))?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(PacketError::NoIface(ifname.into()));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET is 17");
        sll.sll_protocol = proto;
        sll.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| PacketError::NoIface(ifname.into()))?;
        // SAFETY: bind reads one sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                SOCKADDR_LL_LEN,
            )
        };
        if r != 0 {
            return Err(os("bind packet socket"));
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one frame whole.
    pub fn send(&self, bytes: &[u8]) -> Result<(), PacketError> {
        // SAFETY: send reads `bytes`, alive for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        // Negative: the call failed.
        let Ok(sent) = usize::try_from(n) else {
            return Err(os("send"));
        };
        if sent != bytes.len() {
            return Err(PacketError::Short {
                sent,
                len: bytes.len(),
            });
        }
        Ok(())
    }

    /// Next incoming frame with our test ethertype (others are skipped).
    pub fn recv_test_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_where(timeout, |f| {
            f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes()
        })
    }

    /// Next incoming frame for which `want` holds, or None after `timeout`.
    pub fn recv_where(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX - 1) + 1;
            // SAFETY: poll on one pollfd on our stack.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = SOCKADDR_LL_LEN;
            // SAFETY: recvfrom writes into buf and sll within their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            // Negative: the call failed.
            let Ok(n) = usize::try_from(n) else {
                continue;
            };
            if n == 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n];
            if want(f) {
                return Some(f.to_vec());
            }
        }
    }
}
