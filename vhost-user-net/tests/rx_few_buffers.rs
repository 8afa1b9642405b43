//! A guest that posts one small RX buffer (MRG_RXBUF) and receives a frame
//! larger than it: the frame is parked and the worker must sleep until the
//! guest posts more, not retry the same buffer for ever (issue 13). Its own
//! test binary (process), so the CPU time measured is this daemon's only.

use std::mem::ManuallyDrop;
use std::sync::mpsc;
use std::time::Duration;

use vhost::VhostBackend;
use viaduct_test_kit::frames::frame;
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest, QSIZE};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use viaduct_test_kit::procfs::threads_cpu_ns;
use virtio_devices::net::features::{EVENT_IDX, MRG_RXBUF, VERSION_1};
use vm_memory::{Bytes, GuestAddress};

const HDR: usize = 12;
const SMALL: u32 = 100;
const FRAME: usize = 1500;

#[test]
fn one_small_rx_buffer_and_a_large_frame_leave_the_worker_idle() {
    enter_private_netns().expect("private network namespace");
    // Not dropped on a failed assertion: on a spinning worker the drop
    // (which joins the workers) would never return.
    let d = ManuallyDrop::new(Daemon::start("vut-few0", 1));
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d.sock, VERSION_1 | MRG_RXBUF | EVENT_IDX);
    let small = g.post_rx(BUF_BASE, 1, SMALL);
    let sent = frame(FRAME, 42);
    wire.send(&sent).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        g.rx.wait_used(&g.mem, Duration::ZERO).is_none(),
        "the frame can't fit one {SMALL}-byte buffer"
    );
    // EVENT_IDX: the guest must kick for its next buffer (avail index 1 →
    // 2), so avail_event names 1, not the given-back buffer's 0.
    let avail_event: u16 = g
        .mem
        .read_obj(GuestAddress(g.rx.used + 4 + 8 * u64::from(QSIZE)))
        .unwrap();
    assert_eq!(avail_event, 1, "avail_event after the ring ran dry");

    let (before, workers) = threads_cpu_ns("vring_worker");
    assert_eq!(workers, 1, "one worker per queue pair");
    std::thread::sleep(Duration::from_secs(1));
    let spent_ms = (threads_cpu_ns("vring_worker").0 - before) / 1_000_000;
    eprintln!("worker_cpu_ms_over_1s={spent_ms}");

    // GET_VRING_BASE takes the RX ring's lock: it must answer.
    let fe = g.fe.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fe.get_vring_base(0));
    });
    let base = rx.recv_timeout(Duration::from_secs(1));
    eprintln!("get_vring_base={base:?}");
    assert!(spent_ms < 50, "worker used {spent_ms} ms of CPU in 1 s");
    let base = base
        .expect("GET_VRING_BASE answered within 1 s")
        .expect("GET_VRING_BASE");
    assert_eq!(base, 0, "the small buffer was given back, not used");

    // Start the ring again where it stopped, then post enough buffers.
    g.fe.set_vring_base(0, u16::try_from(base).unwrap())
        .unwrap();
    g.fe.set_vring_call(0, &g.calls[0]).unwrap();
    g.fe.set_vring_kick(0, &g.kicks[0]).unwrap();
    let big = g.post_rx(BUF_BASE + 0x1000, 2, 2048);
    let first = g.rx.wait_used(&g.mem, Duration::from_secs(5));
    let second = g.rx.wait_used(&g.mem, Duration::from_secs(5));
    let total = HDR + FRAME;
    assert_eq!(
        first,
        Some((u32::from(small[0].0), SMALL)),
        "the small buffer first"
    );
    let rest = total - SMALL as usize;
    assert_eq!(
        second,
        Some((u32::from(big[0].0), u32::try_from(rest).unwrap()))
    );
    let head = g.read(small[0].1, SMALL as usize);
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), 2, "num_buffers");
    let mut got = head[HDR..].to_vec();
    got.extend(g.read(big[0].1, rest));
    assert_eq!(got, sent, "the frame arrives whole");

    // Shutdown (what SIGTERM asks for) ends the daemon promptly.
    let d = ManuallyDrop::into_inner(d);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(d);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the daemon ends on shutdown"
    );
}
