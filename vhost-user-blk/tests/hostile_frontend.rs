//! A hostile frontend and a hostile guest against the real vhost-user-blk
//! binary (sandbox on, its default): every raw-message scenario of the test
//! kit's hostile frontend, full pipes for notification fds (its
//! `full_pipe`), then ring abuse the other suites do not cover. After
//! each one the daemon process must be alive and a fresh, well-behaved
//! frontend must complete a write and a read.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use viaduct_test_kit::hostile::{self as raw, full_pipe};
use viaduct_test_kit::procfs;
use virtio_queue::desc::split::Descriptor;

const T: Duration = Duration::from_secs(10);
const IMG: usize = 8 << 20;

/// Alive, and a fresh frontend writes and reads back one sector.
fn assert_serving(d: &mut Daemon, after: &str) {
    assert!(d.alive(), "daemon died after: {after}");
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    q.fill(0, 512, 0x5a);
    assert_eq!(
        q.request(VIRTIO_BLK_T_OUT, 9, &[(0, 512)]).0,
        S_OK,
        "{after}"
    );
    assert_eq!(
        q.request(VIRTIO_BLK_T_IN, 9, &[(1, 512)]).0,
        S_OK,
        "{after}"
    );
    assert!(q.read_buf(1, 512).iter().all(|&b| b == 0x5a), "{after}");
}

#[test]
fn hostile_messages_are_rejected_and_the_daemon_serves_on() {
    let (_dir, mut d) = serve_raw_image("hostile-msg", IMG, &[]);
    let socket = d.socket.clone();
    let (report, broken) = raw::run_all(&socket, |name| assert_serving(&mut d, name));
    println!("{}", report.join("\n"));
    assert!(broken.is_empty(), "accepted: {broken:#?}");
}

#[test]
fn head_reused_while_in_flight_stops_the_queue() {
    let (_dir, mut d) = serve_raw_image(
        "hostile-reuse",
        IMG,
        &["--cache", "none", "--queue-size", "256"],
    );
    {
        let mut s = connect(&d.socket, 1, 256, !F_EVENT_IDX);
        let q = &mut s.queues[0];
        // Long O_DIRECT reads keep heads in flight; then publish the first
        // head again while it is.
        let mut heads = Vec::new();
        for i in 0..32u64 {
            heads.push(q.queue_request(i, VIRTIO_BLK_T_IN, i * 8, &[(0, 256 << 10)]));
        }
        for _ in 0..4 {
            q.publish(heads[0]);
        }
        q.kick();
        std::thread::sleep(Duration::from_millis(300));
        // Whatever completed, the reused head never completed twice and
        // the queue stopped: a new request is not served.
        let used = q.wait_used(0, T);
        let again = used
            .iter()
            .filter(|(id, _)| *id == u32::from(heads[0]))
            .count();
        assert!(again <= 1, "head completed {again} times");
        let before = q.used_idx();
        q.queue_request(40, VIRTIO_BLK_T_IN, 0, &[(1, 512)]);
        q.kick();
        std::thread::sleep(Duration::from_millis(200));
        assert!(q.used_idx() - before <= 32, "queue kept going");
        assert_eq!(q.status(40), 0xff, "request after the reuse was served");
    }
    assert_serving(&mut d, "head reuse");
}

#[test]
fn descriptors_rewritten_after_the_daemon_read_them() {
    let (_dir, mut d) = serve_raw_image(
        "hostile-toctou",
        IMG,
        &["--cache", "none", "--queue-size", "256"],
    );
    {
        let mut s = connect(&d.socket, 1, 256, !F_EVENT_IDX);
        let q = &mut s.queues[0];
        const N: u64 = 48;
        // Request i reads sector i*8 into buffer i (4 KiB).
        for i in 0..N {
            q.fill(i, 4096, 0);
            q.queue_request(i, VIRTIO_BLK_T_IN, i * 8, &[(i, 4096)]);
        }
        q.kick();
        let start = Instant::now();
        while q.used_idx() == 0 && start.elapsed() < T {
            std::hint::spin_loop();
        }
        // Rewrite every descriptor: half the chains now read into buffer 63
        // (zeroed) with status in scratch slot 60, the other half start
        // outside memory and loop on themselves.
        q.fill(63, 0x4000, 0);
        q.write_header(60, VIRTIO_BLK_T_IN, 0);
        for idx in 0..(3 * u16::try_from(N).expect("N")) {
            let d = match idx % 3 {
                0 if idx % 2 == 0 => Descriptor::new(q.scratch(60), 16, 1, idx + 1),
                0 => Descriptor::new(u64::MAX - 8, 16, 1, idx),
                1 => Descriptor::new(q.buf(63), 0x4000, 3, idx + 1),
                _ => Descriptor::new(q.scratch(60) + 16, 1, 2, 0),
            };
            q.write_desc(idx, d);
        }
        std::thread::sleep(Duration::from_millis(300));
        // Every status the daemon wrote into an original slot goes with
        // the right data in the original buffer; nothing was mixed.
        for i in 0..N {
            let st = q.status(i);
            assert!(matches!(st, 0xff | S_OK | S_IOERR), "slot {i}: {st}");
            if st == S_OK {
                let data = q.read_buf(i, 4096);
                for (k, sector) in data.chunks(512).enumerate() {
                    let want = pattern(i * 8 + k as u64);
                    assert!(sector.iter().all(|&b| b == want), "slot {i} sector {k}");
                }
            }
        }
        assert!(matches!(q.status(60), 0xff | S_IOERR));
    }
    assert_serving(&mut d, "descriptor rewrite");
}

#[test]
fn avail_index_far_ahead_then_a_new_connection() {
    let (_dir, mut d) = serve_raw_image("hostile-avail", IMG, &[]);
    {
        let mut s = connect(&d.socket, 1, 16, !F_EVENT_IDX);
        let q = &mut s.queues[0];
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
        // 1 + 17 > queue size 16: the device must stop this queue.
        q.set_avail_idx(1 + 17);
        q.kick();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(q.used_idx(), 1);
        // Even a sane index afterwards is not served: the ring is broken
        // until the frontend resets it.
        q.set_avail_idx(2);
        q.kick();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(q.used_idx(), 1);
    }
    assert_serving(&mut d, "avail index ahead");
}

#[test]
fn queue_size_not_a_power_of_two_never_activates() {
    let (_dir, mut d) = serve_raw_image("hostile-qsize", IMG, &[]);
    {
        // vhost-user-backend acks SET_VRING_NUM 100; the queue must still
        // refuse to run rather than guess a layout.
        let mut s = connect(&d.socket, 1, 100, !F_EVENT_IDX);
        let q = &mut s.queues[0];
        q.queue_request(0, VIRTIO_BLK_T_IN, 0, &[(0, 512)]);
        q.kick();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(q.used_idx(), 0);
        assert_eq!(q.status(0), 0xff);
    }
    assert_serving(&mut d, "queue size 100");
}

#[test]
fn memfd_truncated_under_the_daemon_is_survived() {
    let dir = TempDir::new("hostile-sigbus");
    raw_image(&dir.path("disk.img"), IMG);
    let log = dir.path("log");
    let mut d = Daemon::start_logged(&dir.path("sock"), &dir.path("disk.img"), &[], Some(&log));
    let mut r = raw::Raw::connect(&d.socket);
    assert_eq!(
        raw::truncated_memory_then_kick(&mut r),
        raw::Outcome::Served
    );
    drop(r);
    assert_serving(&mut d, "truncated memfd");
    // The daemon really touched the vanished pages and lived.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("event=guest_memory_faults"), "{text}");
}

#[test]
fn connections_do_not_leak_eventfds() {
    let (_dir, mut d) = serve_raw_image("hostile-fds", IMG, &["--num-queues", "2"]);
    assert_serving(&mut d, "warm-up");
    std::thread::sleep(Duration::from_millis(100));
    let base = procfs::eventfds(Some(d.child.id()));
    for i in 0..10 {
        assert_serving(&mut d, &format!("good {i}"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let good = procfs::eventfds(Some(d.child.id()));
    assert!(
        good <= base,
        "eventfds: {base} before, {good} after 10 good connections"
    );
    for _ in 0..10 {
        // Hostile: fds on messages that take none, two fds on a kick.
        let mut r = raw::Raw::connect(&d.socket);
        r.hello();
        let (a, b) = (raw::eventfd(), raw::eventfd());
        let _ = r.send(
            raw::GET_FEATURES,
            raw::V1,
            &[],
            &[a.as_raw_fd(), b.as_raw_fd()],
        );
        drop(r);
        let mut r = raw::Raw::connect(&d.socket);
        r.hello();
        let _ = r.acked(
            raw::SET_VRING_KICK,
            &0u64.to_le_bytes(),
            &[a.as_raw_fd(), b.as_raw_fd()],
        );
        drop(r);
    }
    assert_serving(&mut d, "final");
    std::thread::sleep(Duration::from_millis(200));
    let after = procfs::eventfds(Some(d.child.id()));
    assert!(
        after <= base,
        "eventfds: {base} before, {after} after 30 connections"
    );
}

/// A full pipe as the kick (with the relay's self-kick), error or call fd:
/// the fd is refused (a failed ack), and however the session went, once it
/// hangs up a new connection is served within a few seconds. Before the
/// fix each write parked its thread for good and the daemon never accepted
/// again (the probe timed out after 5 s). One daemon per case, so each
/// case shows on its own.
#[test]
fn a_full_pipe_as_a_notification_fd_never_stalls_the_daemon() {
    type Session = fn(&mut raw::Raw, std::os::fd::RawFd) -> full_pipe::Acks;
    let cases: [(&str, u32, Session); 3] = [
        (
            "kick (self-kick)",
            raw::SET_VRING_KICK,
            full_pipe::pipe_as_kick,
        ),
        ("error", raw::SET_VRING_ERR, full_pipe::pipe_as_err),
        ("call", raw::SET_VRING_CALL, full_pipe::pipe_as_call),
    ];
    let mut failed = Vec::new();
    for (name, req, play) in cases {
        let (_dir, mut d) = serve_raw_image("hostile-pipe", IMG, &[]);
        // The read end stays open until the probe is done: the pipe stays full.
        let (_read_end, write_end) = full_pipe::full_pipe();
        let mut r = raw::Raw::connect(&d.socket);
        let acks = play(&mut r, write_end.as_raw_fd());
        drop(write_end);
        drop(r);
        let served = full_pipe::served_within(&d.socket);
        let ack = acks.iter().find(|(r, _)| *r == req).and_then(|(_, a)| *a);
        println!("full pipe as {name}: ack {ack:?}, next connection served after {served:?}");
        if served.is_none_or(|t| t >= Duration::from_secs(3)) {
            failed.push(format!("{name}: next connection not served ({served:?})"));
            continue;
        }
        if ack.is_none_or(|a| a == 0) {
            failed.push(format!("{name}: fd accepted ({ack:?})"));
        }
        assert_serving(&mut d, name);
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
