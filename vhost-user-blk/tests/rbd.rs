//! The RBD engine against a real one-node Ceph cluster (the test kit's
//! `ceph`, Debian's Ceph 16): the daemon binary serves `rbd:POOL/IMAGE`
//! under its default sandbox to the kit's virtio-blk frontend. A pattern
//! written with `rbd import` reads back through the device; writes read
//! back and, after a guest FLUSH, are in the cluster (`rbd export`);
//! discard and write-zeroes zero; many requests in flight on two queues
//! complete on their own queue; a snapshot is served read-only. Bad input
//! (no monitor, no pool, no image, no snapshot, a malformed name) is a
//! start-up error with exit code 2, within the connect timeout.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vhost::vhost_user::Frontend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use viaduct_test_kit::ceph::{Auth, Cluster};

/// Pattern image size: two 4 MiB RADOS objects.
const IMG: usize = 8 << 20;
const T: Duration = Duration::from_secs(30);

fn cluster() -> Arc<Cluster> {
    Cluster::shared().expect("the Ceph cluster (scripts/install-host-deps.sh installs Ceph)")
}

/// A new image `name` holding [`raw_image`]'s pattern, via `rbd import`.
fn pattern_image(c: &Cluster, dir: &TempDir, name: &str) {
    let file = dir.path(name);
    raw_image(&file, IMG);
    c.import(&file, name).expect("rbd import");
}

fn spec(c: &Cluster, image: &str) -> String {
    format!("rbd:rbd/{image}:conf={}", c.conf().display())
}

/// The byte queue `qi`'s in-flight write `i` fills its block with.
fn byte_of(qi: usize, i: u64) -> u8 {
    u8::try_from((qi + 1) * 16).unwrap() + u8::try_from(i).unwrap()
}

fn capacity(fe: &mut Frontend) -> u64 {
    let (_, cfg) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    u64::from_le_bytes(cfg[0..8].try_into().unwrap())
}

#[test]
fn rbd_image_serves_pattern_writes_flush_discard_and_two_queues() {
    let c = cluster();
    let dir = TempDir::new("rbd-data");
    pattern_image(&c, &dir, "data");
    let d = Daemon::start(
        &dir.path("sock"),
        std::path::Path::new(&spec(&c, "data")),
        &["--num-queues", "2"],
    );
    let mut s = connect(&d.socket, 2, 128, !0);
    assert_eq!(s.features & (1 << 5), 0, "RO offered for a writable image");
    assert_ne!(s.features & (1 << 13), 0, "DISCARD not offered");
    assert_ne!(s.features & (1 << 14), 0, "WRITE_ZEROES not offered");
    assert_eq!(capacity(&mut s.fe), (IMG / 512) as u64);

    // The imported pattern, through both queues (one crosses the 4 MiB
    // object boundary).
    for (qi, sector) in [(0usize, 0u64), (1, 8192 - 16), (0, 16383 - 31)] {
        let q = &mut s.queues[qi];
        q.fill(0, 16384, 0xee);
        let (status, len) = q.request(VIRTIO_BLK_T_IN, sector, &[(0, 16384)]);
        assert_eq!((status, len), (S_OK, 16385), "read at {sector}");
        let got = q.read_buf(0, 16384);
        for (i, chunk) in got.chunks(512).enumerate() {
            let want = pattern(sector + i as u64);
            assert!(
                chunk.iter().all(|&b| b == want),
                "sector {}",
                sector + i as u64
            );
        }
    }

    // Write, read back, FLUSH: then the cluster has it.
    let q = &mut s.queues[1];
    q.fill(1, 8192, 0xa5);
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 100, &[(1, 8192)]).0, S_OK);
    q.fill(2, 8192, 0);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 100, &[(2, 8192)]), (S_OK, 8193));
    assert!(q.read_buf(2, 8192).iter().all(|&b| b == 0xa5));
    assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    let exported = c.export("data", IMG).unwrap();
    assert!(exported[100 * 512..116 * 512].iter().all(|&b| b == 0xa5));
    assert_eq!(exported[99 * 512], pattern(99));
    assert_eq!(exported[116 * 512], pattern(116));

    // 32 writes in flight on each queue at once, then read back.
    for (qi, base) in [(0usize, 2000u64), (1, 3000)] {
        let q = &mut s.queues[qi];
        for i in 0..32u64 {
            q.fill(i, 4096, byte_of(qi, i));
            q.queue_request(i, VIRTIO_BLK_T_OUT, base + 8 * i, &[(i, 4096)]);
        }
        q.kick();
    }
    for qi in 0..2 {
        let used = s.queues[qi].wait_used(32, T);
        assert_eq!(used.len(), 32, "queue {qi}");
        for i in 0..32 {
            assert_eq!(s.queues[qi].status(i), S_OK, "queue {qi} slot {i}");
        }
    }
    for (qi, base) in [(0usize, 2000u64), (1, 3000)] {
        let q = &mut s.queues[qi];
        for i in [0u64, 17, 31] {
            q.fill(40, 4096, 0);
            assert_eq!(
                q.request(VIRTIO_BLK_T_IN, base + 8 * i, &[(40, 4096)]).0,
                S_OK
            );
            let want = byte_of(qi, i);
            assert!(q.read_buf(40, 4096).iter().all(|&b| b == want));
        }
    }

    // DISCARD of the whole second object and WRITE_ZEROES inside the
    // first read back as zeroes; the bytes around stay.
    let q = &mut s.queues[0];
    assert_eq!(q.range_request(VIRTIO_BLK_T_DISCARD, 8192, 8192, 0), S_OK);
    assert_eq!(q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 40, 24, 0), S_OK);
    for (sector, zero) in [(8192u64, true), (16384 - 32, true), (40, true), (32, false)] {
        q.fill(0, 4096, 0xee);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, sector, &[(0, 4096)]).0, S_OK);
        let got = q.read_buf(0, 4096);
        let want = if zero { 0 } else { pattern(sector) };
        assert!(got[..512].iter().all(|&b| b == want), "sector {sector}");
    }
    // Past the end: refused by validation, never sent to librbd.
    assert_eq!(
        q.request(VIRTIO_BLK_T_IN, (IMG / 512) as u64, &[(0, 512)])
            .0,
        S_IOERR
    );
}

#[test]
fn rbd_snapshot_is_served_read_only() {
    let c = cluster();
    let dir = TempDir::new("rbd-snap");
    pattern_image(&c, &dir, "snapped");
    c.rbd(&["snap", "create", "rbd/snapped@s1"]).unwrap();
    c.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4096",
        "--io-total",
        "65536",
        "--io-pattern",
        "seq",
        "rbd/snapped",
    ])
    .unwrap();
    let d = Daemon::start(
        &dir.path("sock"),
        std::path::Path::new(&spec(&c, "snapped@s1")),
        &[],
    );
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_ne!(s.features & (1 << 5), 0, "a snapshot must be read-only");
    let q = &mut s.queues[0];
    assert_eq!(q.request(VIRTIO_BLK_T_OUT, 0, &[(0, 512)]).0, S_IOERR);
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 0, &[(0, 16384)]).0, S_OK);
    // The snapshot's data, not what the bench wrote after it.
    let got = q.read_buf(0, 16384);
    for (i, chunk) in got.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| b == pattern(i as u64)), "sector {i}");
    }
}

/// The daemon on `blk_file` must exit 2 within `limit`, saying `what`.
fn refused(blk_file: &str, what: &str, limit: Duration) {
    let dir = TempDir::new("rbd-bad");
    let t0 = Instant::now();
    let mut child = Command::new(binary())
        .arg("--socket-path")
        .arg(dir.path("sock"))
        .args(["--blk-file", blk_file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{blk_file}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{blk_file}: {err}");
    assert!(
        err.contains(what),
        "{blk_file}: expected {what:?} in {err:?}"
    );
    assert!(
        !dir.path("sock").exists(),
        "socket bound before the image opened"
    );
    eprintln!(
        "{blk_file}: exit 2 after {:?}: {}",
        t0.elapsed(),
        err.trim()
    );
}

#[test]
fn bad_rbd_names_are_startup_errors_not_hangs() {
    // Syntax and a missing ceph.conf need no cluster.
    refused("rbd:nopool", "POOL/IMAGE", T);
    refused("rbd:p/i:mon_host=127.0.0.1", "only conf= and id=", T);
    refused(
        "rbd:p/i:conf=/nonexistent/ceph.conf",
        "/nonexistent/ceph.conf",
        T,
    );
    // A monitor nobody listens on: bounded by the connect timeout (10 s).
    let dir = TempDir::new("rbd-nomon");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path("ceph.conf");
    std::fs::write(
        &conf,
        format!("[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n"),
    )
    .unwrap();
    refused(
        &format!("rbd:rbd/img:conf={}", conf.display()),
        "no monitor answered within 10 s",
        Duration::from_secs(25),
    );

    let c = cluster();
    let conf = c.conf().display().to_string();
    refused(&format!("rbd:nopool/img:conf={conf}"), "pool \"nopool\"", T);
    refused(
        &format!("rbd:rbd/noimage:conf={conf}"),
        "image \"noimage\"",
        T,
    );
    refused(
        &format!("rbd:rbd/img@nosnap:conf={conf}"),
        "snapshot \"nosnap\"",
        T,
    );
}

/// The OSD restarted (SIGTERM, exit, start) while rounds of 16 writes
/// keep the queue busy: every request completes OK once the OSD is back
/// (librbd resends what the old OSD never answered), none is lost (every
/// sector reads back what its last write wrote), and the longest round
/// is the stall the guest saw.
#[test]
fn osd_restart_under_load_loses_no_request() {
    let c = cluster();
    let dir = TempDir::new("rbd-restart");
    pattern_image(&c, &dir, "restart");
    let d = Daemon::start(
        &dir.path("sock"),
        std::path::Path::new(&spec(&c, "restart")),
        &[],
    );
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    let restarter = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let t0 = Instant::now();
            c.restart_osd().expect("OSD restart");
            t0.elapsed()
        })
    };
    let mut last = vec![None::<u8>; 512];
    let (mut rounds, mut after, mut longest) = (0u32, 0u32, Duration::ZERO);
    while after < 5 {
        let t0 = Instant::now();
        for i in 0..16u64 {
            let slot = (u64::from(rounds) * 16 + i) % 512;
            let byte = rounds.to_le_bytes()[0]
                .wrapping_mul(16)
                .wrapping_add(u8::try_from(i).unwrap())
                | 1;
            q.fill(i, 4096, byte);
            q.queue_request(i, VIRTIO_BLK_T_OUT, slot * 8, &[(i, 4096)]);
            last[usize::try_from(slot).unwrap()] = Some(byte);
        }
        q.kick();
        let used = q.wait_used(16, Duration::from_secs(120));
        assert_eq!(used.len(), 16, "round {rounds}");
        for i in 0..16 {
            assert_eq!(q.status(i), S_OK, "round {rounds} request {i}");
        }
        longest = longest.max(t0.elapsed());
        rounds += 1;
        if restarter.is_finished() {
            after += 1;
        }
    }
    let restart = restarter.join().unwrap();
    for (slot, byte) in last.iter().enumerate() {
        let Some(byte) = *byte else { continue };
        q.fill(40, 4096, 0);
        let sector = u64::try_from(slot).unwrap() * 8;
        assert_eq!(q.request(VIRTIO_BLK_T_IN, sector, &[(40, 4096)]).0, S_OK);
        assert!(
            q.read_buf(40, 4096).iter().all(|&b| b == byte),
            "sector {sector} lost its last write"
        );
    }
    eprintln!(
        "osd restart: {:.1} s to restart, {rounds} rounds of 16 writes, longest round {:.1} s, 0 failed",
        restart.as_secs_f64(),
        longest.as_secs_f64()
    );
}

/// With cephx, the right client and key serve; a client the cluster does
/// not know, or the right client with a wrong key, is refused at start-up
/// (exit 2, at once, saying so) rather than retried until a timeout.
#[test]
fn cephx_wrong_id_or_key_is_a_startup_error() {
    let c = Cluster::start_with("cephx", Auth::Cephx).expect("cephx cluster");
    let conf = c.conf().display().to_string();
    let dir = TempDir::new("rbd-cephx");
    let d = Daemon::start(
        &dir.path("sock"),
        std::path::Path::new(&format!("rbd:rbd/img:conf={conf}:id=admin")),
        &[],
    );
    let mut s = connect(&d.socket, 1, 64, !0);
    assert_eq!(
        s.queues[0].request(VIRTIO_BLK_T_IN, 0, &[(0, 4096)]).0,
        S_OK
    );
    drop(d);

    refused(
        &format!("rbd:rbd/img:conf={conf}:id=intruder"),
        "the monitors refused client.intruder",
        T,
    );
    // client.admin with a key the cluster never issued.
    let keyring = dir.path("wrong.keyring");
    let out = Command::new("ceph-authtool")
        .arg("--create-keyring")
        .arg(&keyring)
        .args(["--gen-key", "-n", "client.admin"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(c.conf()).unwrap();
    let wrong = dir.path("wrong.conf");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("keyring =") {
                format!("keyring = {}\n", keyring.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&wrong, text).unwrap();
    refused(
        &format!("rbd:rbd/img:conf={}", wrong.display()),
        "the monitors refused client.admin",
        T,
    );
}
