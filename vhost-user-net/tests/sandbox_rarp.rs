//! SEND_RARP under the daemon binary's default sandbox: the relay thread
//! reads the TAP's vnet header length and writes the announcement under
//! seccomp without being killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viaduct_test_kit::hostile::{
    GET_FEATURES, PF_REPLY_ACK, Raw, SET_OWNER, SET_PROTOCOL_FEATURES, V1,
};
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use viaduct_test_kit::procfs::seccomp_status;

const SEND_RARP: u32 = 19;
const PF_RARP: u64 = 1 << 2;

#[test]
fn send_rarp_works_under_the_sandbox() {
    enter_private_netns().expect("private network namespace");
    let tap = "vsbr0";
    let sock = std::env::temp_dir().join(format!("vun-sbrarp-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-net"))
        .arg("--socket-path")
        .arg(&sock)
        .args(["--tap", tap, "--host-ip", "10.9.0.1/24"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(sock.exists() && seccomp_status(pid).0 == "2") {
        assert!(Instant::now() < deadline, "daemon never got sandboxed");
        assert!(child.try_wait().expect("wait").is_none(), "daemon exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let wire = PacketSocket::open(tap, false).expect("packet socket");
    let mut r = Raw::connect(&sock);
    r.send(SET_OWNER, V1, &[], &[]).expect("owner");
    let want = PF_REPLY_ACK | PF_RARP;
    r.send(SET_PROTOCOL_FEATURES, V1, &want.to_le_bytes(), &[])
        .expect("protocol features");
    let mac = [0x52, 0x54, 0x00, 0x0a, 0x0b, 0x0c];
    let mut payload = mac.to_vec();
    payload.extend_from_slice(&[0, 0]);
    assert_eq!(
        r.acked(SEND_RARP, &payload, &[]),
        Some(0),
        "acked, not killed"
    );
    let got = wire.recv_where(Duration::from_secs(5), |f| {
        f.len() >= 14 && f[12..14] == [0x80, 0x35]
    });
    assert_eq!(got, Some(vhost_user_net::rarp::frame(mac).to_vec()));
    assert!(r.get(GET_FEATURES, &[]).is_some(), "still served");
    assert!(child.try_wait().expect("wait").is_none(), "daemon alive");
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: SIGTERM to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(child.wait().expect("wait").success());
    let _ = std::fs::remove_file(&sock);
}
