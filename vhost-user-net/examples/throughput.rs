//! Frames per second through the daemon, against what one thread can push
//! into / pull out of a TAP directly. Runs in a private network namespace
//! (root needed):
//!
//!     cargo run --release -p vhost-user-net --example throughput
//!
//! TX: a driver thread keeps the TX ring full, the daemon writes the TAP.
//! RX: an AF_PACKET thread floods the TAP, the daemon fills the RX ring, a
//! driver thread recycles the buffers. Rates are frames the daemon counted.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vhost_user_net::tap::{self, TapQueue};
use viaduct_test_kit::frames::{frame, vnet_hdr};
use viaduct_test_kit::frontend::net::{BUF_BASE, Guest, QSIZE};
use viaduct_test_kit::net_daemon::Daemon;
use viaduct_test_kit::netns::enter_private_netns;
use viaduct_test_kit::packet::PacketSocket;
use virtio_devices::net::features::{MRG_RXBUF, VERSION_1};

const WINDOW: Duration = Duration::from_secs(2);
const SLOT: u32 = 2048;

fn daemon_tx(d: &Daemon, len: usize) -> f64 {
    let mut g = Guest::connect(d, VERSION_1 | MRG_RXBUF);
    let mut pkt = vnet_hdr(0, 0, 0, 0, 0, 0);
    pkt.extend_from_slice(&frame(len, 1));
    for i in 0..u64::from(QSIZE) {
        vm_memory::Bytes::write_slice(
            &g.mem,
            &pkt,
            vm_memory::GuestAddress(BUF_BASE + i * u64::from(SLOT)),
        )
        .unwrap();
    }
    let mut outstanding = 0u32;
    let start_pkts = d.counters[0].tx.packets();
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        while outstanding < u32::from(QSIZE) {
            let at = BUF_BASE + u64::from(g.tx.next_desc) * u64::from(SLOT);
            g.tx.add(&g.mem, &[(at, u32::try_from(pkt.len()).unwrap(), false)]);
            outstanding += 1;
        }
        g.kick_tx();
        while g.tx.wait_used(&g.mem, Duration::ZERO).is_some() {
            outstanding -= 1;
        }
        std::thread::yield_now();
    }
    let n = d.counters[0].tx.packets() - start_pkts;
    n as f64 / start.elapsed().as_secs_f64()
}

fn flood(ifname: String, len: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // The generator thread inherits the namespace of its creator.
        let s = PacketSocket::open(&ifname, false).expect("packet socket");
        let f = frame(len, 2);
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                s.send(&f).expect("send");
            }
        }
    })
}

fn daemon_rx(d: &Daemon, len: usize) -> f64 {
    let mut g = Guest::connect(d, VERSION_1 | MRG_RXBUF);
    for _ in 0..QSIZE {
        let at = BUF_BASE + u64::from(g.rx.next_desc) * u64::from(SLOT);
        g.rx.add(&g.mem, &[(at, SLOT, true)]);
    }
    g.kick_rx();
    let stop = Arc::new(AtomicBool::new(false));
    let generator = flood(d.tap.clone(), len, stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let start_pkts = d.counters[0].rx.packets();
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        let mut reposted = false;
        while g.rx.wait_used(&g.mem, Duration::ZERO).is_some() {
            let at = BUF_BASE + u64::from(g.rx.next_desc) * u64::from(SLOT);
            g.rx.add(&g.mem, &[(at, SLOT, true)]);
            reposted = true;
        }
        if reposted {
            g.kick_rx();
        }
        std::thread::yield_now();
    }
    let n = d.counters[0].rx.packets() - start_pkts;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    rate
}

fn direct_write(name: &str, len: usize) -> f64 {
    let q = TapQueue::open_named(name, 1).unwrap().remove(0);
    q.set_vnet_hdr_len(12).unwrap();
    tap::set_up(name).unwrap();
    let mut pkt = vnet_hdr(0, 0, 0, 0, 0, 0);
    pkt.extend_from_slice(&frame(len, 3));
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        for _ in 0..256 {
            // SAFETY: write reads `pkt`.
            if unsafe { libc::write(q.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) } > 0 {
                n += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn direct_read(name: &str, len: usize) -> f64 {
    let q = TapQueue::open_named(name, 1).unwrap().remove(0);
    q.set_vnet_hdr_len(12).unwrap();
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    tap::set_up(name).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let generator = flood(name.to_owned(), len, stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = vec![0u8; 70_000];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        // SAFETY: read writes into `buf`.
        if unsafe { libc::read(q.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
            n += 1;
        } else {
            std::thread::yield_now();
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    rate
}

fn main() {
    enter_private_netns().expect("private network namespace");
    let d = Daemon::start("vbench0", 1);
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>14}",
        "bytes", "daemon_tx_fps", "direct_wr_fps", "daemon_rx_fps", "direct_rd_fps"
    );
    for (i, len) in [64usize, 1500].into_iter().enumerate() {
        let tx = daemon_tx(&d, len);
        let rx = daemon_rx(&d, len);
        let wr = direct_write(&format!("vbw{i}"), len);
        let rd = direct_read(&format!("vbr{i}"), len);
        println!("{len:>6} {tx:>14.0} {wr:>14.0} {rx:>14.0} {rd:>14.0}");
    }
    for (i, c) in d.counters.iter().enumerate() {
        println!("pair {i}: rx {} | tx {}", c.rx.summary(), c.tx.summary());
    }
}
