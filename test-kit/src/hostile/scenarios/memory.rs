//! Hostile SET_MEM_TABLE messages: fds missing or of the wrong kind,
//! region counts that lie, and regions that overlap, are empty, overflow
//! or reach past the end of their file.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use crate::hostile::proto::*;
use crate::hostile::raw::{MEM, Raw, eventfd, memfd};
use crate::hostile::scenario::{Expect, Outcome, Scenario};

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

/// This group's sessions, in catalogue order.
pub(super) fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    let s = |name, expect, play| Scenario { name, expect, play };
    vec![
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
    ]
}
