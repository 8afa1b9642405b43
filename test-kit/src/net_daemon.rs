//! The vhost-user-net daemon serving in a thread of the calling process,
//! on a TAP in the caller's (private) network namespace: what the net
//! tests, the throughput example and the message fuzzer run against.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost_user_daemon::listen::{self, Listen};
use vhost_user_daemon::shutdown::Shutdown;
use vhost_user_net::config::{Config, TapSpec};
use vhost_user_net::counters::PairCounters;
use vhost_user_net::serve::{self, Device};
use vhost_user_net::tap;

use crate::frames::GUEST_MAC;
use crate::frontend::net::QSIZE;

/// The daemon serving in a thread of the caller; stopped and joined on
/// drop.
#[derive(Debug)]
pub struct Daemon {
    pub sock: PathBuf,
    pub tap: String,
    pub counters: Vec<Arc<PairCounters>>,
    stop: Arc<Shutdown>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Opens `tap_name` (private netns expected), brings it up without IPv6
    /// chatter, and serves on a fresh socket.
    pub fn start(tap_name: &str, pairs: u16) -> Daemon {
        Self::start_polling(tap_name, pairs, 0)
    }

    /// As [`Daemon::start`], busy-polling `poll_us` after the last work.
    pub fn start_polling(tap_name: &str, pairs: u16, poll_us: u64) -> Daemon {
        let _ = env_logger::builder().is_test(true).try_init();
        Self::start_with(tap_name, pairs, QSIZE, poll_us)
    }

    /// The daemon with `pairs` queue pairs of `queue_size` entries; sets
    /// up no logger (the fuzzers run it without one).
    pub fn start_with(tap_name: &str, pairs: u16, queue_size: u16, poll_us: u64) -> Daemon {
        let sock =
            std::env::temp_dir().join(format!("vun-test-{}-{tap_name}.sock", std::process::id()));
        let cfg = Config {
            socket: Listen::Path(sock.clone()),
            tap: TapSpec::Name(tap_name.into()),
            host_ip: None,
            mac: GUEST_MAC,
            mtu: 1500,
            num_queue_pairs: pairs,
            queue_size,
            poll_us,
        };
        let device = Device::open(&cfg).expect("open tap");
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6"),
            "1",
        );
        tap::set_up(tap_name).expect("link up");
        let listener = listen::bind(&cfg.socket).expect("bind");
        let stop = Arc::new(Shutdown::new().expect("shutdown eventfd"));
        let counters = device.counters.clone();
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            serve::run(&device, &listener, &s2).expect("serve loop");
        });
        Daemon {
            sock,
            tap: tap_name.into(),
            counters,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

impl AsRef<Path> for Daemon {
    fn as_ref(&self) -> &Path {
        &self.sock
    }
}
