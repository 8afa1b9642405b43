//! WRITE_ZEROES and DISCARD where the host makes them hard: an image on
//! tmpfs (which refuses FALLOC_FL_ZERO_RANGE), and a block device whose
//! discards are slow.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::*;

const IMG: usize = 8 << 20;

/// A scratch directory on tmpfs (/dev/shm), removed on drop.
fn shm_dir(tag: &str) -> TempDir {
    let p = PathBuf::from("/dev/shm").join(format!("vub-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

fn is_tmpfs(p: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs writes a statfs into `st`; `c` is NUL-terminated.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: statfs succeeded and filled `st`.
    unsafe { st.assume_init() }.f_type == libc::TMPFS_MAGIC
}

fn image_bytes(dir: &TempDir, sector: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(dir.path("disk.img")).unwrap();
    let mut v = vec![0xeeu8; len];
    f.read_exact_at(&mut v, sector * 512).unwrap();
    v
}

/// tmpfs refuses FALLOC_FL_ZERO_RANGE: WRITE_ZEROES without UNMAP used to
/// come back IOERR. Now zeroes are written (in 1 MiB chunks, the range
/// below spans four), the range reads zero through the device and in the
/// file, and the bytes around it are untouched; a second request (the
/// refusal now known) and one with UNMAP (a hole punched) work too.
#[test]
fn write_zeroes_on_tmpfs_writes_zeroes() {
    let dir = shm_dir("wz-tmpfs");
    assert!(is_tmpfs(&dir.0), "/dev/shm is not tmpfs here");
    raw_image(&dir.path("disk.img"), IMG);
    let d = Daemon::start(&dir.path("sock"), &dir.path("disk.img"), &[]);
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    // 3 MiB + 4 KiB from sector 8.
    let (first, n) = (8u64, (3 << 11) + 8);
    let status = q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, first, n, 0);
    assert_eq!(status, S_OK, "WRITE_ZEROES on tmpfs (1 = IOERR)");
    let zeroed = image_bytes(&dir, first, n as usize * 512);
    assert!(zeroed.iter().all(|&b| b == 0), "range not zeroed");
    for sector in [first - 1, first + u64::from(n)] {
        assert!(
            image_bytes(&dir, sector, 512)
                .iter()
                .all(|&b| b == pattern(sector)),
            "sector {sector} outside the range changed"
        );
    }
    for sector in [first, first + 2048, first + u64::from(n) - 1] {
        assert_eq!(q.request(VIRTIO_BLK_T_IN, sector, &[(0, 512)]).0, S_OK);
        assert!(
            q.read_buf(0, 512).iter().all(|&b| b == 0),
            "sector {sector}"
        );
    }
    assert_eq!(
        q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 6000, 16, 0),
        S_OK
    );
    assert!(image_bytes(&dir, 6000, 16 * 512).iter().all(|&b| b == 0));
    assert_eq!(
        q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 7000, 16, 1),
        S_OK
    );
    assert!(image_bytes(&dir, 7000, 16 * 512).iter().all(|&b| b == 0));
    assert_eq!(image_bytes(&dir, 7016, 512)[0], pattern(7016));
}

/// A loop device over a file in a scratch directory; detached on drop.
struct Loop {
    dev: PathBuf,
    _dir: TempDir,
}

impl Loop {
    fn new(tag: &str, size: usize) -> Loop {
        let dir = TempDir::new(tag);
        let backing = dir.path("backing.img");
        raw_image(&backing, size);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("losetup (util-linux) is needed for the block device tests");
        assert!(
            out.status.success(),
            "losetup failed (root needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop { dev, _dir: dir }
    }

    /// "major:minor" of the device.
    fn maj_min(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

/// A cgroup-v1 blkio group whose members may write (discards count) `iops`
/// times a second to one device; its members go back to the root on drop.
struct Throttle {
    dir: PathBuf,
    device: String,
}

impl Throttle {
    const ROOT: &str = "/sys/fs/cgroup/blkio";

    fn new(tag: &str, device: &str, iops: u32) -> Throttle {
        let root = std::path::Path::new(Self::ROOT);
        assert!(
            root.join("blkio.throttle.write_iops_device").exists(),
            "the block device tests need the cgroup-v1 blkio controller at {}",
            Self::ROOT
        );
        let dir = root.join(format!("vub-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("blkio.throttle.write_iops_device"),
            format!("{device} {iops}"),
        )
        .unwrap();
        Throttle {
            dir,
            device: device.to_owned(),
        }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.dir.join("blkio.throttle.write_iops_device"),
            format!("{} 0", self.device),
        );
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(std::path::Path::new(Self::ROOT).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// DISCARD on a block device used to be a synchronous BLKDISCARD on the
/// queue's worker: every request behind it waited for it. Here the
/// daemon's writes to a loop device are throttled to 1 per second (its
/// cgroup), a 4 MiB DISCARD and a 512-byte READ are posted together, and
/// the READ must complete within 300 ms while the DISCARD is still held by
/// the throttle; the DISCARD completes OK later and its range reads zero.
#[test]
fn a_slow_discard_on_a_block_device_does_not_hold_up_the_queue() {
    let lo = Loop::new("discard-bdev", 32 << 20);
    let throttle = Throttle::new("discard", &lo.maj_min(), 1);
    let dir = TempDir::new("discard-bdev-sock");
    let d = Daemon::start(&dir.path("sock"), &lo.dev, &[]);
    throttle.add(d.child.id());
    let mut s = connect(&d.socket, 1, 64, !0);
    let q = &mut s.queues[0];
    // DISCARD sectors [0, 8192) (4 MiB) in scratch slot 0 ...
    q.write_header(0, VIRTIO_BLK_T_DISCARD, 0);
    let seg = q.scratch(0) + 32;
    let mem = q.mem.clone();
    use vm_memory::{Bytes, GuestAddress};
    mem.write_obj(0u64, GuestAddress(seg)).unwrap();
    mem.write_obj(8192u32, GuestAddress(seg + 8)).unwrap();
    mem.write_obj(0u32, GuestAddress(seg + 12)).unwrap();
    let discard = q.add_chain(&[
        (q.scratch(0), 16, false),
        (seg, 16, false),
        (q.scratch(0) + 16, 1, true),
    ]);
    q.publish(discard);
    // ... and a READ of sector 16384 behind it, one kick for both.
    let read = q.queue_request(1, VIRTIO_BLK_T_IN, 16384, &[(0, 512)]);
    let t = std::time::Instant::now();
    q.kick();
    let mut read_after = None;
    let mut discard_after = None;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        for (id, _) in q.wait_used(1, std::time::Duration::from_secs(20)) {
            let at = t.elapsed();
            if id == u32::from(read) {
                read_after = Some(at);
            } else if id == u32::from(discard) {
                discard_after = Some(at);
            }
            seen.push(id);
        }
    }
    println!("read completed after {read_after:?}, discard after {discard_after:?}");
    assert_eq!(q.status(1), S_OK, "read");
    assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(16384)));
    assert_eq!(q.status(0), S_OK, "discard");
    let (read_after, discard_after) = (read_after.unwrap(), discard_after.unwrap());
    assert!(
        read_after < std::time::Duration::from_millis(300),
        "the read waited {read_after:?} behind the discard ({discard_after:?})"
    );
    assert!(discard_after > read_after, "the discard was not throttled");
    // A loop device discards by punching a hole in its file: zeroes.
    assert_eq!(q.request(VIRTIO_BLK_T_IN, 4096, &[(2, 512)]).0, S_OK);
    assert!(q.read_buf(2, 512).iter().all(|&b| b == 0), "not discarded");
}
