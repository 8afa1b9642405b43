//! vhost-user-blk end to end with an unmodified QEMU guest (test host A):
//! the stock Linux virtio_blk driver against our daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest_kit::binaries::project_binary;
use guest_kit::cache::{Cache, Scratch};
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::initramfs::guest_initramfs;
use guest_kit::kernel::GuestKernel;
use guest_kit::provision;
use guest_kit::qemu::GuestRun;
use guest_kit::selftest::{md5_of, pattern, read_at, write_at};

const MIB: u64 = 1 << 20;
/// The same, as a length.
const MIB_LEN: usize = 1 << 20;

struct Env {
    kernel: GuestKernel,
    work: Scratch,
}

fn env(tag: &str) -> Env {
    let cache = Cache::locate().expect("cache");
    let kernel =
        provision::ensure_kernel(&cache).expect("guest kernel (scripts/test.sh provisions it)");
    let work = cache.scratch(tag).expect("scratch");
    Env { kernel, work }
}

fn raw_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

fn daemon(env: &Env, name: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = env.work.join(format!("{name}.sock"));
    let mut cmd = Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk binary"));
    cmd.arg("--socket-path").arg(&sock).args(args);
    let d = Daemon::start(cmd, &sock, &env.work.join(format!("{name}.log")))
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    (d, sock)
}

fn boot(env: &Env, sock: &Path, queues: u16, cpus: u32, scenario: &str, name: &str) -> GuestRun {
    let initrd = env.work.join(format!("{name}.cpio"));
    guest_initramfs(&env.kernel.modules, &["virtio_blk"], scenario, &initrd).expect("initramfs");
    let mut host = HostA::new(&env.kernel);
    host.vhost_user_blk(sock, queues).cpus(cpus);
    let run = host
        .boot(
            &initrd,
            Duration::from_secs(180),
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

const READ_WRITE: &str = r#"
result vda_bytes=$(blockdev --getsize64 /dev/vda)
result ro=$(cat /sys/block/vda/ro)
result host_md5=$(dd if=/dev/vda bs=1M skip=4 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
yes VIADUCT-GUEST-PATTERN | head -c 4194304 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null && result write=ok || result write=failed
echo 3 > /proc/sys/vm/drop_caches
result read_md5=$(dd if=/dev/vda bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
result hw_queues=$(ls /sys/block/vda/mq | wc -l)
"#;

/// Scenario 1 and 6: patterns both ways with checksums, then a second QEMU
/// boot served by the same daemon process.
#[test]
fn guest_reads_and_writes_and_daemon_serves_a_second_boot() {
    let env = env("blk-rw");
    let image = env.work.join("disk.raw");
    raw_image(&image, 64 * MIB);
    let host_pattern = pattern(MIB_LEN, "HOST");
    write_at(&image, 4 * MIB, &host_pattern).expect("host pattern");
    let guest_pattern = pattern(4 * MIB_LEN, "GUEST");
    let (mut d, sock) = daemon(&env, "blk", &["--blk-file", image.to_str().unwrap()]);

    for boot_no in 1..=2 {
        let run = boot(&env, &sock, 1, 1, READ_WRITE, &format!("boot{boot_no}"));
        expect(&run, "vda_bytes", &(64 * MIB).to_string(), &d);
        expect(&run, "ro", "0", &d);
        expect(&run, "host_md5", &md5_of(&host_pattern).unwrap(), &d);
        expect(&run, "write", "ok", &d);
        expect(&run, "read_md5", &md5_of(&guest_pattern).unwrap(), &d);
        assert!(
            d.alive(),
            "daemon exited after boot {boot_no}:\n{}",
            d.log_text()
        );
        let landed = read_at(&image, 16 * MIB, guest_pattern.len()).unwrap();
        assert!(
            landed == guest_pattern,
            "guest pattern not in the image after boot {boot_no}"
        );
        // Let the next boot prove it reads fresh data, not the last one's.
        write_at(&image, 16 * MIB, &vec![0u8; guest_pattern.len()]).unwrap();
    }
    let status = d.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not exit 0: {status:?}"
    );
}

/// Scenario 2: two virtqueues show up as two hardware queues.
#[test]
fn two_queues_are_two_hardware_queues() {
    let env = env("blk-mq");
    let image = env.work.join("disk.raw");
    raw_image(&image, 64 * MIB);
    let (d, sock) = daemon(
        &env,
        "blk",
        &["--blk-file", image.to_str().unwrap(), "--num-queues", "2"],
    );
    let run = boot(&env, &sock, 2, 2, READ_WRITE, "mq");
    expect(&run, "hw_queues", "2", &d);
    expect(&run, "write", "ok", &d);
    expect(
        &run,
        "read_md5",
        &md5_of(&pattern(4 * MIB_LEN, "GUEST")).unwrap(),
        &d,
    );
}

/// Scenario 3: `--read-only` gives a read-only disk and writes fail.
#[test]
fn read_only_disk_refuses_writes() {
    let env = env("blk-ro");
    let image = env.work.join("disk.raw");
    raw_image(&image, 64 * MIB);
    let before = std::fs::read(&image).unwrap();
    let (d, sock) = daemon(
        &env,
        "blk",
        &["--blk-file", image.to_str().unwrap(), "--read-only"],
    );
    let run = boot(
        &env,
        &sock,
        1,
        1,
        r#"
result ro=$(cat /sys/block/vda/ro)
echo x | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null && result write=ok || result write=failed
"#,
        "ro",
    );
    expect(&run, "ro", "1", &d);
    expect(&run, "write", "failed", &d);
    assert!(
        std::fs::read(&image).unwrap() == before,
        "a read-only image changed"
    );
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// Scenario 4: `blkdiscard` punches a hole in the raw image.
#[test]
fn discard_punches_a_hole() {
    let env = env("blk-discard");
    let image = env.work.join("disk.raw");
    raw_image(&image, 64 * MIB);
    write_at(&image, 0, &pattern(32 * MIB_LEN, "FULL")).unwrap();
    let before = allocated_bytes(&image);
    let (d, sock) = daemon(&env, "blk", &["--blk-file", image.to_str().unwrap()]);
    let run = boot(
        &env,
        &sock,
        1,
        1,
        r#"
result max_discard=$(cat /sys/block/vda/queue/discard_max_bytes)
blkdiscard -o 8388608 -l 16777216 /dev/vda && result discard=ok || result discard=failed
sync
"#,
        "discard",
    );
    expect(&run, "discard", "ok", &d);
    let after = allocated_bytes(&image);
    assert!(
        after + 15 * MIB <= before,
        "discard of 16 MiB left the image allocation at {after} bytes (was {before})"
    );
    assert!(
        read_at(&image, 8 * MIB, MIB_LEN)
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        read_at(&image, 0, 4096)
            .unwrap()
            .starts_with(b"VIADUCT-FULL")
    );
}

/// Scenario 5: a qcow2 image written by the guest stays consistent and holds
/// the guest's data, as qemu-img and qemu-io see it.
#[test]
fn qcow2_image_is_clean_after_guest_writes() {
    let env = env("blk-qcow2");
    let image = env.work.join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let (d, sock) = daemon(
        &env,
        "blk",
        &["--blk-file", image.to_str().unwrap(), "--format", "auto"],
    );
    let run = boot(
        &env,
        &sock,
        1,
        1,
        r#"
result vda_bytes=$(blockdev --getsize64 /dev/vda)
head -c 1048576 /dev/zero | tr '\0' '\132' > /tmp/z
dd if=/tmp/z of=/dev/vda bs=1M seek=3 conv=fsync 2>/dev/null && result write=ok || result write=failed
echo 3 > /proc/sys/vm/drop_caches
result read_md5=$(dd if=/dev/vda bs=1M skip=3 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
"#,
        "qcow2",
    );
    expect(&run, "vda_bytes", &(64 * MIB).to_string(), &d);
    expect(&run, "write", "ok", &d);
    expect(&run, "read_md5", &md5_of(&vec![b'Z'; MIB_LEN]).unwrap(), &d);
    let status = d.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit {status:?}"
    );
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0x5a 3M 1M"])
        .arg(&image)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&io.stdout);
    assert!(
        io.status.success() && !out.contains("Pattern verification failed"),
        "qemu-io: {out}"
    );
}

fn open_flags(pid: u32, image: &Path) -> u32 {
    let image = std::fs::canonicalize(image).unwrap();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(entry.path()).ok().as_deref() == Some(image.as_path()) {
            let fdinfo = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap();
            let flags = fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .expect("flags line");
            return u32::from_str_radix(flags.trim(), 8).unwrap();
        }
    }
    panic!("daemon {pid} has no fd open on {}", image.display());
}

/// Scenario 7: each cache mode opens the image with the flags it promises.
#[test]
fn cache_modes_open_the_image_with_the_right_flags() {
    let env = env("blk-cache");
    let image = env.work.join("disk.raw");
    raw_image(&image, 16 * MIB);
    let direct = libc::O_DIRECT as u32;
    let dsync = libc::O_DSYNC as u32;
    for (mode, want_direct, want_dsync) in [
        ("writeback", false, false),
        ("unsafe", false, false),
        ("none", true, false),
        ("writethrough", false, true),
    ] {
        let (d, _sock) = daemon(
            &env,
            &format!("cache-{mode}"),
            &["--blk-file", image.to_str().unwrap(), "--cache", mode],
        );
        let flags = open_flags(d.pid(), &image);
        assert_eq!(
            flags & direct != 0,
            want_direct,
            "{mode}: O_DIRECT in {flags:o}"
        );
        assert_eq!(
            flags & dsync != 0,
            want_dsync,
            "{mode}: O_DSYNC in {flags:o}"
        );
        assert_eq!(
            flags & libc::O_ACCMODE as u32,
            libc::O_RDWR as u32,
            "{mode}: opened read-write"
        );
    }
}
