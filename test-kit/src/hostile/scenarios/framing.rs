//! Hostile sessions that break the message framing: unknown requests,
//! payloads of the wrong size, a header size that lies, wrong flags, and
//! fds on messages that take none.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::hostile::proto::*;
use crate::hostile::raw::{MEM, Raw, eventfd, memfd};
use crate::hostile::scenario::{Expect, Outcome, Scenario};

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
    let _ = write_message(&mut r.s, SET_FEATURES, V1, 0x800, &[0u8; 8], &[]);
    let _ = r.s.shutdown(std::net::Shutdown::Write);
    let mut b = [0u8; 1];
    match r.s.read(&mut b) {
        Ok(0) | Err(_) => Outcome::Closed,
        Ok(_) => Outcome::Served,
    }
}

fn size_above_maximum(r: &mut Raw) -> Outcome {
    let _ = write_message(&mut r.s, SET_MEM_TABLE, V1, 0x10_0000, &[0u8; 64], &[]);
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

/// This group's sessions, in catalogue order.
pub(super) fn scenarios() -> Vec<Scenario> {
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
    ]
}
