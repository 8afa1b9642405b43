//! Guest-less benchmark: a userspace vhost-user frontend issuing 4 KiB
//! random reads at a fixed queue depth against any vhost-user-blk backend
//! (this daemon or qemu-storage-daemon), one queue, EVENT_IDX on.
//!
//! Usage: bench SOCKET QUEUE_DEPTH SECONDS DISK_BYTES [randread|randwrite]

use std::time::{Duration, Instant};

use viaduct_test_kit::frontend::blk::*;
use virtio_queue::desc::split::Descriptor;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: bench SOCKET QUEUE_DEPTH SECONDS DISK_BYTES [randread|randwrite]");
        std::process::exit(2);
    }
    let socket = std::path::PathBuf::from(&args[1]);
    let qd: u16 = args[2].parse().expect("queue depth");
    let secs: u64 = args[3].parse().expect("seconds");
    let disk: u64 = args[4].parse().expect("disk bytes");
    let write = args.get(5).is_some_and(|m| m == "randwrite");
    let (req, data_flags) = if write {
        (VIRTIO_BLK_T_OUT, 1)
    } else {
        (VIRTIO_BLK_T_IN, 1 | 2)
    };
    let blocks = disk / 4096;
    let size = 256u16;
    assert!(qd >= 1 && qd * 3 <= size, "queue depth 1-{}", size / 3);

    let mut s = connect(&socket, 1, size, !0);
    let q = &mut s.queues[0];
    // Slot i owns descriptors 3i..3i+2 for the whole run.
    for i in 0..qd {
        let slot = u64::from(i);
        let d = 3 * i;
        q.write_desc(d, Descriptor::new(q.scratch(slot), 16, 1, d + 1));
        q.write_desc(d + 1, Descriptor::new(q.buf(slot), 4096, data_flags, d + 2));
        q.write_desc(d + 2, Descriptor::new(q.scratch(slot) + 16, 1, 2, 0));
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_sector = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * 8
    };
    for i in 0..qd {
        q.write_header(u64::from(i), req, next_sector());
        q.publish(3 * i);
    }
    q.kick();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut done = 0u64;
    let mut errors = 0u64;
    while Instant::now() < end {
        for (id, _) in q.wait_used(1, Duration::from_secs(10)) {
            let slot = u64::from(id / 3);
            if q.status(slot) != S_OK {
                errors += 1;
            }
            done += 1;
            q.write_header(slot, req, next_sector());
            q.publish(u16::try_from(id).expect("id < queue size"));
        }
        q.kick();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "mode={} qd={qd} requests={done} errors={errors} seconds={elapsed:.2} iops={:.0}",
        if write { "randwrite" } else { "randread" },
        done as f64 / elapsed
    );
}
