//! The test hosts' self-tests: each boots its host for real (QEMU TCG guest;
//! nested KVM host) and fails with the console's tail if anything is off.

use guest_kit::cache::Cache;
use guest_kit::provision;
use guest_kit::selftest;

fn kit() -> (Cache, guest_kit::kernel::GuestKernel) {
    let cache = Cache::locate().expect("cache directory");
    let kernel = provision::ensure_kernel(&cache)
        .expect("guest kernel (run scripts/test.sh, which provisions it)");
    (cache, kernel)
}

#[test]
fn host_a_boots_a_guest_with_a_vhost_user_disk() {
    let (cache, kernel) = kit();
    let work = cache.scratch("test-host-a").expect("scratch dir");
    match selftest::host_a(&kernel, &work) {
        Ok(report) => {
            eprintln!(
                "{} passed in {:.1}s",
                report.name,
                report.elapsed.as_secs_f64()
            );
        }
        Err(e) => panic!("host A self-test failed: {e}"),
    }
}

#[test]
fn host_b_runs_nested_kvm_sriov_and_vfio() {
    let (cache, kernel) = kit();
    let work = cache.scratch("test-host-b").expect("scratch dir");
    match selftest::host_b(&kernel, &work) {
        Ok(report) => {
            eprintln!(
                "{} passed in {:.1}s",
                report.name,
                report.elapsed.as_secs_f64()
            );
        }
        Err(e) => panic!("host B self-test failed: {e}"),
    }
}
