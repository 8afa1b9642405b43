//! The driver side of one split virtqueue in the test's guest memory:
//! descriptor chains written by hand, the avail ring published, the used
//! ring collected, and virtio-blk requests built on top.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{DATA_BASE, DATA_PER_QUEUE, RING_BASE, VIRTIO_BLK_T_OUT};

/// The driver side of one split virtqueue in guest memory.
#[derive(Debug)]
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
            let off = u16::try_from(i).expect("a chain has fewer than 65536 descriptors");
            let idx = (self.next_desc + off) % self.size;
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
        let n = u16::try_from(descs.len()).expect("a chain has fewer than 65536 descriptors");
        self.next_desc = (self.next_desc + n) % self.size;
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
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
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
