//! One split ring the test drives as the driver: chains published on the
//! avail ring, used elements polled from the used ring.

use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::QSIZE;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A split ring the test drives as the driver.
#[derive(Debug)]
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
