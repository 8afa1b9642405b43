//! Scenarios where our own VMM (`viaduct`) runs inside test host B and
//! boots an L2 guest: the L2 initramfs, the L1 script that starts
//! `viaduct`, and the checks on what both printed.
//!
//! L2's serial console is viaduct's stdout, which is L1's console, so L2's
//! `VIADUCT-RESULT` lines reach the harness directly. Each L2 run gets a
//! tag (passed on the kernel command line, which Linux hands to init as an
//! environment variable) that prefixes its result keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::binaries::project_binary;
use crate::console::Console;
use crate::host_b::{HostB, L1_BIN_DIR};
use crate::initramfs::Initramfs;
use crate::kernel::GuestKernel;
use crate::modules::ModuleTree;
use crate::restart_load::{self, PER_WORKER, WORKERS};
use crate::selftest::{Report, SelfTestError};
use crate::shell::Prelude;

/// Where L1 keeps L2's kernel images and initramfs.
pub const L1_GUEST_DIR: &str = "/opt/viaduct/guest";

/// How viaduct is asked to boot the L2 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Format {
    /// The bzImage through the 64-bit Linux boot protocol.
    BzImage,
    /// The uncompressed vmlinux through its PVH entry.
    Pvh,
    /// The bzImage booted `acpi=off`: CPUs from the MP table, power-off
    /// falls back to a halt that viaduct notices on the console.
    BzImageAcpiOff,
}

impl L2Format {
    /// Result-key prefix.
    pub fn tag(self) -> &'static str {
        match self {
            L2Format::BzImage => "bz",
            L2Format::Pvh => "pvh",
            L2Format::BzImageAcpiOff => "noacpi",
        }
    }

    /// The kernel's file name inside L1.
    fn kernel_file(self) -> &'static str {
        match self {
            L2Format::BzImage | L2Format::BzImageAcpiOff => "bz",
            L2Format::Pvh => "pvh",
        }
    }

    /// Kernel parameters beyond the common ones.
    fn extra_cmdline(self) -> &'static str {
        match self {
            L2Format::BzImageAcpiOff => " acpi=off",
            _ => "",
        }
    }
}

/// The L2 scenario (`tests/scripts/l2/scenario.sh`); `@LOAD@` becomes the
/// crash-restart load ([`l2_scenario`]).
const L2_SCENARIO: &str = include_str!("../scripts/l2/scenario.sh");

/// Guest seconds after which L2's write-verify loop stops on its own if
/// L1 never writes the stop mark (it does once its kills are done).
pub const L2_LOAD_SECS: u32 = 300;
/// SIGKILL/restart cycles of the blk daemon under that load.
pub const BLK_KILLS: u32 = 10;

/// The L2 scenario with the crash-restart load spliced in.
pub fn l2_scenario() -> String {
    L2_SCENARIO.replace(
        "@LOAD@",
        &restart_load::guest_script("/dev/vda", L2_LOAD_SECS, "${T}_rl_"),
    )
}

/// The MAC viaduct gives the L2 NIC (it overrides the backend's).
pub const L2_MAC: &str = "52:54:00:12:34:99";

/// Which vhost-user-blk daemon serves the L2 disk inside L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBackend {
    /// QEMU's qemu-storage-daemon (the reference backend).
    QemuStorageDaemon,
    /// The project's own `vhost-user-blk` daemon; this run also gives L2 a
    /// NIC from the project's `vhost-user-net` daemon (a TAP in L1), so the
    /// whole Viaduct stack is exercised.
    Viaduct,
}

impl DiskBackend {
    /// Result-key prefix.
    pub fn tag(self) -> &'static str {
        match self {
            DiskBackend::QemuStorageDaemon => "qsd",
            DiskBackend::Viaduct => "own",
        }
    }

    /// Shell command that serves `image` on `sock` with two queues.
    fn command(self, image: &str, sock: &str) -> String {
        match self {
            DiskBackend::QemuStorageDaemon => format!(
                "{L1_BIN_DIR}/qemu-storage-daemon --blockdev driver=file,node-name=f0,filename={image} \\
  --blockdev driver=raw,node-name=d0,file=f0 \\
  --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={sock},writable=on,num-queues=2"
            ),
            DiskBackend::Viaduct => format!(
                "{L1_BIN_DIR}/vhost-user-blk --socket-path {sock} --blk-file {image} --num-queues 2"
            ),
        }
    }
}

/// The L1 script that, per backend, serves a 64 MiB raw image (with a
/// host pattern at 4 MiB) over vhost-user-blk with two queues and boots the
/// bzImage L2 with it as `--disk`.
pub fn l1_disk_script(backends: &[DiskBackend]) -> String {
    let mut s = String::from(". /etc/viaduct/lib.sh\n");
    for b in backends {
        let t = b.tag();
        let image = format!("/tmp/disk-{t}.raw");
        let sock = format!("/tmp/blk-{t}.sock");
        let prelude = l1_prelude()
            .var("TAG", t)
            .var("IMAGE", &image)
            .var("SOCK", &sock)
            .exec_function("serve", &b.command(&image, &sock));
        s.push_str(&prelude.then(include_str!("../scripts/l1/disk_serve.sh")));
        match b {
            DiskBackend::Viaduct => s.push_str(&api_choreography(prelude)),
            DiskBackend::QemuStorageDaemon => {
                s.push_str(include_str!("../scripts/l1/disk_boot.sh"));
            }
        }
        s.push_str(include_str!("../scripts/l1/disk_finish.sh"));
    }
    s
}

/// Variables every L1 script may use.
fn l1_prelude() -> Prelude {
    Prelude::new()
        .var("L1_BIN_DIR", L1_BIN_DIR)
        .var("L1_GUEST_DIR", L1_GUEST_DIR)
}

/// The net daemon L1 runs for the full-stack run (and restarts in it):
/// two queue pairs, which L2 (2 vCPUs) enables through viaduct's control
/// queue.
const NET_DAEMON: &str = "/opt/viaduct/bin/vhost-user-net --socket-path /tmp/net.sock --tap vtap0 --host-ip 10.0.3.1/24 --num-queue-pairs 2";

/// Guest RAM of the full-stack run, in 2 MiB hugepages L1 reserves.
pub const HUGE_GUEST_MIB: u32 = 256;

/// How long L1 holds the VM paused.
pub const PAUSE_SECS: u32 = 6;
/// How long L1 samples exits of the idle guest.
pub const IDLE_SECS: u32 = 5;

/// The L1 side of the full-stack run (our daemons, viaduct with its API):
/// the L2 console goes through `tee` so L1 can wait for L2's phases, and
/// L1 answers each phase with a "go" line on viaduct's serial input.
///
/// 1. L2 sent 16 MiB over TCP and runs its write-verify load: L1 records
///    `/vm/info`, then [`BLK_KILLS`] times SIGKILLs the blk daemon at a
///    random moment, starts it again and waits for viaduct to reconnect;
///    when the load is done, L1 checks every block L2 was told it wrote
///    in the image file, and sums the requests the daemons resubmitted.
/// 2. L2 noted its uptime: L1 pauses the VM for [`PAUSE_SECS`], checks
///    the state is `paused`, resumes; L2 reports how much time it saw pass.
/// 3. L2 idles: L1 counts exits for [`IDLE_SECS`], records `/vm/info`
///    and ends the VMM with `viaduct ctl shutdown`.
fn api_choreography(prelude: Prelude) -> String {
    prelude
        .var("BLOCK", restart_load::BLOCK)
        .var("MEM_MIB", HUGE_GUEST_MIB)
        .var("HUGEPAGES", HUGE_GUEST_MIB / 2)
        .var("L2_MAC", L2_MAC)
        .var("BLK_KILLS", BLK_KILLS)
        .var("WORKERS", WORKERS)
        .var("PER_WORKER", PER_WORKER)
        .var("PAUSE_SECS", PAUSE_SECS)
        .var("IDLE_SECS", IDLE_SECS)
        .exec_function("net_daemon", NET_DAEMON)
        .then(include_str!("../scripts/l1/fullstack.sh"))
}

/// The L1 script that boots one L2 per format and reports viaduct's status.
pub fn l1_script(formats: &[L2Format], cpus: u32, memory: &str) -> String {
    let mut s = String::from(". /etc/viaduct/lib.sh\n");
    for f in formats {
        let prelude = l1_prelude()
            .var("TAG", f.tag())
            .var("KERNEL", f.kernel_file())
            .var("EXTRA_CMDLINE", f.extra_cmdline())
            .var("CPUS", cpus)
            .var("MEMORY", memory);
        s.push_str(&prelude.then(include_str!("../scripts/l1/boot.sh")));
    }
    s
}

/// QEMU's files in L1, at the paths Debian's QEMU searches.
const QEMU_FILES: [&str; 3] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

/// The L1 script part that boots the same bzImage and initramfs under
/// QEMU with KVM (the reference VMM), timed like viaduct's runs.
pub fn l1_qemu_reference(cpus: u32, memory: &str) -> String {
    l1_prelude()
        .var("CPUS", cpus)
        .var("MEMORY", memory)
        .then(include_str!("../scripts/l1/qemu_reference.sh"))
}

/// Peak RSS viaduct logged for its run (the `peak RSS N KiB` log line), in order.
pub fn logged_rss_kib(console: &Console) -> Vec<u64> {
    console
        .text()
        .lines()
        .filter_map(|l| {
            let rest = l.split("peak RSS ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Writes the L2 initramfs (busybox, virtio_blk, virtio_net, [`l2_scenario`]),
/// with the host's ethtool for runs that check a multiqueue NIC.
pub fn l2_initramfs(
    kernel: &GuestKernel,
    work: &Path,
    ethtool: bool,
) -> Result<PathBuf, SelfTestError> {
    let tree = ModuleTree::open(&kernel.modules)?;
    let mut l2 = Initramfs::new();
    l2.busybox()?
        .modules(&tree, &["virtio_blk", "virtio_net"])?
        .scenario(&l2_scenario());
    if ethtool {
        l2.binary("/usr/sbin/ethtool", Path::new("/usr/sbin/ethtool"))?;
    }
    let path = work.join("l2.cpio");
    l2.write(&path)?;
    Ok(path)
}

/// Boots test host B and, inside it, an L2 guest under viaduct per format.
pub fn boot_l2(
    kernel: &GuestKernel,
    work: &Path,
    formats: &[L2Format],
) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    let viaduct = project_binary("viaduct")?;
    let l2_path = l2_initramfs(kernel, work, false)?;

    let mut img = HostB::base_initramfs(kernel, &[("viaduct", &viaduct)])?;
    img.host_file(&format!("{L1_GUEST_DIR}/l2.cpio"), &l2_path, 0o644)?;
    for f in formats {
        let src = match f {
            L2Format::BzImage | L2Format::BzImageAcpiOff => &kernel.bzimage,
            L2Format::Pvh => &kernel.vmlinux,
        };
        img.host_file(&format!("{L1_GUEST_DIR}/{}", f.kernel_file()), src, 0o644)?;
    }
    img.host_file(&format!("{L1_GUEST_DIR}/bz"), &kernel.bzimage, 0o644)?;
    img.binary(
        &format!("{L1_BIN_DIR}/qemu-system-x86_64"),
        Path::new("/usr/bin/qemu-system-x86_64"),
    )?;
    for f in QEMU_FILES {
        img.host_file(f, Path::new(f), 0o644)?;
    }
    let mut script = l1_script(formats, 2, "512M");
    script.push_str(&l1_qemu_reference(2, "512M"));
    img.scenario(&script);
    let initrd = work.join("l1.cpio");
    img.write(&initrd)?;

    let run = HostB::new(kernel).boot(
        &initrd,
        Duration::from_secs(300),
        Some(work.join("l1.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "test host B did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    c.check_finished()?;
    let mut facts = vec![format!(
        "L1 booted, ran {} L2 guest(s) under viaduct and one under QEMU, and powered off in {:.1}s",
        formats.len(),
        run.elapsed.as_secs_f64()
    )];
    let rss = logged_rss_kib(c);
    for (i, f) in formats.iter().enumerate() {
        let t = f.tag();
        c.expect(&format!("{t}_exit"), "0")?;
        c.expect(&format!("{t}_cpus"), "2")?;
        c.expect(&format!("{t}_online"), "0-1")?;
        c.expect(&format!("{t}_kernel"), &kernel.version)?;
        c.expect(&format!("{t}_banner"), "1")?;
        facts.push(format!(
            "{f:?}: L2 saw 2 CPUs, reached init {}s after its kernel started; viaduct ran {}s (L1 clock), peak RSS {} KiB",
            c.get(&format!("{t}_uptime"))?,
            c.get(&format!("{t}_vmm_secs"))?,
            rss.get(i).map_or("?".into(), |r| r.to_string()),
        ));
    }
    // The reference: QEMU with KVM, same kernel, initramfs, CPUs and RAM.
    c.expect("qemu_exit", "0")?;
    c.expect("qemu_cpus", "2")?;
    let secs = |k: &str| -> Result<f64, SelfTestError> {
        c.get(k)?
            .parse()
            .map_err(|_| SelfTestError::Check(format!("{k} is not a number")))
    };
    let (qemu_run, qemu_init) = (secs("qemu_vmm_secs")?, secs("qemu_uptime")?);
    facts.push(format!(
        "QEMU -enable-kvm, same bzImage/initramfs/2 CPUs/512 MiB: L2 reached init {qemu_init:.2}s after its kernel started, QEMU ran {qemu_run:.2}s"
    ));
    for f in formats {
        let t = f.tag();
        let (ours_run, ours_init) = (
            secs(&format!("{t}_vmm_secs"))?,
            secs(&format!("{t}_uptime"))?,
        );
        facts.push(format!(
            "viaduct {f:?} / QEMU bzImage: run {:.2}x, kernel-to-init {:.2}x",
            ours_run / qemu_run,
            ours_init / qemu_init
        ));
    }
    Ok(Report {
        name: "viaduct boots L2 in test host B",
        elapsed: start.elapsed(),
        facts,
    })
}

/// Boots test host B; inside it each backend in turn serves a disk that
/// viaduct gives an L2 guest over vhost-user-blk + virtio-pci.
pub fn boot_l2_with_disk(
    kernel: &GuestKernel,
    work: &Path,
    backends: &[DiskBackend],
) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    let viaduct = project_binary("viaduct")?;
    let l2_path = l2_initramfs(kernel, work, backends.contains(&DiskBackend::Viaduct))?;
    let mut img = HostB::base_initramfs(kernel, &[("viaduct", &viaduct)])?;
    for b in backends {
        match b {
            DiskBackend::QemuStorageDaemon => img.binary(
                &format!("{L1_BIN_DIR}/qemu-storage-daemon"),
                Path::new("/usr/bin/qemu-storage-daemon"),
            )?,
            DiskBackend::Viaduct => img
                .binary(
                    &format!("{L1_BIN_DIR}/vhost-user-blk"),
                    &project_binary("vhost-user-blk")?,
                )?
                .binary(
                    &format!("{L1_BIN_DIR}/vhost-user-net"),
                    &project_binary("vhost-user-net")?,
                )?,
        };
    }
    img.host_file(&format!("{L1_GUEST_DIR}/l2.cpio"), &l2_path, 0o644)?;
    img.host_file(&format!("{L1_GUEST_DIR}/bz"), &kernel.bzimage, 0o644)?;
    img.scenario(&l1_disk_script(backends));
    let initrd = work.join("l1-disk.cpio");
    img.write(&initrd)?;
    let run = HostB::new(kernel).boot(
        &initrd,
        Duration::from_secs(600),
        Some(work.join("l1-disk.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "test host B did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    c.check_finished()?;
    let mut facts = vec![format!("L1 run took {:.1}s", run.elapsed.as_secs_f64())];
    let host_md5 = c.get("host_md5")?;
    for b in backends {
        let t = b.tag();
        let k = |key: &str| format!("{t}_{key}");
        c.expect(&k("listening"), "1")?;
        c.expect(&k("exit"), "0")?;
        c.expect(&k("vda"), "1")?;
        c.expect(&k("vda_bytes"), &(64u64 << 20).to_string())?;
        c.expect(&k("host_md5"), &host_md5)?;
        c.expect(&k("write"), "ok")?;
        let wrote = c.get(&k("wrote_md5"))?;
        c.expect(&k("read_md5"), &wrote)?;
        c.expect(&k("landed_md5"), &wrote)?;
        c.expect(&k("mq"), "2")?;
        c.expect(&k("msix"), "3")?;
        c.expect(&k("rebind_md5"), &wrote)?;
        let bar = c.get(&k("bar"))?;
        let addr = u64::from_str_radix(bar.trim_start_matches("0x"), 16).unwrap_or(0);
        check(addr >= 1 << 36, || {
            format!("virtio-blk's BAR is at {bar}, not in the 64-bit window (64 GiB and up)")
        })?;
        facts.push(format!(
            "{b:?}: L2 saw /dev/vda (64 MiB, 2 queues, 3 MSI-X vectors), read the host's pattern, wrote 4 MiB that landed in the image, and read it again after a driver unbind/bind (device reset); BAR at {bar} (64-bit window); L2 reached init {}s after kernel start",
            c.get(&k("uptime"))?
        ));
        if *b == DiskBackend::Viaduct {
            c.expect(&k("mac"), L2_MAC)?;
            // 2 pairs + config, and the control queue's if the driver
            // gives it one (Linux polls it).
            let msix = c.get(&k("net_msix"))?;
            check(msix == "5" || msix == "6", || {
                format!("L2's NIC has {msix} MSI-X vectors, not 5 or 6")
            })?;
            let replies: u32 = c.get(&k("ping"))?.parse().unwrap_or(0);
            if replies == 0 {
                return Err(SelfTestError::Check(format!(
                    "L2 could not ping L1 over vhost-user-net\n{}",
                    c.tail(40)
                )));
            }
            facts.push(format!(
                "L2 NIC from vhost-user-net has the MAC viaduct set ({L2_MAC}) and pinged L1's TAP ({replies} replies)"
            ));
            facts.extend(check_multiqueue(c, t)?);
            facts.extend(check_api_choreography(c, t)?);
        }
    }
    Ok(Report {
        name: "viaduct gives L2 vhost-user disks (and a NIC) in test host B",
        elapsed: start.elapsed(),
        facts,
    })
}

/// The NIC's two queue pairs: L2's driver enabled both through viaduct's
/// control queue (at probe, then 1 and 2 again with `ethtool -L`), and
/// frames crossed each pair in both directions (the net daemon's
/// per-queue counters); guest RAM came from L1's hugepages.
fn check_multiqueue(c: &Console, t: &str) -> Result<Vec<String>, SelfTestError> {
    let k = |key: &str| format!("{t}_{key}");
    c.expect(&k("combined"), "2")?;
    c.expect(&k("queues"), "rx-0,rx-1,tx-0,tx-1,")?;
    c.expect(&k("set_channels"), "ok")?;
    c.expect(&k("mq_errors"), "0")?;
    for cpu in ["cpu0", "cpu1"] {
        let n: u32 = c.get(&k(&format!("ping_{cpu}")))?.parse().unwrap_or(0);
        check(n > 0, || format!("L2 could not ping L1 from {cpu}"))?;
    }
    let mut counts = Vec::new();
    for p in ["pair0", "pair1"] {
        for d in ["rx", "tx"] {
            let n: u64 = c.get(&k(&format!("{p}_{d}")))?.parse().unwrap_or(0);
            check(n > 0, || {
                format!("the net daemon counted no {d} frame on {p}\n{}", c.tail(60))
            })?;
            counts.push(format!("{p} {d} {n}"));
        }
    }
    check(
        c.text().contains("event=queue_pairs") && c.text().contains("pairs=2"),
        || "viaduct logged no queue-pair change from its control queue".into(),
    )?;
    let pages = HUGE_GUEST_MIB / 2;
    c.expect(&k("hugepages_reserved"), &pages.to_string())?;
    // Nothing else in L1 uses hugepages: pages in use are guest RAM the
    // guest touched (mapped MAP_NORESERVE, so untouched ones stay free).
    let used: u32 = c.get(&k("hugepages_used"))?.parse().unwrap_or(0);
    check(used > 0 && used <= pages, || {
        format!("{used} of L1's {pages} hugepages in use while L2 ran")
    })?;
    Ok(vec![
        format!(
            "num_queue_pairs=2: L2's virtio_net probed (CTRL_VQ + MQ from viaduct), `ethtool -l` shows 2 combined, `ethtool -L` 1 then 2 went through viaduct's control queue; frames per queue in the net daemon: {}",
            counts.join(", ")
        ),
        format!(
            "guest RAM from hugetlbfs (--memory {HUGE_GUEST_MIB}M,hugepages=on): {used} of the {pages} 2 MiB pages L1 reserved were in use (what L2 touched) while both daemons served it"
        ),
    ])
}

fn info_json(c: &Console, key: &str) -> Result<serde_json::Value, SelfTestError> {
    let raw = c.get(key)?;
    serde_json::from_str(&raw).map_err(|e| {
        SelfTestError::Check(format!("{key} is not viaduct's /vm/info JSON ({e}): {raw}"))
    })
}

fn device<'a>(
    info: &'a serde_json::Value,
    id: &str,
) -> Result<&'a serde_json::Value, SelfTestError> {
    info["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == id))
        .ok_or_else(|| SelfTestError::Check(format!("/vm/info lists no {id}: {info}")))
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), SelfTestError> {
    if ok {
        Ok(())
    } else {
        Err(SelfTestError::Check(what()))
    }
}

/// What [`api_choreography`] must have shown: TCP data intact, the disk
/// working after its daemon was killed and restarted, pause holding the
/// guest's clock, no doorbell exit in the VMM, and shutdown through the API.
fn check_api_choreography(c: &Console, t: &str) -> Result<Vec<String>, SelfTestError> {
    let k = |key: &str| format!("{t}_{key}");
    c.expect(&k("tcp_rx_bytes"), &(16u64 << 20).to_string())?;
    c.expect(&k("tcp_rx_md5"), &c.get(&k("tcp_md5"))?)?;
    let idle = info_json(c, &k("info_idle"))?;
    for (id, kind) in [("disk0", "block"), ("net0", "net")] {
        let d = device(&idle, id)?;
        check(
            d["type"] == kind && d["connected"] == true && d["driver_ok"] == true,
            || format!("{id} in /vm/info is not a connected, running {kind} device: {d}"),
        )?;
    }
    c.expect(&k("rl_kills"), &BLK_KILLS.to_string())?;
    let again = info_json(c, &k("info_reconnected"))?;
    let disk = device(&again, "disk0")?;
    check(
        disk["reconnects"] == BLK_KILLS && disk["connected"] == true,
        || {
            format!(
                "viaduct did not reconnect to every restarted blk daemon: {disk}\n{}",
                c.tail(60)
            )
        },
    )?;
    c.expect(&k("rl_io_errors"), "0")?;
    c.expect(&k("rl_verify_failures"), "0")?;
    c.expect(&k("rl_kernel_io_errors"), "0")?;
    c.expect(&k("rl_image"), "1")?;
    let iterations: Vec<String> = (0..WORKERS)
        .map(|w| c.get(&k(&format!("rl_iterations_{w}"))))
        .collect::<Result<_, _>>()?;
    let blocks = c.get(&k("rl_blocks_checked"))?;
    let resubmitted = c.get(&k("rl_resubmitted"))?;
    let aimed = c.get(&k("rl_aimed"))?;
    c.expect(&k("net_restart_rx_bytes"), &(16u64 << 20).to_string())?;
    c.expect(&k("net_restart_rx_md5"), &c.get(&k("net_restart_md5"))?)?;
    c.expect(&k("net_restart_sent"), "0")?;
    let recovery: f64 = c
        .get(&k("tcp2_after_kill_secs"))?
        .parse()
        .unwrap_or(f64::MAX);
    // With a new random MAC on the re-created TAP this took 60-115 s (L2's
    // neighbour entry pointed at the old MAC until it went stale).
    check(recovery < 60.0, || {
        format!("the TCP transfer took {recovery}s to finish after the net daemon restart")
    })?;
    let net = info_json(c, &k("info_net_reconnected"))?;
    let nic = device(&net, "net0")?;
    check(nic["reconnects"] == 1 && nic["connected"] == true, || {
        format!("viaduct did not reconnect to the restarted net daemon: {nic}")
    })?;
    c.expect(&k("pause"), "ok")?;
    c.expect(&k("paused_state"), "paused")?;
    c.expect(&k("resume"), "ok")?;
    let guest: f64 = c.get(&k("pause_guest_secs"))?.parse().unwrap_or(f64::MAX);
    let l1: f64 = c.get(&k("pause_l1_secs"))?.parse().unwrap_or(0.0);
    // L2 waited on its console through the whole pause: with its clock
    // running it would have seen at least PAUSE_SECS go by.
    check(guest < f64::from(PAUSE_SECS), || {
        format!("L2's clock ran on while paused: it saw {guest}s of a {l1}s pause")
    })?;
    let done = info_json(c, &k("info_done"))?;
    let mut notify = Vec::new();
    for id in ["disk0", "net0"] {
        let n = device(&done, id)?["notify_exits"]
            .as_u64()
            .unwrap_or(u64::MAX);
        check(n == 0, || {
            format!("{id}: {n} doorbell writes reached the VMM instead of an ioeventfd")
        })?;
        notify.push(format!("{id}=0"));
    }
    let exits = &done["exits"];
    let idle_exits: u64 = c.get(&k("idle_exits"))?.parse().unwrap_or(u64::MAX);
    c.expect(&k("shutdown"), "ok")?;
    c.expect(&k("exit"), "0")?;
    check(c.text().contains("event=seccomp state=On"), || {
        "viaduct did not report its seccomp filter installed".into()
    })?;
    Ok(vec![
        "L2 sent 16 MiB over TCP to L1 through vhost-user-net, md5 intact".into(),
        format!(
            "the blk daemon was SIGKILLed {BLK_KILLS} times at random moments under {WORKERS} parallel write-verify writers in L2 (iterations {}; {aimed} kills aimed at a moment the in-flight region showed requests in flight) and started again each time: viaduct reconnected every time and handed over the in-flight region; {resubmitted} requests resubmitted; no I/O error, no verify failure, {blocks} blocks found in the image as L2 last wrote them",
            iterations.join("/")
        ),
        format!(
            "the net daemon was SIGKILLed during a 16 MiB TCP transfer from L2 and started again (TAP re-created with the same MAC): viaduct reconnected and the transfer completed, md5 intact, {recovery}s after the kill; a fresh 16 MiB connection then took {}s (before the restart: {}s)",
            c.get(&k("tcp3_secs"))?,
            c.get(&k("tcp1_secs"))?
        ),
        format!(
            "PUT /vm/pause: state paused for {l1:.1}s of L1 time, L2 saw {guest:.2}s pass (its clock held); resume went on"
        ),
        format!(
            "VMM exits over the whole run: total {} (pio {}, mmio {}, other {}); doorbell exits {}; idle guest: {:.1} exits/s",
            exits["total"],
            exits["pio"],
            exits["mmio"],
            exits["other"],
            notify.join(" "),
            idle_exits as f64 / f64::from(IDLE_SECS)
        ),
        "PUT /vm/shutdown ended viaduct with status 0".into(),
        "viaduct ran all of it under its seccomp filter (kill on any off-list syscall)".into(),
    ])
}

/// Boots test host B; inside it an L2 guest crashes its kernel (sysrq c).
/// viaduct must end with status 1 and say why.
pub fn boot_l2_panic(kernel: &GuestKernel, work: &Path) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    let viaduct = project_binary("viaduct")?;
    let l2_path = l2_initramfs(kernel, work, false)?;
    let mut img = HostB::base_initramfs(kernel, &[("viaduct", &viaduct)])?;
    img.host_file(&format!("{L1_GUEST_DIR}/l2.cpio"), &l2_path, 0o644)?;
    img.host_file(&format!("{L1_GUEST_DIR}/bz"), &kernel.bzimage, 0o644)?;
    img.scenario(&l1_prelude().then(include_str!("../scripts/l1/panic.sh")));
    let initrd = work.join("l1-panic.cpio");
    img.write(&initrd)?;
    let run = HostB::new(kernel).boot(
        &initrd,
        Duration::from_secs(300),
        Some(work.join("l1-panic.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "test host B did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    // The L2 panic is expected on this console; L1 itself must finish.
    if !c.finished() {
        return Err(SelfTestError::Check(format!(
            "L1 did not finish\n{}",
            c.tail(40)
        )));
    }
    c.expect("panic_exit", "1")?;
    c.expect("panic_reason", "viaduct:_guest_kernel_panicked")?;
    if c.get("panic_cpus").is_ok() {
        return Err(SelfTestError::Check("L2 went on after the crash".into()));
    }
    Ok(Report {
        name: "viaduct reports an L2 kernel panic",
        elapsed: start.elapsed(),
        facts: vec![
            "L2 crashed (sysrq c); viaduct exited 1 with `viaduct: guest kernel panicked`".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -n`: the whole generated script parses.
    fn parses(script: &str) {
        use std::io::Write;
        let mut sh = std::process::Command::new("sh")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = sh.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn l1_script_boots_each_format_with_its_tag() {
        let s = l1_script(&[L2Format::BzImage, L2Format::Pvh], 2, "256M");
        parses(&s);
        assert!(s.contains("TAG='bz'\nKERNEL='bz'\nEXTRA_CMDLINE=''\nCPUS='2'\nMEMORY='256M'\n"));
        assert!(s.contains("TAG='pvh'\nKERNEL='pvh'\n"));
        assert!(s.contains("--kernel ${L1_GUEST_DIR}/${KERNEL} "));
        assert!(s.contains("L2TAG=${TAG}${EXTRA_CMDLINE}\" --cpus ${CPUS} --memory ${MEMORY}"));
        assert!(s.contains("result ${TAG}_exit=$?"));
        let s = l1_script(&[L2Format::BzImageAcpiOff], 1, "128M");
        assert!(s.contains("TAG='noacpi'\nKERNEL='bz'\nEXTRA_CMDLINE=' acpi=off'\n"));
    }

    #[test]
    fn disk_script_serves_each_backend_on_its_own_socket() {
        let s = l1_disk_script(&[DiskBackend::QemuStorageDaemon, DiskBackend::Viaduct]);
        parses(&s);
        assert!(s.contains(
            "exec /opt/viaduct/bin/qemu-storage-daemon --blockdev driver=file,node-name=f0,filename=/tmp/disk-qsd.raw"
        ));
        assert!(s.contains(
            "exec /opt/viaduct/bin/vhost-user-blk --socket-path /tmp/blk-own.sock --blk-file /tmp/disk-own.raw"
        ));
        assert!(s.contains("TAG='qsd'\nIMAGE='/tmp/disk-qsd.raw'\nSOCK='/tmp/blk-qsd.sock'\n"));
        assert!(s.contains("--disk socket=${SOCK},num_queues=2 </dev/null\nresult ${TAG}_exit=$?"));
        // The full stack runs with the API and L1's phase choreography.
        assert!(s.contains("TAG='own'\n"));
        assert!(s.contains("BLK_KILLS='10'\n"));
        assert!(s.contains("exec /opt/viaduct/bin/vhost-user-net --socket-path /tmp/net.sock"));
        assert!(s.contains("L2TAG=${TAG} L2API=1\""));
        assert!(s.contains("--api-socket /tmp/vm.api < /tmp/l2in"));
        assert!(s.contains("wait_l2 ${TAG}_phase=load"));
        assert!(
            s.contains("for k in $(seq ${BLK_KILLS}); do"),
            "the blk kill loop"
        );
        assert!(s.contains("aim $D"));
        assert!(s.contains("result ${TAG}_exit=$(cat /tmp/vexit)"));
    }

    #[test]
    fn the_other_scripts_parse() {
        parses(&l1_qemu_reference(2, "512M"));
        parses(&l2_scenario());
        // The load goes in exactly once, inside the L2API branch.
        assert_eq!(L2_SCENARIO.matches("@LOAD@").count(), 1);
        parses(&l1_prelude().then(include_str!("../scripts/l1/panic.sh")));
    }

    #[test]
    fn rss_lines_are_parsed() {
        let c = Console::new(
            "[x INFO vmm_core::vm] guest powered off after 3.1s; peak RSS 51234 KiB\nnoise\n"
                .into(),
        );
        assert_eq!(logged_rss_kib(&c), vec![51234]);
    }
}
