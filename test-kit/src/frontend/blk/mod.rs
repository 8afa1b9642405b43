//! A well-behaved virtio-blk driver over vhost-user: the vhost crate's
//! `Frontend`, memfd-backed guest memory, and split rings built by hand in
//! that memory (`queue`), connected and negotiated by `session`. Used by
//! the vhost-user-blk tests and its bench example.

mod queue;
mod session;

use vm_memory::GuestMemoryMmap;

pub use queue::TestQueue;
pub use session::{Session, connect, connect_mem, connect_with};

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
    crate::memory::guest_memory(c"vub-test", MEM_SIZE).expect("blk test guest memory")
}
