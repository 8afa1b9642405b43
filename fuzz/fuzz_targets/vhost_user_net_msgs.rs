//! Arbitrary vhost-user message streams into the real vhost-user-net serve
//! loop (the early-enable relay, then vhost-user-backend with `NetBackend`
//! behind it, a TAP in a private network namespace), one connection per
//! input. A panic anywhere, a daemon that stops accepting, or one that never
//! hangs up after the frontend does, is a finding. Needs root (TAP).

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhost_user_net::memguard;
use viaduct_fuzz::{Session, ignore_sigpipe, play};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;

fn daemon() -> &'static Path {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    &DAEMON
        .get_or_init(|| {
            ignore_sigpipe();
            memguard::install_sigbus_handler().expect("SIGBUS handler");
            // Only this thread (and the daemon threads it spawns) moves.
            enter_private_netns().expect("private network namespace");
            Daemon::start_with("vfz0", 2, 16, 0)
        })
        .sock
}

fuzz_target!(|session: Session| {
    play(daemon(), &session);
});
