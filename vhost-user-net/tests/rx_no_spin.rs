//! With no RX buffers the daemon stops polling the TAP: the worker must
//! sleep, not spin, while a frame waits. Its own test binary (process), so
//! the CPU time measured is this daemon's only.

mod common;

use std::time::Duration;

use common::*;
use virtio_devices::net::features::{MRG_RXBUF, VERSION_1};

/// utime+stime (clock ticks) of this process's vring worker threads, and
/// how many there are.
fn worker_ticks() -> (u64, usize) {
    let mut total = 0;
    let mut workers = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != "vring_worker" {
            continue;
        }
        workers += 1;
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    (total, workers)
}

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
    let (before, workers) = worker_ticks();
    assert_eq!(workers, 1, "one worker per queue pair");
    std::thread::sleep(Duration::from_secs(1));
    let spent = worker_ticks().0 - before;
    // A spinning worker would burn ~100 ticks (one second of CPU).
    assert!(spent <= 5, "worker used {spent} ticks while idle");
    // And nothing was lost: all 20 frames arrive once buffers come.
    g.post_rx(BUF_BASE, 32, 2048);
    for i in 0..20 {
        assert!(
            g.rx.wait_used(&g.mem, Duration::from_secs(5)).is_some(),
            "frame {i}"
        );
    }
}
