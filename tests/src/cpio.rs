//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than shelling out to `cpio` so device nodes
//! (`/dev/console`) can be created without root and the archive is
//! byte-for-byte reproducible.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    CharDev { major: u32, minor: u32 },
}

/// Streams `newc` records to a writer.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> std::fmt::Debug for CpioWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpioWriter")
            .field("ino", &self.ino)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Appends one member; `path` is relative (no leading `/`).
    pub fn append(&mut self, path: &str, entry: &Entry) -> io::Result<()> {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (S_IFDIR | 0o755, &[], (0, 0)),
            Entry::File { data, mode } => (S_IFREG | (mode & 0o7777), data, (0, 0)),
            Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
            Entry::CharDev { major, minor } => (S_IFCHR | 0o600, &[], (*major, *minor)),
        };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "member larger than 4 GiB"))?;
        let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
        self.record(path, mode, nlink, size, rdev, data)?;
        self.ino += 1;
        Ok(())
    }

    fn record(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.record("TRAILER!!!", 0, 1, 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_aligned_and_terminated() {
        let mut w = CpioWriter::new(Vec::new());
        w.append(
            "init",
            &Entry::File {
                data: b"#!/bin/sh\n".to_vec(),
                mode: 0o755,
            },
        )
        .unwrap();
        w.append("dev", &Entry::Dir).unwrap();
        w.append("dev/console", &Entry::CharDev { major: 5, minor: 1 })
            .unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        // Header of the first record: file size field (7th) is 10 bytes.
        assert_eq!(&out[6 + 6 * 8..6 + 7 * 8], b"0000000a");
    }

    #[test]
    fn unpacks_with_the_system_cpio() {
        // The real unpacker reads what we write (cpio is part of the kit's packages).
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            panic!("cpio is not installed; run scripts/install-host-deps.sh");
        };
        assert!(status.status.success());
        let mut w = CpioWriter::new(Vec::new());
        w.append("a", &Entry::Dir).unwrap();
        w.append(
            "a/f",
            &Entry::File {
                data: b"hello".to_vec(),
                mode: 0o644,
            },
        )
        .unwrap();
        w.append("a/l", &Entry::Symlink { target: "f".into() })
            .unwrap();
        let bytes = w.finish().unwrap();
        let dir = std::env::temp_dir().join(format!("viaduct-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.join("a/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(dir.join("a/l")).unwrap().to_str(),
            Some("f")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
