//! The frontend half of the harness: the vhost crate's `Frontend`,
//! memfd-backed guest memory, and split rings built by hand in that memory.
//! Shared by the tests and the bench example.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_INDIRECT: u64 = 1 << 28;

const MEM_SIZE: usize = 32 << 20;
const RING_BASE: u64 = 0x10_0000;
const DATA_BASE: u64 = 0x80_0000;
const DATA_PER_QUEUE: u64 = 0x20_0000;

/// Guest-physical range of queue `q`'s rings (descriptor table, avail and
/// used ring) as [`TestQueue::new`] lays them out.
pub fn ring_area(q: usize) -> std::ops::Range<u64> {
    let base = RING_BASE + q as u64 * 0x1_0000;
    base..base + 0x1_0000
}

/// Guest memory size of [`guest_memory`].
pub const GUEST_MEM_SIZE: usize = MEM_SIZE;

/// Shared guest memory backed by a memfd.
pub fn guest_memory() -> GuestMemoryMmap {
    // SAFETY: memfd_create with a valid C string; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"vub-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we just created this fd and hand its ownership to File.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// The driver side of one split virtqueue in guest memory.
pub struct TestQueue {
    pub mem: GuestMemoryMmap,
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub data: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    pub kick: EventFd,
    pub call: EventFd,
    pub event_idx: bool,
}

impl TestQueue {
    pub fn new(mem: &GuestMemoryMmap, index: usize, size: u16, event_idx: bool) -> Self {
        let base = RING_BASE + index as u64 * 0x1_0000;
        TestQueue {
            mem: mem.clone(),
            index,
            size,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            data: DATA_BASE + index as u64 * DATA_PER_QUEUE,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            event_idx,
        }
    }

    /// Write a chain of descriptors `(gpa, len, device_writable)`; returns the head.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = 0u16;
            if write {
                flags |= 2;
            }
            if !last {
                flags |= 1;
            }
            let next = (idx + 1) % self.size;
            self.write_desc(
                idx,
                Descriptor::new(addr, len, flags, if last { 0 } else { next }),
            );
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        head
    }

    pub fn write_desc(&self, idx: u16, d: Descriptor) {
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
            .unwrap();
    }

    /// Make `head` available (does not kick).
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.set_avail_idx(self.avail_idx);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// used_event: interrupt me once the device's used idx passes this.
    pub fn set_used_event(&self, v: u16) {
        self.mem
            .write_obj(v, GuestAddress(self.avail + 4 + 2 * u64::from(self.size)))
            .unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// True if the call eventfd fires within `timeout`.
    pub fn wait_call(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if rc > 0 {
            let _ = self.call.read();
            true
        } else {
            false
        }
    }

    /// Collect `n` used elements `(id, len)`, waiting on the call eventfd.
    pub fn wait_used(&mut self, n: usize, timeout: Duration) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            if self.event_idx {
                self.set_used_event(self.last_used);
            }
            let idx = self.used_idx();
            while self.last_used != idx {
                let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
                let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
                out.push((id, len));
                self.last_used = self.last_used.wrapping_add(1);
            }
            if out.len() >= n {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out: {} of {n} completions",
                out.len()
            );
            self.wait_call(left.min(Duration::from_millis(100)));
        }
    }

    /// Address of per-request scratch slot `i`: header at +0, status at +16,
    /// discard payload at +32.
    pub fn scratch(&self, i: u64) -> u64 {
        self.data + DATA_PER_QUEUE / 2 + 64 * i
    }

    /// Address of data buffer `i` (16 KiB each, 64 of them).
    pub fn buf(&self, i: u64) -> u64 {
        self.data + 0x4000 * i
    }

    pub fn write_header(&self, slot: u64, req_type: u32, sector: u64) {
        let a = self.scratch(slot);
        self.mem.write_obj(req_type, GuestAddress(a)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(a + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(a + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(a + 16)).unwrap();
    }

    pub fn status(&self, slot: u64) -> u8 {
        self.mem
            .read_obj(GuestAddress(self.scratch(slot) + 16))
            .unwrap()
    }

    /// Queue one request in `slot` (not kicked). `data` = (buffer index, len).
    pub fn queue_request(
        &mut self,
        slot: u64,
        req_type: u32,
        sector: u64,
        data: &[(u64, u32)],
    ) -> u16 {
        self.write_header(slot, req_type, sector);
        let write = req_type != VIRTIO_BLK_T_OUT;
        let mut descs = vec![(self.scratch(slot), 16, false)];
        descs.extend(data.iter().map(|&(b, len)| (self.buf(b), len, write)));
        descs.push((self.scratch(slot) + 16, 1, true));
        let head = self.add_chain(&descs);
        self.publish(head);
        head
    }

    /// Submit one request, kick, wait; returns (status, used len).
    pub fn request(&mut self, req_type: u32, sector: u64, data: &[(u64, u32)]) -> (u8, u32) {
        let head = self.queue_request(0, req_type, sector, data);
        self.kick();
        let used = self.wait_used(1, Duration::from_secs(10));
        assert_eq!(used[0].0, u32::from(head));
        (self.status(0), used[0].1)
    }

    /// DISCARD / WRITE_ZEROES with one segment.
    pub fn range_request(&mut self, req_type: u32, sector: u64, n: u32, flags: u32) -> u8 {
        self.write_header(0, req_type, 0);
        let p = self.scratch(0) + 32;
        self.mem.write_obj(sector, GuestAddress(p)).unwrap();
        self.mem.write_obj(n, GuestAddress(p + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(p + 12)).unwrap();
        let head = self.add_chain(&[
            (self.scratch(0), 16, false),
            (p, 16, false),
            (self.scratch(0) + 16, 1, true),
        ]);
        self.publish(head);
        self.kick();
        self.wait_used(1, Duration::from_secs(10));
        self.status(0)
    }

    pub fn fill(&self, buf: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(self.buf(buf)))
            .unwrap();
    }

    pub fn read_buf(&self, buf: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(self.buf(buf)))
            .unwrap();
        v
    }
}

/// A connected, fully set-up frontend.
pub struct Session {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap,
    pub queues: Vec<TestQueue>,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
}

/// Connect and negotiate; `want` masks the virtio features we ack.
pub fn connect(socket: &Path, num_queues: usize, queue_size: u16, want: u64) -> Session {
    connect_with(socket, num_queues, queue_size, want, false)
}

/// Like [`connect`]; with `mem_slots`, negotiate CONFIGURE_MEM_SLOTS and
/// hand memory over with ADD_MEM_REG instead of SET_MEM_TABLE.
pub fn connect_with(
    socket: &Path,
    num_queues: usize,
    queue_size: u16,
    want: u64,
    mem_slots: bool,
) -> Session {
    connect_mem(
        socket,
        guest_memory(),
        num_queues,
        queue_size,
        want,
        mem_slots,
    )
}

/// Like [`connect_with`], with guest memory the caller prepared (its ring
/// areas must be zero).
pub fn connect_mem(
    socket: &Path,
    mem: GuestMemoryMmap,
    num_queues: usize,
    queue_size: u16,
    want: u64,
    mem_slots: bool,
) -> Session {
    let mut fe = Frontend::connect(socket, num_queues as u64).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    let features = offered & (want | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
    fe.set_features(features).unwrap();
    let offered_pf = fe.get_protocol_features().unwrap();
    let mut wanted_pf = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK;
    if mem_slots {
        wanted_pf |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    }
    let protocol = offered_pf & wanted_pf;
    fe.set_protocol_features(protocol).unwrap();
    let regions: Vec<_> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    if mem_slots {
        assert!(fe.get_max_mem_slots().unwrap() >= regions.len() as u64);
        for r in &regions {
            fe.add_mem_region(r).unwrap();
        }
    } else {
        fe.set_mem_table(&regions).unwrap();
    }
    let event_idx = features & F_EVENT_IDX != 0;
    let mut queues = Vec::new();
    for q in 0..num_queues {
        let tq = TestQueue::new(&mem, q, queue_size, event_idx);
        let va = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        fe.set_vring_num(q, queue_size).unwrap();
        fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: va(tq.desc),
                used_ring_addr: va(tq.used),
                avail_ring_addr: va(tq.avail),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(q, 0).unwrap();
        fe.set_vring_call(q, &tq.call).unwrap();
        fe.set_vring_kick(q, &tq.kick).unwrap();
        fe.set_vring_enable(q, true).unwrap();
        queues.push(tq);
    }
    let _ = mem.iter().map(|r| r.len()).sum::<u64>();
    Session {
        fe,
        mem,
        queues,
        features,
        protocol,
    }
}

/// A raw image of `size` bytes filled with a recognisable pattern.
pub fn raw_image(path: &Path, size: usize) {
    let data: Vec<u8> = (0..size).map(|i| (i / 512 % 251) as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// Pattern byte of sector `s` in `raw_image`.
pub fn pattern(sector: u64) -> u8 {
    (sector % 251) as u8
}
