//! Disk images for the block tests: raw files with a per-sector pattern,
//! and qcow2 images made by qemu-img (including a qcow2 header that names
//! a backing file, the format-probe attack).

use std::path::Path;
use std::process::Command;

/// A raw image of `size` bytes filled with a recognisable pattern.
pub fn raw_image(path: &Path, size: usize) {
    let data: Vec<u8> = (0..size)
        .map(|i| u8::try_from(i / 512 % 251).expect("below 251"))
        .collect();
    std::fs::write(path, data).expect("write the raw image");
}

/// Pattern byte of sector `s` in [`raw_image`].
pub fn pattern(sector: u64) -> u8 {
    u8::try_from(sector % 251).expect("below 251")
}

/// qemu-img, run in `cwd` (it creates relative data files there); its
/// stdout. Fails the test if qemu-img does.
pub fn qemu_img_in(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-img with absolute paths (run in `/`).
pub fn qemu_img(args: &[&str]) -> String {
    qemu_img_in(Path::new("/"), args)
}

/// qemu-io on the qcow2 image `img`, one command.
pub fn qemu_io(img: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(img)
        .output()
        .expect("qemu-io runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qcow2 overlay at `path` whose header names `backing` of format
/// `backing_fmt`, verbatim (a relative name resolves against `path`'s
/// directory). With `size` (bytes) qemu-img does not open the backing file
/// (`-u`), which need not exist; without, the overlay takes its size.
pub fn qcow2_overlay(path: &Path, backing: &str, backing_fmt: &str, size: Option<u64>) {
    let path = path.to_str().expect("UTF-8 image path");
    let size = size.map(|s| s.to_string());
    let mut args = vec!["create", "-q"];
    if size.is_some() {
        args.push("-u");
    }
    args.extend(["-f", "qcow2", "-b", backing, "-F", backing_fmt, path]);
    args.extend(size.as_deref());
    qemu_img(&args);
}

/// The bytes of a qcow2 image of virtual size `size` whose header names
/// the raw file `backing` (not opened), made at `scratch`.
pub fn qcow2_header_naming(scratch: &Path, backing: &Path, size: u64) -> Vec<u8> {
    let backing = backing.to_str().expect("UTF-8 backing path");
    qcow2_overlay(scratch, backing, "raw", Some(size));
    std::fs::read(scratch).expect("read the qcow2 header")
}
