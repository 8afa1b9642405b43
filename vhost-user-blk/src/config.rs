//! Validated daemon configuration: every option is checked here, once,
//! before anything is opened or started.

use std::path::PathBuf;
use std::time::Duration;

use virtio_devices::block::ID_BYTES;

use crate::cli::{Args, CacheArg, FormatArg};
use crate::engine::rbd_spec::RbdSpec;
use vhost_user_daemon::cli::CliError;
pub use vhost_user_daemon::listen::Listen;

/// Most queues: one bit each in vhost-user-backend's `queues_per_thread` masks.
pub const MAX_QUEUES: u32 = 64;
/// Largest queue size we accept.
pub const MAX_QUEUE_SIZE: u32 = 1024;
/// Longest busy-poll window.
pub const MAX_POLL_US: u64 = 1_000_000;

/// Invalid command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// --socket-path/--fd.
    #[error(transparent)]
    Listen(#[from] CliError),
    /// --blk-file missing.
    #[error("--blk-file is required")]
    MissingBlkFile,
    /// --num-queues out of range.
    #[error("--num-queues {0} out of range (1-{MAX_QUEUES})")]
    NumQueues(u32),
    /// --queue-size not a power of two or out of range.
    #[error("--queue-size {0} must be a power of two between 2 and {MAX_QUEUE_SIZE}")]
    QueueSize(u32),
    /// --logical-block-size not 512 or 4096.
    #[error("--logical-block-size {0} must be 512 or 4096")]
    BlockSize(u32),
    /// --serial too long.
    #[error("--serial is {0} bytes, at most {ID_BYTES} allowed")]
    SerialTooLong(usize),
    /// --poll-us too large.
    #[error("--poll-us {0} too large (at most {MAX_POLL_US})")]
    PollTooLong(u64),
    /// --backing-dir, --backing or --data-file without --format qcow2.
    #[error("--backing-dir, --backing and --data-file need --format qcow2")]
    ChainNeedsQcow2,
}

/// Image format selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw file or block device.
    Raw,
    /// qcow2 through imago.
    Qcow2,
    /// Detect by header.
    Auto,
}

/// The files a qcow2 image may bring in besides itself (`--backing-dir`,
/// `--backing`, `--data-file`); empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainPolicy {
    /// Backing files are looked up beneath this directory.
    pub backing_dir: Option<PathBuf>,
    /// Backing files allowed one by one.
    pub backing: Vec<PathBuf>,
    /// The external data file the image header must name.
    pub data_file: Option<PathBuf>,
}

impl ChainPolicy {
    /// Nothing allowed.
    pub fn is_empty(&self) -> bool {
        self.backing_dir.is_none() && self.backing.is_empty() && self.data_file.is_none()
    }
}

/// Host cache mode and what it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Page cache, flush = fdatasync.
    Writeback,
    /// O_DIRECT, flush = fdatasync.
    None,
    /// O_DSYNC: writes durable on completion.
    Writethrough,
    /// Page cache, flush acknowledged without syncing.
    Unsafe,
}

impl CacheMode {
    /// Open with O_DIRECT.
    pub fn direct(self) -> bool {
        self == CacheMode::None
    }
    /// Open with O_DSYNC.
    pub fn dsync(self) -> bool {
        self == CacheMode::Writethrough
    }
    /// A guest FLUSH issues a real fdatasync.
    pub fn flush_syncs(self) -> bool {
        self != CacheMode::Unsafe
    }
    /// The guest sees a volatile write cache (config `writeback` = 1).
    pub fn volatile_cache(self) -> bool {
        self != CacheMode::Writethrough
    }
    /// Writes go through the page cache (inline RWF_NOWAIT attempts pay off).
    pub fn page_cache(self) -> bool {
        self != CacheMode::None
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Socket to serve on.
    pub listen: Listen,
    /// Image path.
    pub blk_file: PathBuf,
    /// Format selection.
    pub format: ImageFormat,
    /// What a qcow2 image may name besides itself.
    pub chain: ChainPolicy,
    /// Read-only device.
    pub read_only: bool,
    /// Request queues.
    pub num_queues: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Host cache mode.
    pub cache: CacheMode,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// GET_ID answer, zero padded.
    pub serial: [u8; ID_BYTES],
    /// Busy-poll window after the last request.
    pub poll: Duration,
    /// Benchmarking: reads and writes complete without I/O.
    pub null_io: bool,
    /// Destination of a live migration: take the image lock only when the
    /// frontend starts a queue ([`crate::image_lock`]).
    pub incoming: bool,
    /// Test-only negative control (`--test-never-mark-dirty`): offer
    /// dirty logging and never mark a page.
    pub never_mark_dirty: bool,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let listen = args.common.listen()?;
        let blk_file = args.blk_file.ok_or(ConfigError::MissingBlkFile)?;
        if !(1..=MAX_QUEUES).contains(&args.num_queues) {
            return Err(ConfigError::NumQueues(args.num_queues));
        }
        if !args.queue_size.is_power_of_two() || !(2..=MAX_QUEUE_SIZE).contains(&args.queue_size) {
            return Err(ConfigError::QueueSize(args.queue_size));
        }
        if args.logical_block_size != 512 && args.logical_block_size != 4096 {
            return Err(ConfigError::BlockSize(args.logical_block_size));
        }
        if args.poll_us > MAX_POLL_US {
            return Err(ConfigError::PollTooLong(args.poll_us));
        }
        let chain = ChainPolicy {
            backing_dir: args.backing_dir,
            backing: args.backing,
            data_file: args.data_file,
        };
        if !chain.is_empty() && args.format != FormatArg::Qcow2 {
            return Err(ConfigError::ChainNeedsQcow2);
        }
        let serial_src = match &args.serial {
            Some(s) if s.len() > ID_BYTES => return Err(ConfigError::SerialTooLong(s.len())),
            Some(s) => s.as_bytes().to_vec(),
            None => rbd_serial(&blk_file).unwrap_or_else(|| default_serial(&blk_file)),
        };
        let mut serial = [0u8; ID_BYTES];
        let n = serial_src.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&serial_src[..n]);
        // Ranges checked above: the narrowing casts cannot truncate.
        Ok(Config {
            listen,
            blk_file,
            format: match args.format {
                FormatArg::Raw => ImageFormat::Raw,
                FormatArg::Qcow2 => ImageFormat::Qcow2,
                FormatArg::Auto => ImageFormat::Auto,
            },
            chain,
            read_only: args.read_only,
            num_queues: u16::try_from(args.num_queues)
                .map_err(|_| ConfigError::NumQueues(args.num_queues))?,
            queue_size: u16::try_from(args.queue_size)
                .map_err(|_| ConfigError::QueueSize(args.queue_size))?,
            cache: match args.cache {
                CacheArg::Writeback => CacheMode::Writeback,
                CacheArg::None => CacheMode::None,
                CacheArg::Writethrough => CacheMode::Writethrough,
                CacheArg::Unsafe => CacheMode::Unsafe,
            },
            logical_block_size: args.logical_block_size,
            serial,
            poll: Duration::from_micros(args.poll_us),
            null_io: args.null_io,
            incoming: args.incoming,
            never_mark_dirty: args.common.test_never_mark_dirty,
        })
    }
}

/// Default serial of an `rbd:POOL/IMAGE...` disk: the image name (the
/// name's last path component would be its conf= file's).
fn rbd_serial(blk_file: &std::path::Path) -> Option<Vec<u8>> {
    let spec = RbdSpec::parse(blk_file.to_str()?).ok()??;
    Some(spec.image.bytes().take(ID_BYTES).collect())
}

/// Default serial: the image's file name, truncated to 20 bytes (stable
/// across daemon restarts, unlike an inode number after a copy).
fn default_serial(path: &std::path::Path) -> Vec<u8> {
    path.file_name()
        .map(|n| {
            n.as_encoded_bytes()
                .iter()
                .copied()
                .take(ID_BYTES)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["vhost-user-blk"];
        argv.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket-path", "/tmp/s", "--blk-file", "/x/disk-image.raw"]).unwrap();
        assert_eq!(c.listen, Listen::Path("/tmp/s".into()));
        assert_eq!(c.num_queues, 1);
        assert_eq!(c.queue_size, 256);
        assert_eq!(c.cache, CacheMode::Writeback);
        assert_eq!(c.logical_block_size, 512);
        assert_eq!(&c.serial[..14], b"disk-image.raw");
        assert_eq!(c.serial[14..], [0; 6]);
        assert_eq!(c.poll, Duration::from_micros(50), "polls by default");
        assert_eq!(c.format, ImageFormat::Raw, "never probes by default");
        assert!(c.chain.is_empty());
    }

    #[test]
    fn rejects_bad_options() {
        let base = ["--blk-file", "/x"];
        let with = |more: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(more);
            parse(&v)
        };
        assert_eq!(with(&[]), Err(ConfigError::Listen(CliError::ListenChoice)));
        assert_eq!(
            with(&["--socket-path", "/s", "--fd", "3"]),
            Err(ConfigError::Listen(CliError::ListenChoice))
        );
        assert_eq!(
            with(&["--fd=-1"]),
            Err(ConfigError::Listen(CliError::BadFd(-1)))
        );
        assert_eq!(
            parse(&["--socket-path", "/s"]),
            Err(ConfigError::MissingBlkFile)
        );
        let s = ["--socket-path", "/s"];
        let with_s = |more: &[&str]| {
            let mut v = s.to_vec();
            v.extend_from_slice(&base);
            v.extend_from_slice(more);
            parse(&v)
        };
        assert_eq!(
            with_s(&["--num-queues", "0"]),
            Err(ConfigError::NumQueues(0))
        );
        assert_eq!(
            with_s(&["--num-queues", "65"]),
            Err(ConfigError::NumQueues(65))
        );
        assert_eq!(
            with_s(&["--queue-size", "100"]),
            Err(ConfigError::QueueSize(100))
        );
        assert_eq!(
            with_s(&["--queue-size", "2048"]),
            Err(ConfigError::QueueSize(2048))
        );
        assert_eq!(
            with_s(&["--queue-size", "0"]),
            Err(ConfigError::QueueSize(0))
        );
        assert_eq!(
            with_s(&["--logical-block-size", "1024"]),
            Err(ConfigError::BlockSize(1024))
        );
        assert_eq!(
            with_s(&["--serial", "123456789012345678901"]),
            Err(ConfigError::SerialTooLong(21))
        );
        assert_eq!(
            with_s(&["--poll-us", "1000001"]),
            Err(ConfigError::PollTooLong(1_000_001))
        );
        assert!(with_s(&["--cache", "none", "--queue-size", "1024"]).is_ok());
        for flag in ["--backing-dir", "--backing", "--data-file"] {
            assert_eq!(
                with_s(&[flag, "/b"]),
                Err(ConfigError::ChainNeedsQcow2),
                "{flag} without qcow2"
            );
            assert_eq!(
                with_s(&["--format", "auto", flag, "/b"]),
                Err(ConfigError::ChainNeedsQcow2),
                "{flag} with auto"
            );
            assert!(with_s(&["--format", "qcow2", flag, "/b"]).is_ok());
        }
    }

    #[test]
    fn rbd_serial_is_the_image_name() {
        let c = parse(&[
            "--socket-path",
            "/s",
            "--blk-file",
            "rbd:pool/vm-disk-1:conf=/etc/ceph/ceph.conf",
        ])
        .unwrap();
        assert_eq!(&c.serial[..9], b"vm-disk-1");
        assert_eq!(c.serial[9..], [0; 11]);
    }

    #[test]
    fn cache_modes() {
        assert!(CacheMode::None.direct() && CacheMode::None.flush_syncs());
        assert!(CacheMode::Writethrough.dsync() && !CacheMode::Writethrough.volatile_cache());
        assert!(!CacheMode::Unsafe.flush_syncs() && CacheMode::Unsafe.page_cache());
    }
}
