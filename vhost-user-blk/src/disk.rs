//! Opening the disk image: raw file, block device or qcow2 (by flag; by
//! header only with `--format auto`), with the open flags the cache mode
//! implies, and the checks that must fail before anything is started
//! (unreadable, too small, a qcow2 header naming files not allowed). The
//! files opened are recorded in `chain` for the Landlock ruleset.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtio_devices::block::SECTOR_SIZE;

use crate::chain::{ChainError, ChainFile, Resolver};
use crate::config::{CacheMode, Config, ImageFormat};
use crate::engine::rbd_image::{RbdCache, RbdError, RbdImage};
use crate::engine::rbd_spec::{RbdSpec, SpecError};
use crate::image_lock::{ImageLock, LockError};
use crate::qcow2_chain::{self, Qcow2ChainError};

pub use crate::qcow2_chain::Qcow2Access;

/// Why the image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// open(2) failed.
    #[error("cannot open {path}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the size of {0}")]
    Size(PathBuf, #[source] std::io::Error),
    /// The qcow2 image or its chain cannot be served.
    #[error(transparent)]
    Qcow2(#[from] Qcow2ChainError),
    /// The chain's files cannot be opened or recorded.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The image is not a regular file or block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    /// Smaller than one logical block.
    #[error("{path} is {size} bytes, smaller than one {block}-byte block")]
    TooSmall {
        /// Image path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Logical block size.
        block: u32,
    },
    /// Another process holds the image (flock), or its lock descriptor
    /// cannot be opened.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A flush failed.
    #[error("flush failed")]
    Flush(#[source] std::io::Error),
    /// A malformed `rbd:` name.
    #[error(transparent)]
    RbdSpec(#[from] SpecError),
    /// The RBD image cannot be opened.
    #[error(transparent)]
    Rbd(#[from] RbdError),
}

/// The backing store behind the device.
#[derive(Debug)]
pub enum DiskBackend {
    /// Raw file or block device: served by io_uring.
    Raw {
        /// The open image.
        file: File,
        /// It is a block device (discard via the io_uring discard command).
        block_device: bool,
    },
    /// qcow2 via imago, one lock around the driver (correctness first).
    Qcow2(Mutex<Qcow2Access>),
    /// A Ceph RBD image (`rbd:POOL/IMAGE[@SNAP]`), shared by the queues.
    Rbd(Arc<RbdImage>),
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    /// The advisory lock (exclusive, shared when read-only), held for the
    /// daemon's lifetime so two daemons never serve one image, handed over
    /// at a live migration's switch-over ([`ImageLock`]).
    pub lock: Arc<ImageLock>,
    /// How requests reach it.
    pub backend: DiskBackend,
    /// Guest-visible size in bytes, rounded down to the logical block size.
    pub size: u64,
    /// Path, for logs.
    pub path: PathBuf,
    /// Cache mode it was opened with.
    pub cache: CacheMode,
    /// Every file the device uses (the image, a qcow2 data file and
    /// backing chain): the Landlock ruleset lists exactly these.
    pub chain: Vec<ChainFile>,
    /// Served read-only whatever the flags say (an RBD snapshot).
    pub read_only: bool,
}

impl Disk {
    /// Open the image `config` names; fails for anything we cannot serve.
    pub fn open(config: &Config) -> Result<Self, DiskError> {
        if let Some(spec) = config
            .blk_file
            .to_str()
            .map(RbdSpec::parse)
            .transpose()?
            .flatten()
        {
            return Self::open_rbd(config, &spec);
        }
        let path = config.blk_file.clone();
        let file = open_file(&path, config.read_only, config.cache)?;
        let meta = file
            .metadata()
            .map_err(|e| DiskError::Size(path.clone(), e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.file_type().is_file() {
            return Err(DiskError::NotAFile(path));
        }
        let lock = Arc::new(ImageLock::open(&path, config.read_only)?);
        if config.incoming {
            log::info!(
                "event=image_lock_deferred path={} reason=incoming_migration",
                path.display()
            );
        } else {
            lock.acquire()?;
        }
        let format = match config.format {
            ImageFormat::Auto if qcow2_chain::has_qcow2_magic(&file) => ImageFormat::Qcow2,
            ImageFormat::Auto => ImageFormat::Raw,
            other => other,
        };
        let chain;
        let (backend, raw_size) = if format == ImageFormat::Qcow2 {
            // `--format auto` follows no name; `--format qcow2` only the
            // ones the policy allows.
            let resolver = match config.format {
                ImageFormat::Auto => None,
                _ => Some(Resolver::new(&config.chain, config.cache)?),
            };
            let opened = qcow2_chain::open(
                &path,
                file,
                config.read_only,
                config.cache,
                resolver.as_ref(),
            )?;
            chain = opened.files;
            let size = opened.access.size();
            (DiskBackend::Qcow2(Mutex::new(opened.access)), size)
        } else {
            chain = vec![ChainFile::of(&path, &file, !config.read_only)?];
            let mut file = file;
            let size = file
                .seek(SeekFrom::End(0))
                .map_err(|e| DiskError::Size(path.clone(), e))?;
            (DiskBackend::Raw { file, block_device }, size)
        };
        let block = u64::from(config.logical_block_size);
        let size = raw_size - raw_size % block;
        if size == 0 {
            return Err(DiskError::TooSmall {
                path,
                size: raw_size,
                block: config.logical_block_size,
            });
        }
        if size != raw_size {
            log::warn!(
                "image_size_unaligned path={} size={raw_size} served={size}",
                path.display()
            );
        }
        log::info!(
            "event=image_open format={format:?} files={}",
            chain
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Disk {
            lock,
            backend,
            size,
            path,
            cache: config.cache,
            chain,
            read_only: false,
        })
    }

    /// The RBD image `spec` names: connected and opened now (a start-up
    /// error if the cluster, pool, image or snapshot is not there), before
    /// the sandbox, so librados reads its ceph.conf and keyring here.
    fn open_rbd(config: &Config, spec: &RbdSpec) -> Result<Self, DiskError> {
        let cache = if config.cache.volatile_cache() {
            RbdCache::Writeback
        } else {
            RbdCache::Off
        };
        let queues = usize::from(config.num_queues);
        let image = RbdImage::open(spec, config.read_only, cache, queues)?;
        let block = u64::from(config.logical_block_size);
        let size = image.size - image.size % block;
        let path = config.blk_file.clone();
        if size == 0 {
            return Err(DiskError::TooSmall {
                path,
                size: image.size,
                block: config.logical_block_size,
            });
        }
        log::info!(
            "event=image_open format=rbd image={} size={} read_only={}",
            image.name,
            image.size,
            image.read_only
        );
        Ok(Disk {
            lock: Arc::new(ImageLock::none(&path)),
            read_only: image.read_only,
            backend: DiskBackend::Rbd(Arc::new(image)),
            size,
            path,
            cache: config.cache,
            chain: Vec::new(),
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// The raw fd io_uring submits against, if this is a raw image.
    pub fn raw_fd(&self) -> Option<RawFd> {
        match &self.backend {
            DiskBackend::Raw { file, .. } => Some(file.as_raw_fd()),
            DiskBackend::Qcow2(_) | DiskBackend::Rbd(_) => None,
        }
    }

    /// Whether this is a raw block device (discard by the block layer's
    /// io_uring command rather than fallocate).
    pub fn is_block_device(&self) -> bool {
        matches!(
            self.backend,
            DiskBackend::Raw {
                block_device: true,
                ..
            }
        )
    }

    /// A queue stopped (GET_VRING_BASE: a migration's switch-over, a
    /// device stop): what this daemon holds for the image goes to the file
    /// so another daemon opening it sees every completed write — qcow2's
    /// metadata caches whatever the cache mode — and is made durable
    /// (fdatasync) unless cache=unsafe.
    pub fn hand_over(&self) -> Result<(), DiskError> {
        if let DiskBackend::Qcow2(access) = &self.backend {
            let access = access
                .lock()
                .map_err(|_| DiskError::Flush(std::io::Error::other("qcow2 lock poisoned")))?;
            access.flush().map_err(DiskError::Flush)?;
            if self.cache.flush_syncs() {
                access.sync().map_err(DiskError::Flush)?;
            }
            return Ok(());
        }
        self.flush()
    }

    /// Make everything written so far durable (at shutdown); a no-op for
    /// cache=unsafe.
    pub fn flush(&self) -> Result<(), DiskError> {
        if !self.cache.flush_syncs() {
            return Ok(());
        }
        match &self.backend {
            DiskBackend::Raw { file, .. } => file.sync_data().map_err(DiskError::Flush),
            DiskBackend::Qcow2(access) => {
                let access = access
                    .lock()
                    .map_err(|_| DiskError::Flush(std::io::Error::other("qcow2 lock poisoned")))?;
                access.flush().map_err(DiskError::Flush)
            }
            DiskBackend::Rbd(image) => image.flush().map_err(DiskError::Flush),
        }
    }
}

fn open_file(path: &Path, read_only: bool, cache: CacheMode) -> Result<File, DiskError> {
    let mut flags = libc::O_CLOEXEC;
    if cache.direct() {
        flags |= libc::O_DIRECT;
    }
    if cache.dsync() {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use clap::Parser;
    use vmm_sys_util::tempfile::TempFile;

    fn config(path: &Path, extra: &[&str]) -> Config {
        let mut argv = vec![
            "vhost-user-blk",
            "--socket-path",
            "/nonexistent",
            "--blk-file",
            path.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn raw_size_rounds_down_and_too_small_fails() {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(4096 + 100).unwrap();
        let d = Disk::open(&config(f.as_path(), &[])).unwrap();
        assert_eq!(d.size, 4096);
        assert_eq!(d.capacity_sectors(), 8);
        assert!(d.raw_fd().is_some());
        drop(d);

        f.as_file().set_len(4000).unwrap();
        assert!(Disk::open(&config(f.as_path(), &[])).is_ok());
        let err = Disk::open(&config(f.as_path(), &["--logical-block-size", "4096"]));
        assert!(matches!(err, Err(DiskError::TooSmall { size: 4000, .. })));
        f.as_file().set_len(0).unwrap();
        assert!(matches!(
            Disk::open(&config(f.as_path(), &[])),
            Err(DiskError::TooSmall { .. })
        ));
    }

    #[test]
    fn second_writer_is_refused_readers_share() {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let first = Disk::open(&config(f.as_path(), &[])).unwrap();
        assert!(matches!(
            Disk::open(&config(f.as_path(), &[])),
            Err(DiskError::Lock(LockError::Held(_)))
        ));
        drop(first);
        let r1 = Disk::open(&config(f.as_path(), &["--read-only"])).unwrap();
        assert!(Disk::open(&config(f.as_path(), &["--read-only"])).is_ok());
        drop(r1);
    }

    #[test]
    fn missing_and_directory_fail() {
        assert!(matches!(
            Disk::open(&config(Path::new("/nonexistent/img"), &[])),
            Err(DiskError::Open { .. })
        ));
        assert!(matches!(
            Disk::open(&config(Path::new("/tmp"), &["--read-only"])),
            Err(DiskError::NotAFile(_))
        ));
    }
}
