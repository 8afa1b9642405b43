//! Format probing and qcow2 chains (issue 13): a guest owns its disk's
//! sector 0 and can write a qcow2 header there naming any host file. The
//! daemon serves raw unless told otherwise, `--format auto` refuses headers
//! that name files, and `--format qcow2` follows a chain only into files the
//! operator allowed (`--backing-dir`, `--backing`, `--data-file`).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use viaduct_test_kit::images::{qcow2_header_naming, qcow2_overlay, qemu_img, qemu_img_in};
use viaduct_test_kit::procfs::open_flags;

/// The byte the secret host file is made of; no image here contains it.
const SECRET: u8 = 0x5e;
const CHUNK: u32 = 16 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A host file the guest must never see.
fn secret(path: &Path) {
    std::fs::write(path, vec![SECRET; 1 << 20]).unwrap();
}

/// Reads `len` bytes of the disk from offset 0 through the ring.
fn read_disk(q: &mut TestQueue, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..(len / CHUNK as usize) as u64 {
        let sector = i * u64::from(CHUNK) / 512;
        assert_eq!(q.request(VIRTIO_BLK_T_IN, sector, &[(1, CHUNK)]).0, S_OK);
        out.extend(q.read_buf(1, CHUNK as usize));
    }
    out
}

/// Runs the daemon and expects it to refuse to start: returns its stderr.
fn refused(image: &Path, extra: &[&str]) -> String {
    let dir = TempDir::new("refused");
    let mut child = Command::new(binary())
        .arg("--socket-path")
        .arg(dir.path("sock"))
        .arg("--blk-file")
        .arg(image)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline || dir.path("sock").exists() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon started serving {} with {extra:?}", image.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{extra:?}: {err}");
    err
}

/// A raw image whose first bytes are a qcow2 image naming `backing` (and
/// nothing else that is not zero), `size` bytes in all.
fn raw_with_qcow2_header(dir: &TempDir, path: &Path, backing: &Path, size: u64) {
    let mut bytes = qcow2_header_naming(&dir.path("hdr.qcow2"), backing, size);
    assert!(!bytes.contains(&SECRET));
    bytes.resize(usize::try_from(size).expect("size"), 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn default_format_serves_a_qcow2_header_as_raw_bytes() {
    let dir = TempDir::new("probe-raw");
    let secret_file = dir.path("secret");
    secret(&secret_file);
    let img = dir.path("disk.raw");
    raw_with_qcow2_header(&dir, &img, &secret_file, 4 << 20);
    let want = std::fs::read(&img).unwrap();
    let mut d = Daemon::start(&dir.path("sock"), &img, &[]);
    {
        let mut sess = connect(&d.socket, 1, 64, !0);
        let got = read_disk(&mut sess.queues[0], 256 * 1024);
        assert!(!got.contains(&SECRET), "secret seen through the disk");
        assert!(got == want[..got.len()], "the disk is not the raw file");
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
}

#[test]
fn auto_refuses_headers_that_name_files() {
    let dir = TempDir::new("probe-auto");
    let secret_file = dir.path("secret");
    secret(&secret_file);
    let img = dir.path("disk.raw");
    raw_with_qcow2_header(&dir, &img, &secret_file, 4 << 20);
    let err = refused(&img, &["--format", "auto"]);
    assert!(
        err.contains(s(&secret_file)) && err.contains("--format auto refuses"),
        "{err}"
    );
    // An external data file named in the header: refused the same way.
    let data = dir.path("data.raw");
    let withdata = dir.path("withdata.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&withdata),
        "4M",
    ]);
    let err = refused(&withdata, &["--format", "auto"]);
    assert!(
        err.contains(s(&data)) && err.contains("external data file"),
        "{err}"
    );
}

#[test]
fn qcow2_backing_outside_the_allowed_set_is_a_startup_error() {
    let dir = TempDir::new("probe-outside");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let secret_file = dir.path("secret");
    secret(&secret_file);
    let img = dir.path("disk.raw");
    raw_with_qcow2_header(&dir, &img, &secret_file, 4 << 20);
    for extra in [
        &["--format", "qcow2"][..],
        &["--format", "qcow2", "--backing-dir", s(&allowed)],
        &["--format", "qcow2", "--backing", s(&img)],
    ] {
        let err = refused(&img, extra);
        assert!(
            err.contains(&format!("backing file {:?}", s(&secret_file))),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn backing_dir_chain_is_served_read_only() {
    let dir = TempDir::new("probe-chain");
    let base_dir = dir.path("base");
    let vm_dir = dir.path("vm");
    std::fs::create_dir(&base_dir).unwrap();
    std::fs::create_dir(&vm_dir).unwrap();
    // base.raw <- mid.qcow2 (both in DIR) <- top.qcow2 (elsewhere).
    let base = base_dir.join("base.raw");
    raw_image(&base, 4 << 20);
    let mid = base_dir.join("mid.qcow2");
    qcow2_overlay(&mid, "base.raw", "raw", None);
    let top = vm_dir.join("top.qcow2");
    qcow2_overlay(&top, "mid.qcow2", "qcow2", Some(4 << 20));
    let before = (std::fs::read(&base).unwrap(), std::fs::read(&mid).unwrap());
    let log = dir.path("log");
    let mut d = Daemon::start_logged(
        &dir.path("sock"),
        &top,
        &["--format", "qcow2", "--backing-dir", s(&base_dir)],
        Some(&log),
    );
    let pid = d.child.id();
    {
        let mut sess = connect(&d.socket, 1, 64, !0);
        let q = &mut sess.queues[0];
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 100, &[(0, 512)]).0, S_OK);
        assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(100)));
        q.fill(1, 4096, 0x11);
        assert_eq!(q.request(VIRTIO_BLK_T_OUT, 8, &[(1, 4096)]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 8, &[(2, 4096)]).0, S_OK);
        assert!(q.read_buf(2, 4096).iter().all(|&b| b == 0x11));
        for f in [&base, &mid] {
            let flags = open_flags(pid, f);
            assert!(!flags.is_empty(), "{} not open", f.display());
            assert!(
                flags
                    .iter()
                    .all(|fl| fl & libc::O_ACCMODE == libc::O_RDONLY),
                "{} open for writing: {flags:?}",
                f.display()
            );
        }
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    assert!(
        (std::fs::read(&base).unwrap(), std::fs::read(&mid).unwrap()) == before,
        "backing chain modified"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("landlock_files=3"), "{text}");

    // The same chain with the files listed one by one (names resolve
    // against the naming image's directory, as QEMU does); leaving one out
    // is an error naming it.
    let top = vm_dir.join("top2.qcow2");
    qcow2_overlay(&top, "../base/mid.qcow2", "qcow2", Some(4 << 20));
    let mut d = Daemon::start(
        &dir.path("sock2"),
        &top,
        &[
            "--format",
            "qcow2",
            "--backing",
            s(&mid),
            "--backing",
            s(&base),
        ],
    );
    {
        let mut sess = connect(&d.socket, 1, 64, !0);
        let q = &mut sess.queues[0];
        assert_eq!(q.request(VIRTIO_BLK_T_IN, 200, &[(0, 512)]).0, S_OK);
        assert!(q.read_buf(0, 512).iter().all(|&b| b == pattern(200)));
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let err = refused(&top, &["--format", "qcow2", "--backing", s(&mid)]);
    assert!(err.contains("backing file \"base.raw\""), "{err}");
}

#[test]
fn data_file_needs_the_flag_and_must_be_the_named_file() {
    let dir = TempDir::new("probe-data");
    let data = dir.path("data.raw");
    let img = dir.path("img.qcow2");
    qemu_img_in(
        &dir.0,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            s(&img),
            "4M",
        ],
    );
    let err = refused(&img, &["--format", "qcow2"]);
    assert!(
        err.contains("\"data.raw\"") && err.contains("--data-file"),
        "{err}"
    );
    let other = dir.path("other.raw");
    std::fs::write(&other, vec![0u8; 4 << 20]).unwrap();
    let err = refused(&img, &["--format", "qcow2", "--data-file", s(&other)]);
    assert!(
        err.contains("\"data.raw\"") && err.contains(s(&other)),
        "{err}"
    );
    let plain = dir.path("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&plain), "4M"]);
    let err = refused(&plain, &["--format", "qcow2", "--data-file", s(&data)]);
    assert!(err.contains("no external data file"), "{err}");

    let mut d = Daemon::start(
        &dir.path("sock"),
        &img,
        &["--format", "qcow2", "--data-file", s(&data)],
    );
    {
        let mut sess = connect(&d.socket, 1, 64, !0);
        let q = &mut sess.queues[0];
        q.fill(1, 4096, 0x77);
        assert_eq!(q.request(VIRTIO_BLK_T_OUT, 16, &[(1, 4096)]).0, S_OK);
        assert_eq!(q.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, S_OK);
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let bytes = std::fs::read(&data).unwrap();
    assert!(
        bytes[8192..12288].iter().all(|&b| b == 0x77),
        "write not in the data file"
    );
}

#[test]
fn symlinks_and_dotdot_do_not_leave_the_backing_dir() {
    let dir = TempDir::new("probe-escape");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let secret_file = dir.path("secret");
    secret(&secret_file);
    symlink(&secret_file, allowed.join("link")).unwrap();
    symlink(dir.path(""), allowed.join("up")).unwrap();
    for name in ["link", "../secret", "up/secret"] {
        let img = allowed.join("top.qcow2");
        let _ = std::fs::remove_file(&img);
        qcow2_overlay(&img, name, "raw", Some(4 << 20));
        let err = refused(&img, &["--format", "qcow2", "--backing-dir", s(&allowed)]);
        assert!(
            err.contains(&format!("backing file {name:?}")),
            "{name}: {err}"
        );
    }
}
