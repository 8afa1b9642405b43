//! Hostile ring set-up: kicks before there is memory, ring addresses
//! outside or straddling guest memory, bad queue sizes and indices.

use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::hostile::proto::*;
use crate::hostile::raw::{MEM, Raw, eventfd, memfd};
use crate::hostile::scenario::{Expect, Outcome, Scenario};

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

/// This group's sessions, in catalogue order.
pub(super) fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    let s = |name, expect, play| Scenario { name, expect, play };
    vec![
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
    ]
}
