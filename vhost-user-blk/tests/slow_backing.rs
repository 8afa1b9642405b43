//! Requests in flight when the frontend goes away (issue 13): on a backing
//! slow enough to keep them in flight for seconds, a frontend disconnects
//! with 32 O_DIRECT reads in flight and, like a guest whose ioeventfd still
//! points at the daemon's kick fd, goes on queueing and kicking. Once the
//! daemon serves the next frontend, nothing of the departed one may still
//! be in flight (its memory no longer changes); the next frontend's memory
//! must not change anywhere it did not ask for, and the daemon must serve
//! it.

mod common;

use std::time::{Duration, Instant};

use common::slow_disk::SlowDisk;
use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vm_memory::{Bytes, GuestAddress};

/// 32 KiB/s: 32 reads of 4 KiB take 4 s.
const BPS: u64 = 32 << 10;
const IMG: usize = 8 << 20;
const QS: u16 = 128;
const BATCH: u64 = 32;
/// Frontend 2's filler byte: never a byte of the image's pattern (0..=250),
/// so every stray read into it shows.
const FILL: u8 = 0xff;
/// Frontend 2's own read lands in this buffer.
const BUF2: u64 = 100;

#[test]
fn a_departed_frontends_requests_end_before_the_next_frontend_is_served() {
    let dir = TempDir::new("slow");
    let slow = SlowDisk::new(&dir.path("backing.img"), IMG, BPS);
    let sock = dir.path("sock");
    let log = dir.path("daemon.log");
    let mut daemon = Daemon::start_logged(
        &sock,
        &slow.device,
        &["--cache", "none", "--poll-us", "0", "--queue-size", "128"],
        Some(&log),
    );
    slow.throttle(daemon.child.id());

    // Frontend 1: 32 reads in flight on the throttled device.
    let s1 = connect(&sock, 1, QS, F_VERSION_1);
    let Session { fe, queues, .. } = s1;
    let mut q1 = queues.into_iter().next().unwrap();
    for i in 0..BATCH {
        q1.queue_request(i, VIRTIO_BLK_T_IN, 8 * i, &[(i, 4096)]);
    }
    q1.kick();
    std::thread::sleep(Duration::from_millis(300));
    let done_before_leaving = q1.used_idx();
    assert!(
        u64::from(done_before_leaving) < BATCH / 2,
        "the backing is not slow: {done_before_leaving} of {BATCH} reads done in 300 ms"
    );
    // It queues 32 more, goes away, and its guest kicks again while the
    // daemon is busy with the first 32.
    for i in BATCH..2 * BATCH {
        q1.queue_request(i, VIRTIO_BLK_T_IN, 8 * i, &[(i, 4096)]);
    }
    drop(fe);
    std::thread::sleep(Duration::from_millis(300));
    q1.kick();

    // Frontend 2: different memory, every byte but its rings set to FILL.
    let mem2 = guest_memory();
    mem2.write_slice(&vec![FILL; GUEST_MEM_SIZE], GuestAddress(0))
        .unwrap();
    let rings = ring_area(0);
    mem2.write_slice(
        &vec![0u8; usize::try_from(rings.end - rings.start).expect("ring size")],
        GuestAddress(rings.start),
    )
    .unwrap();
    let started = Instant::now();
    let s2 = connect_mem(&sock, mem2, 1, QS, F_VERSION_1, false);
    let mut q2 = s2.queues.into_iter().next().unwrap();
    // The daemon serves frontend 2 (a request without disk I/O): from
    // here on it has let go of frontend 1's memory.
    let (status, _) = q2.request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF2 + 1, 20)]);
    assert_eq!(status, S_OK);
    let served_after = started.elapsed();
    let mut departed = vec![0u8; GUEST_MEM_SIZE];
    q1.mem.read_slice(&mut departed, GuestAddress(0)).unwrap();
    let head = q2.queue_request(1, VIRTIO_BLK_T_IN, 0, &[(BUF2, 4096)]);
    let mut before = vec![0u8; GUEST_MEM_SIZE];
    q2.mem.read_slice(&mut before, GuestAddress(0)).unwrap();
    q2.kick();
    let used = q2.wait_used(1, Duration::from_secs(60));
    assert_eq!(used[0].0, u32::from(head));
    // Whatever frontend 1 still had going has had time to land.
    std::thread::sleep(Duration::from_secs(2));
    let mut after = vec![0u8; GUEST_MEM_SIZE];
    q2.mem.read_slice(&mut after, GuestAddress(0)).unwrap();
    let mut departed_after = vec![0u8; GUEST_MEM_SIZE];
    q1.mem
        .read_slice(&mut departed_after, GuestAddress(0))
        .unwrap();
    let late = departed
        .iter()
        .zip(&departed_after)
        .filter(|(a, b)| a != b)
        .count();

    // What frontend 2 asked to change: its read buffer, its status byte,
    // its used ring.
    let allowed = |gpa: u64| {
        (q2.buf(BUF2)..q2.buf(BUF2) + 4096).contains(&gpa)
            || gpa == q2.scratch(1) + 16
            || (q2.used..q2.used + 4 + 8 * u64::from(QS) + 2).contains(&gpa)
    };
    let stray: Vec<u64> = (0..GUEST_MEM_SIZE as u64)
        .filter(|&a| {
            before[usize::try_from(a).expect("a")] != after[usize::try_from(a).expect("a")]
                && !allowed(a)
        })
        .collect();
    eprintln!(
        "frontend 2 served after {served_after:?}; {} bytes of its memory changed that it did not ask for; \
         {late} bytes of frontend 1's memory changed after that",
        stray.len()
    );
    assert_eq!(
        late, 0,
        "the daemon went on reading into a departed frontend's memory after serving the next one"
    );
    assert!(
        stray.is_empty(),
        "{} bytes of frontend 2's memory changed that it did not ask for (first at {:#x})",
        stray.len(),
        stray[0]
    );
    assert_eq!(q2.status(1), S_OK);
    let want: Vec<u8> = (0..4096u64).map(|i| pattern(i / 512)).collect();
    assert!(
        q2.read_buf(BUF2, 4096) == want,
        "frontend 2 did not get sectors 0-7"
    );
    assert!(daemon.alive());
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(60)).success());
    // Stopping the workers before the drain leaves nothing in flight for
    // a worker's drop to wait for.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("worker_dropped_with_inflight"),
        "daemon log:\n{text}"
    );
    drop(daemon);
    drop(slow);
}

/// Completions after a memory-table change (issue 13): 32 reads are in
/// flight when the frontend sends SET_MEM_TABLE mapping the same guest
/// addresses to other memory (another part of the same memfd), and, once
/// the daemon has answered, copies the old memory over. Every completion
/// must be visible in the new memory: the daemon finishes what it started
/// under the old table before it answers.
#[test]
fn requests_in_flight_across_a_memory_table_change_all_complete() {
    let dir = TempDir::new("slow-mem");
    let slow = SlowDisk::new(&dir.path("backing.img"), IMG, BPS);
    let sock = dir.path("sock");
    let mut daemon = Daemon::start(
        &sock,
        &slow.device,
        &["--cache", "none", "--poll-us", "0", "--queue-size", "128"],
    );
    slow.throttle(daemon.child.id());

    // One memfd, twice the guest's size: the old table maps its first
    // half, the new one its second half, at the same guest addresses.
    // SAFETY: memfd_create with a literal name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"vub-move".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we just created this fd and hand its ownership to File.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(2 * GUEST_MEM_SIZE as u64).unwrap();
    let view = |offset: u64| {
        vm_memory::GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0),
            GUEST_MEM_SIZE,
            Some(vm_memory::FileOffset::new(
                file.try_clone().unwrap(),
                offset,
            )),
        )])
        .unwrap()
    };
    let old = view(0);
    let new = view(GUEST_MEM_SIZE as u64);
    let s = connect_mem(&sock, old.clone(), 1, QS, F_VERSION_1, false);
    let Session { fe, queues, .. } = s;
    let mut q = queues.into_iter().next().unwrap();
    for i in 0..BATCH {
        q.queue_request(i, VIRTIO_BLK_T_IN, 8 * i, &[(i, 4096)]);
    }
    q.kick();
    std::thread::sleep(Duration::from_millis(300));
    let done_before = q.used_idx();
    assert!(
        u64::from(done_before) < BATCH / 2,
        "the backing is not slow: {done_before} of {BATCH} reads done in 300 ms"
    );

    let regions: Vec<_> = vm_memory::GuestMemoryBackend::iter(&new)
        .map(|r| vhost::VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    // Wait for the daemon's answer (REPLY_ACK) before touching the old
    // memory, as a frontend must.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let asked = Instant::now();
    fe.set_mem_table(&regions).unwrap();
    let answered_after = asked.elapsed();
    let mut bytes = vec![0u8; GUEST_MEM_SIZE];
    old.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    new.write_slice(&bytes, GuestAddress(0)).unwrap();
    q.mem = new.clone();

    let deadline = Instant::now() + Duration::from_secs(10);
    while u64::from(q.used_idx()) < BATCH && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = q.used_idx();
    eprintln!(
        "SET_MEM_TABLE answered after {answered_after:?}; {seen} of {BATCH} completions visible in the new memory"
    );
    assert_eq!(
        u64::from(seen),
        BATCH,
        "completions lost with the old table"
    );
    for i in 0..BATCH {
        assert_eq!(q.status(i), S_OK, "request {i}");
        let want: Vec<u8> = (0..4096u64).map(|b| pattern(8 * i + b / 512)).collect();
        assert!(q.read_buf(i, 4096) == want, "request {i}'s data");
    }
    // The daemon goes on serving under the new table.
    q.wait_used(
        usize::try_from(BATCH).expect("batch"),
        Duration::from_secs(1),
    );
    let (status, _) = q.request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF2, 20)]);
    assert_eq!(status, S_OK);
    assert!(daemon.alive());
    drop(fe);
    drop(daemon);
    drop(slow);
}
