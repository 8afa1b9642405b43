//! Test kit for the in-process vhost-user-net tests: a private network
//! namespace per test, the daemon serving in a thread, a vhost-user frontend
//! with memfd guest memory and hand-built split rings, and an AF_PACKET
//! socket on the TAP as the "host side" of the wire.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_daemon::listen::{self, Listen};
use vhost_user_daemon::shutdown::Shutdown;
use vhost_user_net::config::{Config, TapSpec};
use vhost_user_net::counters::PairCounters;
use vhost_user_net::serve::{self, Device};
use vhost_user_net::tap;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const QSIZE: u16 = 256;
pub const MEM_SIZE: usize = 16 << 20;
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// IEEE "local experimental" ethertype: nothing in the kernel answers it.
pub const ETHERTYPE: u16 = 0x88b5;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Moves the calling test thread into a fresh network namespace; the TAP,
/// the packet socket and the daemon's threads all live there.
pub fn enter_private_netns() {
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

/// The daemon serving in a thread of the test.
pub struct Daemon {
    pub sock: PathBuf,
    pub tap: String,
    pub counters: Vec<Arc<PairCounters>>,
    stop: Arc<Shutdown>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Opens `tap_name` (private netns expected), brings it up without IPv6
    /// chatter, and serves on a fresh socket.
    pub fn start(tap_name: &str, pairs: u16) -> Daemon {
        Self::start_polling(tap_name, pairs, 0)
    }

    /// As [`Daemon::start`], busy-polling `poll_us` after the last work.
    pub fn start_polling(tap_name: &str, pairs: u16, poll_us: u64) -> Daemon {
        let sock =
            std::env::temp_dir().join(format!("vun-test-{}-{tap_name}.sock", std::process::id()));
        let cfg = Config {
            socket: Listen::Path(sock.clone()),
            tap: TapSpec::Name(tap_name.into()),
            host_ip: None,
            mac: GUEST_MAC,
            mtu: 1500,
            num_queue_pairs: pairs,
            queue_size: QSIZE,
            poll_us,
        };
        let _ = env_logger::builder().is_test(true).try_init();
        let device = Device::open(&cfg).expect("open tap");
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6"),
            "1",
        );
        tap::set_up(tap_name).expect("link up");
        let listener = listen::bind(&cfg.socket).expect("bind");
        let stop = Arc::new(Shutdown::new().expect("shutdown eventfd"));
        let counters = device.counters.clone();
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            serve::run(&device, &listener, &s2).expect("serve loop");
        });
        Daemon {
            sock,
            tap: tap_name.into(),
            counters,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// Guest memory shared with the daemon (memfd, MAP_SHARED).
pub fn guest_memory() -> GuestMemoryMmap {
    let name = CString::new("vun-test-guest").unwrap();
    // SAFETY: memfd_create with a valid C string; the fd is owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: memfd_create just returned this fd.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// A split ring the test drives as the driver.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Ring {
    pub fn new(base: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Publishes a chain of (gpa, len, device_writable) buffers; returns
    /// its head.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let d = GuestAddress(self.desc + 16 * u64::from(idx));
            mem.write_obj(addr, d).unwrap();
            mem.write_obj(len, d.unchecked_add(8)).unwrap();
            mem.write_obj(flags, d.unchecked_add(12)).unwrap();
            mem.write_obj(self.next_desc, d.unchecked_add(14)).unwrap();
        }
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE));
        mem.write_obj(head, slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Next used element (id, len), waiting up to `timeout`.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap, timeout: Duration) -> Option<(u32, u32)> {
        let end = Instant::now() + timeout;
        loop {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            if idx != self.last_used {
                let e = GuestAddress(self.used + 4 + 8 * u64::from(self.last_used % QSIZE));
                let id: u32 = mem.read_obj(e).unwrap();
                let len: u32 = mem.read_obj(e.unchecked_add(4)).unwrap();
                self.last_used = self.last_used.wrapping_add(1);
                return Some((id, len));
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A connected frontend with RX (0) and TX (1) rings of pair 0.
pub struct Guest {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap,
    pub rx: Ring,
    pub tx: Ring,
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
    pub features: u64,
    /// (rx, tx) rings of pairs 1.. (pair 0 is `rx`/`tx`).
    pub more: Vec<(Ring, Ring)>,
}

pub const RX_BASE: u64 = 0x10000;
pub const BUF_BASE: u64 = 0x100000;

impl Guest {
    /// Handshake as QEMU does it, acking `features` (PROTOCOL_FEATURES is
    /// added), then sets up and enables both rings of pair 0.
    pub fn connect(d: &Daemon, features: u64) -> Guest {
        Self::connect_pairs(d, features, 1)
    }

    /// As [`Guest::connect`], setting up and enabling `pairs` queue pairs.
    pub fn connect_pairs(d: &Daemon, features: u64, pairs: usize) -> Guest {
        let mem = guest_memory();
        let mut fe = Frontend::connect(&d.sock, 2 * pairs as u64).expect("connect");
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_eq!(features & !offered, 0, "test asks for unoffered features");
        let features = features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fe.set_features(features).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        assert!(pf.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK));
        fe.set_protocol_features(pf).unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), 2 * pairs as u64);
        let region = mem.iter().next().unwrap();
        fe.set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()])
            .unwrap();
        let hva = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        let mut rings: Vec<Ring> = (0..2 * pairs as u64)
            .map(|q| Ring::new(RX_BASE + q * 0x4000))
            .collect();
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for (q, r) in rings.iter().enumerate() {
            fe.set_vring_num(q, QSIZE).unwrap();
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: hva(r.desc),
                    used_ring_addr: hva(r.used),
                    avail_ring_addr: hva(r.avail),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(q, 0).unwrap();
            let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            fe.set_vring_call(q, &call).unwrap();
            fe.set_vring_kick(q, &kick).unwrap();
            fe.set_vring_enable(q, true).unwrap();
            kicks.push(kick);
            calls.push(call);
        }
        let mut more = Vec::new();
        while rings.len() > 2 {
            let tx = rings.pop().unwrap();
            let rx = rings.pop().unwrap();
            more.insert(0, (rx, tx));
        }
        let tx = rings.pop().unwrap();
        let rx = rings.pop().unwrap();
        Guest {
            fe,
            mem,
            rx,
            tx,
            more,
            kicks,
            calls,
            features,
        }
    }

    pub fn kick_rx(&self) {
        self.kicks[0].write(1).unwrap();
    }

    pub fn kick_tx(&self) {
        self.kicks[1].write(1).unwrap();
    }

    /// Queues a TX chain made of `parts` (each its own descriptor, laid out
    /// from `gpa`) and kicks.
    pub fn send(&mut self, gpa: u64, parts: &[&[u8]]) -> u16 {
        let mut bufs = Vec::new();
        let mut at = gpa;
        for p in parts {
            self.mem.write_slice(p, GuestAddress(at)).unwrap();
            bufs.push((at, p.len() as u32, false));
            at += p.len() as u64;
        }
        let head = self.tx.add(&self.mem, &bufs);
        self.kick_tx();
        head
    }

    /// Posts `n` RX buffers of `size` bytes from `gpa` and kicks.
    pub fn post_rx(&mut self, gpa: u64, n: usize, size: u32) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for i in 0..n {
            let at = gpa + i as u64 * u64::from(size);
            let head = self.rx.add(&self.mem, &[(at, size, true)]);
            out.push((head, at));
        }
        self.kick_rx();
        out
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }
}

/// An Ethernet frame of `len` bytes with a recognisable payload.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// A 12-byte virtio-net header.
pub fn vnet_hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [hdr_len, gso_size, cs, co, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An AF_PACKET socket on the TAP: what the daemon writes shows up here,
/// what is sent here is read by the daemon.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open(ifname: &str, vnet_hdr: bool) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: socket() just returned it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one int.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                )
            };
            assert_eq!(r, 0);
        }
        let name = CString::new(ifname).unwrap();
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads one sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket { fd }
    }

    pub fn send(&self, bytes: &[u8]) {
        // SAFETY: send reads `bytes`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(
            n,
            bytes.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Next incoming frame with our test ethertype (others are skipped).
    pub fn recv_test_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_where(timeout, |f| {
            f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes()
        })
    }

    /// Next incoming frame for which `want` holds.
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
            // SAFETY: poll on one pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32 + 1) };
            if r <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
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
            if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if want(f) {
                return Some(f.to_vec());
            }
        }
    }
}

/// On-CPU time (ns) of this process's vring worker threads, from
/// schedstat, and how many there are.
pub fn worker_cpu_ns() -> (u64, usize) {
    let mut total = 0;
    let mut workers = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != "vring_worker" {
            continue;
        }
        workers += 1;
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (total, workers)
}
