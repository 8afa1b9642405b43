//! In-process vhost-user tests: the daemon serves a TAP in a private network
//! namespace; the test is the frontend (vhost crate) and the driver (rings
//! built by hand in memfd memory), and watches the wire with AF_PACKET.

use std::time::Duration;

use vhost_user_net::counters::Drop;
use viaduct_test_kit::frames::{eth_header, frame, ipv4_tcp_header, vnet_hdr};
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest, MEM_SIZE, QSIZE};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use virtio_devices::net::features::{
    CSUM, EVENT_IDX, GUEST_CSUM, GUEST_TSO4, HOST_TSO4, MQ, MRG_RXBUF, VERSION_1,
};
use virtio_devices::net::header::{F_NEEDS_CSUM, GSO_TCPV4};

const T: Duration = Duration::from_secs(5);

/// A TCP/IPv4 frame of `len` bytes (headers included), from host to guest.
fn tcp4_frame(len: usize) -> Vec<u8> {
    let mut f = eth_header(0x0800);
    f.extend(ipv4_tcp_header(
        u16::try_from(len - 14).unwrap(),
        [10, 0, 0, 1],
        [10, 0, 0, 2],
    ));
    // TCP: ports, seq, ack, data offset 5, flags ACK|PSH, window.
    let tcp = [
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    f.extend_from_slice(&tcp);
    while f.len() < len {
        f.push(u8::try_from(f.len() % 251).unwrap());
    }
    f
}

#[test]
fn tx_frame_reaches_tap_bit_for_bit() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-tx0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    let f = frame(1000, 1);
    // Header, then the frame split over two descriptors.
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
    let head = g.send(BUF_BASE, &[&hdr, &f[..300], &f[300..]]);
    assert_eq!(g.tx.wait_used(&g.mem, T), Some((u32::from(head), 0)));
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
    // Header and data in a single descriptor, a minimum-size frame.
    let f2 = frame(60, 2);
    let mut one = hdr.clone();
    one.extend_from_slice(&f2);
    g.send(BUF_BASE + 0x8000, &[&one]);
    assert!(g.tx.wait_used(&g.mem, T).is_some());
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f2[..]));
    assert_eq!(d.counters[0].tx.packets(), 2);
    assert_eq!(d.counters[0].tx.bytes(), 1060);
}

#[test]
fn rx_frame_lands_in_rx_ring() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-rx0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    let bufs = g.post_rx(BUF_BASE, 8, 2048);
    let f = frame(1200, 3);
    wire.send(&f).expect("send");
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("frame in rx ring");
    assert_eq!(id, u32::from(bufs[0].0));
    assert_eq!(len as usize, 12 + f.len());
    let got = g.read(bufs[0].1, len as usize);
    assert_eq!(
        &got[..12],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "no offload, num_buffers=1"
    );
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(d.counters[0].rx.packets(), 1);
}

#[test]
fn rx_mrg_spreads_a_frame_over_buffers() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-mrg0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    let bufs = g.post_rx(BUF_BASE, 16, 512);
    let f = frame(1400, 4);
    wire.send(&f).expect("send");
    let total = 12 + f.len();
    let mut got = Vec::new();
    let mut entries = Vec::new();
    while got.len() < total {
        let (id, len) = g.rx.wait_used(&g.mem, T).expect("used entry");
        let at = bufs
            .iter()
            .find(|b| u32::from(b.0) == id)
            .expect("known head")
            .1;
        got.extend_from_slice(&g.read(at, len as usize));
        entries.push(len);
    }
    assert_eq!(
        entries,
        vec![512, 512, u32::try_from(total - 1024).unwrap()]
    );
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[12..], &f[..]);
}

#[test]
fn rx_gso_frame_arrives_whole_when_guest_tso_acked() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-tso0", 1);
    let wire = PacketSocket::open(&d.tap, true).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF | GUEST_CSUM | GUEST_TSO4);
    let bufs = g.post_rx(BUF_BASE, 64, 2048);
    // A 4000-byte TCP super-frame with a GSO header, as the host stack
    // would hand it over; the TAP passes it on unsegmented.
    let f = tcp4_frame(4000);
    let mut pkt = vnet_hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16);
    pkt.truncate(10);
    pkt.extend_from_slice(&f);
    wire.send(&pkt).expect("send");
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("first buffer");
    assert_eq!(id, u32::from(bufs[0].0));
    let first = g.read(bufs[0].1, len as usize);
    assert_eq!(first[1], GSO_TCPV4, "gso type passed to the guest");
    assert_eq!(u16::from_le_bytes([first[4], first[5]]), 1000, "gso_size");
    let nb = u16::from_le_bytes([first[10], first[11]]);
    assert_eq!(nb, 2, "4012 bytes over 2048-byte buffers");
    let (_, len2) = g.rx.wait_used(&g.mem, T).expect("second buffer");
    assert_eq!(len as usize + len2 as usize, 12 + f.len());
    let mut got = first[12..].to_vec();
    got.extend_from_slice(&g.read(bufs[1].1, len2 as usize));
    assert_eq!(got, f);
}

#[test]
fn rx_gso_frame_is_segmented_without_guest_tso() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-tso1", 1);
    let wire = PacketSocket::open(&d.tap, true).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    g.post_rx(BUF_BASE, 64, 2048);
    let f = tcp4_frame(4000);
    let mut pkt = vnet_hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16);
    pkt.truncate(10);
    pkt.extend_from_slice(&f);
    wire.send(&pkt).expect("send");
    let mut segments = 0;
    while let Some((_, len)) = g.rx.wait_used(&g.mem, Duration::from_millis(500)) {
        assert!(len as usize <= 12 + 54 + 1000, "segment of {len} bytes");
        segments += 1;
    }
    assert_eq!(segments, 4, "the kernel segmented for a guest without TSO");
}

#[test]
fn tx_gso_frame_passes_when_host_tso_acked() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-tso2", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | CSUM | HOST_TSO4);
    let f = tcp4_frame(3000);
    let hdr = vnet_hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16);
    g.send(BUF_BASE, &[&hdr, &f]);
    assert!(g.tx.wait_used(&g.mem, T).is_some());
    assert_eq!(d.counters[0].tx.packets(), 1);
    assert_eq!(d.counters[0].tx.drops(Drop::TapError), 0);
    // The stack gets it whole (no segmentation in the daemon): AF_PACKET
    // sees the 3000-byte super-frame.
    let got = wire.recv_where(T, |b| b.len() > 14 && b[12..14] == [0x08, 0x00]);
    assert_eq!(got.as_deref(), Some(&f[..]));
}

#[test]
fn event_idx_negotiated_traffic_flows_both_ways() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-eidx0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF | EVENT_IDX);
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
    for i in 0..20u8 {
        let f = frame(100 + usize::from(i), i);
        g.send(BUF_BASE + u64::from(i) * 0x1000, &[&hdr, &f]);
        assert!(g.tx.wait_used(&g.mem, T).is_some(), "tx {i}");
        assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
    }
    let bufs = g.post_rx(BUF_BASE + 0x100000, 4, 2048);
    for i in 0..3u8 {
        let f = frame(500, 100 + i);
        wire.send(&f).expect("send");
        let (id, len) = g.rx.wait_used(&g.mem, T).expect("rx");
        let at = bufs.iter().find(|b| u32::from(b.0) == id).unwrap().1;
        assert_eq!(g.read(at + 12, len as usize - 12), f);
    }
    // The device published avail_event so the driver knows when to kick.
    let avail_event: u16 = vm_memory::Bytes::read_obj(
        &g.mem,
        vm_memory::GuestAddress(g.tx.used + 4 + 8 * u64::from(QSIZE)),
    )
    .unwrap();
    assert_eq!(avail_event, 20);
}

#[test]
fn second_queue_pair_transmits_on_its_own_tap_queue() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-mq0", 2);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect_pairs(&d, VERSION_1 | MRG_RXBUF | MQ, 2);
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
    let f = frame(400, 42);
    let mem = g.mem.clone();
    let (_, tx1) = &mut g.more[0];
    let at = BUF_BASE;
    vm_memory::Bytes::write_slice(&mem, &hdr, vm_memory::GuestAddress(at)).unwrap();
    vm_memory::Bytes::write_slice(&mem, &f, vm_memory::GuestAddress(at + 12)).unwrap();
    let len = u32::try_from(f.len()).unwrap();
    tx1.add(&mem, &[(at, 12, false), (at + 12, len, false)]);
    g.kicks[3].write(1).unwrap();
    let (_, tx1) = &mut g.more[0];
    assert!(tx1.wait_used(&mem, T).is_some());
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
    assert_eq!(d.counters[1].tx.packets(), 1);
    assert_eq!(d.counters[0].tx.packets(), 0);
}

#[test]
fn tx_bad_inputs_are_dropped_and_the_queue_goes_on() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-bad0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
    // Shorter than the header.
    g.send(BUF_BASE, &[&[0u8; 5]]);
    // Header only, no Ethernet frame.
    g.send(BUF_BASE + 0x1000, &[&hdr]);
    // GSO without HOST_TSO4 negotiated.
    let gso = vnet_hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16);
    g.send(BUF_BASE + 0x2000, &[&gso, &tcp4_frame(3000)]);
    // Checksum offload without CSUM negotiated.
    let cs = vnet_hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16);
    g.send(BUF_BASE + 0x4000, &[&cs, &frame(100, 5)]);
    // Longer than 64 KiB + header.
    let big = frame(64 * 1024 + 1, 6);
    g.send(BUF_BASE + 0x10000, &[&hdr, &big]);
    // A device-writable descriptor in a TX chain.
    let head = g.tx.add(&g.mem, &[(BUF_BASE + 0x30000, 100, true)]);
    g.kick_tx();
    // A descriptor outside guest memory.
    g.tx.add(&g.mem, &[((MEM_SIZE as u64) - 10, 100, false)]);
    g.kick_tx();
    for _ in 0..7 {
        let (_, len) = g.tx.wait_used(&g.mem, T).expect("bad chain completed");
        assert_eq!(len, 0);
    }
    let _ = head;
    let c = &d.counters[0].tx;
    assert_eq!(c.drops(Drop::TxShort), 2);
    assert_eq!(c.drops(Drop::TxBadHeader), 2);
    assert_eq!(c.drops(Drop::TxTooLong), 1);
    assert_eq!(c.drops(Drop::BadChain), 2);
    assert_eq!(c.packets(), 0);
    // The queue still works.
    let f = frame(200, 7);
    g.send(BUF_BASE + 0x40000, &[&hdr, &f]);
    assert!(g.tx.wait_used(&g.mem, T).is_some());
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-wait0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    let f = frame(800, 8);
    wire.send(&f).expect("send");
    // No buffers: nothing completes, nothing is dropped.
    assert_eq!(g.rx.wait_used(&g.mem, Duration::from_millis(300)), None);
    let bufs = g.post_rx(BUF_BASE, 2, 2048);
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("delivered after the kick");
    assert_eq!(id, u32::from(bufs[0].0));
    assert_eq!(&g.read(bufs[0].1 + 12, len as usize - 12), &f);
    let c = &d.counters[0].rx;
    assert_eq!((c.packets(), c.drops(Drop::TapError)), (1, 0));
}

#[test]
fn reconnect_serves_a_new_frontend_with_the_same_tap() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-rec0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
    for round in 0..3u8 {
        let mut g = Guest::connect(&d, VERSION_1);
        let f = frame(300, 10 + round);
        g.send(BUF_BASE, &[&hdr, &f]);
        assert!(g.tx.wait_used(&g.mem, T).is_some(), "round {round}");
        assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
        drop(g);
    }
    assert_eq!(d.counters[0].tx.packets(), 3);
}

#[test]
fn rx_frame_parked_until_the_guest_adds_enough_buffers() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-park0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    let first = g.post_rx(BUF_BASE, 1, 512);
    let f = frame(1400, 20);
    wire.send(&f).expect("send");
    // One 512-byte buffer can't take 1412 bytes: nothing is published yet.
    assert_eq!(g.rx.wait_used(&g.mem, Duration::from_millis(300)), None);
    let more = g.post_rx(BUF_BASE + 0x1000, 4, 512);
    let mut got = Vec::new();
    let mut heads = Vec::new();
    while got.len() < 12 + f.len() {
        let (id, len) = g.rx.wait_used(&g.mem, T).expect("parked frame delivered");
        let at = first
            .iter()
            .chain(&more)
            .find(|b| u32::from(b.0) == id)
            .unwrap()
            .1;
        got.extend_from_slice(&g.read(at, len as usize));
        heads.push(id);
    }
    assert_eq!(
        heads[0],
        u32::from(first[0].0),
        "starts in the first buffer"
    );
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(&got[12..], &f[..]);
    let c = &d.counters[0].rx;
    assert_eq!((c.packets(), c.drops(Drop::RxTooLarge)), (1, 0));
}

#[test]
fn rx_without_mrg_drops_frames_larger_than_a_buffer_and_goes_on() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-big0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    let bufs = g.post_rx(BUF_BASE, 2, 512);
    wire.send(&frame(1400, 21)).expect("send");
    let small = frame(100, 22);
    wire.send(&small).expect("send");
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("small frame");
    assert_eq!(
        id,
        u32::from(bufs[0].0),
        "the big frame did not consume a buffer"
    );
    assert_eq!(g.read(bufs[0].1 + 12, len as usize - 12), small);
    assert_eq!(d.counters[0].rx.drops(Drop::RxTooLarge), 1);
}

#[test]
fn rx_bad_buffers_are_returned_empty_and_counted() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-badrx0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    // Device-readable (wrong direction), too small for the header, and
    // outside guest memory; then a good one.
    let h1 = g.rx.add(&g.mem, &[(BUF_BASE, 2048, false)]);
    let h2 = g.rx.add(&g.mem, &[(BUF_BASE + 0x1000, 8, true)]);
    let h3 = g.rx.add(&g.mem, &[(MEM_SIZE as u64 - 100, 2048, true)]);
    let good = g.rx.add(&g.mem, &[(BUF_BASE + 0x2000, 2048, true)]);
    g.kick_rx();
    let f = frame(300, 23);
    wire.send(&f).expect("send");
    for h in [h1, h2, h3] {
        assert_eq!(g.rx.wait_used(&g.mem, T), Some((u32::from(h), 0)));
    }
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("frame");
    assert_eq!(id, u32::from(good));
    assert_eq!(g.read(BUF_BASE + 0x2000 + 12, len as usize - 12), f);
    assert_eq!(d.counters[0].rx.drops(Drop::BadChain), 3);
}
