//! Hostile sessions that hand the daemon a full pipe where a kick, call
//! or error eventfd belongs, then make the daemon write to it: the blk
//! relay's self-kick (INFLIGHT_SHMFD), a completion's call, a corrupt
//! ring's error signal. A blocking write there parks the writing thread
//! for good (and the daemon with it: it never accepts again). The caller
//! keeps the pipe's read end open while it probes, so the pipe stays full.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::proto::*;
use super::raw::{MEM, Raw, eventfd, memfd};
use super::scenario::Outcome;
use crate::frontend::blk::VIRTIO_BLK_T_GET_ID;

/// Guest-physical layout of queue 0 (16 entries) in the 1 MiB memfd.
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HEADER: u64 = 0x8000;
const ID: u64 = 0x9000;
const STATUS: u64 = 0xa000;
const UADDR: u64 = 0x4000_0000;

/// A pipe whose buffer is full, with a blocking write end: `(read, write)`.
pub fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [-1; 2];
    // SAFETY: pipe2 fills the two ints.
    let rc = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
    // SAFETY: we own both fresh fds.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let chunk = [0u8; 4096];
    // SAFETY: writes from `chunk`, alive for each call, until EAGAIN.
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // Blocking again (O_NONBLOCK is shared with whoever receives the fd).
    // SAFETY: F_SETFL on our own fd.
    assert_eq!(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) }, 0);
    (r, w)
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// The acks of a session's messages, by request code.
pub type Acks = Vec<(u32, Option<u64>)>;

/// Memory, then queue 0 with `call`, `err` (if any) and `kick`, enabled.
pub fn start_queue(r: &mut Raw, mem: &File, kick: RawFd, call: RawFd, err: Option<RawFd>) -> Acks {
    let mut acks = Vec::new();
    let t = mem_table(1, &[region(0, MEM, UADDR, 0)]);
    acks.push((
        SET_MEM_TABLE,
        r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]),
    ));
    let mut steps: Vec<(u32, Vec<u8>, Vec<RawFd>)> = vec![
        (SET_VRING_NUM, state(0, 16), vec![]),
        (
            SET_VRING_ADDR,
            vring_addr(0, UADDR + DESC, UADDR + USED, UADDR + AVAIL),
            vec![],
        ),
        (SET_VRING_BASE, state(0, 0), vec![]),
        (SET_VRING_CALL, 0u64.to_le_bytes().to_vec(), vec![call]),
    ];
    if let Some(err) = err {
        steps.push((SET_VRING_ERR, 0u64.to_le_bytes().to_vec(), vec![err]));
    }
    steps.push((SET_VRING_KICK, 0u64.to_le_bytes().to_vec(), vec![kick]));
    steps.push((SET_VRING_ENABLE, state(0, 1), vec![]));
    for (req, p, fds) in steps {
        acks.push((req, r.acked(req, &p, &fds)));
    }
    acks
}

fn kick(fd: &OwnedFd) {
    // SAFETY: write 8 bytes from a u64 on our stack to our eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
}

/// INFLIGHT_SHMFD negotiated, then a full pipe as the kick fd: the relay
/// kicks it itself after passing SET_VRING_KICK on.
pub fn pipe_as_kick(r: &mut Raw, pipe: RawFd) -> Acks {
    r.hello_with(PF_INFLIGHT_SHMFD);
    vec![(
        SET_VRING_KICK,
        r.acked(SET_VRING_KICK, &0u64.to_le_bytes(), &[pipe]),
    )]
}

/// A full pipe as the error fd, then a ring whose avail index runs 100
/// ahead of a 16-entry queue: the worker signals the error fd.
pub fn pipe_as_err(r: &mut Raw, pipe: RawFd) -> Acks {
    r.hello();
    let mem = memfd(MEM);
    let (k, c) = (eventfd(), eventfd());
    let acks = start_queue(r, &mem, k.as_raw_fd(), c.as_raw_fd(), Some(pipe));
    mem.write_all_at(&[0, 0, 100, 0], AVAIL).unwrap();
    kick(&k);
    std::thread::sleep(Duration::from_millis(300));
    acks
}

/// A full pipe as the call fd, then one virtio-blk GET_ID request: the
/// worker signals its completion (a block device only).
pub fn pipe_as_call(r: &mut Raw, pipe: RawFd) -> Acks {
    r.hello();
    let mem = memfd(MEM);
    let k = eventfd();
    let acks = start_queue(r, &mem, k.as_raw_fd(), pipe, None);
    let mut table = desc(HEADER, 16, 1, 1);
    table.extend(desc(ID, 20, 1 | 2, 2));
    table.extend(desc(STATUS, 1, 2, 0));
    mem.write_all_at(&table, DESC).unwrap();
    let mut header = VIRTIO_BLK_T_GET_ID.to_le_bytes().to_vec();
    header.extend_from_slice(&[0u8; 12]);
    mem.write_all_at(&header, HEADER).unwrap();
    mem.write_all_at(&[0xff], STATUS).unwrap();
    // avail: flags 0, idx 1, ring[0] = head 0.
    mem.write_all_at(&[0, 0, 1, 0, 0, 0], AVAIL).unwrap();
    kick(&k);
    std::thread::sleep(Duration::from_millis(300));
    acks
}

/// How long a new connection took to be served (GET_FEATURES answered),
/// or None if it was not within the raw connection's 5 s timeout.
pub fn served_within(socket: &Path) -> Option<Duration> {
    let t = Instant::now();
    let mut r = Raw::connect(socket);
    (r.probe() == Outcome::Served).then(|| t.elapsed())
}
