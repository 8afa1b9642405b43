//! Guest writer: iteration `i` writes pattern `i` into block `i % 32` of its
//! area and reads the block back from the device (O_DIRECT). `direct`
//! writes with O_DIRECT; `buffered` writes through the page cache and
//! flushes (`fdatasync`), then drops the range from the cache. An
//! iteration counts once its write was acknowledged, so the host can
//! check the image for every counted write after shutdown.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::{
    Aligned, BLOCK, BUFFERED_BASE, DIRECT_BASE, Reporter, TAG_BUFFERED, TAG_DIRECT, Until,
    WRITER_BLOCKS, fill, matches,
};

/// Runs the writer on `dev` until told to stop; `direct` picks the mode.
pub fn run(dev: &str, direct: bool, max_secs: u64) -> std::io::Result<()> {
    let (name, base, tag) = if direct {
        ("direct", DIRECT_BASE, TAG_DIRECT)
    } else {
        ("buffered", BUFFERED_BASE, TAG_BUFFERED)
    };
    let odirect = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let buffered = OpenOptions::new().read(true).write(true).open(dev)?;
    let mut out = Aligned::new(BLOCK)?;
    let mut back = Aligned::new(BLOCK)?;
    let until = Until::new(max_secs);
    let mut rep = Reporter::new();
    let (mut iters, mut errors, mut bad) = (0u64, 0u64, 0u64);
    let keys = |s: &str| format!("{name}_{s}");
    let (k_iters, k_errors, k_bad) = (keys("iters"), keys("errors"), keys("bad"));
    while !until.stop() {
        let off = base + (iters % WRITER_BLOCKS) * BLOCK as u64;
        fill(out.as_mut_slice(), tag, iters);
        let wrote = if direct {
            write_direct(&odirect, out.as_slice(), off)
        } else {
            write_buffered(&buffered, out.as_slice(), off)
        };
        if wrote.is_err() {
            errors += 1;
        } else {
            iters += 1;
            match odirect.read_exact_at(back.as_mut_slice(), off) {
                Ok(()) if matches(back.as_slice(), tag, iters - 1) => {}
                Ok(()) => bad += 1,
                Err(_) => errors += 1,
            }
        }
        rep.tick(
            &[(&k_iters, iters), (&k_errors, errors), (&k_bad, bad)],
            false,
        );
    }
    rep.tick(
        &[(&k_iters, iters), (&k_errors, errors), (&k_bad, bad)],
        true,
    );
    Ok(())
}

fn write_direct(f: &File, data: &[u8], off: u64) -> std::io::Result<()> {
    f.write_all_at(data, off)?;
    f.sync_data()
}

fn write_buffered(f: &File, data: &[u8], off: u64) -> std::io::Result<()> {
    f.write_all_at(data, off)?;
    f.sync_data()?;
    // SAFETY: fadvise on our own descriptor; no memory is involved.
    let rc = unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            i64::try_from(off).unwrap_or(0),
            i64::try_from(data.len()).unwrap_or(0),
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
