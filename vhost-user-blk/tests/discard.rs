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
