//! A well-behaved virtio-net driver over vhost-user: memfd guest memory,
//! hand-built split rings (`ring`) and the handshake QEMU does for queue
//! pairs (`guest`). Used by the vhost-user-net tests and its throughput
//! example.

mod guest;
mod ring;

use vm_memory::GuestMemoryMmap;

pub use guest::Guest;
pub use ring::Ring;

/// Size of every ring.
pub const QSIZE: u16 = 256;
/// Guest memory size of [`guest_memory`].
pub const MEM_SIZE: usize = 16 << 20;
/// Rings of queue `q` start at `RX_BASE + q * 0x4000`.
pub const RX_BASE: u64 = 0x10000;
/// First address free for the test's buffers.
pub const BUF_BASE: u64 = 0x100000;

/// Guest memory shared with the daemon (memfd, MAP_SHARED).
pub fn guest_memory() -> GuestMemoryMmap {
    crate::memory::guest_memory(c"vun-test-guest", MEM_SIZE).expect("net test guest memory")
}
