//! SET_VRING_ENABLE(0) stops a ring even while the worker busy-polls
//! (`--poll-us`): nothing is taken from a disabled ring or put into it until
//! it is enabled again (issue 13).

use std::time::Duration;

use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use viaduct_test_kit::frames::{frame, vnet_hdr};
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use virtio_devices::net::features::VERSION_1;

/// A poll window longer than the test's quiet periods: after each wake-up
/// the worker keeps polling both rings while a disabled one is watched.
const POLL_US: u64 = 500_000;
const QUIET: Duration = Duration::from_millis(300);
const T: Duration = Duration::from_secs(5);

/// SET_VRING_ENABLE without NEED_REPLY (what the test frontend sends), then
/// a request with a reply: the backend handles messages in order, so the
/// enable has taken effect when this returns.
fn set_enable(g: &mut Guest, ring: usize, on: bool) {
    g.fe.set_vring_enable(ring, on).unwrap();
    g.fe.get_features().unwrap();
}

#[test]
fn disabled_rings_are_not_processed_while_polling() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start_polling("vut-enable0", 1, POLL_US);
    let wire = PacketSocket::open(&d.tap, false).expect("packet socket");
    let mut g = Guest::connect(&d, VERSION_1);
    let hdr = vnet_hdr(0, 0, 0, 0, 0, 0);

    // TX: one frame wakes the worker into its poll window.
    let f = frame(200, 1);
    g.send(BUF_BASE, &[&hdr, &f]);
    assert!(g.tx.wait_used(&g.mem, T).is_some(), "first TX frame");
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f[..]));
    // Disable TX and queue another frame: the polling worker must leave it
    // alone.
    set_enable(&mut g, 1, false);
    let f2 = frame(200, 2);
    g.send(BUF_BASE + 0x1000, &[&hdr, &f2]);
    let tx_while_off = g.tx.wait_used(&g.mem, QUIET);
    let wire_while_off = wire.recv_test_frame(Duration::from_millis(50));
    eprintln!(
        "tx_disabled: used={tx_while_off:?} on_wire={}",
        wire_while_off.is_some()
    );
    assert_eq!(tx_while_off, None, "a disabled TX ring was processed");
    assert_eq!(wire_while_off, None, "a frame left a disabled TX ring");
    // Enabled again: the frame goes.
    set_enable(&mut g, 1, true);
    g.kick_tx();
    assert!(g.tx.wait_used(&g.mem, T).is_some(), "TX after re-enable");
    assert_eq!(wire.recv_test_frame(T).as_deref(), Some(&f2[..]));

    // RX: buffers to spare, a received frame wakes the worker into its
    // poll window, then RX is disabled and another frame arrives.
    let bufs = g.post_rx(BUF_BASE + 0x10000, 8, 2048);
    let r1 = frame(300, 3);
    wire.send(&r1).expect("send");
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("first RX frame");
    assert_eq!(id, u32::from(bufs[0].0));
    assert_eq!(g.read(bufs[0].1 + 12, len as usize - 12), r1);
    set_enable(&mut g, 0, false);
    let r2 = frame(300, 5);
    wire.send(&r2).expect("send");
    let rx_while_off = g.rx.wait_used(&g.mem, QUIET);
    eprintln!("rx_disabled: used={rx_while_off:?}");
    assert_eq!(rx_while_off, None, "a disabled RX ring was filled");
    // Enabled again: the frame arrives (it waited in the TAP).
    set_enable(&mut g, 0, true);
    g.kick_rx();
    let (id, len) = g.rx.wait_used(&g.mem, T).expect("RX after re-enable");
    assert_eq!(id, u32::from(bufs[1].0));
    assert_eq!(g.read(bufs[1].1 + 12, len as usize - 12), r2);
}
