//! A connected virtio-net frontend: the handshake, pair 0's RX and TX
//! rings (and more pairs on request), and helpers to send frames and post
//! RX buffers.

use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{QSIZE, RX_BASE, Ring, guest_memory};

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

// vhost's Frontend has no Debug: everything but the connection.
impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("mem", &self.mem)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("kicks", &self.kicks)
            .field("calls", &self.calls)
            .field("features", &self.features)
            .field("more", &self.more)
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Handshake on `socket` (a path, or a daemon handle that names
    /// one) as QEMU does it, acking `features` (PROTOCOL_FEATURES is
    /// added), then sets up and enables both rings of pair 0.
    pub fn connect(socket: impl AsRef<Path>, features: u64) -> Guest {
        Self::connect_pairs(socket, features, 1)
    }

    /// As [`Guest::connect`], setting up and enabling `pairs` queue pairs.
    pub fn connect_pairs(socket: impl AsRef<Path>, features: u64, pairs: usize) -> Guest {
        let mem = guest_memory();
        let mut fe = Frontend::connect(socket, 2 * pairs as u64).expect("connect");
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
            let len = u32::try_from(p.len()).expect("a part fits one descriptor");
            bufs.push((at, len, false));
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
