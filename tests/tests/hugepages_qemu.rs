//! Guest RAM in hugepages with our daemons (test host A): QEMU gives the
//! guest a shared file on hugetlbfs (`memory-backend-file,mem-path=..,
//! share=on`), vhost-user-blk and vhost-user-net map it from the fds QEMU
//! passes, and the stock drivers move data through both. The host's
//! hugepage pool (and a hugetlbfs mount, if none) are set up for the test
//! and put back after.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::hugepages::HugePages;
use guest_kit::initramfs::guest_initramfs;
use guest_kit::netns::NetNs;
use guest_kit::provision;
use guest_kit::selftest::{md5_of, read_at};

const GUEST_MIB: u64 = 256;
const HOST_IP: &str = "10.89.0.1";
const GUEST_IP: &str = "10.89.0.2";
const GUEST_MAC: &str = "52:54:00:89:00:02";

/// The largest mapping of `pid` backed by 2 MiB pages, in KiB.
fn largest_huge_mapping_kib(pid: u32) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let mut size = 0u64;
    let mut best = 0u64;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("KernelPageSize:"), Some("2048")) => best = best.max(size),
            _ => {}
        }
    }
    best
}

#[test]
fn daemons_serve_a_qemu_guest_whose_ram_is_a_shared_hugetlbfs_file() {
    let cache = Cache::locate().expect("cache");
    let kernel =
        provision::ensure_kernel(&cache).expect("guest kernel (scripts/test.sh provisions it)");
    let work = cache.scratch("hugepages").expect("scratch");
    let huge = HugePages::reserve(GUEST_MIB / 2, &work).expect("hugepages on the host");
    let ns = NetNs::create("hugepages").expect("network namespace");

    let image = work.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    let blk_sock = work.join("blk.sock");
    let mut cmd = Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk"));
    cmd.arg("--socket-path")
        .arg(&blk_sock)
        .arg("--blk-file")
        .arg(&image);
    let mut blk = Daemon::start(cmd, &blk_sock, &work.join("blk.log")).expect("blk daemon");
    let net_sock = work.join("net.sock");
    let mut cmd = ns.command(project_binary("vhost-user-net").expect("vhost-user-net"));
    cmd.arg("--socket-path").arg(&net_sock).args([
        "--tap",
        "vdtap9",
        "--host-ip",
        &format!("{HOST_IP}/24"),
        "--mac",
        GUEST_MAC,
    ]);
    let mut net = Daemon::start(cmd, &net_sock, &work.join("net.log")).expect("net daemon");

    let script = format!(
        r#"
yes VIADUCT-HUGE-PATTERN | head -c 4194304 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=8 conv=fsync 2>/dev/null && result write=ok || result write=failed
echo 3 > /proc/sys/vm/drop_caches
result read_md5=$(dd if=/dev/vda bs=1M skip=8 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
IF=$(ls /sys/class/net | grep -v lo | head -n1)
ip addr add {GUEST_IP}/24 dev $IF
ip link set $IF up
n=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  n=$(ping -c 2 -W 1 {HOST_IP} 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  [ "${{n:-0}}" -gt 0 ] && break
done
result ping=${{n:-0}}
"#
    );
    let initrd = work.join("guest.cpio");
    guest_initramfs(
        &kernel.modules,
        &["virtio_blk", "virtio_net"],
        &script,
        &initrd,
    )
    .expect("initramfs");
    let mut host = HostA::new(&kernel);
    host.memory_mib(u32::try_from(GUEST_MIB).unwrap())
        .hugetlbfs(huge.dir())
        .vhost_user_blk(&blk_sock, 1)
        .vhost_user_net(&net_sock, GUEST_MAC, 1);

    // While the guest runs: both daemons must map guest RAM in 2 MiB pages.
    let done = Arc::new(AtomicBool::new(false));
    let pids = [blk.pid(), net.pid()];
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = [0u64; 2];
            while !done.load(Ordering::Relaxed) {
                for (s, pid) in seen.iter_mut().zip(pids) {
                    *s = (*s).max(largest_huge_mapping_kib(pid));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    let run = host
        .boot(
            &initrd,
            Duration::from_secs(180),
            Some(work.join("guest.console")),
        )
        .expect("run QEMU");
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    let alive = blk.alive() && net.alive();
    let logs = || {
        format!(
            "--- blk ---\n{}\n--- net ---\n{}",
            blk.log_text(),
            net.log_text()
        )
    };
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "guest did not power off cleanly: {}\n{}",
        run.describe(),
        logs()
    );
    let c = &run.console;
    c.check_finished()
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let want: Vec<u8> = b"VIADUCT-HUGE-PATTERN\n"
        .iter()
        .copied()
        .cycle()
        .take(4 << 20)
        .collect();
    let landed = read_at(&image, 8 << 20, 4 << 20).expect("image");
    assert!(
        landed == want,
        "the guest's pattern did not land in the image"
    );
    let landed_md5 = md5_of(&landed).expect("md5");
    for (key, value) in [("write", "ok"), ("read_md5", landed_md5.as_str())] {
        c.expect(key, value)
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    }
    let replies: u32 = c.get("ping").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        replies > 0,
        "the guest could not ping over vhost-user-net\n{}",
        logs()
    );
    for (name, kib) in ["vhost-user-blk", "vhost-user-net"].iter().zip(seen) {
        assert!(
            kib >= GUEST_MIB * 1024,
            "{name} mapped no {GUEST_MIB} MiB of 2 MiB pages (largest {kib} KiB)"
        );
    }
    assert!(alive, "a daemon died\n{}", logs());
    eprintln!(
        "hugetlbfs guest RAM ({GUEST_MIB} MiB at {}): blk wrote and read 4 MiB, net got {replies} ping replies; both daemons mapped {} KiB of 2 MiB pages",
        huge.dir().display(),
        seen[0]
    );
}
