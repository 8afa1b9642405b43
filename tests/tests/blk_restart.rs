//! Crash-safe restart with an unmodified QEMU guest (test host A): the
//! guest runs a write-verify loop on a vhost-user-blk disk while the test
//! SIGKILLs the daemon at random moments and starts a new one, ten times.
//! QEMU reconnects and hands the new daemon its in-flight region
//! (INFLIGHT_SHMFD); the daemon resubmits what its predecessor had not
//! finished. The guest must see no I/O error and no verify failure, and
//! every block it was told was written must be in the image.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_kit::binaries::project_binary;
use guest_kit::cache::Cache;
use guest_kit::daemon::Daemon;
use guest_kit::host_a::HostA;
use guest_kit::initramfs::guest_initramfs;
use guest_kit::provision;
use guest_kit::restart_load::{
    BLOCK, BLOCKS, DONE_MARK, PER_WORKER, START_MARK, Schedule, WORKERS, guest_script, marked,
    verify_image, wait_in_flight, wait_mark, write_stop_mark,
};

/// SIGKILL/restart cycles: ten in CI; `VIADUCT_SOAK_KILLS=N` for a soak
/// run (see the README).
fn kills() -> usize {
    std::env::var("VIADUCT_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Guest seconds after which the loop stops on its own if the host never
/// says so: far longer than the kill schedule (about a second a cycle).
fn loop_secs(kills: usize) -> u32 {
    120 + 5 * u32::try_from(kills).unwrap()
}

fn start_daemon(image: &Path, sock: &Path, log: &Path) -> Daemon {
    // A killed daemon leaves its socket file; the new one replaces it, but
    // the harness waits for the file, so remove it first.
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(project_binary("vhost-user-blk").expect("vhost-user-blk binary"));
    cmd.arg("--socket-path")
        .arg(sock)
        .arg("--blk-file")
        .arg(image)
        .args(["--cache", "writeback"]);
    Daemon::start(cmd, sock, log).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
}

fn kill(d: &mut Daemon) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(libc::pid_t::try_from(d.pid()).unwrap(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.alive() {
        assert!(Instant::now() < deadline, "SIGKILLed daemon still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn qemu_guest_survives_daemon_kills_without_losing_a_write() {
    let cache = Cache::locate().expect("cache");
    let kernel = provision::ensure_kernel(&cache).expect("guest kernel");
    let work = cache.scratch("blk-restart").expect("scratch");
    let kills = kills();
    let image = work.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len((BLOCKS + 2) * BLOCK as u64))
        .expect("image");
    let sock = work.join("blk.sock");
    let logs = |n: usize| work.join(format!("daemon{n}.log"));
    let mut daemon = start_daemon(&image, &sock, &logs(0));

    let initrd = work.join("guest.cpio");
    guest_initramfs(
        &kernel.modules,
        &["virtio_blk"],
        &guest_script("/dev/vda", loop_secs(kills), ""),
        &initrd,
    )
    .expect("initramfs");
    let mut host = HostA::new(&kernel);
    host.reconnect_ms(100).vhost_user_blk(&sock, 1);
    let console = work.join("console.log");
    let guest = std::thread::spawn({
        let initrd = initrd.clone();
        let console = console.clone();
        move || {
            host.boot(
                &initrd,
                Duration::from_secs(300 + 3 * kills as u64),
                Some(console),
            )
        }
    });

    assert!(
        wait_mark(&image, START_MARK, Duration::from_secs(120)),
        "the guest's loop never started"
    );
    let mut schedule = Schedule::from_clock();
    eprintln!("kill schedule seed {}", schedule.seed());
    let started = Instant::now();
    let mut aimed = 0;
    for n in 1..=kills {
        std::thread::sleep(schedule.between_ms(200, 1000));
        assert!(
            !marked(&image, DONE_MARK),
            "the guest loop ended before kill {n}: lengthen loop_secs"
        );
        // Aim: kill the moment the region shows a request in flight.
        if wait_in_flight(daemon.pid(), Duration::from_secs(2)) {
            aimed += 1;
        }
        kill(&mut daemon);
        std::thread::sleep(schedule.between_ms(0, 300));
        daemon = start_daemon(&image, &sock, &logs(n));
    }
    eprintln!(
        "{kills} kills in {:.1} s, {aimed} of them as the region showed requests in flight",
        started.elapsed().as_secs_f64()
    );
    write_stop_mark(&image).expect("stop mark");
    let run = guest.join().expect("guest thread").expect("run QEMU");
    let logs_text: Vec<String> = (0..=kills)
        .map(|n| std::fs::read_to_string(logs(n)).unwrap_or_default())
        .collect();
    let all_logs = || -> String { logs_text.join("\n---- next daemon ----\n") };
    assert!(
        !run.timed_out && run.status.is_some_and(|s| s.success()),
        "guest did not power off cleanly: {}\n{}",
        run.describe(),
        all_logs()
    );
    let get = |k: &str| {
        run.console
            .get(k)
            .unwrap_or_else(|e| panic!("{e}\n{}", all_logs()))
    };
    let iterations: Vec<u64> = (0..WORKERS)
        .map(|w| get(&format!("iterations_{w}")).parse().expect("iterations"))
        .collect();
    let resubmitted: u64 = logs_text
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.split("resubmit=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let reconnects = logs_text
        .iter()
        .filter(|t| t.contains("frontend_connected"))
        .count();
    eprintln!(
        "iterations={iterations:?} io_errors={} verify_failures={} kernel_io_errors={} \
         daemons_connected={reconnects} requests_resubmitted={resubmitted}",
        get("io_errors"),
        get("verify_failures"),
        get("kernel_io_errors")
    );
    assert_eq!(get("io_errors"), "0", "{}", all_logs());
    assert_eq!(get("verify_failures"), "0");
    assert_eq!(get("kernel_io_errors"), "0");
    assert_eq!(reconnects, kills + 1, "every daemon served the guest");
    assert!(
        resubmitted > 0,
        "no kill caught a request in flight ({aimed} aimed): resubmission went untested"
    );
    assert!(
        iterations.iter().all(|&n| n >= PER_WORKER),
        "only {iterations:?} iterations ran"
    );
    assert!(
        logs_text[0].contains("event=inflight_get")
            && logs_text[1..]
                .iter()
                .all(|t| t.contains("event=inflight_set")),
        "QEMU did not use the in-flight region:\n{}",
        all_logs()
    );
    match verify_image(&image, &iterations) {
        Ok(blocks) => eprintln!("{blocks} blocks verified in the image"),
        Err(e) => panic!("{e}"),
    }
    assert!(marked(&image, DONE_MARK));
}
