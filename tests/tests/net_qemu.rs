//! vhost-user-net end to end with an unmodified QEMU guest (test host A):
//! the stock Linux virtio_net driver against our daemon, whose TAP lives in
//! a private network namespace made by the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest_kit::binaries::project_binary;
use guest_kit::cache::{Cache, Scratch};
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::initramfs::guest_initramfs;
use guest_kit::kernel::GuestKernel;
use guest_kit::netns::NetNs;
use guest_kit::provision;
use guest_kit::qemu::GuestRun;
use guest_kit::selftest::{md5_of, pattern};

const HOST_IP: &str = "10.88.0.1";
const GUEST_IP: &str = "10.88.0.2";
const GUEST_MAC: &str = "52:54:00:88:00:02";
const TAP: &str = "vdtap0";
const XFER: usize = 64 << 20;

struct Env {
    kernel: GuestKernel,
    work: Scratch,
    ns: NetNs,
}

fn env(tag: &str) -> Env {
    let cache = Cache::locate().expect("cache");
    let kernel =
        provision::ensure_kernel(&cache).expect("guest kernel (scripts/test.sh provisions it)");
    let work = cache.scratch(tag).expect("scratch");
    let ns = NetNs::create(tag).expect("network namespace");
    Env { kernel, work, ns }
}

fn daemon(env: &Env, extra: &[&str]) -> (Daemon, PathBuf) {
    let sock = env.work.join("net.sock");
    let bin = project_binary("vhost-user-net").expect("vhost-user-net binary");
    let mut cmd = env.ns.command(bin);
    cmd.arg("--socket-path")
        .arg(&sock)
        .args([
            "--tap",
            TAP,
            "--host-ip",
            &format!("{HOST_IP}/24"),
            "--mac",
            GUEST_MAC,
        ])
        .args(extra);
    let d = Daemon::start(cmd, &sock, &env.work.join("net.log"))
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    (d, sock)
}

fn boot(
    env: &Env,
    sock: &Path,
    pairs: u16,
    cpus: u32,
    extra_dev: Option<&str>,
    scenario: &str,
    name: &str,
) -> GuestRun {
    let initrd = env.work.join(format!("{name}.cpio"));
    let script = format!(
        r#"
IF=$(ls /sys/class/net | grep -v lo | head -n1)
result mac=$(cat /sys/class/net/$IF/address)
ip addr add {GUEST_IP}/24 dev $IF
ip link set $IF up
n=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  n=$(ping -c 2 -W 1 {HOST_IP} 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  [ "${{n:-0}}" -gt 0 ] && break
done
result ping=${{n:-0}}
{scenario}
"#
    );
    guest_initramfs(&env.kernel.modules, &["virtio_net"], &script, &initrd).expect("initramfs");
    let mut host = HostA::new(&env.kernel);
    host.vhost_user_net(sock, GUEST_MAC, pairs).cpus(cpus);
    if let Some(dev) = extra_dev {
        host.qemu_args(&["-global", dev]);
    }
    let run = host
        .boot(
            &initrd,
            Duration::from_secs(240),
            Some(env.work.join(format!("{name}.console"))),
        )
        .expect("run QEMU");
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "guest did not power off cleanly: {}",
        run.describe()
    );
    run.console
        .check_finished()
        .unwrap_or_else(|e| panic!("{e}"));
    run
}

fn expect(run: &GuestRun, key: &str, want: &str, d: &Daemon) {
    if let Err(e) = run.console.expect(key, want) {
        panic!("{e}\n--- daemon log ---\n{}", d.log_text());
    }
}

fn accept_within(l: &TcpListener, limit: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok((s, _)) = l.accept() {
            s.set_nonblocking(false).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Counts frames on the TAP longer than `mtu` + Ethernet header (GSO/TSO
/// super-frames) until `stop` is set. Runs inside the namespace.
fn count_big_frames(ifname: &str, mtu: usize, stop: Arc<AtomicBool>, big: Arc<AtomicU64>) {
    // SAFETY: plain socket(2); the fd is owned below and closed at the end.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(u16::try_from(libc::ETH_P_ALL).unwrap().to_be()),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    sll.sll_protocol = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
    sll.sll_ifindex = i32::try_from(ifindex).unwrap();
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(
        rc,
        0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        )
    };
    let mut buf = vec![0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf is valid for buf.len() bytes; MSG_TRUNC returns the real length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if usize::try_from(n).is_ok_and(|n| n > mtu + 14) {
            big.fetch_add(1, Ordering::Relaxed);
        }
    }
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
}

/// Scenarios 1, 2, 5 and 6: the configured MAC, ping, 64 MiB of TCP each
/// way with checksums, TAP offloads matching the guest's features and GSO
/// frames on the TAP; then a second QEMU boot served by the same daemon.
#[test]
fn guest_pings_moves_64mib_each_way_with_gso_and_daemon_serves_a_second_boot() {
    let env = env("net-main");
    let (mut d, sock) = daemon(&env, &[]);
    let data = Arc::new(pattern(XFER, "NET"));
    let want_md5 = md5_of(&data).unwrap();

    // Host side, inside the namespace: a sink for guest→host on 5001, a
    // source for host→guest on 5002, and a frame counter on the TAP.
    let stop = Arc::new(AtomicBool::new(false));
    let big = Arc::new(AtomicU64::new(0));
    let (stop2, big2) = (stop.clone(), big.clone());
    let counter = env
        .ns
        .spawn(move || count_big_frames(TAP, 1500, stop2, big2));
    let expected = data.clone();
    let sink = env.ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:5001").expect("bind 5001");
        let mut s = accept_within(&l, Duration::from_secs(180)).expect("guest connected to 5001");
        let t0 = std::time::Instant::now();
        let mut got = Vec::with_capacity(XFER);
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < XFER {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "guest→host TCP: {} MiB in {secs:.2}s = {:.1} MiB/s (QEMU TCG guest: correctness, not speed)",
            got.len() >> 20,
            got.len() as f64 / (1 << 20) as f64 / secs
        );
        (got.len(), got == *expected)
    });
    let source_data = data.clone();
    let source = env.ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:5002").expect("bind 5002");
        let mut s = accept_within(&l, Duration::from_secs(240)).expect("guest connected to 5002");
        let t0 = std::time::Instant::now();
        let ok = s.write_all(&source_data).is_ok();
        // The guest closes after reading everything: wait for that EOF.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut rest = [0u8; 64];
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "host→guest TCP: {} MiB in {secs:.2}s = {:.1} MiB/s",
            source_data.len() >> 20,
            source_data.len() as f64 / (1 << 20) as f64 / secs
        );
        ok
    });

    let run = boot(
        &env,
        &sock,
        1,
        1,
        None,
        &format!(
            r#"
yes VIADUCT-NET-PATTERN | head -c {XFER} | nc {HOST_IP} 5001
result sent=done
mkfifo /tmp/hold; sleep 600 > /tmp/hold & HOLD=$!
nc {HOST_IP} 5002 < /tmp/hold > /tmp/rx
kill $HOLD
result rx_bytes=$(wc -c < /tmp/rx)
result rx_md5=$(md5sum < /tmp/rx | cut -d' ' -f1)
"#
        ),
        "main",
    );
    expect(&run, "mac", GUEST_MAC, &d);
    assert_ne!(
        run.console.get("ping").unwrap(),
        "0",
        "guest could not ping the TAP\n{}",
        d.log_text()
    );
    let (got, same) = sink.join().unwrap().unwrap();
    assert_eq!(got, XFER, "guest→host bytes");
    assert!(same, "guest→host data differs");
    assert!(source.join().unwrap().unwrap(), "host→guest send failed");
    expect(&run, "rx_bytes", &XFER.to_string(), &d);
    expect(&run, "rx_md5", &want_md5, &d);
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap().unwrap();
    assert!(
        big.load(Ordering::Relaxed) > 0,
        "no frame larger than the MTU crossed the TAP: GSO is not working end to end"
    );

    // The TAP's offloads, as the kernel reports them, follow what the guest acked
    // (the stock virtio_net driver acks checksum and TSO offloads).
    let k = env
        .ns
        .command("ethtool")
        .args(["-k", TAP])
        .output()
        .expect("ethtool");
    let k = String::from_utf8_lossy(&k.stdout);
    for feature in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
        assert!(k.contains(feature), "TAP offloads lack `{feature}`:\n{k}");
    }

    // Scenario 6: a second boot, same daemon process.
    let run = boot(&env, &sock, 1, 1, None, "", "second");
    assert_ne!(
        run.console.get("ping").unwrap(),
        "0",
        "second boot could not ping\n{}",
        d.log_text()
    );
    assert!(d.alive(), "daemon died:\n{}", d.log_text());
    let status = d.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not exit 0: {status:?}"
    );
}

/// Scenario 3: with `--mtu 9000` an 8972-byte ping passes unfragmented.
#[test]
fn jumbo_frames_pass_unfragmented() {
    let env = env("net-mtu");
    let (d, sock) = daemon(&env, &["--mtu", "9000"]);
    let run = boot(
        &env,
        &sock,
        1,
        1,
        Some("virtio-net-pci.host_mtu=9000"),
        r#"
ip link set $IF mtu 9000
result guest_mtu=$(cat /sys/class/net/$IF/mtu)
frags() { awk '/^Ip:/ { if (!h) { for (i = 1; i <= NF; i++) n[i] = $i; h = 1 } else { for (i = 1; i <= NF; i++) v[n[i]] = $i } } END { print v["FragCreates"] + v["ReasmReqds"] }' /proc/net/snmp; }
before=$(frags)
n=$(ping -c 3 -W 2 -s 8972 10.88.0.1 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
result jumbo_ping=${n:-0}
result frag_delta=$(( $(frags) - before ))
"#,
        "mtu",
    );
    expect(&run, "guest_mtu", "9000", &d);
    assert_ne!(
        run.console.get("jumbo_ping").unwrap(),
        "0",
        "jumbo ping failed\n{}",
        d.log_text()
    );
    expect(&run, "frag_delta", "0", &d);
    // QEMU negotiated NET_MTU and the daemon accepted its host_mtu.
    assert!(
        d.log_text()
            .contains("event=set_mtu mtu=9000 tap_mtu=9000 result=ok"),
        "no SET_MTU exchange in the daemon log:\n{}",
        d.log_text()
    );
    let out = env
        .ns
        .command("cat")
        .arg(format!("/sys/class/net/{TAP}/mtu"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9000",
        "TAP MTU"
    );
}

/// Scenario 4: two queue pairs are two RX and two TX queues in the guest,
/// and traffic flows with both enabled.
#[test]
fn two_queue_pairs_carry_traffic() {
    let env = env("net-mq");
    let (d, sock) = daemon(&env, &["--num-queue-pairs", "2"]);
    let sink = env.ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:5001").expect("bind");
        let mut total = 0usize;
        // Two connections, which the guest's XPS spreads over its queues.
        for _ in 0..2 {
            let Some(mut s) = accept_within(&l, Duration::from_secs(180)) else {
                break;
            };
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
        }
        total
    });
    let run = boot(
        &env,
        &sock,
        2,
        2,
        None,
        r#"
result rx_queues=$(ls -d /sys/class/net/$IF/queues/rx-* | wc -l)
result tx_queues=$(ls -d /sys/class/net/$IF/queues/tx-* | wc -l)
result irqs=$(grep -c 'virtio.*input\|virtio.*output' /proc/interrupts)
taskset 1 sh -c "head -c 4194304 /dev/zero | nc 10.88.0.1 5001"
taskset 2 sh -c "head -c 4194304 /dev/zero | nc 10.88.0.1 5001"
result sent=done
"#,
        "mq",
    );
    expect(&run, "rx_queues", "2", &d);
    expect(&run, "tx_queues", "2", &d);
    assert_ne!(
        run.console.get("ping").unwrap(),
        "0",
        "ping with 2 queue pairs\n{}",
        d.log_text()
    );
    assert_eq!(
        sink.join().unwrap().unwrap(),
        8 << 20,
        "bytes over two connections"
    );
}
