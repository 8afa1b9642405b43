//! vhost-user-blk on a Ceph RBD image with an unmodified QEMU guest (test
//! host A) against the test kit's one-node cluster: the guest reads the
//! pattern the host imported with `rbd import`, writes and reads back,
//! then runs the crash-restart write-verify loop (`restart_load`) while the
//! host restarts the OSD twice. The guest must see no I/O error and no
//! verify failure, and every block it was told was written must be in the
//! image afterwards (`rbd export`).

use std::process::Command;
use std::time::{Duration, Instant};

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::initramfs::guest_initramfs;
use guest_kit::provision;
use guest_kit::restart_load::{START_MARK, WORKERS, guest_script, verify_image};
use guest_kit::selftest::{md5_of, pattern, read_at, write_at};
use viaduct_test_kit::ceph::Cluster;

const MIB: u64 = 1 << 20;
/// The same, as a length.
const MIB_LEN: usize = 1 << 20;
const IMAGE_MIB: u64 = 64;
/// Guest seconds of the write-verify loop (the OSD restarts take ~1 s each).
const LOOP_SECS: u32 = 40;

const READ_WRITE: &str = r#"
result vda_bytes=$(blockdev --getsize64 /dev/vda)
result host_md5=$(dd if=/dev/vda bs=1M skip=8 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
yes VIADUCT-GUEST-PATTERN | head -c 4194304 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null && result write=ok || result write=failed
echo 3 > /proc/sys/vm/drop_caches
result read_md5=$(dd if=/dev/vda bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
"#;

#[test]
fn qemu_guest_on_rbd_survives_osd_restarts_without_losing_a_write() {
    let cache = Cache::locate().expect("cache");
    let kernel = provision::ensure_kernel(&cache).expect("guest kernel");
    let work = cache.scratch("blk-rbd").expect("scratch");
    let ceph = Cluster::start("qemu").expect("Ceph cluster (scripts/install-host-deps.sh)");

    // The host's pattern at 8 MiB, imported into the cluster.
    let file = work.join("import.raw");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(IMAGE_MIB * MIB))
        .expect("image file");
    let host_pattern = pattern(MIB_LEN, "HOST");
    write_at(&file, 8 * MIB, &host_pattern).expect("host pattern");
    ceph.import(&file, "guest").expect("rbd import");
    let export = |what: &str| {
        let data = ceph.export("guest", 64 * MIB_LEN).expect("rbd export");
        let path = work.join(format!("export-{what}.raw"));
        std::fs::write(&path, data).expect("write export");
        path
    };

    let sock = work.join("blk.sock");
    let spec = format!("rbd:rbd/guest:conf={}", ceph.conf().display());
    let mut cmd = Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk binary"));
    cmd.arg("--socket-path")
        .arg(&sock)
        .args(["--blk-file", &spec, "--num-queues", "2"]);
    let mut d = Daemon::start(cmd, &sock, &work.join("daemon.log"))
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));

    let initrd = work.join("guest.cpio");
    let script = format!("{READ_WRITE}{}", guest_script("/dev/vda", LOOP_SECS, ""));
    guest_initramfs(&kernel.modules, &["virtio_blk"], &script, &initrd).expect("initramfs");
    let mut host = HostA::new(&kernel);
    host.vhost_user_blk(&sock, 2).cpus(2);
    let console = work.join("console.log");
    let guest =
        std::thread::spawn(move || host.boot(&initrd, Duration::from_secs(300), Some(console)));

    // The loop has started once its mark is in the cluster.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let head = ceph.export("guest", START_MARK.len()).expect("rbd export");
        if head == START_MARK {
            break;
        }
        assert!(Instant::now() < deadline, "the guest's loop never started");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut restarts = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        let t0 = Instant::now();
        ceph.restart_osd().expect("OSD restart");
        restarts.push(t0.elapsed());
    }
    let run = guest.join().expect("guest thread").expect("run QEMU");
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "guest did not power off cleanly: {}\n{}",
        run.describe(),
        d.log_text()
    );
    let get = |k: &str| {
        run.console
            .get(k)
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()))
    };
    assert_eq!(get("vda_bytes"), (IMAGE_MIB * MIB).to_string());
    assert_eq!(get("host_md5"), md5_of(&host_pattern).unwrap());
    assert_eq!(get("write"), "ok");
    assert_eq!(
        get("read_md5"),
        md5_of(&pattern(4 * MIB_LEN, "GUEST")).unwrap()
    );
    let iterations: Vec<u64> = (0..WORKERS)
        .map(|w| get(&format!("iterations_{w}")).parse().unwrap())
        .collect();
    assert_eq!(get("io_errors"), "0", "{}", d.log_text());
    assert_eq!(get("verify_failures"), "0");
    assert_eq!(get("kernel_io_errors"), "0");
    assert!(d.alive(), "daemon died:\n{}", d.log_text());
    let image = export("after");
    let checked = verify_image(&image, &iterations).unwrap_or_else(|e| panic!("{e}"));
    let landed = read_at(&image, 16 * MIB, 4 * MIB_LEN).unwrap();
    assert!(
        landed == pattern(4 * MIB_LEN, "GUEST"),
        "guest write not in the cluster"
    );
    eprintln!(
        "rbd under QEMU: OSD restarted twice ({:.1} s, {:.1} s) under the guest's loop; \
         iterations {iterations:?}, {checked} blocks verified, 0 errors",
        restarts[0].as_secs_f64(),
        restarts[1].as_secs_f64()
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
}
