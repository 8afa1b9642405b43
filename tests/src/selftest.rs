//! The test hosts' self-tests: each boots its host for real and checks what
//! the host must be able to do. Shared by the integration tests and by
//! `viaduct-kit selftest` (the README's main job, for now).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::{BinaryNotFound, project_binary};
use crate::console::ConsoleError;
use crate::daemon::{Daemon, DaemonError};
use crate::host_a::HostA;
use crate::host_b::{HostB, L1_BIN_DIR};
use crate::initramfs::{Initramfs, InitramfsError};
use crate::kernel::GuestKernel;
use crate::modules::{ModuleError, ModuleTree};
use crate::qemu::RunError;
use crate::wire::{Responder, WireError, mac_string};

/// Why a self-test failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("i/o on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Binary(#[from] BinaryNotFound),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{what}: {detail}")]
    Guest { what: String, detail: String },
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("check failed: {0}")]
    Check(String),
}

/// The outcome of one self-test.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: &'static str,
    pub elapsed: Duration,
    /// Human-readable facts the test established.
    pub facts: Vec<String>,
}

/// The byte pattern the guest writes: a repeated marker line.
pub fn pattern(len: usize, tag: &str) -> Vec<u8> {
    let line = format!("VIADUCT-{tag}-PATTERN\n");
    line.as_bytes().iter().copied().cycle().take(len).collect()
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, SelfTestError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| SelfTestError::Io(path.into(), e))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| SelfTestError::Io(path.into(), e))?;
    Ok(buf)
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), SelfTestError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| SelfTestError::Io(path.into(), e))?;
    f.write_all_at(data, offset)
        .map_err(|e| SelfTestError::Io(path.into(), e))
}

pub fn md5_of(data: &[u8]) -> Result<String, SelfTestError> {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| SelfTestError::Io("md5sum".into(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(data)
            .map_err(|e| SelfTestError::Io("md5sum".into(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SelfTestError::Io("md5sum".into(), e))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Test host A: a QEMU TCG guest whose disk is served by qemu-storage-daemon's
/// vhost-user-blk export. The guest reads a pattern the host wrote, writes
/// its own, reads it back; the host finds the guest's pattern in the image.
pub fn host_a(kernel: &GuestKernel, work: &Path) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    const MIB: u64 = 1 << 20;
    /// The same, as a length.
    const MIB_LEN: usize = 1 << 20;
    let image = work.join("disk.raw");
    let file = std::fs::File::create(&image).map_err(|e| SelfTestError::Io(image.clone(), e))?;
    file.set_len(64 * MIB)
        .map_err(|e| SelfTestError::Io(image.clone(), e))?;
    drop(file);
    let host_pattern = pattern(MIB_LEN, "HOST");
    write_at(&image, 4 * MIB, &host_pattern)?;
    let guest_pattern = pattern(4 * MIB_LEN, "GUEST");

    let sock = work.join("qsd-blk.sock");
    let mut qsd = Command::new("qemu-storage-daemon");
    qsd.args([
        "--blockdev",
        &format!(
            "driver=file,node-name=file0,filename={},aio=io_uring,cache.direct=off",
            image.display()
        ),
        "--blockdev",
        "driver=raw,node-name=disk0,file=file0",
        "--export",
        &format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ),
    ]);
    let qsd = Daemon::start(qsd, &sock, &work.join("qsd.log"))?;

    let tree = ModuleTree::open(&kernel.modules)?;
    let mut img = Initramfs::new();
    img.busybox()?.modules(&tree, &["virtio_blk"])?;
    img.scenario(
        r#"
[ -b /dev/vda ] && result vda=1 || result vda=0
result vda_bytes=$(blockdev --getsize64 /dev/vda)
result host_md5=$(dd if=/dev/vda bs=1M skip=4 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
yes VIADUCT-GUEST-PATTERN | head -c 4194304 > /tmp/p
result wrote_md5=$(md5sum < /tmp/p | cut -d' ' -f1)
dd if=/tmp/p of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null && result write=ok || result write=failed
echo 3 > /proc/sys/vm/drop_caches
result read_md5=$(dd if=/dev/vda bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
"#,
    );
    let initrd = work.join("host-a.cpio");
    img.write(&initrd)?;

    let mut host = HostA::new(kernel);
    host.vhost_user_blk(&sock, 1);
    let run = host.boot(
        &initrd,
        Duration::from_secs(120),
        Some(work.join("host-a.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "host A guest did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    c.check_finished()?;
    c.expect("vda", "1")?;
    c.expect("vda_bytes", &(64 * MIB).to_string())?;
    c.expect("host_md5", &md5_of(&host_pattern)?)?;
    c.expect("write", "ok")?;
    let wrote = c.get("wrote_md5")?;
    c.expect("wrote_md5", &md5_of(&guest_pattern)?)?;
    c.expect("read_md5", &wrote)?;
    drop(qsd);
    let landed = read_at(&image, 16 * MIB, guest_pattern.len())?;
    if landed != guest_pattern {
        return Err(SelfTestError::Check(
            "the guest's pattern is not in the image file at 16 MiB".into(),
        ));
    }
    Ok(Report {
        name: "test host A (QEMU TCG guest + qemu-storage-daemon vhost-user-blk)",
        elapsed: start.elapsed(),
        facts: vec![
            format!(
                "guest booted and powered off in {:.1}s",
                run.elapsed.as_secs_f64()
            ),
            "guest saw /dev/vda (64 MiB) through vhost-user-blk".into(),
            "guest read the host's 1 MiB pattern (md5 match)".into(),
            "guest wrote 4 MiB, read it back, and the host found it in the image".into(),
        ],
    })
}

/// The address the host-side responder answers for on the igb wire, and
/// L1's own address on it. The addresses exist only inside the emulated
/// link; every frame travels as a UDP datagram over loopback.
pub const WIRE_RESPONDER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const WIRE_L1_IP: &str = "10.0.2.15/24";

/// Test host B: nested KVM in L1, the igb PF's SR-IOV (7 VFs; two created,
/// one bound to vfio-pci) and L1's igb pinging the host's responder.
pub fn host_b(kernel: &GuestKernel, work: &Path) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    let viaduct = project_binary("viaduct")?;
    let responder = Responder::start(WIRE_RESPONDER_IP)?;
    let nvme = work.join("nvme.raw");
    std::fs::File::create(&nvme)
        .and_then(|f| f.set_len(64 << 20))
        .map_err(|e| SelfTestError::Io(nvme.clone(), e))?;

    let mut img = HostB::base_initramfs(kernel, &[("viaduct", &viaduct)])?;
    img.scenario(&format!(
        r#"
. /etc/viaduct/lib.sh
[ -c /dev/kvm ] && result l1_dev_kvm=1 || result l1_dev_kvm=0
{L1_BIN_DIR}/viaduct check-kvm | sed 's/^/VIADUCT-RESULT l1_/'
result l1_nested=$(dmesg | grep -c 'Nested Virtualization enabled')
PF=$(igb_pf) && result igb_pf=$(basename $PF) || result igb_pf=none
result sriov_totalvfs=$(cat $PF/sriov_totalvfs)
IF=$(ls $PF/net | head -n1)
ip link set $IF up
ip addr add {WIRE_L1_IP} dev $IF
echo 2 > $PF/sriov_numvfs && result sriov_numvfs=$(cat $PF/sriov_numvfs)
VF=$(readlink -f $PF/virtfn0)
G=$(bind_vfio $VF)
[ -c /dev/vfio/$G ] && result vf0_vfio=1 || result vf0_vfio=0
result vf0_driver=$(basename $(readlink $VF/driver))
[ -b /dev/nvme0n1 ] && result nvme=1 || result nvme=0
n=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  n=$(ping -c 3 -W 1 {WIRE_RESPONDER_IP} 2>/dev/null | ping_received)
  [ "${{n:-0}}" -gt 0 ] && break
  sleep 1
done
result ping_replies=${{n:-0}}
"#
    ));
    let initrd = work.join("host-b.cpio");
    img.write(&initrd)?;
    let mut host = HostB::new(kernel);
    host.igb(&responder).nvme(&nvme);
    let run = host.boot(
        &initrd,
        Duration::from_secs(300),
        Some(work.join("host-b.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "test host B did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    c.check_finished()?;
    c.expect("l1_dev_kvm", "1")?;
    c.expect("l1_kvm_ok", "1")?;
    c.expect("sriov_totalvfs", "7")?;
    c.expect("sriov_numvfs", "2")?;
    c.expect("vf0_vfio", "1")?;
    c.expect("vf0_driver", "vfio-pci")?;
    c.expect("nvme", "1")?;
    let replies: u32 = c.get("ping_replies")?.parse().unwrap_or(0);
    let stats = responder.stats();
    if replies == 0 || stats.echo_replies == 0 {
        return Err(SelfTestError::Check(format!(
            "L1 did not ping the host responder (replies={replies}, wire stats {stats:?})\n{}",
            c.tail(30)
        )));
    }
    let macs: Vec<String> = stats
        .frames_by_mac
        .iter()
        .map(|(m, n)| format!("{}={n}", mac_string(m)))
        .collect();
    Ok(Report {
        name: "test host B (nested KVM, intel-iommu, igb SR-IOV, NVMe)",
        elapsed: start.elapsed(),
        facts: vec![
            format!("L1 booted, ran its scenario and powered off in {:.1}s", run.elapsed.as_secs_f64()),
            "L1: /dev/kvm works (viaduct check-kvm created a VM and a vCPU)".into(),
            "L1: igb PF sriov_totalvfs=7, 2 VFs created, VF0 bound to vfio-pci with /dev/vfio/<group>".into(),
            format!("L1: igb pinged the host responder ({replies} replies; wire frames by MAC: {})", macs.join(" ")),
        ],
    })
}
