//! Format probing end to end (issue 13, test host A): an unmodified QEMU
//! guest on a raw vhost-user-blk disk writes a qcow2 header naming a secret
//! host file into its sector 0; the daemon is SIGKILLed and started again
//! with the same command line. The guest must read back exactly the bytes
//! it wrote and never the secret's. Then `--format qcow2` on that image
//! (its header names a backing file outside any allowed set) must fail at
//! start-up with an error naming the file.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::daemon::{Daemon, DaemonError};
use guest_kit::host_a::HostA;
use guest_kit::initramfs::Initramfs;
use guest_kit::modules::ModuleTree;
use guest_kit::provision;
use guest_kit::selftest::md5_of;

const MIB: u64 = 1 << 20;
/// The same, as a length.
const MIB_LEN: usize = 1 << 20;
/// Disk size (also the header's virtual size).
const DISK: u64 = 64 * MIB;
/// What the guest reads back after the restart.
const READ_BACK: usize = MIB_LEN;
/// The guest's "header written, restart me" mark, at 32 MiB.
const READY: &[u8] = b"READY-FOR-RESTART";
const READY_AT: u64 = 32 * MIB;
/// The host's "new daemon started" mark, at 33 MiB, written while no
/// daemon runs.
const GO: &[u8] = b"DAEMON-RESTARTED";
const GO_AT: u64 = 33 * MIB;
/// Seconds the guest waits for [`GO`] before it reads anyway.
const GO_WAIT_SECS: u32 = 90;

fn start_daemon(cmd_args: &[&str], sock: &Path, log: &Path) -> Result<Daemon, DaemonError> {
    // A killed daemon leaves its socket file; the harness waits for the
    // file, so remove it first.
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk binary"));
    cmd.arg("--socket-path").arg(sock).args(cmd_args);
    Daemon::start(cmd, sock, log)
}

fn marked(image: &Path, at: u64, mark: &[u8]) -> bool {
    let mut buf = vec![0u8; mark.len()];
    std::fs::File::open(image)
        .and_then(|f| f.read_exact_at(&mut buf, at))
        .is_ok()
        && buf == mark
}

fn guest_script(header_len: usize, secret_tag: &str) -> String {
    let ready_sector = READY_AT / 512;
    let go_sector = GO_AT / 512;
    let ready = std::str::from_utf8(READY).unwrap_or_default();
    let go = std::str::from_utf8(GO).unwrap_or_default();
    let go_len = GO.len();
    let chunks = READ_BACK / 65536;
    format!(
        r#"
H=/etc/viaduct/header.qcow2
dd if=$H of=/dev/vda bs=64k oflag=direct conv=fsync 2>/dev/null && result wrote=ok || result wrote=failed
printf {ready} > /tmp/m
dd if=/tmp/m of=/dev/vda bs=512 seek={ready_sector} count=1 conv=sync,fsync oflag=direct 2>/dev/null
i=0
while [ $i -lt {GO_WAIT_SECS} ]; do
  [ "$(dd if=/dev/vda bs=512 skip={go_sector} count=1 iflag=direct 2>/dev/null | head -c {go_len})" = {go} ] && break
  sleep 1; i=$((i + 1))
done
[ $i -lt {GO_WAIT_SECS} ] && result go_seen=1 || result go_seen=0
dd if=/dev/vda of=/tmp/r bs=64k count={chunks} iflag=direct 2>/dev/null
result read_bytes=$(wc -c < /tmp/r)
head -c {header_len} /tmp/r | cmp -s - $H && result readback=same || result readback=differs
result secret_hits=$(grep -a -c {secret_tag} /tmp/r)
result read_md5=$(md5sum < /tmp/r | cut -d' ' -f1)
"#
    )
}

#[test]
fn guest_written_qcow2_header_never_exposes_a_host_file() {
    let cache = Cache::locate().expect("cache");
    let kernel = provision::ensure_kernel(&cache).expect("guest kernel");
    let work = cache.scratch("blk-format-probe").expect("scratch");

    // The secret: a host file the guest must never read.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let secret_tag = format!("VIADUCT-HOST-SECRET-{nonce}");
    let secret = work.join("host-file.bin");
    let secret_bytes: Vec<u8> = format!("{secret_tag}\n")
        .bytes()
        .cycle()
        .take(MIB_LEN)
        .collect();
    std::fs::write(&secret, &secret_bytes).expect("secret");

    // The header the guest writes: a qcow2 image whose backing file is the
    // secret, padded to whole 64 KiB blocks (O_DIRECT writes).
    let hdr_path = work.join("made-by-qemu-img.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&hdr_path)
        .arg(DISK.to_string())
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut header = std::fs::read(&hdr_path).expect("header");
    header.resize(header.len().div_ceil(65536) * 65536, 0);
    assert!(header.len() < READ_BACK);
    let mut want = header.clone();
    want.resize(READ_BACK, 0);

    let image = work.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(DISK))
        .expect("image");
    let sock = work.join("blk.sock");
    let image_arg = image.to_str().expect("utf-8 path");
    // The same command line for both daemons, no --format: the default.
    let args = ["--blk-file", image_arg, "--cache", "writeback"];
    let mut daemon = start_daemon(&args, &sock, &work.join("daemon0.log"))
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));

    let initrd = work.join("guest.cpio");
    let tree = ModuleTree::open(&kernel.modules).expect("modules");
    let mut img = Initramfs::new();
    img.busybox()
        .expect("busybox")
        .modules(&tree, &["virtio_blk"])
        .expect("virtio_blk");
    img.file("etc/viaduct/header.qcow2", header.clone(), 0o644)
        .scenario(&guest_script(header.len(), &secret_tag));
    img.write(&initrd).expect("initramfs");
    let mut host = HostA::new(&kernel);
    host.reconnect_ms(100).vhost_user_blk(&sock, 1);
    let console = work.join("console.log");
    let guest = std::thread::spawn({
        let initrd = initrd.clone();
        move || host.boot(&initrd, Duration::from_secs(300), Some(console))
    });

    let deadline = Instant::now() + Duration::from_secs(150);
    while !marked(&image, READY_AT, READY) {
        assert!(
            Instant::now() < deadline,
            "the guest never wrote its header:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read(&image).expect("image")[..header.len()] == header[..],
        "the guest's header is not in the image"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(libc::pid_t::try_from(daemon.pid()).unwrap(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.alive() {
        assert!(Instant::now() < deadline, "SIGKILLed daemon still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|f| f.write_all_at(GO, GO_AT))
        .expect("go mark");
    let restart_log = work.join("daemon1.log");
    let daemon = start_daemon(&args, &sock, &restart_log)
        .unwrap_or_else(|e| panic!("restarted daemon did not start: {e}"));

    let run = guest.join().expect("guest thread").expect("run QEMU");
    let logs = || {
        format!(
            "{}\n---- restarted ----\n{}",
            std::fs::read_to_string(work.join("daemon0.log")).unwrap_or_default(),
            daemon.log_text()
        )
    };
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "guest did not power off cleanly: {}\n{}",
        run.describe(),
        logs()
    );
    let get = |k: &str| {
        run.console
            .get(k)
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()))
    };
    eprintln!(
        "wrote={} go_seen={} read_bytes={} readback={} secret_hits={}",
        get("wrote"),
        get("go_seen"),
        get("read_bytes"),
        get("readback"),
        get("secret_hits")
    );
    assert_eq!(get("wrote"), "ok");
    assert_eq!(get("read_bytes"), READ_BACK.to_string());
    assert_eq!(
        get("secret_hits"),
        "0",
        "secret seen: the guest read the host file through its disk\n{}",
        logs()
    );
    assert_eq!(get("go_seen"), "1", "the guest never saw the host's mark");
    assert_eq!(
        get("readback"),
        "same",
        "the guest's bytes did not come back"
    );
    assert_eq!(get("read_md5"), md5_of(&want).expect("md5"));
    assert!(
        daemon.log_text().contains("event=image_open format=Raw")
            && daemon.log_text().contains("landlock_files=1"),
        "{}",
        daemon.log_text()
    );
    assert!(
        daemon
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );

    // --format qcow2 on the image the guest made: its backing file is
    // outside every allowed set (none, then a --backing-dir without it).
    let empty_dir = work.join("allowed");
    std::fs::create_dir(&empty_dir).expect("dir");
    let secret_str = secret.to_str().expect("utf-8 path");
    for extra in [
        &["--format", "qcow2"][..],
        &[
            "--format",
            "qcow2",
            "--backing-dir",
            empty_dir.to_str().expect("utf-8"),
        ],
    ] {
        let mut argv = args.to_vec();
        argv.extend_from_slice(extra);
        match start_daemon(&argv, &sock, &work.join("daemon-qcow2.log")) {
            Ok(d) => panic!(
                "--format qcow2 {extra:?} served an image whose backing file is {secret_str}:\n{}",
                d.log_text()
            ),
            Err(DaemonError::Exited { status, stderr, .. }) => {
                eprintln!("{extra:?}: {}", stderr.trim());
                assert_eq!(status.code(), Some(2), "{stderr}");
                assert!(
                    stderr.contains(&format!("backing file {secret_str:?}"))
                        && stderr.contains("not allowed"),
                    "{stderr}"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}
