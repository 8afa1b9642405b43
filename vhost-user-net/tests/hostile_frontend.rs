//! A hostile frontend and a hostile guest against vhost-user-net (serving
//! in-process, behind its relay, in a private network namespace): every
//! raw-message scenario of the test kit's hostile frontend (the blk daemon
//! plays the same catalogue), then ring abuse the other suites do not cover. After each one
//! the daemon must still serve: a fresh, well-behaved frontend transmits a
//! frame that arrives on the TAP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use viaduct_test_kit::frames::{frame, vnet_hdr};
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest, MEM_SIZE, QSIZE};
use viaduct_test_kit::hostile as raw;
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use viaduct_test_kit::procfs;
use virtio_devices::net::features::VERSION_1;
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(5);

/// A fresh frontend sends one frame; it reaches the wire.
fn assert_serving(d: &Daemon, wire: &PacketSocket, seed: u8, after: &str) {
    let mut g = Guest::connect(d, VERSION_1);
    let f = frame(200, seed);
    g.send(BUF_BASE, &[&vnet_hdr(0, 0, 0, 0, 0, 0), &f]);
    assert!(
        g.tx.wait_used(&g.mem, T).is_some(),
        "no TX completion after: {after}"
    );
    assert_eq!(
        wire.recv_test_frame(T).as_deref(),
        Some(&f[..]),
        "frame lost after: {after}"
    );
}

#[test]
fn hostile_messages_are_rejected_and_the_daemon_serves_on() {
    enter_private_netns().expect("private network namespace");
    // The daemon runs in this process: the SIGBUS handler main() installs.
    vhost_user_net::memguard::install_sigbus_handler().unwrap();
    let d = Daemon::start("vuh-msg0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut seed = 0u8;
    let (report, broken) = raw::run_all(&d.sock, |name| {
        seed = seed.wrapping_add(1);
        assert_serving(&d, &wire, seed, name);
    });
    println!("{}", report.join("\n"));
    assert!(broken.is_empty(), "accepted: {broken:#?}");
    assert!(
        vhost_user_net::memguard::faults() > 0,
        "truncation never faulted"
    );
}

#[test]
fn avail_index_far_ahead_stops_tx_only() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vuh-avail0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    {
        let mut g = Guest::connect(&d, VERSION_1);
        // avail.idx jumps by more than the queue size on TX.
        g.mem
            .write_obj(QSIZE + 7, GuestAddress(g.tx.avail + 2))
            .unwrap();
        g.kick_tx();
        assert_eq!(g.tx.wait_used(&g.mem, Duration::from_millis(300)), None);
        // RX on the same pair still delivers.
        let bufs = g.post_rx(BUF_BASE + 0x8000, 2, 2048);
        let f = frame(300, 0x31);
        wire.send(&f).expect("send");
        let (id, len) = g.rx.wait_used(&g.mem, T).expect("rx after tx broke");
        assert_eq!(id, u32::from(bufs[0].0));
        assert_eq!(&g.read(bufs[0].1 + 12, len as usize - 12), &f);
    }
    assert_serving(&d, &wire, 0x32, "avail index ahead");
}

#[test]
fn descriptors_rewritten_while_the_daemon_reads_them() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vuh-toctou0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    {
        let mut g = Guest::connect(&d, VERSION_1);
        let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);
        // A "guest" thread keeps flipping every TX descriptor between a
        // valid buffer, an address past guest memory and a huge length
        // while frames are queued; the daemon must drop or send each chain
        // and never fault.
        let stop = Arc::new(AtomicBool::new(false));
        let (mem, desc, s2) = (g.mem.clone(), g.tx.desc, stop.clone());
        let flipper = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let i = n % u64::from(QSIZE);
                let at = GuestAddress(desc + 16 * i);
                let (addr, len) = match n % 3 {
                    0 => (MEM_SIZE as u64 - 8, 4096u32),
                    1 => (BUF_BASE, u32::MAX),
                    _ => (BUF_BASE, 12),
                };
                let _ = mem.write_obj(addr, at);
                let _ = mem.write_obj(len, GuestAddress(at.0 + 8));
                n += 1;
            }
        });
        let frames = 200u32;
        for i in 0..frames {
            let f = frame(100, (i % 200) as u8);
            g.send(BUF_BASE + 0x1000 * u64::from(i % 64), &[&hdr, &f]);
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let mut done = 0;
        while done < frames && g.tx.wait_used(&g.mem, T).is_some() {
            done += 1;
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        assert_eq!(done, frames, "every chain completed (sent or dropped)");
        let c = &d.counters[0].tx;
        assert!(c.packets() <= u64::from(frames));
    }
    // Drain what reached the wire, then prove the daemon still serves.
    while wire.recv_test_frame(Duration::from_millis(50)).is_some() {}
    assert_serving(&d, &wire, 0x41, "descriptor flipping");
}

#[test]
fn reconnects_do_not_leak_eventfds() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vuh-fds0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    assert_serving(&d, &wire, 0x50, "warm-up");
    std::thread::sleep(Duration::from_millis(100));
    let base = procfs::eventfds(None);
    for i in 0..20u8 {
        assert_serving(&d, &wire, 0x51 + i, "reconnect");
    }
    // Teardown of the last connection runs after its frontend left.
    let deadline = std::time::Instant::now() + T;
    while procfs::eventfds(None) > base && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        procfs::eventfds(None) <= base,
        "{base} eventfds before, {} after",
        procfs::eventfds(None)
    );
}

#[test]
fn early_enables_for_rings_the_device_lacks_are_refused() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vuh-early0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    {
        let mut r = raw::Raw::connect(&d.sock);
        r.send(raw::SET_OWNER, raw::V1, &[], &[]).unwrap();
        // Before SET_FEATURES the relay answers enables itself: ring 5 of a
        // two-ring device is refused, ring 1 deferred.
        let nack = r.acked(raw::SET_VRING_ENABLE, &raw::state(5, 1), &[]);
        assert!(matches!(nack, Some(n) if n != 0), "ring 5: {nack:?}");
        // A flood of distinct indices is neither kept nor replayed.
        for index in 2..20_002u32 {
            r.send(raw::SET_VRING_ENABLE, raw::V1, &raw::state(index, 1), &[])
                .unwrap();
        }
        let ack = r.acked(raw::SET_VRING_ENABLE, &raw::state(1, 1), &[]);
        assert_eq!(ack, Some(0), "ring 1 deferred");
        let offered = r.get(raw::GET_FEATURES, &[]).expect("features");
        let offered = u64::from_le_bytes(offered[..8].try_into().unwrap());
        let f = offered & (raw::F_VERSION_1 | raw::F_PROTOCOL_FEATURES);
        r.send(raw::SET_FEATURES, raw::V1, &f.to_le_bytes(), &[])
            .unwrap();
        assert_eq!(
            r.probe(),
            raw::Outcome::Served,
            "the connection survives SET_FEATURES"
        );
    }
    assert_serving(&d, &wire, 0x60, "early enables for missing rings");
}
