//! Dirty-page logging (issue 15): with a log installed (SET_LOG_BASE,
//! memfd bitmap) and LOG_ALL acked, every path on which the daemon writes
//! guest memory marks exactly the 4 KiB pages it wrote — io_uring reads
//! (cache=none), inline reads (writeback, warm page cache), qcow2 reads,
//! GET_ID's serial, status bytes, the used ring (and EVENT_IDX's
//! avail_event) — and nothing else: a write request's buffers are not
//! marked. No marks without LOG_ALL; a log too small for the memory table
//! ends the connection; the test-only `--test-never-mark-dirty` offers
//! logging and marks nothing. The daemons run sandboxed (the default), so
//! SET_LOG_BASE's mmap and fstat pass seccomp here too.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::dirty::*;
use common::*;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use viaduct_test_kit::images::{qemu_img, qemu_io};

const QS: u16 = 64;
const IMG: usize = 4 << 20;

/// Slot 0's status byte (where [`TestQueue::request`] puts it).
fn status_byte(q: &TestQueue) -> (u64, u64) {
    (q.scratch(0) + 16, 1)
}

/// A 12 KiB read into two buffers (8 KiB and 4 KiB, a buffer apart): the
/// pages of those buffers, the status byte and the used ring are marked,
/// nothing else; the data is the image's.
fn read_marks_exactly_what_it_wrote(q: &mut TestQueue, log: &LogBitmap) {
    q.fill(1, 8192, 0xee);
    q.fill(3, 4096, 0xee);
    log.clear();
    let (status, len) = q.request(VIRTIO_BLK_T_IN, 16, &[(1, 8192), (3, 4096)]);
    assert_eq!((status, len), (S_OK, 12 * 1024 + 1));
    let want = pages(&[
        (q.buf(1), 8192),
        (q.buf(3), 4096),
        status_byte(q),
        used_ring(q),
    ]);
    assert_marked(log, &want);
    let want_data = |from: u64, n: u64| (0..n).map(|i| pattern(from + i / 512)).collect::<Vec<_>>();
    assert!(q.read_buf(1, 8192) == want_data(16, 8192));
    assert!(q.read_buf(3, 4096) == want_data(32, 4096));
}

#[test]
fn an_io_uring_read_marks_its_buffers_status_byte_and_used_ring() {
    let (_dir, d) = serve_raw_image("dl-uring", IMG, &["--cache", "none", "--sandbox", "on"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, true);
    read_marks_exactly_what_it_wrote(&mut s.queues[0], &log);
}

#[test]
fn an_inline_read_marks_its_buffers_status_byte_and_used_ring() {
    // The image was just written: its pages are in the page cache, so the
    // RWF_NOWAIT preadv2 serves the read inline.
    let (_dir, d) = serve_raw_image("dl-inline", IMG, &["--cache", "writeback"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, true);
    for _ in 0..2 {
        read_marks_exactly_what_it_wrote(&mut s.queues[0], &log);
    }
}

#[test]
fn a_qcow2_read_marks_its_buffers_status_byte_and_used_ring() {
    let dir = TempDir::new("dl-qcow2");
    let img = dir.path("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "4M"]);
    qemu_io(&img, "write -P 0x5a 1M 64k");
    let d = Daemon::start(&dir.path("sock"), &img, &["--format", "qcow2"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, true);
    let q = &mut s.queues[0];
    q.fill(2, 8192, 0);
    log.clear();
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 2048, &[(2, 8192)]).0, S_OK);
    assert!(q.read_buf(2, 8192).iter().all(|&b| b == 0x5a));
    assert_marked(
        &log,
        &pages(&[(q.buf(2), 8192), status_byte(q), used_ring(q)]),
    );
}

#[test]
fn get_id_marks_its_buffer_status_byte_and_used_ring() {
    let (_dir, d) = serve_raw_image("dl-getid", IMG, &["--serial", "migrating-disk"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, true);
    let q = &mut s.queues[0];
    log.clear();
    let (status, len) = q.request(VIRTIO_BLK_T_GET_ID, 0, &[(5, 20)]);
    assert_eq!((status, len), (S_OK, 21));
    assert_eq!(&q.read_buf(5, 14), b"migrating-disk");
    assert_marked(
        &log,
        &pages(&[(q.buf(5), 20), status_byte(q), used_ring(q)]),
    );
}

#[test]
fn writes_and_rejected_requests_mark_only_their_status_byte_and_the_used_ring() {
    let (_dir, d) = serve_raw_image("dl-write", IMG, &["--cache", "none"]);
    let (mut s, log) = logged(&d.socket, QS, !F_EVENT_IDX, true);
    let q = &mut s.queues[0];
    let only_status = pages(&[status_byte(q), used_ring(q)]);
    q.fill(4, 8192, 0x42);
    log.clear();
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 8, &[(4, 8192)]).0, S_OK);
    assert_marked(&log, &only_status);
    log.clear();
    assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    assert_marked(&log, &only_status);
    // Past the end of the disk: rejected before any engine, IOERR.
    log.clear();
    let last = (IMG / 512) as u64;
    assert_eq!(q.request(VIRTIO_BLK_T_IN, last, &[(6, 512)]).0, S_IOERR);
    assert_marked(&log, &only_status);
    log.clear();
    assert_eq!(q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0), S_OK);
    assert_marked(&log, &only_status);
}

#[test]
fn event_idx_avail_event_updates_mark_the_used_ring() {
    let (_dir, d) = serve_raw_image("dl-eventidx", IMG, &[]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1 | F_EVENT_IDX, true);
    assert_ne!(s.features & F_EVENT_IDX, 0);
    let q = &mut s.queues[0];
    // A kick with nothing available: the worker only rewrites avail_event.
    log.clear();
    q.kick();
    assert_marked(&log, &pages(&[used_ring(q)]));
    // And a read with EVENT_IDX marks what it wrote, as without.
    read_marks_exactly_what_it_wrote(q, &log);
}

#[test]
fn nothing_is_marked_while_log_all_is_off() {
    let (_dir, d) = serve_raw_image("dl-off", IMG, &["--cache", "none"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, false);
    assert_eq!(
        s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(1, 4096)]).0,
        S_OK
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(log.marked().is_empty(), "marked without LOG_ALL");
    // On: marks; off again: none.
    set_log_all(&mut s, true);
    read_marks_exactly_what_it_wrote(&mut s.queues[0], &log);
    set_log_all(&mut s, false);
    log.clear();
    assert_eq!(
        s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(1, 4096)]).0,
        S_OK
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        log.marked().is_empty(),
        "marked after LOG_ALL was withdrawn"
    );
}

#[test]
fn a_log_too_small_for_the_memory_table_ends_the_connection() {
    let (_dir, mut d) = serve_raw_image("dl-short", IMG, &[]);
    let mut s = connect(&d.socket, 1, QS, F_VERSION_1);
    s.fe.set_protocol_features(s.protocol | VhostUserProtocolFeatures::LOG_SHMFD)
        .unwrap();
    // 512 bytes of log cover 16 MiB; the guest has 32.
    let file = viaduct_test_kit::memory::memfd(c"short-log", 4096).unwrap();
    let short = VhostUserDirtyLogRegion {
        mmap_size: 512,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    assert!(
        s.fe.set_log_base(0, Some(short)).is_err(),
        "a short log was accepted"
    );
    assert!(
        s.fe.get_features().is_err(),
        "the connection goes on after a short log"
    );
    drop(s);
    // The daemon serves the next frontend, whose log fits.
    assert!(d.alive());
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1, true);
    read_marks_exactly_what_it_wrote(&mut s.queues[0], &log);
}

#[test]
fn the_negative_control_offers_logging_and_marks_nothing() {
    let (_dir, d) = serve_raw_image("dl-never", IMG, &["--test-never-mark-dirty"]);
    let (mut s, log) = logged(&d.socket, QS, F_VERSION_1 | F_EVENT_IDX, true);
    let q = &mut s.queues[0];
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(1, 8192)]).0, S_OK);
    assert!(q.read_buf(1, 512).iter().all(|&b| b == pattern(0)));
    assert_eq!(q.request(VIRTIO_BLK_T_GET_ID, 0, &[(2, 20)]).0, S_OK);
    std::thread::sleep(Duration::from_millis(50));
    assert!(log.marked().is_empty(), "--test-never-mark-dirty marked");
}
