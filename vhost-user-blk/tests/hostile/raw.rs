//! A hostile vhost-user frontend: hand-built messages (header: request u32,
//! flags u32, size u32; then the payload; fds via SCM_RIGHTS) and a
//! catalogue of bad sessions that fit any vhost-user device. Shared by the
//! vhost-user-blk and vhost-user-net hostile_frontend tests (the net crate
//! includes this file by path); each test runs every [`Scenario`] against
//! its daemon and then proves the daemon still serves a well-behaved
//! frontend.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const RESET_OWNER: u32 = 4;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;
pub const SET_CONFIG: u32 = 25;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const RESET_DEVICE: u32 = 34;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;

pub const V1: u32 = 0x1;
pub const REPLY: u32 = 0x4;
pub const NEED_REPLY: u32 = 0x8;

pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_VERSION_1: u64 = 1 << 32;
pub const PF_MQ: u64 = 1 << 0;
pub const PF_REPLY_ACK: u64 = 1 << 3;
pub const PF_CONFIG: u64 = 1 << 9;
pub const PF_INFLIGHT_SHMFD: u64 = 1 << 12;

/// Guest memory of the hostile sessions.
pub const MEM: u64 = 1 << 20;
const RING: u64 = 0x1000;

/// What the daemon did with a hostile session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It hung up.
    Closed,
    /// It answered a NEED_REPLY with a non-zero (failure) ack.
    Nacked,
    /// It went on answering (input accepted or ignored).
    Served,
}

/// What a scenario must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nacked or Closed.
    Rejected,
    /// Any outcome; only the daemon's survival matters (the protocol lets
    /// a backend accept this).
    Survives,
}

/// One raw connection.
pub struct Raw {
    pub s: UnixStream,
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a valid C string; checked below.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we own the fresh fd.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// An eventfd (kick/call).
pub fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd(2); checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we own the fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One VhostUserMemoryRegion (gpa, size, user address, mmap offset).
pub fn region(gpa: u64, size: u64, uaddr: u64, offset: u64) -> Vec<u8> {
    [gpa, size, uaddr, offset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// SET_MEM_TABLE payload: count, padding, regions.
pub fn mem_table(count: u32, regions: &[Vec<u8>]) -> Vec<u8> {
    let mut p = count.to_le_bytes().to_vec();
    p.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        p.extend_from_slice(r);
    }
    p
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// vring state (index, num) payload.
pub fn state(index: u32, num: u32) -> Vec<u8> {
    u32s(&[index, num])
}

/// SET_VRING_ADDR payload.
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut p = u32s(&[index, 0]);
    p.extend(u64s(&[desc, used, avail, 0]));
    p
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s }
    }

    /// Header with `size` (which may lie about the payload), the payload
    /// and fds. Errors (the daemon already hung up) are returned.
    pub fn send_sized(
        &mut self,
        req: u32,
        flags: u32,
        size: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut buf = u32s(&[req, flags, size]);
        buf.extend_from_slice(payload);
        if fds.is_empty() {
            return self.s.write_all(&buf);
        }
        let n = self
            .s
            .send_with_fds(&[&buf[..]], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        self.s.write_all(&buf[n..])
    }

    pub fn send(&mut self, req: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        self.send_sized(req, flags, payload.len() as u32, payload, fds)
    }

    /// The next reply (request, payload), or None if the daemon hung up or
    /// said nothing within the timeout.
    pub fn recv(&mut self) -> Option<(u32, Vec<u8>)> {
        let mut hdr = [0u8; 12];
        self.s.read_exact(&mut hdr).ok()?;
        let req = u32::from_le_bytes(hdr[0..4].try_into().ok()?);
        let size = u32::from_le_bytes(hdr[8..12].try_into().ok()?) as usize;
        if size > 0x1000 {
            return None;
        }
        let mut p = vec![0u8; size];
        self.s.read_exact(&mut p).ok()?;
        Some((req, p))
    }

    /// Sends with NEED_REPLY and reads the u64 ack: Some(0) on success.
    pub fn acked(&mut self, req: u32, payload: &[u8], fds: &[RawFd]) -> Option<u64> {
        self.send(req, V1 | NEED_REPLY, payload, fds).ok()?;
        let (_, p) = self.recv()?;
        Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
    }

    /// A request that has a reply (GET_*): the reply payload.
    pub fn get(&mut self, req: u32, payload: &[u8]) -> Option<Vec<u8>> {
        self.send(req, V1, payload, &[]).ok()?;
        self.recv().map(|(_, p)| p)
    }

    /// Is the connection still served? (GET_FEATURES gets an answer.)
    pub fn probe(&mut self) -> Outcome {
        match self.get(GET_FEATURES, &[]) {
            Some(p) if p.len() == 8 => Outcome::Served,
            _ => Outcome::Closed,
        }
    }

    /// Outcome of an acked message, then of the probe.
    pub fn judge(&mut self, ack: Option<u64>) -> Outcome {
        match ack {
            Some(0) => self.probe(),
            Some(_) => Outcome::Nacked,
            None => Outcome::Closed,
        }
    }

    /// SET_OWNER, features (VERSION_1 + PROTOCOL_FEATURES), protocol
    /// features (REPLY_ACK, MQ, CONFIG where offered).
    pub fn hello(&mut self) {
        self.hello_with(0);
    }

    /// [`Raw::hello`], also asking for the protocol features in `extra`
    /// (where offered).
    pub fn hello_with(&mut self, extra: u64) {
        self.send(SET_OWNER, V1, &[], &[]).unwrap();
        let offered = u64::from_le_bytes(
            self.get(GET_FEATURES, &[]).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let f = offered & (F_VERSION_1 | F_PROTOCOL_FEATURES);
        self.send(SET_FEATURES, V1, &f.to_le_bytes(), &[]).unwrap();
        let pf = u64::from_le_bytes(
            self.get(GET_PROTOCOL_FEATURES, &[]).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let want = pf & (PF_REPLY_ACK | PF_MQ | PF_CONFIG | extra);
        self.send(SET_PROTOCOL_FEATURES, V1, &want.to_le_bytes(), &[])
            .unwrap();
    }

    /// hello + a valid 1 MiB memory table at GPA 0 (user address 0x4000_0000).
    pub fn hello_with_memory(&mut self, mem: &File) -> Outcome {
        self.hello();
        let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 0)]);
        let ack = self.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
        self.judge(ack)
    }
}

/// A hostile session: its name, what it must get, how it is played.
pub struct Scenario {
    pub name: &'static str,
    pub expect: Expect,
    pub play: fn(&mut Raw) -> Outcome,
}

fn unknown_request(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(0x7777, &[], &[]);
    r.judge(ack)
}

fn request_zero(r: &mut Raw) -> Outcome {
    let _ = r.send(0, V1, &[], &[]);
    r.probe()
}

fn set_owner_with_payload(r: &mut Raw) -> Outcome {
    let _ = r.send(SET_OWNER, V1, &7u64.to_le_bytes(), &[]);
    r.probe()
}

fn get_features_with_payload(r: &mut Raw) -> Outcome {
    let _ = r.send(GET_FEATURES, V1, &[1, 2, 3, 4], &[]);
    r.probe()
}

fn set_features_short(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(SET_FEATURES, &[0, 0, 0, 0], &[]);
    r.judge(ack)
}

fn set_features_long(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(SET_FEATURES, &[0u8; 16], &[]);
    r.judge(ack)
}

fn size_larger_than_sent(r: &mut Raw) -> Outcome {
    let _ = r.send_sized(SET_FEATURES, V1, 0x800, &[0u8; 8], &[]);
    let _ = r.s.shutdown(std::net::Shutdown::Write);
    let mut b = [0u8; 1];
    match r.s.read(&mut b) {
        Ok(0) | Err(_) => Outcome::Closed,
        Ok(_) => Outcome::Served,
    }
}

fn size_above_maximum(r: &mut Raw) -> Outcome {
    let _ = r.send_sized(SET_MEM_TABLE, V1, 0x10_0000, &[0u8; 64], &[]);
    r.probe()
}

fn wrong_version(r: &mut Raw) -> Outcome {
    let _ = r.send(GET_FEATURES, 0x2, &[], &[]);
    r.probe()
}

fn reply_flag_on_request(r: &mut Raw) -> Outcome {
    let _ = r.send(GET_FEATURES, V1 | REPLY, &[], &[]);
    r.probe()
}

fn fd_where_none_belongs(r: &mut Raw) -> Outcome {
    let e = eventfd();
    let _ = r.send(SET_OWNER, V1, &[], &[e.as_raw_fd()]);
    r.probe()
}

fn fds_on_get_features(r: &mut Raw) -> Outcome {
    let fds: Vec<OwnedFd> = (0..3).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let _ = r.send(GET_FEATURES, V1, &[], &raw);
    r.probe()
}

fn too_many_fds(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let dups: Vec<File> = (0..40).map(|_| mem.try_clone().unwrap()).collect();
    let raw: Vec<RawFd> = dups.iter().map(AsRawFd::as_raw_fd).collect();
    let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &raw);
    r.judge(ack)
}

fn mem_table_missing_fd(r: &mut Raw) -> Outcome {
    r.hello();
    let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[]);
    r.judge(ack)
}

fn mem_table_fewer_fds_than_regions(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(2 * MEM);
    let t = mem_table(
        2,
        &[
            region(0, MEM, 0x4000_0000, 0),
            region(MEM, MEM, 0x5000_0000, MEM),
        ],
    );
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_zero_regions(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(SET_MEM_TABLE, &mem_table(0, &[]), &[]);
    r.judge(ack)
}

fn mem_table_too_many_regions(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let regions: Vec<Vec<u8>> = (0..9)
        .map(|i| region(i * 0x1000, 0x1000, 0x4000_0000 + i * 0x1000, i * 0x1000))
        .collect();
    let dups: Vec<File> = (0..9).map(|_| mem.try_clone().unwrap()).collect();
    let raw: Vec<RawFd> = dups.iter().map(AsRawFd::as_raw_fd).collect();
    let ack = r.acked(SET_MEM_TABLE, &mem_table(9, &regions), &raw);
    r.judge(ack)
}

fn mem_table_count_exceeds_payload(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(3, &[region(0, MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_overlapping(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(2 * MEM);
    let t = mem_table(
        2,
        &[
            region(0, MEM, 0x4000_0000, 0),
            region(MEM / 2, MEM, 0x5000_0000, MEM),
        ],
    );
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd(), mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_zero_size(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(1, &[region(0, 0, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_offset_past_end(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 2 * MEM)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_size_past_end(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(1, &[region(0, 4 * MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_gpa_overflow(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(1, &[region(u64::MAX - 0xfff, MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_uaddr_overflow(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let t = mem_table(1, &[region(0, MEM, u64::MAX - 0xfff, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn mem_table_not_a_memfd(r: &mut Raw) -> Outcome {
    r.hello();
    let e = eventfd();
    let t = mem_table(1, &[region(0, MEM, 0x4000_0000, 0)]);
    let ack = r.acked(SET_MEM_TABLE, &t, &[e.as_raw_fd()]);
    r.judge(ack)
}

fn kick_before_owner_and_memory(r: &mut Raw) -> Outcome {
    let e = eventfd();
    let _ = r.send(SET_VRING_KICK, V1, &0u64.to_le_bytes(), &[e.as_raw_fd()]);
    // SAFETY: write 8 bytes from a u64 on our stack to our eventfd.
    unsafe { libc::write(e.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    r.probe()
}

fn kick_before_mem_table(r: &mut Raw) -> Outcome {
    r.hello();
    let e = eventfd();
    let ack = r.acked(SET_VRING_KICK, &0u64.to_le_bytes(), &[e.as_raw_fd()]);
    // SAFETY: write 8 bytes from a u64 on our stack to our eventfd.
    unsafe { libc::write(e.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    std::thread::sleep(Duration::from_millis(20));
    r.judge(ack)
}

fn vring_addr_before_mem_table(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(
        SET_VRING_ADDR,
        &vring_addr(0, 0x4000_0000, 0x4000_2000, 0x4000_1000),
        &[],
    );
    r.judge(ack)
}

fn vring_addr_outside_memory(r: &mut Raw) -> Outcome {
    let mem = memfd(MEM);
    if r.hello_with_memory(&mem) != Outcome::Served {
        return Outcome::Closed;
    }
    let ack = r.acked(
        SET_VRING_ADDR,
        &vring_addr(0, 0x9000_0000, 0x4000_2000, 0x4000_1000),
        &[],
    );
    r.judge(ack)
}

fn vring_addr_straddling_the_end(r: &mut Raw) -> Outcome {
    let mem = memfd(MEM);
    if r.hello_with_memory(&mem) != Outcome::Served {
        return Outcome::Closed;
    }
    let end = 0x4000_0000 + MEM - 8;
    let ack = r.acked(
        SET_VRING_ADDR,
        &vring_addr(0, 0x4000_0000, end, 0x4000_1000),
        &[],
    );
    r.judge(ack)
}

fn queue_size(num: u32) -> impl Fn(&mut Raw) -> Outcome {
    move |r: &mut Raw| {
        r.hello();
        let ack = r.acked(SET_VRING_NUM, &state(0, num), &[]);
        r.judge(ack)
    }
}

fn queue_size_zero(r: &mut Raw) -> Outcome {
    queue_size(0)(r)
}

fn queue_size_not_power_of_two(r: &mut Raw) -> Outcome {
    queue_size(100)(r)
}

fn queue_size_too_large(r: &mut Raw) -> Outcome {
    queue_size(65536)(r)
}

fn queue_size_above_max(r: &mut Raw) -> Outcome {
    queue_size(32768)(r)
}

fn queue_index_out_of_range(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(SET_VRING_NUM, &state(99, 64), &[]);
    r.judge(ack)
}

fn kick_for_missing_queue(r: &mut Raw) -> Outcome {
    r.hello();
    let e = eventfd();
    let ack = r.acked(SET_VRING_KICK, &99u64.to_le_bytes(), &[e.as_raw_fd()]);
    r.judge(ack)
}

fn features_never_offered(r: &mut Raw) -> Outcome {
    let _ = r.send(SET_OWNER, V1, &[], &[]);
    let _ = r.send(SET_FEATURES, V1, &u64::MAX.to_le_bytes(), &[]);
    r.probe()
}

fn protocol_features_never_offered(r: &mut Raw) -> Outcome {
    let _ = r.send(SET_OWNER, V1, &[], &[]);
    let _ = r.send(SET_FEATURES, V1, &F_PROTOCOL_FEATURES.to_le_bytes(), &[]);
    let _ = r.send(SET_PROTOCOL_FEATURES, V1, &u64::MAX.to_le_bytes(), &[]);
    r.probe()
}

fn enable_before_features(r: &mut Raw) -> Outcome {
    let _ = r.send(SET_OWNER, V1, &[], &[]);
    let _ = r.send(SET_VRING_ENABLE, V1, &state(0, 1), &[]);
    r.probe()
}

fn get_vring_base_of_idle_ring(r: &mut Raw) -> Outcome {
    r.hello();
    match r.get(GET_VRING_BASE, &state(0, 0)) {
        Some(_) => r.probe(),
        None => Outcome::Closed,
    }
}

fn call_without_fd(r: &mut Raw) -> Outcome {
    r.hello();
    let ack = r.acked(SET_VRING_CALL, &0u64.to_le_bytes(), &[]);
    r.judge(ack)
}

fn kick_with_two_fds(r: &mut Raw) -> Outcome {
    r.hello();
    let (a, b) = (eventfd(), eventfd());
    let ack = r.acked(
        SET_VRING_KICK,
        &0u64.to_le_bytes(),
        &[a.as_raw_fd(), b.as_raw_fd()],
    );
    r.judge(ack)
}

fn log_base_without_feature(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(0x1000);
    let ack = r.acked(SET_LOG_BASE, &u64s(&[0x1000, 0]), &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn set_config_out_of_range(r: &mut Raw) -> Outcome {
    r.hello();
    let mut p = u32s(&[0xffff_f000, 0x100, 0]);
    p.extend_from_slice(&[0xaa; 0x100]);
    let ack = r.acked(SET_CONFIG, &p, &[]);
    r.judge(ack)
}

fn get_config_out_of_range(r: &mut Raw) -> Outcome {
    r.hello();
    let mut p = u32s(&[0x1000, 0x100, 0]);
    p.extend_from_slice(&[0; 0x100]);
    let _ = r.get(GET_CONFIG, &p);
    r.probe()
}

fn add_mem_reg_without_slots(r: &mut Raw) -> Outcome {
    r.hello();
    let mem = memfd(MEM);
    let mut p = u64s(&[0]);
    p.extend(region(0, MEM, 0x4000_0000, 0));
    let ack = r.acked(ADD_MEM_REG, &p, &[mem.as_raw_fd()]);
    r.judge(ack)
}

fn inflight_fd_unsupported(r: &mut Raw) -> Outcome {
    r.hello();
    let _ = r.get(GET_INFLIGHT_FD, &u64s(&[0, 0, 0, 0]));
    r.probe()
}

fn double_owner_and_reset(r: &mut Raw) -> Outcome {
    r.hello();
    let _ = r.send(SET_OWNER, V1, &[], &[]);
    let _ = r.send(RESET_OWNER, V1, &[], &[]);
    let _ = r.send(RESET_DEVICE, V1, &[], &[]);
    r.probe()
}

/// Rings in the memfd, one request published, memfd truncated to nothing,
/// then the "guest" kicks: the daemon touches pages past the file's end.
pub fn truncated_memory_then_kick(r: &mut Raw) -> Outcome {
    let mem = memfd(MEM);
    if r.hello_with_memory(&mem) != Outcome::Served {
        return Outcome::Closed;
    }
    // desc[0] = 512 bytes at GPA 0x8000; avail.ring[0] = 0, avail.idx = 1.
    let mut desc = u64s(&[0x8000]);
    desc.extend(u32s(&[512]));
    desc.extend_from_slice(&0u32.to_le_bytes());
    mem.write_at_all(&desc, RING);
    mem.write_at_all(&[0, 0, 1, 0, 0, 0], RING + 0x1000);
    let kick = eventfd();
    let call = eventfd();
    let ua = |gpa: u64| 0x4000_0000 + gpa;
    let steps: [(u32, Vec<u8>, Vec<RawFd>); 6] = [
        (SET_VRING_NUM, state(0, 16), vec![]),
        (
            SET_VRING_ADDR,
            vring_addr(0, ua(RING), ua(RING + 0x2000), ua(RING + 0x1000)),
            vec![],
        ),
        (SET_VRING_BASE, state(0, 0), vec![]),
        (
            SET_VRING_CALL,
            0u64.to_le_bytes().to_vec(),
            vec![call.as_raw_fd()],
        ),
        (
            SET_VRING_KICK,
            0u64.to_le_bytes().to_vec(),
            vec![kick.as_raw_fd()],
        ),
        (SET_VRING_ENABLE, state(0, 1), vec![]),
    ];
    for (req, p, fds) in steps {
        if r.acked(req, &p, &fds) != Some(0) {
            return Outcome::Nacked;
        }
    }
    mem.set_len(0).unwrap();
    // SAFETY: write 8 bytes from a u64 on our stack to our eventfd.
    unsafe { libc::write(kick.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    std::thread::sleep(Duration::from_millis(200));
    r.probe()
}

trait WriteAt {
    fn write_at_all(&self, buf: &[u8], off: u64);
}

impl WriteAt for File {
    fn write_at_all(&self, buf: &[u8], off: u64) {
        std::os::unix::fs::FileExt::write_all_at(self, buf, off).unwrap();
    }
}

/// Every generic hostile session.
pub fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    let s = |name, expect, play| Scenario { name, expect, play };
    vec![
        s("unknown request 0x7777", Rejected, unknown_request),
        s("request 0", Rejected, request_zero),
        s(
            "SET_OWNER with an 8-byte payload",
            Rejected,
            set_owner_with_payload,
        ),
        s(
            "GET_FEATURES with a 4-byte payload",
            Rejected,
            get_features_with_payload,
        ),
        s("SET_FEATURES with 4 bytes", Rejected, set_features_short),
        s("SET_FEATURES with 16 bytes", Rejected, set_features_long),
        s(
            "header size larger than sent, then EOF",
            Rejected,
            size_larger_than_sent,
        ),
        s("header size 1 MiB", Rejected, size_above_maximum),
        s("flags version 2", Rejected, wrong_version),
        s("REPLY flag on a request", Rejected, reply_flag_on_request),
        s("SET_OWNER with an fd", Rejected, fd_where_none_belongs),
        s("GET_FEATURES with 3 fds", Rejected, fds_on_get_features),
        s("SET_MEM_TABLE with 40 fds", Rejected, too_many_fds),
        s(
            "SET_MEM_TABLE without its fd",
            Rejected,
            mem_table_missing_fd,
        ),
        s(
            "SET_MEM_TABLE 2 regions, 1 fd",
            Rejected,
            mem_table_fewer_fds_than_regions,
        ),
        s(
            "SET_MEM_TABLE with 0 regions",
            Rejected,
            mem_table_zero_regions,
        ),
        s(
            "SET_MEM_TABLE with 9 regions",
            Survives,
            mem_table_too_many_regions,
        ),
        s(
            "SET_MEM_TABLE count 3, 1 region sent",
            Rejected,
            mem_table_count_exceeds_payload,
        ),
        s(
            "SET_MEM_TABLE overlapping regions",
            Rejected,
            mem_table_overlapping,
        ),
        s(
            "SET_MEM_TABLE zero-size region",
            Rejected,
            mem_table_zero_size,
        ),
        s(
            "SET_MEM_TABLE offset past the fd's end",
            Rejected,
            mem_table_offset_past_end,
        ),
        s(
            "SET_MEM_TABLE size past the fd's end",
            Rejected,
            mem_table_size_past_end,
        ),
        s(
            "SET_MEM_TABLE gpa+size overflows",
            Rejected,
            mem_table_gpa_overflow,
        ),
        s(
            "SET_MEM_TABLE uaddr+size overflows",
            Rejected,
            mem_table_uaddr_overflow,
        ),
        s(
            "SET_MEM_TABLE with an eventfd as memory",
            Rejected,
            mem_table_not_a_memfd,
        ),
        s(
            "SET_VRING_KICK before SET_OWNER, then kick",
            Survives,
            kick_before_owner_and_memory,
        ),
        s(
            "SET_VRING_KICK before SET_MEM_TABLE, then kick",
            Survives,
            kick_before_mem_table,
        ),
        s(
            "SET_VRING_ADDR before SET_MEM_TABLE",
            Rejected,
            vring_addr_before_mem_table,
        ),
        s(
            "SET_VRING_ADDR outside the memory table",
            Rejected,
            vring_addr_outside_memory,
        ),
        s(
            "SET_VRING_ADDR used ring straddling the end",
            Survives,
            vring_addr_straddling_the_end,
        ),
        s("SET_VRING_NUM 0", Rejected, queue_size_zero),
        s("SET_VRING_NUM 100", Survives, queue_size_not_power_of_two),
        s("SET_VRING_NUM 65536", Rejected, queue_size_too_large),
        s(
            "SET_VRING_NUM 32768 (above max)",
            Rejected,
            queue_size_above_max,
        ),
        s(
            "SET_VRING_NUM for queue 99",
            Rejected,
            queue_index_out_of_range,
        ),
        s(
            "SET_VRING_KICK for queue 99",
            Rejected,
            kick_for_missing_queue,
        ),
        s("SET_FEATURES all 64 bits", Rejected, features_never_offered),
        s(
            "SET_PROTOCOL_FEATURES all 64 bits",
            Survives,
            protocol_features_never_offered,
        ),
        s(
            "SET_VRING_ENABLE before SET_FEATURES",
            Survives,
            enable_before_features,
        ),
        s(
            "GET_VRING_BASE of a ring never started",
            Survives,
            get_vring_base_of_idle_ring,
        ),
        s(
            "SET_VRING_CALL without fd or NOFD flag",
            Rejected,
            call_without_fd,
        ),
        s("SET_VRING_KICK with 2 fds", Rejected, kick_with_two_fds),
        s(
            "SET_LOG_BASE without LOG_SHMFD",
            Rejected,
            log_base_without_feature,
        ),
        s(
            "SET_CONFIG offset 0xfffff000",
            Rejected,
            set_config_out_of_range,
        ),
        s(
            "GET_CONFIG offset past config space",
            Survives,
            get_config_out_of_range,
        ),
        s(
            "ADD_MEM_REG without CONFIGURE_MEM_SLOTS",
            Rejected,
            add_mem_reg_without_slots,
        ),
        s(
            "GET_INFLIGHT_FD (not negotiated)",
            Rejected,
            inflight_fd_unsupported,
        ),
        s(
            "SET_OWNER twice, RESET_OWNER, RESET_DEVICE",
            Survives,
            double_owner_and_reset,
        ),
        s(
            "memfd truncated after SET_MEM_TABLE, then kick",
            Survives,
            truncated_memory_then_kick,
        ),
    ]
}

/// Plays every scenario, calling `healthy` after each (which must prove
/// the daemon alive and serving); returns one report line per scenario and
/// the names whose outcome broke their expectation.
pub fn run_all(socket: &Path, mut healthy: impl FnMut(&str)) -> (Vec<String>, Vec<String>) {
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for sc in scenarios() {
        let mut r = Raw::connect(socket);
        let out = (sc.play)(&mut r);
        drop(r);
        healthy(sc.name);
        let ok = match sc.expect {
            Expect::Rejected => out != Outcome::Served,
            Expect::Survives => true,
        };
        report.push(format!("{:<48} {:?}", sc.name, out));
        if !ok {
            broken.push(format!("{} -> {out:?}", sc.name));
        }
    }
    (report, broken)
}
