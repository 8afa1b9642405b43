//! INFLIGHT_SHMFD in-process: the vhost crate's frontend keeps the in-flight
//! region across a SIGKILL of the daemon and hands it to the next one,
//! which resubmits what its predecessor took and never returned, resumes
//! popping after it, and gets going without a kick.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{
    Daemon, F_VERSION_1, S_OK, TempDir, TestQueue, VIRTIO_BLK_T_OUT, guest_memory, raw_image,
};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const T: Duration = Duration::from_secs(10);
const QS: u16 = 16;

/// Connects and starts queue 0 the way QEMU's vhost-user-blk does after a
/// (re)connect: features, GET_INFLIGHT_FD the first time, SET_INFLIGHT_FD
/// every time, memory, then the ring from the used index in guest memory.
fn connect(
    socket: &Path,
    mem: &GuestMemoryMmap,
    q: &TestQueue,
    region: Option<(VhostUserInflight, File)>,
) -> (Frontend, (VhostUserInflight, File)) {
    connect_sized(socket, mem, q, region, QS)
}

/// Like [`connect`], asking for a region of `region_size` entries per
/// queue (the ring has `q.size`).
fn connect_sized(
    socket: &Path,
    mem: &GuestMemoryMmap,
    q: &TestQueue,
    region: Option<(VhostUserInflight, File)>,
    region_size: u16,
) -> (Frontend, (VhostUserInflight, File)) {
    let mut fe = Frontend::connect(socket, 1).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered & (F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()))
        .unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    fe.set_protocol_features(
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
    )
    .unwrap();
    let (info, file) = match region {
        Some(r) => r,
        None => fe
            .get_inflight_fd(&VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: 1,
                queue_size: region_size,
            })
            .unwrap(),
    };
    assert!(info.mmap_size >= 16 + 16 * u64::from(region_size));
    fe.set_inflight_fd(&info, file.as_raw_fd()).unwrap();
    let regions: Vec<_> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    fe.set_mem_table(&regions).unwrap();
    let va = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    fe.set_vring_num(0, q.size).unwrap();
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: va(q.desc),
            used_ring_addr: va(q.used),
            avail_ring_addr: va(q.avail),
            log_addr: None,
        },
    )
    .unwrap();
    // QEMU restores last_avail_idx = used_idx for a backend that died.
    fe.set_vring_base(0, q.used_idx()).unwrap();
    fe.set_vring_call(0, &q.call).unwrap();
    fe.set_vring_kick(0, &q.kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    (fe, (info, file))
}

/// Queue 0's descriptor states in the region: (inflight, counter) per head.
fn marks(file: &File) -> Vec<(u8, u64)> {
    (0..QS)
        .map(|h| {
            let mut b = [0u8; 16];
            file.read_exact_at(&mut b, 16 + 16 * u64::from(h)).unwrap();
            (b[0], u64::from_le_bytes(b[8..16].try_into().unwrap()))
        })
        .collect()
}

fn mark(file: &File, head: u16, counter: u64) {
    let off = 16 + 16 * u64::from(head);
    file.write_all_at(&counter.to_le_bytes(), off + 8).unwrap();
    file.write_all_at(&[1], off).unwrap();
}

fn read_image(path: &Path, sector: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut v, sector * 512)
        .unwrap();
    v
}

#[test]
fn a_restarted_daemon_resubmits_what_its_predecessor_left_in_flight() {
    let dir = TempDir::new("inflight");
    let image = dir.path("disk.img");
    raw_image(&image, 1 << 20);
    let sock = dir.path("sock");
    let mem = guest_memory();
    let mut q = TestQueue::new(&mem, 0, QS, false);

    // Daemon 1 initialises the region and serves one write.
    let mut d1 = Daemon::start(&sock, &image, &[]);
    let (fe1, region) = connect(&sock, &mem, &q, None);
    q.fill(0, 4096, 0xa0);
    q.queue_request(0, VIRTIO_BLK_T_OUT, 8, &[(0, 4096)]);
    q.kick();
    q.wait_used(1, T);
    assert_eq!(q.status(0), S_OK);
    let after_first = marks(&region.1);
    assert!(
        after_first.iter().all(|&(f, _)| f == 0),
        "a completed request stays marked"
    );
    let mut hdr = [0u8; 16];
    region.1.read_exact_at(&mut hdr, 0).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 1, "region version");
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), QS, "desc_num");
    assert_eq!(u16::from_le_bytes([hdr[14], hdr[15]]), 1, "region used_idx");

    // It dies. The guest queues four more writes; the first two were taken
    // by daemon 1 just before it died (as its region says), the other two
    // were never seen. Nobody kicks again: the guest already did.
    d1.signal(libc::SIGKILL);
    d1.wait(T);
    drop(fe1);
    let mut heads = Vec::new();
    for i in 1..=4u64 {
        q.fill(i, 4096, 0xb0 + i.to_le_bytes()[0]);
        heads.push(q.queue_request(i, VIRTIO_BLK_T_OUT, 8 * (1 + i), &[(i, 4096)]));
    }
    mark(&region.1, heads[1], 41);
    mark(&region.1, heads[0], 40);

    // Daemon 2 gets the region back and must finish all four exactly once.
    std::fs::remove_file(&sock).unwrap();
    let log = dir.path("d2.log");
    let mut d2 = Daemon::start_logged(&sock, &image, &[], Some(&log));
    let (_fe2, region) = connect(&sock, &mem, &q, Some(region));
    let mut used: Vec<u32> = q.wait_used(4, T).into_iter().map(|(id, _)| id).collect();
    // Resubmitted first, oldest first; then the rest in avail order.
    assert_eq!(used[..2], [u32::from(heads[0]), u32::from(heads[1])]);
    used.sort_unstable();
    let mut want: Vec<u32> = heads.iter().map(|&h| u32::from(h)).collect();
    want.sort_unstable();
    assert_eq!(used, want, "each request completed exactly once");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(q.used_idx(), 5, "no request completed twice");
    for i in 1..=4u64 {
        assert_eq!(q.status(i), S_OK, "request {i}");
        assert!(
            read_image(&image, 8 * (1 + i), 4096)
                .iter()
                .all(|&b| b == 0xb0 + i.to_le_bytes()[0]),
            "request {i}'s data is not in the image"
        );
    }
    assert!(marks(&region.1).iter().all(|&(f, _)| f == 0));
    assert!(d2.alive());
    d2.signal(libc::SIGTERM);
    d2.wait(T);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("resubmit=2"), "daemon log:\n{text}");
    assert!(text.contains("resubmitted=2"), "daemon log:\n{text}");
}

#[test]
fn bad_inflight_requests_are_refused_and_the_daemon_stays_up() {
    let dir = TempDir::new("inflight-bad");
    let image = dir.path("disk.img");
    raw_image(&image, 1 << 20);
    let sock = dir.path("sock");
    let mut d = Daemon::start(&sock, &image, &[]);
    let mem = guest_memory();
    let q = TestQueue::new(&mem, 0, QS, false);
    let mut fe = Frontend::connect(&sock, 1).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered & (F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()))
        .unwrap();
    fe.set_protocol_features(
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
    )
    .unwrap();
    // More entries than the device has: no region (mmap_size 0, no fd).
    let err = fe.get_inflight_fd(&VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: 4096,
    });
    assert!(err.is_err(), "a region for 4096 entries was handed out");
    // An unsealed file handed back: refused with a failed ack.
    let f = tempfile_of(8192);
    let info = VhostUserInflight {
        mmap_size: 8192,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: QS,
    };
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert!(fe.set_inflight_fd(&info, f.as_raw_fd()).is_err());
    drop(fe);
    // The daemon serves the next frontend normally.
    let (_fe, _) = connect(&sock, &mem, &q, None);
    assert!(d.alive());
}

fn tempfile_of(len: u64) -> File {
    // SAFETY: memfd_create with a literal name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: we own the fresh fd.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// A region whose queues are not the ring's size is refused at ring start:
/// the ring runs without it (the region is neither initialized nor marked)
/// and its requests are served.
#[test]
fn a_region_sized_unlike_the_ring_is_refused_and_requests_are_served() {
    for (ring, region_size) in [(QS, 8u16), (8, QS)] {
        let dir = TempDir::new("inflight-size");
        let image = dir.path("disk.img");
        raw_image(&image, 1 << 20);
        let sock = dir.path("sock");
        let log = dir.path("d.log");
        let mut d = Daemon::start_logged(&sock, &image, &[], Some(&log));
        let mem = guest_memory();
        let mut q = TestQueue::new(&mem, 0, ring, false);
        let (_fe, region) = connect_sized(&sock, &mem, &q, None, region_size);
        // As many 3-descriptor requests as the ring holds: with the
        // 16-entry ring, heads 9 and 12 lie above the 8-entry region.
        let n = u64::from(ring / 3);
        for i in 0..n {
            q.fill(i, 512, 0xc0 + i.to_le_bytes()[0]);
            q.queue_request(i, VIRTIO_BLK_T_OUT, i, &[(i, 512)]);
        }
        q.kick();
        q.wait_used(usize::try_from(n).expect("n"), T);
        for i in 0..n {
            assert_eq!(q.status(i), S_OK, "ring {ring}, request {i}");
            assert_eq!(
                read_image(&image, i, 512),
                vec![0xc0 + i.to_le_bytes()[0]; 512]
            );
        }
        let mut hdr = [0u8; 16];
        region.1.read_exact_at(&mut hdr, 0).unwrap();
        assert_eq!(
            hdr, [0u8; 16],
            "ring {ring}: a region of {region_size} entries was used"
        );
        assert!(d.alive());
        d.signal(libc::SIGTERM);
        d.wait(T);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("event=inflight_refused"),
            "ring {ring}, region {region_size}; daemon log:\n{text}"
        );
    }
}
