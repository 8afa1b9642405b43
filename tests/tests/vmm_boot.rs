//! End to end: our VMM boots the stock kernel as an L2 guest inside test
//! host B (nested KVM under TCG), as a bzImage and through PVH, with two
//! vCPUs, and exits 0 when the guest powers off.

use guest_kit::cache::{Cache, Scratch};
use std::sync::Mutex;

use guest_kit::l2::{DiskBackend, L2Format, boot_l2, boot_l2_panic, boot_l2_with_disk};
use guest_kit::provision;

/// One emulated test host at a time: each takes a whole core under TCG.
static ONE_HOST: Mutex<()> = Mutex::new(());

fn kit(name: &str) -> (guest_kit::kernel::GuestKernel, Scratch) {
    let cache = Cache::locate().expect("cache directory");
    let kernel = provision::ensure_kernel(&cache)
        .expect("guest kernel (run scripts/test.sh, which provisions it)");
    let work = cache.scratch(name).expect("scratch dir");
    (kernel, work)
}

#[test]
fn viaduct_serves_l2_disks_from_qsd_and_our_daemon_and_a_nic_from_our_net_daemon() {
    let _one = ONE_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, work) = kit("vmm-disk");
    let backends = [DiskBackend::QemuStorageDaemon, DiskBackend::Viaduct];
    match boot_l2_with_disk(&kernel, &work, &backends) {
        Ok(report) => {
            eprintln!(
                "{} passed in {:.1}s",
                report.name,
                report.elapsed.as_secs_f64()
            );
            for f in &report.facts {
                eprintln!("  - {f}");
            }
        }
        Err(e) => panic!("viaduct L2 disk scenario failed: {e}"),
    }
}

#[test]
fn viaduct_boots_bzimage_pvh_and_acpi_off_with_two_cpus_in_test_host_b() {
    let _one = ONE_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, work) = kit("vmm-boot");
    let formats = [L2Format::BzImage, L2Format::Pvh, L2Format::BzImageAcpiOff];
    match boot_l2(&kernel, &work, &formats) {
        Ok(report) => {
            eprintln!(
                "{} passed in {:.1}s",
                report.name,
                report.elapsed.as_secs_f64()
            );
            for f in &report.facts {
                eprintln!("  - {f}");
            }
        }
        Err(e) => panic!("viaduct L2 boot failed: {e}"),
    }
}

#[test]
fn viaduct_exits_1_when_the_l2_kernel_panics() {
    let _one = ONE_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let (kernel, work) = kit("vmm-panic");
    match boot_l2_panic(&kernel, &work) {
        Ok(report) => eprintln!(
            "{} passed in {:.1}s",
            report.name,
            report.elapsed.as_secs_f64()
        ),
        Err(e) => panic!("viaduct L2 panic scenario failed: {e}"),
    }
}
