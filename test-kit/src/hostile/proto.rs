//! The vhost-user wire format, built by hand: request codes, header
//! flags, feature bits, payload builders, and one message written with its
//! fds (SCM_RIGHTS). Hand-built so a hostile frontend and the fuzzers can
//! send what no real frontend library would.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Request codes (front-end to back-end).
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

/// Header flags: version 1, reply, need-reply.
pub const V1: u32 = 0x1;
pub const REPLY: u32 = 0x4;
pub const NEED_REPLY: u32 = 0x8;

/// Virtio feature bits (F_) and vhost-user protocol feature bits (PF_).
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_VERSION_1: u64 = 1 << 32;
pub const PF_MQ: u64 = 1 << 0;
pub const PF_REPLY_ACK: u64 = 1 << 3;
pub const PF_CONFIG: u64 = 1 << 9;
pub const PF_INFLIGHT_SHMFD: u64 = 1 << 12;

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

/// Little-endian u32s.
pub fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian u64s.
pub fn u64s(v: &[u64]) -> Vec<u8> {
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

/// Writes one message: header (`req`, `flags`, `size`, where `size` may
/// lie about the payload), the payload, and `fds` with the first bytes.
/// Errors (the daemon already hung up) are returned.
pub fn write_message(
    s: &mut UnixStream,
    req: u32,
    flags: u32,
    size: u32,
    payload: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    let mut buf = u32s(&[req, flags, size]);
    buf.extend_from_slice(payload);
    if fds.is_empty() {
        return s.write_all(&buf);
    }
    let n = s
        .send_with_fds(&[&buf[..]], fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    s.write_all(&buf[n..])
}
