//! With no RX buffers the daemon stops polling the TAP: the worker must
//! sleep, not spin, while a frame waits. Its own test binary (process), so
//! the CPU time measured is this daemon's only.

use std::time::Duration;

use viaduct_test_kit::frames::frame;
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use viaduct_test_kit::procfs::threads_cpu_ns;
use virtio_devices::net::features::{MRG_RXBUF, VERSION_1};

#[test]
fn worker_sleeps_while_the_guest_has_no_rx_buffers() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vut-spin0", 1);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    for i in 0..20u8 {
        wire.send(&frame(200, i)).expect("send");
    }
    std::thread::sleep(Duration::from_millis(100));
    let (before, workers) = threads_cpu_ns("vring_worker");
    assert_eq!(workers, 1, "one worker per queue pair");
    std::thread::sleep(Duration::from_secs(1));
    let spent_ms = (threads_cpu_ns("vring_worker").0 - before) / 1_000_000;
    // A spinning worker would burn ~1000 ms (one second of CPU).
    assert!(
        spent_ms <= 50,
        "worker used {spent_ms} ms of CPU while idle"
    );
    // And nothing was lost: all 20 frames arrive once buffers come.
    g.post_rx(BUF_BASE, 32, 2048);
    for i in 0..20 {
        assert!(
            g.rx.wait_used(&g.mem, Duration::from_secs(5)).is_some(),
            "frame {i}"
        );
    }
}
