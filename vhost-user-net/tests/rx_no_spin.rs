//! With no RX buffers the daemon stops polling the TAP: the worker must
//! sleep, not spin, while a frame waits. Its own test binary (process), so
//! the CPU time measured is this daemon's only.

mod common;

use std::time::Duration;

use common::*;
use virtio_devices::net::features::{MRG_RXBUF, VERSION_1};

#[test]
fn worker_sleeps_while_the_guest_has_no_rx_buffers() {
    enter_private_netns();
    let d = Daemon::start("vut-spin0", 1);
    let wire = PacketSocket::open(&d.tap, false);
    let mut g = Guest::connect(&d, VERSION_1 | MRG_RXBUF);
    for i in 0..20u8 {
        wire.send(&frame(200, i));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (before, workers) = worker_cpu_ns();
    assert_eq!(workers, 1, "one worker per queue pair");
    std::thread::sleep(Duration::from_secs(1));
    let spent_ms = (worker_cpu_ns().0 - before) / 1_000_000;
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
