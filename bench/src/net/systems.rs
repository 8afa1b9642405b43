//! The net systems, each measured for one run: our daemon → TAP driven by
//! DPDK's virtio_user (testpmd) or by our own driver; DPDK's vhost PMD
//! forwarding to a net_tap port (peer); the raw TAP from one thread
//! (limit); virtio_user ↔ vhost PMD with no TAP (ring-only ceiling).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bins;
use crate::model::Measurement;
use crate::net::driver::{self, Guest};
use crate::net::tap::{self, Flooder};
use crate::net::testpmd::{self, Core, Stats};
use crate::proc::{self, Task};
use crate::runner::{RunError, Timing};
use crate::spawn::Proc;
use viaduct_test_kit::frames;

/// Traffic direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The driver transmits, frames come out of the TAP.
    GuestToTap,
    /// Frames go into the TAP, the driver receives them.
    TapToGuest,
}

/// What a case sends.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    pub dir: Dir,
    /// Ethernet frame length (without the vnet header).
    pub len: usize,
    /// 64 KiB TCPv4 GSO frames instead of plain ones.
    pub gso: bool,
}

fn failed<E: std::fmt::Display>(e: E) -> RunError {
    RunError::Failed(e.to_string())
}

/// Where a run's frame count is read.
enum Counter<'a> {
    TapRx(&'a str),
    TapTx(&'a str),
    Testpmd(Stats),
}

impl Counter<'_> {
    /// (when, frames, bytes).
    fn read(&mut self) -> Result<(Instant, u64, u64), RunError> {
        match self {
            Counter::TapRx(n) => {
                let c = tap::counters(n).map_err(failed)?;
                Ok((Instant::now(), c.rx_packets, c.rx_bytes))
            }
            Counter::TapTx(n) => {
                let c = tap::counters(n).map_err(failed)?;
                Ok((Instant::now(), c.tx_packets, 0))
            }
            Counter::Testpmd(s) => {
                let x = s.next(Duration::from_secs(5)).map_err(failed)?;
                Ok((x.at, x.rx, 0))
            }
        }
    }
}

/// Warm-up, then counts frames and CPU over the window.
fn measure(
    timing: &Timing,
    mut counter: Counter<'_>,
    server: &[Task],
    client: &[Task],
    frame_len: usize,
) -> Result<Measurement, RunError> {
    std::thread::sleep(timing.warmup);
    let (ta, fa, ba) = counter.read()?;
    let sa = proc::total_cpu_seconds(server).map_err(failed)?;
    let ca = proc::total_cpu_seconds(client).map_err(failed)?;
    std::thread::sleep((ta + timing.window).saturating_duration_since(Instant::now()));
    let (tb, fb, bb) = counter.read()?;
    let sb = proc::total_cpu_seconds(server).map_err(failed)?;
    let cb = proc::total_cpu_seconds(client).map_err(failed)?;
    let secs = tb.duration_since(ta).as_secs_f64();
    if secs <= 0.0 {
        return Err(RunError::Failed("empty measurement window".into()));
    }
    let frames_n = fb.saturating_sub(fa);
    let bytes = if bb > ba {
        bb - ba
    } else {
        frames_n * frame_len as u64
    };
    Ok(Measurement {
        ops_per_s: frames_n as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        server_cpu_s: sb - sa,
        client_cpu_s: cb - ca,
        secs,
        ..Measurement::default()
    })
}

/// Work files of the net suite.
pub struct Env {
    pub dir: PathBuf,
    /// Why DPDK cannot run here, if it cannot.
    pub dpdk_unavailable: Option<String>,
}

impl Env {
    fn sock(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    fn dpdk(&self) -> Result<(), RunError> {
        match &self.dpdk_unavailable {
            Some(why) => Err(RunError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }
}

const OUR_TAP: &str = "vbt0";
const DPDK_TAP: &str = "vbd0";
const RAW_TAP: &str = "vbr0";

fn start_ours(env: &Env) -> Result<(Proc, PathBuf), RunError> {
    let exe = bins::daemon("vhost-user-net").map_err(failed)?;
    let sock = env.sock("net.sock");
    let mut c = Command::new(exe);
    c.arg("--socket-path")
        .arg(&sock)
        .args(["--tap", OUR_TAP, "--log-level", "warn"]);
    let mut p =
        Proc::start("vhost-user-net", c, &env.dir.join("vhost-user-net.log")).map_err(failed)?;
    p.wait_for_path(&sock, Duration::from_secs(10))
        .map_err(failed)?;
    tap::wait_iface(OUR_TAP, Duration::from_secs(5)).map_err(failed)?;
    tap::set_up(OUR_TAP).map_err(failed)?;
    Ok((p, sock))
}

fn client_testpmd(env: &Env, sock: &Path, t: Traffic) -> Result<Proc, RunError> {
    let fwd = match t.dir {
        Dir::GuestToTap => "txonly",
        Dir::TapToGuest => "rxonly",
    };
    let vdev = format!(
        "net_virtio_user0,path={},queues=1,queue_size=256",
        sock.display()
    );
    let c = testpmd::command("vbc", &[vdev], fwd, Some(t.len), Core::One);
    let mut p = Proc::start(
        "testpmd virtio_user",
        c,
        &env.dir.join("testpmd-client.log"),
    )
    .map_err(failed)?;
    std::thread::sleep(Duration::from_millis(300));
    p.check_alive().map_err(failed)?;
    Ok(p)
}

/// Our daemon, DPDK virtio_user as the guest.
pub fn viaduct_testpmd(env: &Env, t: Traffic, timing: &Timing) -> Result<Measurement, RunError> {
    env.dpdk()?;
    let (d, sock) = start_ours(env)?;
    let client = client_testpmd(env, &sock, t)?;
    let log = env.dir.join("testpmd-client.log");
    let _flood = match t.dir {
        Dir::TapToGuest => Some(Flooder::start(OUR_TAP, t.len).map_err(failed)?),
        Dir::GuestToTap => None,
    };
    let counter = match t.dir {
        Dir::GuestToTap => Counter::TapRx(OUR_TAP),
        Dir::TapToGuest => Counter::Testpmd(Stats::new(&log, 0)),
    };
    let r = measure(
        timing,
        counter,
        &[Task::Process(d.pid())],
        &[Task::Process(client.pid())],
        t.len,
    );
    client.stop(Duration::from_secs(3));
    d.stop(Duration::from_secs(3));
    r
}

/// Our daemon, our own driver as the guest.
pub fn viaduct_own(env: &Env, t: Traffic, timing: &Timing) -> Result<Measurement, RunError> {
    let (d, sock) = start_ours(env)?;
    let mut features = driver::VERSION_1 | driver::MRG_RXBUF;
    if t.gso {
        features |= driver::CSUM | driver::HOST_TSO4;
    }
    let mut guest = Guest::connect(&sock, features).map_err(failed)?;
    let pkt = if t.gso {
        frames::gso_packet(t.len)
    } else {
        frames::plain_packet(t.len, 0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let _flood = match t.dir {
        Dir::TapToGuest => Some(Flooder::start(OUR_TAP, t.len).map_err(failed)?),
        Dir::GuestToTap => None,
    };
    let dir = t.dir;
    let st = stop.clone();
    let worker = std::thread::spawn(move || {
        let _ = tid_tx.send(Task::current_thread());
        match dir {
            Dir::GuestToTap => guest.tx_loop(&pkt, &st),
            Dir::TapToGuest => guest.rx_loop(&st),
        }
    });
    let Ok(me) = tid_rx.recv_timeout(Duration::from_secs(5)) else {
        stop.store(true, Ordering::Relaxed);
        return Err(RunError::Failed("driver thread did not start".into()));
    };
    let counter = match t.dir {
        Dir::GuestToTap => Counter::TapRx(OUR_TAP),
        Dir::TapToGuest => Counter::TapTx(OUR_TAP),
    };
    let r = measure(timing, counter, &[Task::Process(d.pid())], &[me], t.len);
    stop.store(true, Ordering::Relaxed);
    let joined = worker.join();
    d.stop(Duration::from_secs(3));
    match joined {
        Ok(Ok(_)) => r,
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(RunError::Failed("driver thread panicked".into())),
    }
}

/// DPDK vhost PMD forwarding to a net_tap port, DPDK virtio_user as guest.
pub fn dpdk_vhost_tap(env: &Env, t: Traffic, timing: &Timing) -> Result<Measurement, RunError> {
    env.dpdk()?;
    if t.gso {
        return Err(RunError::Unavailable(
            "testpmd's vhost PMD → net_tap path does not apply TSO/checksum offloads to the TAP (see testbed notes), so 64 KiB GSO frames cannot be forwarded"
                .into(),
        ));
    }
    let sock = env.sock("dpdk-vhost.sock");
    let vdevs = [
        format!("net_vhost0,iface={},client=0,queues=1", sock.display()),
        format!("net_tap0,iface={DPDK_TAP}"),
    ];
    let c = testpmd::command("vbh", &vdevs, "io", None, Core::Zero);
    let mut host = Proc::start(
        "testpmd vhost+tap",
        c,
        &env.dir.join("testpmd-vhost-tap.log"),
    )
    .map_err(failed)?;
    host.wait_for_path(&sock, Duration::from_secs(20))
        .map_err(failed)?;
    tap::wait_iface(DPDK_TAP, Duration::from_secs(5)).map_err(failed)?;
    tap::set_up(DPDK_TAP).map_err(failed)?;
    let client = client_testpmd(env, &sock, t)?;
    let _flood = match t.dir {
        Dir::TapToGuest => Some(Flooder::start(DPDK_TAP, t.len).map_err(failed)?),
        Dir::GuestToTap => None,
    };
    let counter = match t.dir {
        Dir::GuestToTap => Counter::TapRx(DPDK_TAP),
        Dir::TapToGuest => Counter::Testpmd(Stats::new(&env.dir.join("testpmd-client.log"), 0)),
    };
    let r = measure(
        timing,
        counter,
        &[Task::Process(host.pid())],
        &[Task::Process(client.pid())],
        t.len,
    );
    client.stop(Duration::from_secs(3));
    host.stop(Duration::from_secs(3));
    r
}

/// virtio_user ↔ vhost PMD, no TAP: the vhost-user ring ceiling.
pub fn dpdk_ring_only(env: &Env, t: Traffic, timing: &Timing) -> Result<Measurement, RunError> {
    env.dpdk()?;
    let sock = env.sock("dpdk-ring.sock");
    let fwd = match t.dir {
        Dir::GuestToTap => "rxonly",
        Dir::TapToGuest => "txonly",
    };
    let vdev = format!("net_vhost0,iface={},client=0,queues=1", sock.display());
    let c = testpmd::command("vbh", &[vdev], fwd, Some(t.len), Core::Zero);
    let host_log = env.dir.join("testpmd-host.log");
    let mut host = Proc::start("testpmd vhost", c, &host_log).map_err(failed)?;
    host.wait_for_path(&sock, Duration::from_secs(20))
        .map_err(failed)?;
    let client = client_testpmd(env, &sock, t)?;
    let counter = match t.dir {
        Dir::GuestToTap => Counter::Testpmd(Stats::new(&host_log, 0)),
        Dir::TapToGuest => Counter::Testpmd(Stats::new(&env.dir.join("testpmd-client.log"), 0)),
    };
    let r = measure(
        timing,
        counter,
        &[Task::Process(host.pid())],
        &[Task::Process(client.pid())],
        t.len,
    );
    client.stop(Duration::from_secs(3));
    host.stop(Duration::from_secs(3));
    r
}

/// One thread writing to / reading from a TAP directly.
pub fn raw_tap(t: Traffic, timing: &Timing) -> Result<Measurement, RunError> {
    let fd = tap::open_tap(RAW_TAP).map_err(failed)?;
    tap::set_up(RAW_TAP).map_err(failed)?;
    let pkt = if t.gso {
        frames::gso_packet(t.len)
    } else {
        frames::plain_packet(t.len, 0)
    };
    let _flood = match t.dir {
        Dir::TapToGuest => Some(Flooder::start(RAW_TAP, t.len).map_err(failed)?),
        Dir::GuestToTap => None,
    };
    let stop = AtomicBool::new(false);
    let (tid_tx, tid_rx) = mpsc::channel();
    let dir = t.dir;
    let r = std::thread::scope(|s| {
        let (fd, pkt, st) = (&fd, &pkt, &stop);
        s.spawn(move || {
            let _ = tid_tx.send(Task::current_thread());
            match dir {
                Dir::GuestToTap => tap::write_loop(fd, pkt, st),
                Dir::TapToGuest => tap::read_loop(fd, st),
            }
        });
        let r = match tid_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(me) => {
                let counter = match dir {
                    Dir::GuestToTap => Counter::TapRx(RAW_TAP),
                    Dir::TapToGuest => Counter::TapTx(RAW_TAP),
                };
                measure(timing, counter, &[], &[me], t.len)
            }
            Err(_) => Err(RunError::Failed("TAP thread did not start".into())),
        };
        stop.store(true, Ordering::Relaxed);
        r
    });
    drop(fd);
    r
}
