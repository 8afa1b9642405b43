//! Arbitrary vhost-user message streams into the real vhost-user-blk serve
//! loop (vhost-user-backend's request handler with `VhostUserBlkBackend`
//! behind it, io_uring engine, a 1 MiB raw image), one connection per
//! input, through the INFLIGHT_SHMFD relay in front of it. A panic anywhere, a daemon that stops accepting, or one that never
//! hangs up after the frontend does, is a finding.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vhost_user_blk::cli::Args;
use vhost_user_blk::config::Config;
use vhost_user_blk::counters::QueueCounters;
use vhost_user_blk::disk::Disk;
use vhost_user_blk::memguard;
use vhost_user_blk::private_socket::PrivateSocket;
use vhost_user_blk::serve::Server;
use vhost_user_daemon::listen;
use vhost_user_daemon::shutdown::Shutdown;
use viaduct_fuzz::{Session, ignore_sigpipe, play};

fn daemon() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        ignore_sigpipe();
        memguard::install_sigbus_handler().expect("SIGBUS handler");
        let dir = std::env::temp_dir().join(format!("viaduct-fuzz-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        let sock = dir.join("sock");
        let args = Args::parse_from([
            "vhost-user-blk".as_ref(),
            "--socket-path".as_ref(),
            sock.as_os_str(),
            "--blk-file".as_ref(),
            img.as_os_str(),
            "--num-queues".as_ref(),
            "2".as_ref(),
            "--queue-size".as_ref(),
            "16".as_ref(),
        ]);
        let config = Config::try_from(args).expect("config");
        let disk = Disk::open(&config).expect("disk");
        let listener = listen::bind(&config.listen).expect("bind");
        let counters = Arc::new((0..2).map(|_| QueueCounters::default()).collect());
        let shutdown = Arc::new(Shutdown::new().expect("shutdown"));
        let private = PrivateSocket::new().expect("relay socket");
        let mut server = Server::new(config, disk, listener, private, counters, shutdown);
        std::thread::spawn(move || server.run().expect("serve loop"));
        sock
    })
}

fuzz_target!(|session: Session| {
    play(daemon(), &session);
});
