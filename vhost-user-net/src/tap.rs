//! Linux TAP queues: open/attach (`TUNSETIFF`), validation of inherited fds
//! (`TUNGETIFF`), vnet header size, offloads, queue attach/detach, and the
//! host side of the interface (address, MTU, up).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;
use virtio_devices::net::features::OptionalOffloads;
use virtio_devices::net::offload::{TUN_F_CSUM, TUN_F_UFO, TUN_F_USO4, TUN_F_USO6};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

/// A TAP operation that failed.
#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach to tap {name:?}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {0} is not a tap")]
    NotATap(RawFd, #[source] io::Error),
    #[error("fd {fd} is a tun/tap without IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {flags:#x})")]
    WrongFlags { fd: RawFd, flags: i32 },
    #[error("fd {0}: cannot make non-blocking")]
    NonBlocking(RawFd, #[source] io::Error),
    #[error("cannot set vnet header size {0}")]
    VnetHdrSize(usize, #[source] io::Error),
    #[error("cannot set tap offloads {0:#x}")]
    Offload(u32, #[source] io::Error),
    #[error("cannot {} tap queue", if *.0 { "attach" } else { "detach" })]
    Queue(bool, #[source] io::Error),
    #[error("host side of {name:?}: {what}")]
    Host {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One queue of a TAP device (one fd), non-blocking.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
    name: String,
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    req
}

fn ifreq_name(req: &libc::ifreq) -> String {
    // SAFETY: the kernel NUL-terminates ifr_name, and ifreq_for leaves at
    // least the last byte zero.
    unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TapQueue {
    /// Opens (creating if needed) `count` queues of the TAP `name`.
    /// More than one queue needs (and gets) IFF_MULTI_QUEUE.
    pub fn open_named(name: &str, count: usize) -> Result<Vec<TapQueue>, TapError> {
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::OpenTun)?;
            let mut req = ifreq_for(name);
            let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if count > 1 {
                flags |= IFF_MULTI_QUEUE;
            }
            req.ifr_ifru.ifru_flags = flags;
            // SAFETY: TUNSETIFF reads and writes one ifreq, which lives on
            // our stack for the duration of the call.
            check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) }).map_err(
                |source| TapError::SetIff {
                    name: name.to_owned(),
                    source,
                },
            )?;
            queues.push(TapQueue {
                file,
                name: ifreq_name(&req),
            });
        }
        Ok(queues)
    }

    /// Takes ownership of an inherited TAP queue fd after checking it is a
    /// TAP with the flags the data path relies on.
    pub fn from_fd(fd: RawFd) -> Result<TapQueue, TapError> {
        // SAFETY: F_GETFD on an arbitrary integer only inspects our fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotATap(fd, io::Error::last_os_error()));
        }
        // SAFETY: the operator handed this fd to us and it is open (checked
        // above); from here on the daemon owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut req = ifreq_for("");
        // SAFETY: TUNGETIFF writes one ifreq into our stack variable.
        check(unsafe { libc::ioctl(fd, TUNGETIFF as _, &mut req) })
            .map_err(|e| TapError::NotATap(fd, e))?;
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if flags & want != want {
            return Err(TapError::WrongFlags {
                fd,
                flags: i32::from(flags),
            });
        }
        // SAFETY: F_GETFL/F_SETFL on an fd we own, no pointers involved.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::NonBlocking(fd, io::Error::last_os_error()));
        }
        // SAFETY: FD_CLOEXEC so a forked helper doesn't inherit the queue.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(TapQueue {
            file,
            name: ifreq_name(&req),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the virtio-net header length the TAP prepends/expects.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<(), TapError> {
        let v = libc::c_int::try_from(len)
            .map_err(|_| TapError::VnetHdrSize(len, io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: TUNSETVNETHDRSZ reads one int from our stack.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ as _, &v) })
            .map_err(|e| TapError::VnetHdrSize(len, e))
    }

    /// Sets the offloads the reader of the TAP (the guest) accepts.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, no memory access.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        })
        .map_err(|e| TapError::Offload(flags, e))
    }

    /// Which optional offloads (UFO, USO) this kernel's TAP accepts; leaves
    /// the offloads cleared.
    pub fn probe_offloads(&self) -> OptionalOffloads {
        let ufo = self.set_offload(TUN_F_CSUM | TUN_F_UFO).is_ok();
        let uso = self
            .set_offload(TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6)
            .is_ok();
        let _ = self.set_offload(0);
        OptionalOffloads { ufo, uso }
    }

    /// Attaches or detaches this queue (multi-queue TAPs only); a detached
    /// queue receives no frames, so none get stuck on a disabled ring.
    pub fn set_attached(&self, attach: bool) -> Result<(), TapError> {
        let mut req = ifreq_for("");
        req.ifr_ifru.ifru_flags = if attach {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        // SAFETY: TUNSETQUEUE reads one ifreq from our stack.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE as _, &req) })
            .map_err(|e| TapError::Queue(attach, e))
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// An AF_INET datagram socket, the handle for interface ioctls.
fn inet_socket(name: &str) -> Result<OwnedFd, TapError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(TapError::Host {
            name: name.to_owned(),
            what: "socket",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: socket() just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET is 2"),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is the generic view the ifreq union stores.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn if_ioctl(
    sock: &OwnedFd,
    name: &str,
    what: &'static str,
    req: libc::c_ulong,
    ifr: &mut libc::ifreq,
) -> Result<(), TapError> {
    // SAFETY: the SIOC* interface ioctls read/write one ifreq on our stack.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), req as _, ifr as *mut libc::ifreq) }).map_err(
        |source| TapError::Host {
            name: name.to_owned(),
            what,
            source,
        },
    )
}

/// Sets the interface MTU.
pub fn set_mtu(name: &str, mtu: u16) -> Result<(), TapError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    if_ioctl(&sock, name, "set mtu", libc::SIOCSIFMTU as _, &mut req)
}

/// Gives the host side an IPv4 address and brings the link up.
pub fn configure_host(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), TapError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    if_ioctl(&sock, name, "set address", libc::SIOCSIFADDR as _, &mut req)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    if_ioctl(
        &sock,
        name,
        "set netmask",
        libc::SIOCSIFNETMASK as _,
        &mut req,
    )?;
    set_up(name)
}

/// The host-side MAC a TAP we create gets: locally administered, derived
/// from its name (FNV-1a), so a restarted daemon re-creates the TAP with
/// the same MAC and guests' neighbour caches stay valid (a random MAC
/// would blackhole their traffic until the entry goes stale, 30-60 s).
pub fn stable_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// Sets the interface's hardware (MAC) address.
pub fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), TapError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name);
    let mut sa = libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: [0; 14],
    };
    for (d, s) in sa.sa_data.iter_mut().zip(mac) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    req.ifr_ifru.ifru_hwaddr = sa;
    if_ioctl(&sock, name, "set mac", libc::SIOCSIFHWADDR as _, &mut req)
}

/// Brings the link up (IFF_UP).
pub fn set_up(name: &str) -> Result<(), TapError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name);
    if_ioctl(&sock, name, "get flags", libc::SIOCGIFFLAGS as _, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
    if_ioctl(&sock, name, "set flags", libc::SIOCSIFFLAGS as _, &mut req)
}

#[cfg(test)]
mod tests {
    use super::stable_mac;

    #[test]
    fn created_taps_get_a_stable_locally_administered_mac() {
        let m = stable_mac("vtap0");
        assert_eq!(
            m,
            stable_mac("vtap0"),
            "same name, same MAC across restarts"
        );
        assert_ne!(m, stable_mac("vtap1"));
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }
}
