//! SR-IOV management on a real SR-IOV NIC model: `viaduct sriov` against
//! QEMU's igb (82576, 7 VFs) inside test host B, cross-checked with
//! iproute2's own view of the PF's VF table.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::host_b::{HostB, L1_BIN_DIR};
use guest_kit::provision;
use guest_kit::wire::Responder;

const SCENARIO: &str = r#"
. /etc/viaduct/lib.sh
V=@BIN@/viaduct
PF=$(igb_pf)
IF=$(ls $PF/net | head -n1)
ip link set $IF up
$V sriov create --pf $IF --num-vfs 2 > /tmp/create.out 2>&1; result create_rc=$?
result numvfs=$(cat $PF/sriov_numvfs)
$V sriov set --pf $IF --vf 0 --mac 02:00:00:00:0a:01 --vlan 100 --qos 2 --spoofchk on > /tmp/set.out 2>&1; result set_rc=$?
cat /tmp/set.out
$V sriov list > /tmp/list.out 2>&1; result list_rc=$?
cat /tmp/list.out
grep -q 'vf 0 .*mac=02:00:00:00:0a:01 vlan=100 qos=2 spoofchk=on' /tmp/list.out && result list_vf0=ok || result list_vf0=missing
/opt/iproute2/ip link show $IF > /tmp/ip.out 2>&1
cat /tmp/ip.out
grep -q 'vf 0 .*02:00:00:00:0a:01.*, vlan 100, qos 2, spoof checking on' /tmp/ip.out && result iproute2_vf0=ok || result iproute2_vf0=missing
VF=$(basename $(readlink -f $PF/virtfn0))
$V sriov bind --vf $VF > /tmp/bind.out 2>&1; result bind_rc=$?
cat /tmp/bind.out
G=$(basename $(readlink $PF/virtfn0/iommu_group))
[ -c /dev/vfio/$G ] && result vfio_dev=1 || result vfio_dev=0
result vf0_driver=$(basename $(readlink $PF/virtfn0/driver))
$V sriov create --pf $IF --num-vfs 8 > /tmp/err8 2>&1; result create8_rc=$?
cat /tmp/err8
grep -q 'at most 7 VFs' /tmp/err8 && result create8_msg=ok || result create8_msg=unclear
result numvfs_after8=$(cat $PF/sriov_numvfs)
$V sriov set --pf $IF --vf 5 --mac 02:00:00:00:0a:05 > /tmp/err5 2>&1; result set_vf5_rc=$?
$V sriov set --pf $IF --vf 0 --mac 01:00:5e:00:00:01 > /tmp/errmc 2>&1; result set_mcast_rc=$?
$V sriov unbind --vf $VF > /tmp/unbind.out 2>&1; result unbind_rc=$?
result vf0_driver_after=$(basename $(readlink $PF/virtfn0/driver 2>/dev/null) 2>/dev/null)
$V sriov destroy --pf $IF > /dev/null 2>&1; result destroy_rc=$?
result numvfs_destroyed=$(cat $PF/sriov_numvfs)
"#;

#[test]
fn sriov_create_set_list_bind_on_igb() {
    let cache = Cache::locate().expect("cache");
    let kernel = provision::ensure_kernel(&cache).expect("guest kernel");
    let work = cache.scratch("sriov").expect("scratch");
    let viaduct = project_binary("viaduct").expect("viaduct binary");
    let mut img = HostB::base_initramfs(&kernel, &[("viaduct", &viaduct)]).expect("L1 initramfs");
    img.binary("/opt/iproute2/ip", Path::new("/usr/bin/ip"))
        .expect("iproute2 ip");
    img.scenario(&SCENARIO.replace("@BIN@", L1_BIN_DIR));
    let initrd = work.join("l1.cpio");
    img.write(&initrd).expect("write initramfs");
    // The igb needs a wire; nothing is sent on it in this test.
    let responder = Responder::start(Ipv4Addr::new(10, 0, 2, 2)).expect("wire");
    let run = HostB::new(&kernel)
        .igb(&responder)
        .boot(
            &initrd,
            Duration::from_secs(300),
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
    for (key, want) in [
        ("create_rc", "0"),
        ("numvfs", "2"),
        ("set_rc", "0"),
        ("list_rc", "0"),
        ("list_vf0", "ok"),
        ("iproute2_vf0", "ok"),
        ("bind_rc", "0"),
        ("vfio_dev", "1"),
        ("vf0_driver", "vfio-pci"),
        ("create8_rc", "1"),
        ("create8_msg", "ok"),
        ("numvfs_after8", "2"),
        ("set_vf5_rc", "1"),
        ("set_mcast_rc", "1"),
        ("unbind_rc", "0"),
        ("vf0_driver_after", "igbvf"),
        ("destroy_rc", "0"),
        ("numvfs_destroyed", "0"),
    ] {
        c.expect(key, want).unwrap_or_else(|e| panic!("{e}"));
    }
}
