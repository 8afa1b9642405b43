//! End to end: our VMM boots the stock kernel as an L2 guest inside test
//! host B (nested KVM under TCG), as a bzImage and through PVH, with two
//! vCPUs, and exits 0 when the guest powers off.

use guest_kit::cache::Cache;
use guest_kit::l2::{L2Format, boot_l2};
use guest_kit::provision;

#[test]
fn viaduct_boots_bzimage_and_pvh_with_two_cpus_in_test_host_b() {
    let cache = Cache::locate().expect("cache directory");
    let kernel = provision::ensure_kernel(&cache)
        .expect("guest kernel (run scripts/test.sh, which provisions it)");
    let work = cache.scratch("vmm-boot").expect("scratch dir");
    match boot_l2(&kernel, &work, &[L2Format::BzImage, L2Format::Pvh]) {
        Ok(report) => {
            eprintln!(
                "{} passed in {:.1}s",
                report.name,
                report.elapsed.as_secs_f64()
            );
            for f in &report.facts {
                eprintln!("  - {f}");
            }
            let _ = std::fs::remove_dir_all(&work);
        }
        Err(e) => panic!("viaduct L2 boot failed: {e}"),
    }
}
