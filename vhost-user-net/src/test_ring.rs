//! Unit-test kit for the data paths: a real [`Queue`] over real guest
//! memory (laid out by virtio-queue's `MockSplitQueue`), an eventfd as the
//! call notifier, and a non-blocking `SOCK_SEQPACKET` pair standing in for
//! the TAP queue (one message per frame, as a TAP has).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_devices::narrow::u16_of;
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::pair_types::Virtqueue;

/// Ring size of the test queues.
pub const QSIZE: u16 = 16;
/// Where the test buffers start (the rings sit below).
pub const BUF: u64 = 0x1_0000;

/// A queue and its call eventfd.
pub struct TestRing {
    pub queue: Queue,
    pub call: EventFd,
}

impl Virtqueue for TestRing {
    fn queue(&mut self) -> &mut Queue {
        &mut self.queue
    }

    fn signal_used(&self) -> io::Result<()> {
        self.call.write(1)
    }
}

impl TestRing {
    /// The ready queue `mock` lays out, with a fresh call eventfd.
    pub fn new(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> TestRing {
        TestRing {
            queue: mock.create_queue().unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// Whether the driver was signalled since the last call (and resets it).
    pub fn signalled(&self) -> bool {
        self.call.read().is_ok()
    }
}

/// 256 KiB of guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap()
}

/// Publishes one chain of `(gpa, len)` buffers, device-writable or
/// device-readable, at descriptor index `first`; returns its head.
pub fn post(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    first: u16,
    bufs: &[(u64, u32)],
    writable: bool,
) -> u16 {
    let write = if writable {
        u16_of(VRING_DESC_F_WRITE)
    } else {
        0
    };
    let last = bufs.len() - 1;
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len))| {
            let (next_flag, next) = if i == last {
                (0, 0)
            } else {
                (
                    u16_of(VRING_DESC_F_NEXT),
                    first + u16::try_from(i).unwrap() + 1,
                )
            };
            Descriptor::new(addr, len, write | next_flag, next).into()
        })
        .collect();
    mock.add_desc_chains(&descs, first).unwrap();
    first
}

/// The used ring's entries so far: (head, len).
pub fn used(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let base = mock.used_addr();
    let idx: u16 = mem.read_obj(base.unchecked_add(2)).unwrap();
    (0..u64::from(idx))
        .map(|i| {
            let at = base.unchecked_add(4 + 8 * (i % u64::from(QSIZE)));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            (id, len)
        })
        .collect()
}

/// Reads `len` bytes of guest memory at `gpa`.
pub fn read(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
    v
}

/// A connected, non-blocking `SOCK_SEQPACKET` pair: (the daemon's end, the
/// wire).
pub fn wire() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array on our stack.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sends one message on `fd`; false on EAGAIN.
pub fn send(fd: &OwnedFd, bytes: &[u8]) -> bool {
    // SAFETY: send reads `bytes`, which outlives the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "send: {e}");
        return false;
    }
    assert_eq!(usize::try_from(n).unwrap(), bytes.len());
    true
}

/// Receives one message from `fd`, if one is there.
pub fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70 * 1024];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "recv: {e}");
        return None;
    }
    buf.truncate(usize::try_from(n).unwrap());
    Some(buf)
}

/// A test frame of `len` bytes (bytes counting up from `seed`).
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(i.to_le_bytes()[0]))
        .collect()
}
