//! Live migration with an unmodified QEMU (issue 15, test host A): two QEMU
//! 10 processes (TCG, 512 MiB of shared memfd memory) on this host; the
//! source's guest has its disk and NIC from our daemons, the destination
//! (`-incoming`) gets its own daemon instances on the same image and on a
//! second TAP. Both TAPs are in a Linux bridge, in a private network
//! namespace, that carries the host's address, so the guest's TCP peer
//! stays the same.
//!
//! The guest runs `viaduct-migload` through the migration (see
//! `guest_kit::migload`): two disk writers (O_DIRECT, buffered), a reader
//! whose buffers only the device writes, a memory dirtier and a TCP stream
//! both ways. After the switch-over every workload must make progress on
//! the destination with no verify failure or I/O error, the destination's
//! TAP must see the guest's RARP before anything else from it, and after
//! shutdown the image must hold every acknowledged write.
//!
//! The same run with qemu-storage-daemon and QEMU's own TAP backend is the
//! calibration (QEMU's figures for comparison); the same run with the
//! source daemons' dirty logging forced off must detect the loss.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_kit::binaries::project_binary;
use guest_kit::cache::{Cache, Scratch};
use guest_kit::console::Console;
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::initramfs::Initramfs;
use guest_kit::kernel::GuestKernel;
use guest_kit::migload::peer::{self, PeerStats};
use guest_kit::migload::{self, IMAGE_BYTES, STREAM_PORT};
use guest_kit::modules::ModuleTree;
use guest_kit::netns::NetNs;
use guest_kit::provision;
use guest_kit::qmp::{MigrationStats, Qmp};
use guest_kit::rarp::{self, Seen};
use guest_kit::vm::Vm;
use serde_json::json;

const HOST_IP: &str = "10.88.0.1";
const GUEST_IP: &str = "10.88.0.2";
const GUEST_MAC: &str = "52:54:00:88:00:02";
const BRIDGE: &str = "vdbr0";
const TAP_SRC: &str = "vdtap0";
const TAP_DST: &str = "vdtap1";
/// Migration bandwidth (both scenarios): a local unix socket.
const MAX_BANDWIDTH: u64 = 1 << 30;

/// Scenarios share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Who serves the guest's disk and NIC.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Backends {
    /// vhost-user-blk and vhost-user-net; `never_mark` starts the source
    /// daemons with the negative control switch.
    Ours { never_mark: bool },
    /// qemu-storage-daemon's vhost-user-blk export and QEMU's TAP netdev.
    Qsd,
}

struct Env {
    kernel: GuestKernel,
    work: Scratch,
    ns: NetNs,
    image: PathBuf,
    initrd: PathBuf,
}

/// What the guest does while it is migrated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Nothing: the figures of an idle guest.
    Idle,
    /// The five workloads, and every check.
    Busy,
}

/// The guest: network up, the five workloads (when busy), then wait for
/// `stop` on the serial console.
fn guest_script(load: Load) -> String {
    let workloads = match load {
        Load::Idle => "",
        Load::Busy => {
            "M=/bin/viaduct-migload
$M write-direct /dev/vda &
$M write-buffered /dev/vda &
$M read /dev/vda &
$M dirty --pass-ms 1000 &
$M stream $HOST &"
        }
    };
    format!(
        r#"
IF=$(ls /sys/class/net | grep -v lo | head -n1)
ip addr add {GUEST_IP}/24 dev $IF
ip link set $IF up
HOST={HOST_IP}
{workloads}
echo VIADUCT-WORKLOADS-RUNNING
read -r cmd
touch {stop}
wait
result kernel_io_errors=$(dmesg | grep -ci 'i/o error')
result hung_tasks=$(dmesg | grep -c 'blocked for more than')
"#,
        stop = migload::STOP_FILE
    )
}

fn env(tag: &str, load: Load) -> Env {
    let cache = Cache::locate().expect("cache");
    let kernel =
        provision::ensure_kernel(&cache).expect("guest kernel (scripts/test.sh provisions it)");
    let work = cache.scratch(tag).expect("scratch");
    let ns = NetNs::create(tag).expect("network namespace");
    for args in [
        vec!["link", "add", BRIDGE, "type", "bridge"],
        vec!["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE],
        vec!["link", "set", BRIDGE, "up"],
    ] {
        ip(&ns, &args);
    }
    for tap in [TAP_SRC, TAP_DST] {
        ip(
            &ns,
            &["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"],
        );
        ip(&ns, &["link", "set", tap, "master", BRIDGE]);
        ip(&ns, &["link", "set", tap, "up"]);
    }
    let image = work.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .expect("image");
    migload::write_read_area(&image).expect("reader blocks");
    let initrd = work.join("guest.cpio");
    let tree = ModuleTree::open(&kernel.modules).expect("modules");
    let mut img = Initramfs::new();
    img.busybox()
        .expect("busybox")
        .modules(&tree, &["virtio_blk", "virtio_net"])
        .expect("modules")
        .binary(
            "/bin/viaduct-migload",
            Path::new(env!("CARGO_BIN_EXE_viaduct-migload")),
        )
        .expect("migload")
        .scenario(&guest_script(load));
    img.write(&initrd).expect("initramfs");
    Env {
        kernel,
        work,
        ns,
        image,
        initrd,
    }
}

fn ip(ns: &NetNs, args: &[&str]) {
    let out = ns.command("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The daemons of one side; dropped (killed) at the end.
struct Side {
    daemons: Vec<Daemon>,
    blk_sock: PathBuf,
    net_sock: Option<PathBuf>,
    tap: &'static str,
}

fn start_side(env: &Env, backends: Backends, dest: bool) -> Side {
    let side = if dest { "dst" } else { "src" };
    let tap = if dest { TAP_DST } else { TAP_SRC };
    let blk_sock = env.work.join(format!("{side}-blk.sock"));
    let log = |n: &str| env.work.join(format!("{side}-{n}.log"));
    match backends {
        Backends::Ours { never_mark } => {
            let never = never_mark && !dest;
            let mut blk =
                Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk binary"));
            blk.arg("--socket-path")
                .arg(&blk_sock)
                .arg("--blk-file")
                .arg(&env.image);
            let net_sock = env.work.join(format!("{side}-net.sock"));
            let mut net = env
                .ns
                .command(project_binary("vhost-user-net").expect("vhost-user-net binary"));
            net.arg("--socket-path")
                .arg(&net_sock)
                .args(["--tap", tap, "--mac", GUEST_MAC]);
            if dest {
                // The source daemon still holds the image's lock.
                blk.arg("--incoming");
            }
            if never {
                blk.arg("--test-never-mark-dirty");
                net.arg("--test-never-mark-dirty");
            }
            let b = Daemon::start(blk, &blk_sock, &log("blk"))
                .unwrap_or_else(|e| panic!("{side} vhost-user-blk did not start: {e}"));
            let n = Daemon::start(net, &net_sock, &log("net"))
                .unwrap_or_else(|e| panic!("{side} vhost-user-net did not start: {e}"));
            Side {
                daemons: vec![b, n],
                blk_sock,
                net_sock: Some(net_sock),
                tap,
            }
        }
        Backends::Qsd => {
            let locking = if dest { ",locking=off" } else { "" };
            let mut qsd = Command::new("qemu-storage-daemon");
            qsd.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=f,filename={}{locking}",
                    env.image.display()
                ))
                .args(["--blockdev", "driver=raw,node-name=d,file=f", "--export"])
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on",
                    blk_sock.display()
                ));
            let q = Daemon::start(qsd, &blk_sock, &log("qsd"))
                .unwrap_or_else(|e| panic!("{side} qemu-storage-daemon did not start: {e}"));
            Side {
                daemons: vec![q],
                blk_sock,
                net_sock: None,
                tap,
            }
        }
    }
}

/// The QEMU command for one side, run inside the namespace (QEMU's own
/// TAP backend opens the TAP there).
fn qemu(env: &Env, side: &Side, incoming: bool) -> Command {
    let mut host = HostA::new(&env.kernel);
    host.vhost_user_blk(&side.blk_sock, 1);
    match &side.net_sock {
        Some(sock) => {
            host.vhost_user_net(sock, GUEST_MAC, 1);
        }
        None => {
            host.qemu_args(&[
                "-netdev",
                &format!(
                    "tap,id=nt,ifname={},script=no,downscript=no,vhost=off",
                    side.tap
                ),
                "-device",
                &format!("virtio-net-pci,netdev=nt,mac={GUEST_MAC}"),
            ]);
        }
    }
    if incoming {
        host.qemu_args(&["-incoming", "defer"]);
    }
    let inner = host.command(&env.initrd);
    let mut cmd = env.ns.command(inner.get_program());
    cmd.args(inner.get_args());
    cmd
}

/// The workloads' counters that must grow on the destination.
const PROGRESS: [&str; 5] = [
    "direct_iters",
    "buffered_iters",
    "reader_reads",
    "dirtier_passes",
    "stream_received",
];

fn value(c: &Console, key: &str) -> u64 {
    c.results()
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What one run saw.
#[derive(Debug, Default)]
struct Outcome {
    /// The guest ran the workloads.
    busy: bool,
    migration: Option<MigrationStats>,
    migration_error: Option<String>,
    /// When the migration failed: whether the guest still runs on the source.
    source_still_running: bool,
    /// Workload counters that did not grow on the destination within the
    /// deadline (a stalled device or stream).
    stalled: Vec<String>,
    /// Time from the end of the migration to the guest's first new stream
    /// bytes at the host.
    stream_resumed: Option<Duration>,
    seen: Seen,
    /// The destination's console (its last reports; final ones if the
    /// guest finished).
    results: Option<Console>,
    guest_finished: bool,
    peer_bad: u64,
    peer_errors: u64,
    /// Writer blocks verified in the image after shutdown.
    image: Option<Result<u64, String>>,
    daemon_logs: String,
    dest_stderr: String,
    /// Workload counters: at the switch-over (the source's last report)
    /// and at the end.
    counters: String,
}

impl Outcome {
    fn get(&self, key: &str) -> u64 {
        self.results.as_ref().map_or(0, |c| value(c, key))
    }

    /// Every sign of lost data or a stuck guest, empty when clean.
    fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .stalled
            .iter()
            .map(|k| format!("{k} stalled on the destination"))
            .collect();
        if !self.guest_finished {
            p.push("the guest did not finish after `stop`".into());
        }
        if self.busy && self.stream_resumed.is_none() {
            p.push("the guest's stream to the host did not resume".into());
        }
        for key in [
            "direct_bad",
            "direct_errors",
            "buffered_bad",
            "buffered_errors",
            "reader_bad",
            "reader_errors",
            "dirtier_bad",
            "stream_bad",
            "stream_errors",
            "kernel_io_errors",
            "hung_tasks",
        ] {
            let v = self.get(key);
            if v != 0 {
                p.push(format!("{key}={v}"));
            }
        }
        if self.peer_bad != 0 {
            p.push(format!("host saw {} wrong stream bytes", self.peer_bad));
        }
        if let Some(Err(e)) = &self.image {
            p.push(format!("image: {e}"));
        }
        p
    }

    fn figures(&self, label: &str) -> String {
        let m = self.migration.clone().unwrap_or_default();
        format!(
            "{label}: status={} total={} ms downtime={} ms setup={} ms transferred={:.1} MB \
             dirty_syncs={} stream_resumed_after={:?} rarps_on_new_tap={} rarp_first={}",
            m.status,
            m.total_time_ms,
            m.downtime_ms,
            m.setup_time_ms,
            m.ram_transferred as f64 / 1e6,
            m.dirty_sync_count,
            self.stream_resumed,
            self.seen.rarps,
            match (self.seen.first_rarp, self.seen.first_other) {
                (Some(r), Some(o)) => (r <= o).to_string(),
                (Some(_), None) => "true".into(),
                _ => "false".into(),
            }
        )
    }
}

/// Progress on the destination: every counter beyond the source's last,
/// the reader past a full re-check, the stream moving. Returns what did
/// not move within 20 s, and when the stream resumed after `done_at`.
fn watch_progress(
    dest: &mut Vm,
    src_console: &Console,
    stats: &PeerStats,
    done_at: Instant,
) -> (Vec<String>, Option<Duration>) {
    let received_at_switch = stats.received();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut resumed = None;
    // The stream is polled every 10 ms (the resume time is a figure), the
    // console every 200 ms.
    let mut tick = 0u64;
    loop {
        tick += 1;
        if resumed.is_none() && stats.received() > received_at_switch {
            resumed = Some(done_at.elapsed());
        }
        if tick % 20 == 1 {
            let c = dest.console();
            let mut stalled: Vec<String> = PROGRESS
                .iter()
                .filter(|k| value(&c, k) <= value(src_console, k))
                .map(|k| k.to_string())
                .collect();
            if value(&c, "reader_cycles") < value(src_console, "reader_cycles") + 2 {
                stalled.push("reader_cycles".into());
            }
            if stalled.is_empty() || Instant::now() > deadline || !dest.alive() {
                return (stalled, resumed);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One full run: boot on the source, migrate under load, let the guest
/// work on the destination, stop it and check the image.
fn run(tag: &str, backends: Backends, load: Load, postcopy: bool) -> Outcome {
    let env = env(tag, load);
    let busy = load == Load::Busy;
    let mut out = Outcome {
        busy: load == Load::Busy,
        ..Outcome::default()
    };
    let src = start_side(&env, backends, false);

    let stats = Arc::new(PeerStats::default());
    let peer = busy.then(|| {
        let stats = stats.clone();
        env.ns
            .spawn(move || peer::serve(STREAM_PORT, Duration::from_secs(120), &stats))
    });
    let stop_capture = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop_capture.clone();
        let mac = rarp::parse_mac(GUEST_MAC).expect("mac");
        env.ns.spawn(move || rarp::watch(TAP_DST, mac, &stop))
    };

    let mut source = Vm::spawn(
        "source",
        qemu(&env, &src, false),
        &env.work.join("src.qmp"),
        &env.work.join("src.console"),
    )
    .expect("source QEMU");
    assert!(
        source.wait_console("VIADUCT-WORKLOADS-RUNNING", Duration::from_secs(120)),
        "the guest's workloads did not start\n{}",
        source.describe()
    );
    // Let every workload get going (the stream connected and moving).
    let t0 = Instant::now();
    while busy
        && (stats.received() < (1 << 20)
            || !PROGRESS.iter().all(|k| value(&source.console(), k) > 0))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "workloads not all running on the source\n{}",
            source.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dst = start_side(&env, backends, true);
    let mut dest = Vm::spawn(
        "destination",
        qemu(&env, &dst, true),
        &env.work.join("dst.qmp"),
        &env.work.join("dst.console"),
    )
    .expect("destination QEMU");
    let mut sq = Qmp::connect(source.qmp_path(), Duration::from_secs(30)).expect("source QMP");
    let mut dq = Qmp::connect(dest.qmp_path(), Duration::from_secs(30)).expect("destination QMP");
    let uri = format!("unix:{}", env.work.join("migration.sock").display());
    let mut setup = || -> Result<(), String> {
        if postcopy {
            dq.set_capabilities(&[("postcopy-ram", true)])
                .map_err(|e| format!("destination postcopy-ram: {e}"))?;
            sq.set_capabilities(&[("postcopy-ram", true)])
                .map_err(|e| format!("source postcopy-ram: {e}"))?;
        }
        sq.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": MAX_BANDWIDTH }),
        )
        .map_err(|e| e.to_string())?;
        dq.migrate_incoming(&uri).map_err(|e| e.to_string())?;
        sq.migrate(&uri).map_err(|e| e.to_string())?;
        if postcopy {
            // Switch to post-copy once the first pass is under way.
            std::thread::sleep(Duration::from_millis(500));
            sq.execute("migrate-start-postcopy", json!({}))
                .map_err(|e| format!("migrate-start-postcopy: {e}"))?;
        }
        Ok(())
    };
    let started = setup();
    let migrated = started.and_then(|()| {
        sq.wait_migration(Duration::from_secs(120))
            .map_err(|e| e.to_string())
    });
    let done_at = Instant::now();
    match migrated {
        Ok(m) => out.migration = Some(m),
        Err(e) => {
            out.migration_error = Some(e);
            out.source_still_running = sq.running().unwrap_or(false);
            out.dest_stderr = dest.stderr();
            out.daemon_logs = logs(&src, &dst);
            return out;
        }
    }
    let src_console = source.console();
    let _ = sq.execute("quit", json!({}));
    source.wait_exit(Duration::from_secs(10));

    if busy {
        (out.stalled, out.stream_resumed) =
            watch_progress(&mut dest, &src_console, &stats, done_at);
    }
    let _ = dest.send_line("stop");
    // A stalled guest is not waited for long: the stall is the finding.
    let patience = if out.stalled.is_empty() { 60 } else { 15 };
    let status = dest.wait_exit(Duration::from_secs(patience));
    out.guest_finished = status.is_some_and(|s| s.success()) && dest.console().finished();
    // The last values the guest reported, finished or not.
    out.results = Some(dest.console());
    out.dest_stderr = dest.stderr();
    out.counters = PROGRESS
        .iter()
        .chain(&["reader_cycles"])
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                value(&src_console, k),
                value(&dest.console(), k)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    drop(dest);
    stop_capture.store(true, Ordering::Relaxed);
    out.seen = capture
        .join()
        .expect("capture thread")
        .expect("namespace")
        .expect("capture");
    if let Some(peer) = peer {
        let _ = peer.join();
    }
    out.peer_bad = stats.bad.load(Ordering::Relaxed);
    out.peer_errors = stats.errors.load(Ordering::Relaxed);
    out.daemon_logs = logs(&src, &dst);
    // The daemons flush and let go of the image.
    for d in src.daemons.into_iter().chain(dst.daemons) {
        d.terminate(Duration::from_secs(10));
    }
    out.image = out.guest_finished.then(|| {
        migload::verify_writes(
            &env.image,
            out.get("direct_iters"),
            out.get("buffered_iters"),
        )
    });
    out
}

fn logs(src: &Side, dst: &Side) -> String {
    src.daemons
        .iter()
        .chain(&dst.daemons)
        .map(|d| d.log_text())
        .collect::<Vec<_>>()
        .join("\n---- next daemon ----\n")
}

fn assert_clean(out: &Outcome, label: &str) {
    assert!(
        out.migration_error.is_none(),
        "{label}: migration failed: {:?}\n--- destination stderr ---\n{}\n--- daemon logs ---\n{}",
        out.migration_error,
        out.dest_stderr,
        out.daemon_logs
    );
    let problems = out.problems();
    assert!(
        problems.is_empty(),
        "{label}: {problems:?}\n{}\n--- destination stderr ---\n{}\n--- daemon logs ---\n{}",
        out.results.as_ref().map(|c| c.tail(30)).unwrap_or_default(),
        out.dest_stderr,
        out.daemon_logs
    );
    assert!(
        out.seen.rarps > 0,
        "{label}: no RARP from the guest on the destination TAP\n{}",
        out.dest_stderr
    );
    if let (Some(rarp), Some(other)) = (out.seen.first_rarp, out.seen.first_other) {
        assert!(
            rarp <= other,
            "{label}: the guest sent on the destination TAP {:?} before its RARP",
            rarp - other
        );
    }
}

/// What the daemons' logs say about dirty logging.
fn dirty_log_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("dirty") || l.contains("log_"))
        .collect()
}

const OURS: Backends = Backends::Ours { never_mark: false };

/// Our daemons, idle and busy, pre-copy; the same runs with
/// qemu-storage-daemon and QEMU's TAP backend (QEMU's figures for
/// comparison); the negative control; post-copy.
#[test]
fn qemu_migrates_a_busy_guest_served_by_our_daemons() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut figures = Vec::new();
    let mut report = |out: &Outcome, label: &str| {
        let f = out.figures(label);
        eprintln!("{f}\n  counters at switch-over -> end: {}", out.counters);
        for l in dirty_log_lines(&out.daemon_logs) {
            eprintln!("  daemon: {l}");
        }
        figures.push(f);
    };

    for (backends, name) in [(OURS, "ours"), (Backends::Qsd, "qsd + QEMU tap")] {
        let tag = if backends == OURS { "ours" } else { "qsd" };
        let idle = run(&format!("mig-{tag}-idle"), backends, Load::Idle, false);
        report(&idle, &format!("{name}, idle"));
        assert_clean(&idle, &format!("{name}, idle"));
        let busy = run(&format!("mig-{tag}-busy"), backends, Load::Busy, false);
        report(&busy, &format!("{name}, busy"));
        assert_clean(&busy, &format!("{name}, busy"));
        eprintln!("  image: {:?} writer blocks verified", busy.image);
    }

    // The negative control: the source daemons accept logging and never
    // mark, so QEMU copies stale pages; the run must notice.
    let never = run(
        "mig-never",
        Backends::Ours { never_mark: true },
        Load::Busy,
        false,
    );
    report(&never, "ours, source never marks (negative control)");
    assert!(
        never.migration_error.is_none(),
        "the negative control did not migrate: {:?}",
        never.migration_error
    );
    let detected = never.problems();
    eprintln!("  negative control detected: {detected:?}");
    assert!(
        !detected.is_empty(),
        "a source daemon that never marks went unnoticed: the test cannot fail"
    );

    // Post-copy: QEMU probes the destination's vhost-user backends when
    // `postcopy-ram` is turned on there (its POSTCOPY_NOTIFY_PROBE) and
    // refuses unless each offers PROTOCOL_F_PAGEFAULT; our daemons do not
    // implement POSTCOPY_ADVISE/LISTEN/END (userfaultfd on guest memory),
    // so QEMU refuses before anything moves and the guest stays put.
    let post = run("mig-postcopy", OURS, Load::Busy, true);
    report(&post, "ours, post-copy");
    eprintln!("  post-copy: {:?}", post.migration_error);
    assert!(
        post.migration_error
            .as_deref()
            .is_some_and(|e| e.contains("vhost-user backend not capable of postcopy")),
        "post-copy with our daemons: expected QEMU to refuse, got {:?}\n{}",
        post.migration_error,
        post.figures("post-copy")
    );
    assert!(
        post.source_still_running,
        "the guest stopped on the source after the refused post-copy"
    );

    eprintln!("figures:\n  {}", figures.join("\n  "));
}
