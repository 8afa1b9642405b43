//! In-process vhost-user tests: the real daemon binary, the vhost crate's
//! frontend over a real unix socket, memfd guest memory, hand-built split
//! rings, a real raw image served through io_uring.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};

const T: Duration = Duration::from_secs(10);
const IMG: usize = 8 << 20;

#[test]
fn negotiation_and_config_space() {
    let (_dir, d) = serve_raw_image("neg", IMG, &["--num-queues", "2", "--serial", "viaduct-0"]);
    let mut s = connect(&d.socket, 2, 128, !0);
    assert_ne!(s.features & F_VERSION_1, 0);
    assert_ne!(s.features & F_EVENT_IDX, 0);
    assert_ne!(s.features & F_INDIRECT, 0);
    assert_eq!(s.features & (1 << 5), 0, "RO must not be offered");
    assert_eq!(s.features & (1 << 34), 0, "RING_PACKED must not be offered");
    let offered = s.fe.get_protocol_features().unwrap();
    assert_eq!(
        offered,
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::LOG_SHMFD
    );
    assert_eq!(s.fe.get_queue_num().unwrap(), 2);
    let (_, cfg) =
        s.fe.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (IMG / 512) as u64
    );
    assert_eq!(u32_at(12), 254, "seg_max = max queue size - 2");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(cfg[32], 1, "writeback");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2, "num_queues");
    assert!(u32_at(36) > 0, "max_discard_sectors");
    let (status, len) = s.queues[0].request(VIRTIO_BLK_T_GET_ID, 0, &[(0, 20)]);
    assert_eq!((status, len), (S_OK, 21));
    assert_eq!(
        &s.queues[0].read_buf(0, 20),
        b"viaduct-0\0\0\0\0\0\0\0\0\0\0\0"
    );
}

#[test]
fn reads_and_writes_through_real_rings() {
    let (dir, d) = serve_raw_image("rw", IMG, &[]);
    let mut s = connect(&d.socket, 1, 256, !F_EVENT_IDX);
    let q = &mut s.queues[0];

    // Read sectors 8..17 into two buffers (4 KiB + 512 B).
    let (status, len) = q.request(VIRTIO_BLK_T_IN, 8, &[(0, 4096), (1, 512)]);
    assert_eq!((status, len), (S_OK, 4609));
    let a = q.read_buf(0, 4096);
    for (i, chunk) in a.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| b == pattern(8 + i as u64)));
    }
    assert!(q.read_buf(1, 512).iter().all(|&b| b == pattern(16)));

    // Write 8 KiB of 0xab at sector 100, flush, read back, and check the file.
    q.fill(2, 8192, 0xab);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 100, &[(2, 8192)]), (S_OK, 1));
    assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    q.fill(3, 8192, 0);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 100, &[(3, 8192)]), (S_OK, 8193));
    assert!(q.read_buf(3, 8192).iter().all(|&b| b == 0xab));
    let f = std::fs::File::open(dir.path("disk.img")).unwrap();
    let mut on_disk = vec![0u8; 8192];
    f.read_exact_at(&mut on_disk, 100 * 512).unwrap();
    assert!(on_disk.iter().all(|&b| b == 0xab));

    // Bad requests get their status and the queue keeps going.
    let last = (IMG / 512) as u64;
    assert_eq!(q.request(VIRTIO_BLK_T_IN, last, &[(0, 512)]).0, S_IOERR);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, u64::MAX, &[(0, 512)]).0, S_IOERR);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 100)]).0, S_IOERR);
    assert_eq!(q.request(77, 0, &[]).0, S_UNSUPP);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, last - 1, &[(0, 512)]).0, S_OK);
}

#[test]
fn write_zeroes_and_discard() {
    let (dir, d) = serve_raw_image("wz", IMG, &[]);
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    assert_eq!(q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 16, 8, 0), S_OK);
    assert_eq!(q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 32, 8, 1), S_OK);
    assert_eq!(q.range_request(VIRTIO_BLK_T_DISCARD, 64, 16, 0), S_OK);
    assert_eq!(q.range_request(VIRTIO_BLK_T_DISCARD, 64, 16, 1), S_UNSUPP);
    assert_eq!(
        q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 4),
        S_UNSUPP
    );
    assert_eq!(
        q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, (IMG / 512) as u64 - 4, 8, 0),
        S_IOERR
    );
    let f = std::fs::File::open(dir.path("disk.img")).unwrap();
    for (sector, n) in [(16u64, 8usize), (32, 8), (64, 16)] {
        let mut v = vec![0xffu8; n * 512];
        f.read_exact_at(&mut v, sector * 512).unwrap();
        assert!(v.iter().all(|&b| b == 0), "sector {sector} not zeroed");
    }
    // Neighbours untouched.
    let mut v = vec![0u8; 512];
    f.read_exact_at(&mut v, 24 * 512).unwrap();
    assert!(v.iter().all(|&b| b == pattern(24)));
}

#[test]
fn many_requests_in_flight_with_cache_none() {
    let (_dir, d) = serve_raw_image("qd", IMG, &["--cache", "none"]);
    let mut s = connect(&d.socket, 1, 128, !F_EVENT_IDX);
    let q = &mut s.queues[0];
    for i in 0..32u64 {
        q.queue_request(i, VIRTIO_BLK_T_IN, i * 8, &[(i, 4096)]);
    }
    q.kick();
    let used = q.wait_used(32, T);
    assert_eq!(used.len(), 32);
    for i in 0..32u64 {
        assert_eq!(q.status(i), S_OK);
        for (k, chunk) in q.read_buf(i, 4096).chunks(512).enumerate() {
            assert!(chunk.iter().all(|&b| b == pattern(i * 8 + k as u64)));
        }
    }
}

#[test]
fn multi_queue_io_is_independent() {
    let (_dir, d) = serve_raw_image("mq", IMG, &["--num-queues", "2"]);
    let mut s = connect(&d.socket, 2, 64, !F_EVENT_IDX);
    for q in 0..2usize {
        let tq = &mut s.queues[q];
        tq.fill(0, 4096, 0x10 + q.to_le_bytes()[0]);
        assert_eq!(
            tq.request(VIRTIO_BLK_T_OUT, 1000 + 8 * q as u64, &[(0, 4096)])
                .0,
            S_OK
        );
    }
    // Each queue reads what the other wrote.
    for q in 0..2usize {
        let other = 1 - q;
        let tq = &mut s.queues[q];
        assert_eq!(
            tq.request(VIRTIO_BLK_T_IN, 1000 + 8 * other as u64, &[(1, 4096)])
                .0,
            S_OK
        );
        assert!(
            tq.read_buf(1, 4096)
                .iter()
                .all(|&b| b == 0x10 + other.to_le_bytes()[0])
        );
    }
}

#[test]
fn event_idx_suppresses_and_delivers_interrupts() {
    let (_dir, d) = serve_raw_image("eidx", IMG, &[]);
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_ne!(s.features & F_EVENT_IDX, 0);
    let q = &mut s.queues[0];
    // Ask to be interrupted only after used idx passes 10: the first request
    // completes silently.
    q.set_used_event(10);
    q.queue_request(0, VIRTIO_BLK_T_IN, 0, &[(0, 512)]);
    q.kick();
    let deadline = std::time::Instant::now() + T;
    while q.used_idx() != 1 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !q.wait_call(Duration::from_millis(200)),
        "interrupt despite used_event"
    );
    let _ = q.wait_used(1, T);
    // With used_event = 1 the next completion interrupts.
    q.set_used_event(1);
    q.queue_request(1, VIRTIO_BLK_T_IN, 8, &[(1, 512)]);
    q.kick();
    assert!(
        q.wait_call(T),
        "no interrupt although used_event asked for one"
    );
    assert_eq!(q.status(1), S_OK);
}

#[test]
fn read_only_refuses_writes() {
    let (_dir, d) = serve_raw_image("ro", IMG, &["--read-only"]);
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_ne!(s.features & (1 << 5), 0);
    let q = &mut s.queues[0];
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 0, &[(0, 512)]).0, S_IOERR);
    assert_eq!(q.range_request(VIRTIO_BLK_T_DISCARD, 0, 8, 0), S_IOERR);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
    assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
}

#[test]
fn malformed_message_closes_only_that_connection() {
    let (_dir, mut d) = serve_raw_image("bad", IMG, &[]);
    {
        let mut sock = UnixStream::connect(&d.socket).unwrap();
        // Header: request 0xdead, flags v1, size 0xffff (more than any body).
        let mut msg = Vec::new();
        msg.extend_from_slice(&0xdeadu32.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&0xffffu32.to_le_bytes());
        sock.write_all(&msg).unwrap();
        sock.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 16];
        // The daemon hangs up on us.
        assert_eq!(sock.read(&mut buf).unwrap_or(0), 0);
    }
    assert!(d.alive());
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_eq!(s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
}

#[test]
fn relisten_after_disconnect_with_fresh_state() {
    let (_dir, mut d) = serve_raw_image("relisten", IMG, &[]);
    for round in 0..3u8 {
        let mut s = connect(&d.socket, 1, 64, !0);
        let q = &mut s.queues[0];
        q.fill(0, 512, round + 1);
        assert_eq!(q.request(VIRTIO_BLK_T_OUT, 200, &[(0, 512)]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 200, &[(1, 512)]).0, S_OK);
        assert!(q.read_buf(1, 512).iter().all(|&b| b == round + 1));
        // Orderly stop of the ring, as QEMU does, then hang up.
        assert_eq!(s.fe.get_vring_base(0).unwrap(), 2);
        drop(s);
    }
    assert!(d.alive());
}

#[test]
fn corrupt_ring_stops_that_queue_only() {
    let (_dir, d) = serve_raw_image("corrupt", IMG, &["--num-queues", "2"]);
    let mut s = connect(&d.socket, 2, 16, !F_EVENT_IDX);
    // The frontend's error eventfd for queue 0 (viaduct sets NEEDS_RESET on it).
    let err = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    s.fe.set_vring_err(0, &err).unwrap();
    // A request with a reply: the handler has taken SET_VRING_ERR before the
    // kick below (kicks bypass the socket). viaduct sends it before enabling.
    s.fe.get_features().unwrap();
    // Avail index jumps by more than the queue size.
    s.queues[0].set_avail_idx(100);
    s.queues[0].kick();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut told = None;
    while told.is_none() && std::time::Instant::now() < deadline {
        told = err.read().ok();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(told, Some(1), "the frontend was told the ring is broken");
    assert_eq!(s.queues[0].used_idx(), 0);
    // Queue 1 is unaffected.
    assert_eq!(s.queues[1].request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
    drop(s);
    // A new connection starts clean.
    let mut s = connect(&d.socket, 2, 16, !0);
    assert_eq!(s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
}

#[test]
fn chain_without_status_is_returned_and_queue_continues() {
    let (_dir, d) = serve_raw_image("nostatus", IMG, &[]);
    let mut s = connect(&d.socket, 1, 16, !F_EVENT_IDX);
    let q = &mut s.queues[0];
    q.write_header(0, VIRTIO_BLK_T_IN, 0);
    let head = q.add_chain(&[(q.scratch(0), 16, false), (q.buf(0), 512, false)]);
    q.publish(head);
    q.kick();
    assert_eq!(q.wait_used(1, T), vec![(u32::from(head), 0)]);
    // Buffer beyond guest memory: IOERR, nothing dereferenced.
    q.write_header(1, VIRTIO_BLK_T_IN, 0);
    let head = q.add_chain(&[
        (q.scratch(1), 16, false),
        (u64::MAX - 4096, 512, true),
        (q.scratch(1) + 16, 1, true),
    ]);
    q.publish(head);
    q.kick();
    q.wait_used(1, T);
    assert_eq!(q.status(1), S_IOERR);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 512)]).0, S_OK);
}

#[test]
fn get_vring_base_waits_for_requests_in_flight() {
    let (_dir, d) = serve_raw_image("stop", IMG, &["--cache", "none", "--queue-size", "512"]);
    let mut s = connect(&d.socket, 1, 512, !F_EVENT_IDX);
    let q = &mut s.queues[0];
    // 150 x 256 KiB O_DIRECT reads (all into the same scratch buffer).
    for i in 0..150u64 {
        q.queue_request(i, VIRTIO_BLK_T_IN, (i * 512) % 16000, &[(0, 256 << 10)]);
    }
    q.kick();
    // Once the first completion is visible the worker has popped the batch;
    // most of it is still in the kernel.
    while q.used_idx() == 0 {
        std::hint::spin_loop();
    }
    let base = s.fe.get_vring_base(0).unwrap();
    let used_at_reply = s.queues[0].used_idx();
    std::thread::sleep(Duration::from_millis(100));
    // Everything popped was completed before the ring was handed back, and
    // nothing is written to the used ring afterwards.
    assert_eq!(base, 150);
    assert_eq!(u32::from(used_at_reply), base);
    assert_eq!(s.queues[0].used_idx(), used_at_reply);
}

#[test]
fn busy_poll_mode_serves_requests() {
    let (_dir, d) = serve_raw_image("poll", IMG, &["--poll-us", "2000"]);
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    for round in 0..20u64 {
        assert_eq!(q.request(VIRTIO_BLK_T_IN, round, &[(0, 512)]).0, S_OK);
        assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(round)));
    }
}

#[test]
fn write_cache_toggle_and_4k_blocks() {
    let (_dir, d) = serve_raw_image("wce", IMG, &["--logical-block-size", "4096"]);
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_ne!(
        s.features & (1 << 10),
        0,
        "TOPOLOGY offered for 4 KiB blocks"
    );
    assert_ne!(s.features & (1 << 11), 0, "CONFIG_WCE offered");
    let read_cfg = |s: &mut Session| {
        s.fe.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap()
            .1
    };
    let cfg = read_cfg(&mut s);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 4096);
    assert_eq!(cfg[32], 1);
    s.fe.set_config(32, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    assert_eq!(read_cfg(&mut s)[32], 0);
    // Writes still work (now durable on completion).
    let q = &mut s.queues[0];
    q.fill(0, 4096, 0x42);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 8, &[(0, 4096)]).0, S_OK);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 8, &[(1, 4096)]).0, S_OK);
    assert!(q.read_buf(1, 4096).iter().all(|&b| b == 0x42));
}

#[test]
fn memory_given_with_add_mem_reg() {
    let (_dir, d) = serve_raw_image("memslots", IMG, &[]);
    let mut s = connect_with(&d.socket, 1, 64, !0, true);
    assert!(
        s.protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    );
    let q = &mut s.queues[0];
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 3, &[(0, 512)]).0, S_OK);
    assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(3)));
}

#[test]
fn null_io_completes_without_touching_the_image_and_still_validates() {
    let (dir, d) = serve_raw_image("null", IMG, &["--null-io"]);
    let before = std::fs::read(dir.path("disk.img")).unwrap();
    let mut s = connect(&d.socket, 1, 16, !0);
    let q = &mut s.queues[0];
    q.fill(2, 8192, 0xab);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 100, &[(2, 8192)]), (S_OK, 1));
    assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    q.fill(3, 4096, 0x5a);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 8, &[(3, 4096)]), (S_OK, 4097));
    assert!(
        q.read_buf(3, 4096).iter().all(|&b| b == 0x5a),
        "no data moved into the buffer"
    );
    // Validation still runs before the (absent) I/O.
    let last = (IMG / 512) as u64;
    assert_eq!(q.request(VIRTIO_BLK_T_IN, last, &[(0, 512)]).0, S_IOERR);
    drop(s);
    assert_eq!(std::fs::read(dir.path("disk.img")).unwrap(), before);
}
