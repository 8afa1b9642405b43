//! Arbitrary vhost-user message streams into the real vhost-user-net serve
//! loop (the early-enable relay, then vhost-user-backend with `NetBackend`
//! behind it, a TAP in a private network namespace), one connection per
//! input. A panic anywhere, a daemon that stops accepting, or one that never
//! hangs up after the frontend does, is a finding. Needs root (TAP).

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhost_user_daemon::listen::{self, Listen};
use vhost_user_daemon::shutdown::Shutdown;
use vhost_user_net::config::{Config, TapSpec};
use vhost_user_net::memguard;
use vhost_user_net::serve::{self, Device};
use vhost_user_net::tap;
use viaduct_fuzz::{Session, ignore_sigpipe, play};

fn daemon() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        ignore_sigpipe();
        memguard::install_sigbus_handler().expect("SIGBUS handler");
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread (and the
        // daemon threads it spawns below) into a fresh network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        let sock =
            std::env::temp_dir().join(format!("viaduct-fuzz-net-{}.sock", std::process::id()));
        let cfg = Config {
            socket: Listen::Path(sock.clone()),
            tap: TapSpec::Name("vfz0".into()),
            host_ip: None,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
            num_queue_pairs: 2,
            queue_size: 16,
            poll_us: 0,
        };
        let device = Device::open(&cfg).expect("tap");
        tap::set_up("vfz0").expect("link up");
        let listener = listen::bind(&cfg.socket).expect("bind");
        let stop = Arc::new(Shutdown::new().expect("shutdown eventfd"));
        std::thread::spawn(move || serve::run(&device, &listener, &stop).expect("serve loop"));
        sock
    })
}

fuzz_target!(|session: Session| {
    play(daemon(), &session);
});
