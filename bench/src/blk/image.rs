//! The disk image every block system serves: a raw file of random data,
//! made once and reused, pulled into the page cache before cached runs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Errors preparing the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Makes `path` a `bytes`-long file of pseudo-random data unless it already
/// is one.
pub fn ensure(path: &Path, bytes: u64) -> Result<(), ImageError> {
    let err = |e| ImageError::Io(path.into(), e);
    if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let mut f = std::fs::File::create(path).map_err(err)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut left = bytes;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        // A `left` too big for usize is more than a chunk.
        let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
        f.write_all(&chunk[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)
}

/// Reads the whole file so cached runs start from a warm page cache.
pub fn warm(path: &Path) -> Result<(), ImageError> {
    let err = |e| ImageError::Io(path.into(), e);
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut buf = vec![0u8; 4 << 20];
    while f.read(&mut buf).map_err(err)? > 0 {}
    Ok(())
}
