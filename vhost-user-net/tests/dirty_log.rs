//! Live migration, in process: with the frontend's dirty log installed and
//! `VHOST_F_LOG_ALL` acked, the daemon marks exactly the guest pages it
//! wrote (RX buffers, used rings) and nothing else; nothing with LOG_ALL
//! off or under the negative control; a log too small for the memory table
//! is refused; SEND_RARP puts the guest's announcement on the TAP.

use std::os::fd::AsRawFd;
use std::time::Duration;

use vhost::VhostUserDirtyLogRegion;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::{VhostBackend, vhost_user::Frontend};
use vhost_user_daemon::dirty_log::used_ring_bytes;
use vhost_user_net::rarp;
use viaduct_test_kit::dirty_log::{F_LOG_ALL, LogBitmap, PAGE, log_all};
use viaduct_test_kit::frames::{frame, vnet_hdr};
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest, MEM_SIZE, QSIZE};
use viaduct_test_kit::hostile::{
    F_PROTOCOL_FEATURES, F_VERSION_1, GET_FEATURES, GET_PROTOCOL_FEATURES, PF_REPLY_ACK, Raw,
    SET_FEATURES, SET_OWNER, SET_PROTOCOL_FEATURES, V1,
};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use virtio_devices::net::features::{MRG_RXBUF, VERSION_1};

const T: Duration = Duration::from_secs(5);
/// `VHOST_USER_SEND_RARP` and `VHOST_USER_PROTOCOL_F_RARP`.
const SEND_RARP: u32 = 19;
const PF_RARP: u64 = 1 << 2;

/// The pages `[gpa, gpa + len)` covers.
fn pages(gpa: u64, len: u64) -> Vec<u64> {
    (gpa / PAGE..(gpa + len).div_ceil(PAGE))
        .map(|p| p * PAGE)
        .collect()
}

/// The pages of a ring's used ring.
fn used_ring(used: u64) -> Vec<u64> {
    pages(used, used_ring_bytes(QSIZE))
}

/// Sorted, without duplicates.
fn set(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Asserts the log holds exactly the pages of `must`, give or take those
/// of `may`: the other queue's used ring, which the pass the framework
/// starts when a ring is enabled writes (its flags) whenever it runs.
fn assert_marked(log: &LogBitmap, must: Vec<u64>, may: &[u64], what: &str) {
    let must = set(must);
    let got: Vec<u64> = log
        .marked()
        .into_iter()
        .filter(|p| must.contains(p) || !may.contains(p))
        .collect();
    assert_eq!(got, must, "{what}");
}

/// Daemon, wire and a guest with a log installed (LOG_ALL still off).
fn logged_guest(d: &Daemon) -> (Guest, LogBitmap, PacketSocket) {
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(d, VERSION_1 | MRG_RXBUF);
    let log = LogBitmap::new(MEM_SIZE as u64);
    log.install(&mut g.fe).expect("SET_LOG_BASE");
    (g, log, wire)
}

/// Posts `n` RX buffers of 1 KiB, one at the start of each page from
/// BUF_BASE (so every mark names one buffer), and kicks.
fn post_paged(g: &mut Guest, n: u64) -> Vec<(u16, u64)> {
    let bufs = (0..n)
        .map(|i| {
            let at = BUF_BASE + i * PAGE;
            (g.rx.add(&g.mem, &[(at, BUF, true)]), at)
        })
        .collect();
    g.kick_rx();
    bufs
}

/// Bytes of one RX buffer of [`post_paged`].
const BUF: u32 = 1024;

/// LOG_ALL on or off, in force when this returns: the GET_FEATURES round
/// trip (QEMU's barrier without REPLY_ACK) follows SET_FEATURES through
/// the relay and the backend, which takes every ring's lock handling it.
fn logging(g: &mut Guest, on: bool) {
    log_all(&mut g.fe, g.features, on).expect("SET_FEATURES");
    g.fe.get_features().expect("GET_FEATURES");
}

/// One host frame of `len` bytes into the guest; returns the used entry.
fn receive(g: &mut Guest, wire: &PacketSocket, len: usize, seed: u8) -> (u32, u32) {
    wire.send(&frame(len, seed)).expect("send");
    g.rx.wait_used(&g.mem, T).expect("frame in the rx ring")
}

/// One guest frame out through the TAP.
fn transmit(g: &mut Guest, wire: &PacketSocket, gpa: u64, seed: u8) {
    let f = frame(200, seed);
    let head = g.send(gpa, &[&vnet_hdr(0, 0, 0, 0, 0, 0), &f]);
    assert_eq!(g.tx.wait_used(&g.mem, T), Some((u32::from(head), 0)));
    assert_eq!(wire.recv_test_frame(T), Some(f));
}

#[test]
fn rx_marks_the_buffers_it_filled_and_its_used_ring() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-rx0", 1);
    let (mut g, log, wire) = logged_guest(&d);
    logging(&mut g, true);
    let bufs = post_paged(&mut g, 4);
    let (id, len) = receive(&mut g, &wire, 1000, 1);
    assert_eq!((id, len), (u32::from(bufs[0].0), 12 + 1000));
    let mut want = pages(bufs[0].1, 12 + 1000);
    want.extend(used_ring(g.rx.used));
    let tx_ring = used_ring(g.tx.used);
    assert_marked(&log, want, &tx_ring, "header + frame, and the used ring");
    // A frame larger than a buffer: the first buffer by readv, the rest
    // copied, num_buffers written afterwards. The fourth is left alone.
    log.clear();
    let (a, alen) = receive(&mut g, &wire, 1500, 2);
    let (b, blen) = g.rx.wait_used(&g.mem, T).expect("second buffer");
    assert_eq!((a, b), (u32::from(bufs[1].0), u32::from(bufs[2].0)));
    assert_eq!((alen, blen), (BUF, 12 + 1500 - BUF));
    assert_eq!(g.read(bufs[1].1 + 10, 2), 2u16.to_le_bytes());
    let mut want = pages(bufs[1].1, u64::from(BUF));
    want.extend(pages(bufs[2].1, u64::from(blen)));
    want.extend(used_ring(g.rx.used));
    assert_marked(&log, want, &tx_ring, "a frame over two buffers");
}

#[test]
fn tx_marks_only_its_used_ring() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-tx0", 1);
    let (mut g, log, wire) = logged_guest(&d);
    logging(&mut g, true);
    transmit(&mut g, &wire, BUF_BASE + 0x8000, 3);
    let rx_ring = used_ring(g.rx.used);
    assert_marked(&log, used_ring(g.tx.used), &rx_ring, "no guest data");
}

#[test]
fn nothing_is_marked_while_log_all_is_off() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-off0", 1);
    let (mut g, log, wire) = logged_guest(&d);
    post_paged(&mut g, 4);
    receive(&mut g, &wire, 500, 4);
    transmit(&mut g, &wire, BUF_BASE + 0x8000, 5);
    assert_eq!(
        log.marked(),
        Vec::<u64>::new(),
        "log installed, LOG_ALL never acked"
    );
    // On, then withdrawn: marks while on, none after.
    logging(&mut g, true);
    receive(&mut g, &wire, 500, 6);
    assert!(log.is_marked(BUF_BASE + PAGE), "on: the second buffer");
    logging(&mut g, false);
    log.clear();
    receive(&mut g, &wire, 500, 7);
    transmit(&mut g, &wire, BUF_BASE + 0x8000, 8);
    assert_eq!(log.marked(), Vec::<u64>::new(), "LOG_ALL withdrawn");
}

#[test]
fn the_negative_control_accepts_logging_and_marks_nothing() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start_tuned("vdl-neg0", 1, QSIZE, 0, |dev| dev.never_mark_dirty = true);
    let (mut g, log, wire) = logged_guest(&d);
    logging(&mut g, true);
    post_paged(&mut g, 4);
    receive(&mut g, &wire, 1000, 9);
    transmit(&mut g, &wire, BUF_BASE + 0x8000, 10);
    assert_eq!(log.marked(), Vec::<u64>::new());
}

/// SET_LOG_BASE with a memfd log of `bytes` bytes.
fn set_log_base(fe: &mut Frontend, bytes: u64) -> vhost::Result<()> {
    let f = viaduct_test_kit::memory::memfd(c"short-log", bytes).expect("memfd");
    fe.set_log_base(
        0,
        Some(VhostUserDirtyLogRegion {
            mmap_size: bytes,
            mmap_offset: 0,
            mmap_handle: f.as_raw_fd(),
        }),
    )
}

#[test]
fn a_log_too_small_for_the_memory_table_is_refused() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-short0", 1);
    // Just enough for the 16 MiB table: taken.
    let mut g = Guest::connect(&d, VERSION_1);
    let need = (MEM_SIZE as u64).div_ceil(PAGE * 8);
    set_log_base(&mut g.fe, need).expect("a log that covers the table");
    drop(g);
    // One byte short: the connection ends, with no reply.
    let mut g = Guest::connect(&d, VERSION_1);
    assert!(set_log_base(&mut g.fe, need - 1).is_err());
    assert!(g.fe.get_features().is_err(), "the connection is closed");
    drop(g);
    // The daemon serves the next frontend.
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    transmit(&mut g, &wire, BUF_BASE, 11);
}

#[test]
fn logging_and_rarp_are_offered() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-offer0", 1);
    let mut fe = Frontend::connect(&d, 2).expect("connect");
    fe.set_owner().expect("owner");
    assert_ne!(fe.get_features().expect("features") & F_LOG_ALL, 0);
    let pf = fe.get_protocol_features().expect("protocol features");
    assert!(pf.contains(VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::RARP));
}

/// The next RARP frame on the wire within `timeout`.
fn rarp_on(wire: &PacketSocket, timeout: Duration) -> Option<Vec<u8>> {
    wire.recv_where(timeout, |f| f.len() >= 14 && f[12..14] == [0x80, 0x35])
}

#[test]
fn send_rarp_puts_the_announcement_on_the_tap() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vdl-rarp0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut r = Raw::connect(&d.sock);
    r.send(SET_OWNER, V1, &[], &[]).expect("owner");
    let pf = u64::from_le_bytes(
        r.get(GET_PROTOCOL_FEATURES, &[])
            .expect("protocol features")[..8]
            .try_into()
            .expect("u64"),
    );
    assert_ne!(pf & PF_RARP, 0, "RARP offered");
    let want = PF_REPLY_ACK | PF_RARP;
    r.send(SET_PROTOCOL_FEATURES, V1, &want.to_le_bytes(), &[])
        .expect("protocol features");
    // Before SET_FEATURES the TAP takes the legacy 10-byte header.
    let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    let mut payload = mac.to_vec();
    payload.extend_from_slice(&[0, 0]);
    assert_eq!(r.acked(SEND_RARP, &payload, &[]), Some(0));
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&mac);
    frame.resize(60, 0);
    assert_eq!(
        rarp_on(&wire, T),
        Some(frame),
        "QEMU's announcement, exactly"
    );
    // VERSION_1: a 12-byte header; the frame must still come out whole.
    let f = F_VERSION_1 | F_PROTOCOL_FEATURES;
    r.send(SET_FEATURES, V1, &f.to_le_bytes(), &[])
        .expect("features");
    assert!(r.get(GET_FEATURES, &[]).is_some(), "SET_FEATURES handled");
    let other = [0x52, 0x54, 0x00, 0x01, 0x02, 0x03];
    let mut payload = other.to_vec();
    payload.extend_from_slice(&[0, 0]);
    assert_eq!(r.acked(SEND_RARP, &payload, &[]), Some(0));
    assert_eq!(rarp_on(&wire, T), Some(rarp::frame(other).to_vec()));
    // A payload that is not a u64 is refused, and nothing is sent.
    assert_eq!(r.acked(SEND_RARP, &mac, &[]), Some(1));
    assert_eq!(rarp_on(&wire, Duration::from_millis(300)), None);
    assert!(r.get(GET_FEATURES, &[]).is_some(), "still served");
}
