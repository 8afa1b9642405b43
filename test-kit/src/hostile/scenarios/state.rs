//! Hostile protocol state: features never offered, messages out of order
//! or for features not negotiated, and guest memory that vanishes under a
//! running ring.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::hostile::proto::*;
use crate::hostile::raw::{MEM, Raw, eventfd, memfd};
use crate::hostile::scenario::{Expect, Outcome, Scenario};

/// Where [`truncated_memory_then_kick`] puts queue 0's descriptor table
/// (avail ring at +0x1000, used ring at +0x2000).
const RING: u64 = 0x1000;

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
    mem.write_all_at(&desc, RING).expect("write the ring");
    mem.write_all_at(&[0, 0, 1, 0, 0, 0], RING + 0x1000)
        .expect("write the ring");
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

/// This group's sessions, in catalogue order.
pub(super) fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    let s = |name, expect, play| Scenario { name, expect, play };
    vec![
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
