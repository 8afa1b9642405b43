//! The guest kernel as the kit provides it: the bzImage, the uncompressed
//! vmlinux cut out of it (for PVH boot), and its module tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the vmlinux could not be cut out of the bzImage.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a bzImage: {1}")]
    NotBzImage(PathBuf, &'static str),
    #[error("cannot run zstd to decompress the kernel payload")]
    Zstd(#[source] std::io::Error),
    #[error("zstd failed to decompress the payload of {0}")]
    ZstdFailed(PathBuf),
    #[error("payload of {0} is not an ELF vmlinux")]
    NotElf(PathBuf),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A provisioned guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub version: String,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    /// `lib/modules/<version>` of the extracted package.
    pub modules: PathBuf,
}

fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Location of the compressed payload inside a bzImage (boot protocol ≥ 2.08).
pub fn payload_range(image: &[u8]) -> Result<std::ops::Range<usize>, &'static str> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no HdrS signature");
    }
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err("truncated header"),
    };
    let offset = le_u32(image, 0x248).ok_or("truncated header")? as usize;
    let length = le_u32(image, 0x24c).ok_or("truncated header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start
        .checked_add(length)
        .ok_or("payload length overflows")?;
    if end > image.len() || length < 8 {
        return Err("payload outside the image");
    }
    // The last 4 bytes of the payload are the decompressed size, not zstd data.
    Ok(start..end - 4)
}

/// Cuts the uncompressed ELF vmlinux out of a zstd bzImage.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), KernelError> {
    let image = std::fs::read(bzimage).map_err(|e| KernelError::Read(bzimage.into(), e))?;
    let range =
        payload_range(&image).map_err(|why| KernelError::NotBzImage(bzimage.into(), why))?;
    let mut child = Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(KernelError::Zstd)?;
    let payload = image[range].to_vec();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| KernelError::Zstd(std::io::Error::other("no stdin")))?;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // zstd may stop reading early on corrupt data; its exit status tells.
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output().map_err(KernelError::Zstd)?;
    let _ = writer.join();
    // zstd exits non-zero on the trailing bytes some kernels append; accept
    // any output that is a complete ELF image.
    if output.stdout.len() < 64 {
        return Err(KernelError::ZstdFailed(bzimage.into()));
    }
    if !output.stdout.starts_with(b"\x7fELF") {
        return Err(KernelError::NotElf(bzimage.into()));
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &output.stdout).map_err(|e| KernelError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, out).map_err(|e| KernelError::Write(out.into(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_bzimage() {
        assert_eq!(payload_range(&[0u8; 1024]), Err("no HdrS signature"));
        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x1f1] = 1;
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload_range(&img).is_err());
    }

    #[test]
    fn payload_range_drops_size_trailer() {
        let mut img = vec![0u8; 4096];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x1f1] = 2; // setup is 3 sectors
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(payload_range(&img), Ok(1536 + 16..1536 + 16 + 96));
    }
}
