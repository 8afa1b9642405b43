//! qcow2 through imago: images made by qemu-img, read and written through
//! real rings, left clean for `qemu-img check`, backing files honoured.

mod common;

use common::*;
use viaduct_test_kit::images::{qcow2_overlay, qemu_img, qemu_io};

#[test]
fn qcow2_read_write_discard_and_check_clean() {
    let dir = TempDir::new("qcow2");
    let img = dir.path("disk.qcow2");
    let i = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", i, "16M"]);
    qemu_io(&img, "write -P 0x5a 1M 64k");
    let mut d = Daemon::start(&dir.path("sock"), &img, &["--format", "auto"]);
    {
        let mut s = connect(&d.socket, 1, 64, !0);
        let q = &mut s.queues[0];
        // Data qemu-io wrote, and an unallocated cluster reading as zero.
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 2048, &[(0, 4096)]).0, S_OK);
        assert!(q.read_buf(0, 4096).iter().all(|&b| b == 0x5a));
        q.fill(1, 4096, 0xee);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 8192, &[(1, 4096)]).0, S_OK);
        assert!(q.read_buf(1, 4096).iter().all(|&b| b == 0));
        // Writes (allocating), flush, read back.
        q.fill(2, 8192, 0xa7);
        assert_eq!(q.request(VIRTIO_BLK_T_OUT, 10_000, &[(2, 8192)]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 10_000, &[(3, 8192)]).0, S_OK);
        assert!(q.read_buf(3, 8192).iter().all(|&b| b == 0xa7));
        assert_eq!(q.range_request(VIRTIO_BLK_T_WRITE_ZEROES, 2048, 8, 0), S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 2048, &[(0, 4096)]).0, S_OK);
        assert!(q.read_buf(0, 4096).iter().all(|&b| b == 0));
        assert_eq!(q.range_request(VIRTIO_BLK_T_DISCARD, 0, 128, 0), S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 32768, &[(0, 512)]).0, S_IOERR);
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(std::time::Duration::from_secs(10)).success());
    qemu_img(&["check", "-q", i]);
    qemu_io(&img, "read -P 0xa7 5120000 8k");
    qemu_io(&img, "read -P 0x5a 1056768 4k");
}

#[test]
fn qcow2_backing_file_is_read_and_left_untouched() {
    let dir = TempDir::new("backing");
    let base = dir.path("base.raw");
    raw_image(&base, 4 << 20);
    let top = dir.path("top.qcow2");
    qcow2_overlay(&top, base.to_str().unwrap(), "raw", None);
    let before = std::fs::read(&base).unwrap();
    let mut d = Daemon::start(
        &dir.path("sock"),
        &top,
        &["--format", "qcow2", "--backing", base.to_str().unwrap()],
    );
    {
        let mut s = connect(&d.socket, 1, 64, !0);
        let q = &mut s.queues[0];
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 100, &[(0, 512)]).0, S_OK);
        assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(100)));
        q.fill(1, 512, 0x11);
        assert_eq!(q.request(VIRTIO_BLK_T_OUT, 101, &[(1, 512)]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 100, &[(2, 1024)]).0, S_OK);
        let got = q.read_buf(2, 1024);
        assert!(got[..512].iter().all(|&b| b == pattern(100)));
        assert!(got[512..].iter().all(|&b| b == 0x11));
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(std::time::Duration::from_secs(10)).success());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "backing file modified"
    );
    qemu_img(&["check", "-q", top.to_str().unwrap()]);
}
