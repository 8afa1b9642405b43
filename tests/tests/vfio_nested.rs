//! VFIO passthrough end to end in test host B (one L1 boot for the file):
//! (a) an igb VF created, configured and bound by `viaduct sriov`, passed
//! to an L2 guest whose igbvf probes it with MSI-X, twice in a row (the
//! reset after the first VM leaves the VF reusable); (b) the igb PF and the
//! NVMe controller passed to one L2 guest that pings the host's responder
//! through the PF and writes a pattern to the NVMe namespace that the host
//! then finds in the image file, (c) next to a vhost-user-blk disk served
//! by our daemon inside L1; (d) the PF again with `msix=off`: igb falls
//! back to MSI, which the VMM emulates, and pings the host; (e) the PF and
//! the NVMe controller to a guest booted `pci=nomsi`: both run on INTx
//! (resampling irqfds on the IOAPIC pins the DSDT's `_PRT` names). The PF
//! guest also reads the igb's extended capabilities through ECAM (MCFG):
//! AER there, SR-IOV and ARI hidden.

use std::net::Ipv4Addr;
use std::time::Duration;

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::host_b::{HostB, L1_BIN_DIR};
use guest_kit::initramfs::Initramfs;
use guest_kit::modules::ModuleTree;
use guest_kit::provision;
use guest_kit::selftest::{md5_of, pattern, read_at};
use guest_kit::wire::{Responder, mac_string};

const GUEST_DIR: &str = "/opt/viaduct/guest";
const VF_MAC: &str = "02:00:00:00:0a:01";
const VF_MAC_OPT: &str = "02:00:00:00:0a:02";
/// The igb PF's MAC (QEMU's `mac=` in host_b.rs).
const PF_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PINGS: u32 = 20;
const MIB: u64 = 1 << 20;
/// The same, as a length.
const MIB_LEN: usize = 1 << 20;

/// What L2 does, by the tag L1 passes on its command line.
const L2_SCENARIO: &str = r#"
T=${L2TAG:-l2}
netif() { for i in $(seq 100); do E=$(ls /sys/class/net | grep -v '^lo$' | head -n1); [ -n "$E" ] && break; sleep 0.1; done; echo $E; }
# up_and_ping IFACE ADDR COUNT: bring the link up with ADDR, wait for carrier,
# ping the host's responder; prints the replies received.
up_and_ping() {
  ip link set $1 up
  ip addr add $2/24 dev $1
  for i in $(seq 100); do [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
  n=$(ping -c $3 -i 0.2 -W 2 10.0.2.2 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  echo ${n:-0}
}
case $T in
vf*)
  E=$(netif)
  result ${T}_igbvf=$(ls /sys/bus/pci/drivers/igbvf 2>/dev/null | grep -c ':')
  # igbvf requests its vectors when the interface opens.
  ip link set $E up
  sleep 1
  dmesg | grep -i igbvf | tail -n 5
  grep -E 'MSI' /proc/interrupts
  result ${T}_msix=$(grep -c 'PCI-MSIX' /proc/interrupts)
  result ${T}_msix_eth=$(grep 'PCI-MSIX' /proc/interrupts | grep -c "$E")
  result ${T}_guest_mac=$(cat /sys/class/net/$E/address)
  ;;
pf)
  E=$(netif)
  result pf_igb=$(ls /sys/bus/pci/drivers/igb 2>/dev/null | grep -c ':')
  echo VIADUCT-TRAFFIC-START
  result pf_ping=$(up_and_ping $E 10.0.2.20 @PINGS@)
  result pf_nvme=$([ -b /dev/nvme0n1 ] && echo 1 || echo 0)
  yes VIADUCT-NVME-PATTERN | head -c 4194304 > /tmp/p
  result pf_nvme_md5=$(md5sum < /tmp/p | cut -d' ' -f1)
  dd if=/tmp/p of=/dev/nvme0n1 bs=1M seek=8 conv=fsync 2>/dev/null && result pf_nvme_write=ok || result pf_nvme_write=failed
  a=$(cut -d' ' -f1 /proc/uptime)
  dd if=/dev/zero of=/dev/nvme0n1 bs=1M seek=16 count=64 conv=fsync 2>/dev/null
  b=$(cut -d' ' -f1 /proc/uptime)
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/nvme0n1 of=/dev/null bs=1M skip=16 count=64 2>/dev/null
  c=$(cut -d' ' -f1 /proc/uptime)
  echo VIADUCT-TRAFFIC-END
  result pf_nvme_w64_secs=$(echo "$a $b" | awk '{printf "%.2f", $2-$1}') pf_nvme_r64_secs=$(echo "$b $c" | awk '{printf "%.2f", $2-$1}')
  grep -E 'MSI' /proc/interrupts
  result pf_msix_eth=$(grep 'PCI-MSIX' /proc/interrupts | grep -c "$E")
  # Extended config space through ECAM: the igb's list as the guest sees it.
  dmesg | grep -i -e ecam -e mmconfig
  B=$(basename $(readlink -f /sys/class/net/$E/device))
  result pf_cfg_size=$(wc -c < /sys/bus/pci/devices/$B/config)
  ids=""; off=256
  for i in $(seq 32); do
    h=$(dd if=/sys/bus/pci/devices/$B/config bs=4 skip=$((off / 4)) count=1 2>/dev/null | od -An -tu4 | tr -d ' ')
    [ -z "$h" ] && break
    [ "$h" = 0 ] && break
    ids="$ids$((h & 0xffff)),"
    off=$(( (h >> 20) & 0xffc ))
    [ $off -lt 256 ] && break
  done
  result pf_ext_ids=$ids
  result pf_sriov_file=$([ -e /sys/bus/pci/devices/$B/sriov_totalvfs ] && echo 1 || echo 0)
  result pf_msix_nvme=$(grep 'PCI-MSIX' /proc/interrupts | grep -c nvme)
  result pf_vda=$([ -b /dev/vda ] && echo 1 || echo 0)
  yes VIADUCT-VDA-PATTERN | head -c 4194304 > /tmp/v
  result pf_vda_md5=$(md5sum < /tmp/v | cut -d' ' -f1)
  dd if=/tmp/v of=/dev/vda bs=1M seek=4 conv=fsync 2>/dev/null
  echo 3 > /proc/sys/vm/drop_caches
  result pf_vda_read_md5=$(dd if=/dev/vda bs=1M skip=4 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
  ;;
msi)
  E=$(netif)
  result msi_igb=$(ls /sys/bus/pci/drivers/igb 2>/dev/null | grep -c ':')
  result msi_ping=$(up_and_ping $E 10.0.2.21 5)
  grep -E 'MSI' /proc/interrupts
  result msi_msi_eth=$(grep 'PCI-MSI-' /proc/interrupts | grep -c "$E")
  result msi_msix_eth=$(grep 'PCI-MSIX' /proc/interrupts | grep -c "$E")
  result msi_irqs=$(grep 'PCI-MSI-' /proc/interrupts | grep "$E" | awk '{print $2}')
  ;;
intx)
  E=$(netif)
  result intx_ping=$(up_and_ping $E 10.0.2.22 5)
  yes VIADUCT-INTX-PATTERN | head -c 1048576 > /tmp/p
  result intx_nvme_md5=$(md5sum < /tmp/p | cut -d' ' -f1)
  dd if=/tmp/p of=/dev/nvme0n1 bs=1M seek=40 conv=fsync 2>/dev/null && result intx_nvme_write=ok || result intx_nvme_write=failed
  echo 3 > /proc/sys/vm/drop_caches
  result intx_nvme_read_md5=$(dd if=/dev/nvme0n1 bs=1M skip=40 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
  grep -E 'IO-APIC' /proc/interrupts
  result intx_eth=$(grep 'IO-APIC' /proc/interrupts | grep -c "$E")
  result intx_nvme=$(grep 'IO-APIC' /proc/interrupts | grep -c nvme)
  result intx_msi=$(grep -c 'PCI-MSI' /proc/interrupts)
  result intx_irqs=$(grep 'IO-APIC' /proc/interrupts | grep -e "$E" -e nvme | awk '{printf "%s%s", s, $2; s="/"}')
  ;;
esac
"#;

/// What L1 does: part (a) with a VF, then part (b)+(c) with the PF and NVMe.
const L1_SCENARIO: &str = r#"
. /etc/viaduct/lib.sh
V=@BIN@/viaduct
G=@GUEST@
XARGS=""
boot() { t=$1; shift; RUST_LOG=info $V --kernel $G/bz --initramfs $G/l2.cpio --cmdline "console=ttyS0 reboot=k panic=-1 quiet L2TAG=$t $XARGS" --cpus 1 --memory 256M "$@"; }
PF=$(igb_pf)
PFBDF=$(basename $PF)
IF=$(ls $PF/net | head -n1)
ip link set $IF up
# A device on a host driver is refused before anything starts.
$V --kernel $G/bz --device vfio=$PFBDF </dev/null >/tmp/refuse.out 2>&1; result refuse_rc=$?
cat /tmp/refuse.out
grep -q "bound to igb, not vfio-pci" /tmp/refuse.out && result refuse_msg=ok || result refuse_msg=unclear
$V sriov create --pf $IF --num-vfs 2 >/tmp/c.out 2>&1; result create_rc=$?
$V sriov set --pf $IF --vf 0 --mac @VF_MAC@ >/tmp/s.out 2>&1; result set_rc=$?
VF=$(basename $(readlink -f $PF/virtfn0))
$V sriov bind --vf $VF >/tmp/b.out 2>&1; result bind_rc=$?
cat /tmp/c.out /tmp/s.out /tmp/b.out
boot vf1 --device vfio=$VF </dev/null; result vf1_exit=$?
$V sriov list 2>&1 | grep 'vf 0 ' | sed 's/^/[list] /'
result vf1_pf_mac=$($V sriov list 2>/dev/null | sed -n 's/.*vf 0 .*mac=\([0-9a-f:]*\).*/\1/p' | head -n1)
boot vf2 --device vfio=$VF,mac=@VF_MAC_OPT@ </dev/null; result vf2_exit=$?
result vf2_pf_mac=$($V sriov list 2>/dev/null | sed -n 's/.*vf 0 .*mac=\([0-9a-f:]*\).*/\1/p' | head -n1)
result vf_driver_after=$(basename $(readlink $PF/virtfn0/driver))
$V sriov destroy --pf $IF >/dev/null 2>&1; result destroy_rc=$?
# (b) + (c): the PF and the NVMe controller on vfio-pci, our daemon's disk.
NV=$(pci_find 0x1b36 0x0010)
NVBDF=$(basename $NV)
bind_vfio $PF >/dev/null
bind_vfio $NV >/dev/null
result pf_driver=$(basename $(readlink $PF/driver)) nvme_driver=$(basename $(readlink $NV/driver))
truncate -s 64M /tmp/vda.raw
@BIN@/vhost-user-blk --socket-path /tmp/blk.sock --blk-file /tmp/vda.raw </dev/null >/tmp/blk.log 2>&1 &
D=$!
for i in $(seq 100); do [ -S /tmp/blk.sock ] && break; sleep 0.1; done
( boot pf --device vfio=$PFBDF --device vfio=$NVBDF --disk socket=/tmp/blk.sock </dev/null; echo "VIADUCT-EXIT $?" ) 2>&1 | tee /tmp/pf.out &
TP=$!
sleep 1
VP=$(pidof viaduct)
ctx() { s=0; m=0; for t in /proc/$VP/task/*; do v=$(sed -n 's/^voluntary_ctxt_switches:\t*//p' $t/status); s=$((s+v)); [ "$(basename $t)" = "$VP" ] && m=$v; done; echo "$s $m"; }
S0=""; S1=""
while kill -0 $VP 2>/dev/null; do
  [ -z "$S0" ] && grep -q VIADUCT-TRAFFIC-START /tmp/pf.out && S0=$(ctx)
  [ -z "$S1" ] && grep -q VIADUCT-TRAFFIC-END /tmp/pf.out && S1=$(ctx)
  sleep 0.2
done
wait $TP
result pf_exit=$(sed -n 's/^VIADUCT-EXIT //p' /tmp/pf.out)
result ctx_all=$(echo "$S0 $S1" | awk '{print $3-$1}') ctx_main=$(echo "$S0 $S1" | awk '{print $4-$2}')
kill $D; wait $D 2>/dev/null
tail -n 5 /tmp/blk.log | sed 's/^/[blk] /'
result vda_landed_md5=$(dd if=/tmp/vda.raw bs=1M skip=4 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
# (d): MSI-X hidden, the guest's igb uses MSI.
boot msi --device vfio=$PFBDF,msix=off </dev/null 2>&1 | tee /tmp/msi.out; result msi_exit=$?
grep -q "MSI 1 vectors in the device" /tmp/msi.out && result msi_vmm=ok || result msi_vmm=missing
# (e): no MSI at all in the guest: INTx for both functions.
XARGS=pci=nomsi
boot intx --device vfio=$PFBDF --device vfio=$NVBDF </dev/null 2>&1 | tee /tmp/intx.out; result intx_exit=$?
XARGS=""
grep -c "INTx pin 1 on GSI" /tmp/intx.out | sed 's/^/VIADUCT-RESULT intx_vmm_lines=/'
result pf_driver_after=$(basename $(readlink $PF/driver)) nvme_driver_after=$(basename $(readlink $NV/driver))
"#;

#[test]
fn vf_and_pf_nvme_passthrough_in_test_host_b() {
    let cache = Cache::locate().expect("cache");
    let kernel = provision::ensure_kernel(&cache).expect("guest kernel");
    let work = cache.scratch("vfio").expect("scratch");
    let viaduct = project_binary("viaduct").expect("viaduct binary");
    let blk = project_binary("vhost-user-blk").expect("vhost-user-blk binary");

    let tree = ModuleTree::open(&kernel.modules).expect("modules");
    let mut l2 = Initramfs::new();
    l2.busybox()
        .expect("busybox")
        .modules(&tree, &["igbvf", "igb", "nvme", "virtio_blk"])
        .expect("L2 modules")
        .scenario(&L2_SCENARIO.replace("@PINGS@", &PINGS.to_string()));
    let l2_path = work.join("l2.cpio");
    l2.write(&l2_path).expect("L2 initramfs");

    let mut img =
        HostB::base_initramfs(&kernel, &[("viaduct", &viaduct), ("vhost-user-blk", &blk)])
            .expect("L1 initramfs");
    img.host_file(&format!("{GUEST_DIR}/l2.cpio"), &l2_path, 0o644)
        .expect("L2 in L1");
    img.host_file(&format!("{GUEST_DIR}/bz"), &kernel.bzimage, 0o644)
        .expect("kernel in L1");
    img.scenario(
        &L1_SCENARIO
            .replace("@BIN@", L1_BIN_DIR)
            .replace("@GUEST@", GUEST_DIR)
            .replace("@VF_MAC_OPT@", VF_MAC_OPT)
            .replace("@VF_MAC@", VF_MAC),
    );
    let initrd = work.join("l1.cpio");
    img.write(&initrd).expect("write L1 initramfs");

    let nvme = work.join("nvme.raw");
    std::fs::File::create(&nvme)
        .and_then(|f| f.set_len(128 * MIB))
        .expect("NVMe image");
    let responder = Responder::start(Ipv4Addr::new(10, 0, 2, 2)).expect("wire");
    let run = HostB::new(&kernel)
        .igb(&responder)
        .nvme(&nvme)
        .boot(
            &initrd,
            Duration::from_secs(600),
            Some(work.join("l1.console")),
        )
        .expect("boot L1");
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "L1 did not power off cleanly: {}",
        run.describe()
    );
    let c = &run.console;
    c.check_finished().unwrap_or_else(|e| panic!("{e}"));
    let expect = |k: &str, v: &str| c.expect(k, v).unwrap_or_else(|e| panic!("{e}"));
    let get = |k: &str| c.get(k).unwrap_or_else(|e| panic!("{e}"));

    // Refusal, and (a): VF passthrough twice.
    expect("refuse_rc", "1");
    expect("refuse_msg", "ok");
    for k in [
        "create_rc",
        "set_rc",
        "bind_rc",
        "vf1_exit",
        "vf2_exit",
        "destroy_rc",
    ] {
        expect(k, "0");
    }
    for t in ["vf1", "vf2"] {
        expect(&format!("{t}_igbvf"), "1");
        let msix: u32 = get(&format!("{t}_msix_eth")).parse().unwrap_or(0);
        assert!(
            msix >= 2,
            "{t}: igbvf got {msix} MSI-X vectors\n{}",
            c.tail(60)
        );
    }
    expect("vf1_pf_mac", VF_MAC);
    expect("vf2_pf_mac", VF_MAC_OPT);
    expect("vf_driver_after", "vfio-pci");

    // (b): PF + NVMe with a data path, (c): our vhost-user-blk disk alongside.
    expect("pf_driver", "vfio-pci");
    expect("nvme_driver", "vfio-pci");
    expect("pf_exit", "0");
    expect("pf_igb", "1");
    let replies: u32 = get("pf_ping").parse().unwrap_or(0);
    let stats = responder.stats();
    let pf_frames = stats.frames_by_mac.get(&PF_MAC).copied().unwrap_or(0);
    assert!(
        replies > 0 && stats.echo_replies > 0,
        "L2's igb did not ping the host (replies {replies}, wire {stats:?})\n{}",
        c.tail(60)
    );
    expect("pf_nvme", "1");
    expect("pf_nvme_write", "ok");
    let nvme_pattern = pattern(4 * MIB_LEN, "NVME");
    expect("pf_nvme_md5", &md5_of(&nvme_pattern).expect("md5"));
    let landed = read_at(&nvme, 8 * MIB, nvme_pattern.len()).expect("read NVMe image");
    assert!(
        landed == nvme_pattern,
        "L2's NVMe pattern is not in the image at 8 MiB"
    );
    let msix_nvme: u32 = get("pf_msix_nvme").parse().unwrap_or(0);
    assert!(msix_nvme >= 2, "nvme MSI-X vectors: {msix_nvme}");
    let msix_eth: u32 = get("pf_msix_eth").parse().unwrap_or(0);
    assert!(msix_eth >= 1, "igb MSI-X vectors: {msix_eth}");
    // Extended configuration space (ECAM/MCFG): present, filtered.
    expect("pf_cfg_size", "4096");
    expect("pf_sriov_file", "0");
    let ext_ids = get("pf_ext_ids");
    let ids: Vec<&str> = ext_ids.split(',').filter(|s| !s.is_empty()).collect();
    assert!(
        ids.contains(&"1") && !ids.contains(&"16") && !ids.contains(&"14"),
        "extended capabilities L2 sees on the igb: {ids:?} (want AER=1, no SR-IOV=16, no ARI=14)"
    );
    expect("pf_vda", "1");
    let vda = get("pf_vda_md5");
    expect("pf_vda_read_md5", &vda);
    expect("vda_landed_md5", &vda);
    expect("pf_driver_after", "vfio-pci");
    expect("nvme_driver_after", "vfio-pci");

    // (d): MSI instead of MSI-X.
    expect("msi_exit", "0");
    expect("msi_igb", "1");
    expect("msi_vmm", "ok");
    expect("msi_msix_eth", "0");
    let msi_vectors: u32 = get("msi_msi_eth").parse().unwrap_or(0);
    let msi_replies: u32 = get("msi_ping").parse().unwrap_or(0);
    assert!(
        msi_vectors == 1 && msi_replies > 0,
        "igb with MSI-X hidden: {msi_vectors} MSI vectors, {msi_replies} echo replies\n{}",
        c.tail(60)
    );

    // (e): INTx.
    expect("intx_exit", "0");
    expect("intx_vmm_lines", "2");
    expect("intx_msi", "0");
    expect("intx_nvme_write", "ok");
    let intx_pattern = pattern(MIB_LEN, "INTX");
    expect("intx_nvme_md5", &md5_of(&intx_pattern).expect("md5"));
    expect("intx_nvme_read_md5", &md5_of(&intx_pattern).expect("md5"));
    let landed = read_at(&nvme, 40 * MIB, intx_pattern.len()).expect("read NVMe image");
    assert!(
        landed == intx_pattern,
        "the INTx guest's NVMe pattern is not in the image"
    );
    let intx_replies: u32 = get("intx_ping").parse().unwrap_or(0);
    assert!(
        intx_replies > 0 && get("intx_eth") == "1" && get("intx_nvme") != "0",
        "INTx guest: {intx_replies} echo replies, igb lines {}, nvme lines {}\n{}",
        get("intx_eth"),
        get("intx_nvme"),
        c.tail(80)
    );

    let secs = |k: &str| get(k).parse::<f64>().unwrap_or(f64::NAN);
    let macs: Vec<String> = stats
        .frames_by_mac
        .iter()
        .map(|(m, n)| format!("{}={n}", mac_string(m)))
        .collect();
    eprintln!(
        "VFIO passthrough in test host B, L1 run {:.1}s",
        run.elapsed.as_secs_f64()
    );
    eprintln!(
        "  - VF: igbvf probed in two VMs in a row, MSI-X vectors {} / {}; guest MAC {} / {} (PF says {} / {})",
        get("vf1_msix_eth"),
        get("vf2_msix_eth"),
        get("vf1_guest_mac"),
        get("vf2_guest_mac"),
        get("vf1_pf_mac"),
        get("vf2_pf_mac")
    );
    eprintln!(
        "  - PF: {replies}/{PINGS} echo replies in L2 (loss {}), host responder sent {} replies, frames from the PF MAC {pf_frames}; wire by MAC: {}",
        PINGS.saturating_sub(replies),
        stats.echo_replies,
        macs.join(" ")
    );
    eprintln!(
        "  - NVMe: 4 MiB pattern landed in the image; 64 MiB write+fsync {:.2}s ({:.1} MiB/s), 64 MiB read {:.2}s ({:.1} MiB/s), L2 clock under TCG",
        secs("pf_nvme_w64_secs"),
        64.0 / secs("pf_nvme_w64_secs"),
        secs("pf_nvme_r64_secs"),
        64.0 / secs("pf_nvme_r64_secs")
    );
    eprintln!(
        "  - extended config space through ECAM: {} bytes, extended capability ids {ext_ids} (SR-IOV and ARI hidden)",
        get("pf_cfg_size")
    );
    eprintln!(
        "  - PF with msix=off: igb on MSI ({msi_vectors} vector, {} interrupts), {msi_replies}/5 echo replies",
        get("msi_irqs")
    );
    eprintln!(
        "  - pci=nomsi guest: igb and NVMe on INTx (IO-APIC interrupts {}), {intx_replies}/5 echo replies, 1 MiB NVMe pattern in the image",
        get("intx_irqs")
    );
    eprintln!(
        "  - VMM voluntary context switches during ping+NVMe traffic: all threads {}, main thread {}",
        get("ctx_all"),
        get("ctx_main")
    );
}
