//! Our own minimal vhost-user-net driver (from vhost-user-net's throughput
//! example): the test kit's memfd guest memory, hand-built split rings for
//! queue pair 0, a TX loop that keeps the ring full and an RX loop that
//! recycles buffers. It polls the used rings (no call eventfd waits), like
//! a busy guest.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("vhost-user {step}: {msg}")]
    Vhost { step: &'static str, msg: String },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("device lacks features {0:#x}")]
    Features(u64),
}

fn vh<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> DriverError {
    move |e| DriverError::Vhost {
        step,
        msg: e.to_string(),
    }
}

fn mem_err<E: std::fmt::Display>(e: E) -> DriverError {
    DriverError::Memory(e.to_string())
}

pub const VERSION_1: u64 = 1 << 32;
pub const MRG_RXBUF: u64 = 1 << 15;
pub const CSUM: u64 = 1 << 0;
pub const HOST_TSO4: u64 = 1 << 11;

const QSIZE: u16 = 256;
const MEM_SIZE: usize = 32 << 20;
const RING_BASE: u64 = 0x1_0000;
/// TX packet (one buffer shared by every TX descriptor: the device only reads it).
const TX_BUF: u64 = 0x10_0000;
/// RX buffers, 2 KiB each.
const RX_BUF: u64 = 0x20_0000;
const RX_SLOT: u32 = 2048;

/// A split ring driven by us.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Ring {
    fn new(base: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Adds a one-descriptor chain; returns nothing (heads are not tracked:
    /// buffers are recycled in ring order).
    fn add(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: u64,
        len: u32,
        writable: bool,
    ) -> Result<(), DriverError> {
        let d = GuestAddress(self.desc + 16 * u64::from(self.next_desc));
        mem.write_obj(addr, d).map_err(mem_err)?;
        mem.write_obj(len, GuestAddress(d.0 + 8)).map_err(mem_err)?;
        mem.write_obj(if writable { 2u16 } else { 0u16 }, GuestAddress(d.0 + 12))
            .map_err(mem_err)?;
        mem.write_obj(0u16, GuestAddress(d.0 + 14))
            .map_err(mem_err)?;
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE));
        mem.write_obj(self.next_desc, slot).map_err(mem_err)?;
        self.next_desc = (self.next_desc + 1) % QSIZE;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .map_err(mem_err)
    }

    /// Used elements not yet consumed (and consumes them).
    fn reap(&mut self, mem: &GuestMemoryMmap) -> Result<u16, DriverError> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).map_err(mem_err)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let n = idx.wrapping_sub(self.last_used);
        self.last_used = idx;
        Ok(n)
    }
}

/// A connected guest with pair 0 set up.
pub struct Guest {
    _fe: Frontend,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    kicks: Vec<EventFd>,
    _calls: Vec<EventFd>,
}

fn guest_memory() -> Result<GuestMemoryMmap, DriverError> {
    viaduct_test_kit::memory::guest_memory(c"viaduct-bench-guest", MEM_SIZE).map_err(mem_err)
}

impl Guest {
    /// Connects to `sock` and acks `features` (+ PROTOCOL_FEATURES).
    pub fn connect(sock: &Path, features: u64) -> Result<Guest, DriverError> {
        let mem = guest_memory()?;
        let mut fe = Frontend::connect(sock, 2).map_err(vh("connect"))?;
        fe.set_owner().map_err(vh("set_owner"))?;
        let offered = fe.get_features().map_err(vh("get_features"))?;
        if features & !offered != 0 {
            return Err(DriverError::Features(features & !offered));
        }
        fe.set_features(features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .map_err(vh("set_features"))?;
        let pf = fe
            .get_protocol_features()
            .map_err(vh("get_protocol_features"))?;
        fe.set_protocol_features(pf)
            .map_err(vh("set_protocol_features"))?;
        let regions: Vec<_> = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(vh("memory region"))?;
        fe.set_mem_table(&regions).map_err(vh("set_mem_table"))?;
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        let rings = [Ring::new(RING_BASE), Ring::new(RING_BASE + 0x4000)];
        for (q, r) in rings.iter().enumerate() {
            let hva = |gpa: u64| -> Result<u64, DriverError> {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(mem_err)
            };
            fe.set_vring_num(q, QSIZE).map_err(vh("set_vring_num"))?;
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: hva(r.desc)?,
                    used_ring_addr: hva(r.used)?,
                    avail_ring_addr: hva(r.avail)?,
                    log_addr: None,
                },
            )
            .map_err(vh("set_vring_addr"))?;
            fe.set_vring_base(q, 0).map_err(vh("set_vring_base"))?;
            let call = EventFd::new(libc::EFD_NONBLOCK).map_err(DriverError::EventFd)?;
            let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(DriverError::EventFd)?;
            fe.set_vring_call(q, &call).map_err(vh("set_vring_call"))?;
            fe.set_vring_kick(q, &kick).map_err(vh("set_vring_kick"))?;
            fe.set_vring_enable(q, true)
                .map_err(vh("set_vring_enable"))?;
            kicks.push(kick);
            calls.push(call);
        }
        let [rx, tx] = rings;
        Ok(Guest {
            _fe: fe,
            mem,
            rx,
            tx,
            kicks,
            _calls: calls,
        })
    }

    fn kick(&self, q: usize) {
        if let Some(k) = self.kicks.get(q) {
            let _ = k.write(1);
        }
    }

    /// Sends `pkt` (vnet header + frame) with the TX ring kept full until
    /// `stop`; returns frames the device completed.
    pub fn tx_loop(&mut self, pkt: &[u8], stop: &AtomicBool) -> Result<u64, DriverError> {
        self.mem
            .write_slice(pkt, GuestAddress(TX_BUF))
            .map_err(mem_err)?;
        let len = u32::try_from(pkt.len()).map_err(mem_err)?;
        let mut outstanding = 0u32;
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut added = false;
            while outstanding < u32::from(QSIZE) {
                self.tx.add(&self.mem, TX_BUF, len, false)?;
                outstanding += 1;
                added = true;
            }
            if added {
                self.kick(1);
            }
            let n = u32::from(self.tx.reap(&self.mem)?);
            outstanding -= n.min(outstanding);
            done += u64::from(n);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        Ok(done)
    }

    /// Posts RX buffers and recycles them until `stop`; returns frames
    /// received.
    pub fn rx_loop(&mut self, stop: &AtomicBool) -> Result<u64, DriverError> {
        for i in 0..u64::from(QSIZE) {
            self.rx
                .add(&self.mem, RX_BUF + i * u64::from(RX_SLOT), RX_SLOT, true)?;
        }
        self.kick(0);
        let mut got = 0u64;
        let mut next = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let n = self.rx.reap(&self.mem)?;
            for _ in 0..n {
                self.rx
                    .add(&self.mem, RX_BUF + next * u64::from(RX_SLOT), RX_SLOT, true)?;
                next = (next + 1) % u64::from(QSIZE);
            }
            if n > 0 {
                got += u64::from(n);
                self.kick(0);
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(got)
    }
}
