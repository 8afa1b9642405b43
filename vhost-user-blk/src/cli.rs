//! Command-line options, following the vhost-user spec's "Backend program
//! conventions". Parsing only; meaning and validation live in `config`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use vhost_user_daemon::cli::CommonArgs;

const AFTER_HELP: &str = "\
Example: serve disk.img to QEMU

  vhost-user-blk --socket-path /run/vub.sock --blk-file disk.img --num-queues 2

  qemu-system-x86_64 -machine q35,memory-backend=mem \\
    -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -chardev socket,id=blk0,path=/run/vub.sock \\
    -device vhost-user-blk-pci,chardev=blk0,num-queues=2 ...

Guest memory must be shared (memfd or hugetlbfs with share=on). After the
frontend disconnects the daemon serves the next connection. SIGTERM/SIGINT
drain in-flight requests, flush per --cache and exit 0; SIGUSR1 logs the
per-queue counters. Exit codes: 0 normal, 1 runtime error, 2 usage error.

Image formats: --format defaults to raw and the daemon never guesses a
format from a file the guest can write: a guest owns its disk's sector 0 and
can write a qcow2 header there that names any host file as backing or data
file. --format auto exists for trusted images only and refuses any image
whose qcow2 header names another file. --format qcow2 follows a backing
chain read-only and only into files the operator allows (--backing-dir,
--backing), and an external data file only when given as --data-file;
anything else is a start-up error naming the file.

Ceph RBD: --blk-file rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=NAME] serves an
RBD image through librbd (librbd1, loaded when such a disk is opened). The
name is QEMU's legacy rbd: filename syntax, so the string an operator gives
-drive file=... or qemu-img works here unchanged; of QEMU's :key=value
options only conf (default: /etc/ceph/ceph.conf) and id (the client name
without 'client.', default: admin) are taken, other Ceph options belong in
the conf file. A snapshot (@SNAP) is served read-only. The cluster, pool,
image and snapshot are checked at start-up (exit 2; the monitors get 10 s).
--cache writeback/unsafe turn librbd's cache on (a guest FLUSH flushes it),
none/writethrough turn it off.";

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Raw image or block device (the io_uring fast path). The default:
    /// a guest can write anything into its disk, including a qcow2 header.
    Raw,
    /// qcow2 image (imago, synchronous on the queue's worker thread); its
    /// backing chain only through --backing-dir/--backing, its external
    /// data file only through --data-file.
    Qcow2,
    /// qcow2 if the file starts with the qcow2 magic, raw otherwise. Only
    /// for images no guest wrote: refuses any qcow2 header that names a
    /// backing or data file.
    Auto,
}

/// Host cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// Page cache; guest flushes become fdatasync.
    Writeback,
    /// O_DIRECT; guest flushes become fdatasync.
    None,
    /// Page cache with O_DSYNC: every write is durable when it completes.
    Writethrough,
    /// Page cache; guest flushes are acknowledged without syncing.
    Unsafe,
}

/// vhost-user-blk: serve a disk image to a vhost-user frontend.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-blk", version, after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Disk image: a regular file, a block device, or a Ceph RBD image as
    /// rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=NAME] (see below).
    #[arg(long, value_name = "PATH")]
    pub blk_file: Option<PathBuf>,
    /// Image format (never guessed by default: see below).
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    pub format: FormatArg,
    /// --format qcow2: backing files the image chain names are looked up
    /// inside DIR only (no `..`, no symlinks, absolute names only beneath
    /// DIR), and opened read-only.
    #[arg(long, value_name = "DIR")]
    pub backing_dir: Option<PathBuf>,
    /// --format qcow2: a backing file the image chain may name (the same
    /// file, by identity); repeatable. Opened read-only.
    #[arg(long, value_name = "FILE")]
    pub backing: Vec<PathBuf>,
    /// --format qcow2: the image's external data file; must be the file
    /// the image header names. Without it such images are refused.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// Refuse writes (VIRTIO_BLK_F_RO); the image is opened read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Number of request queues, one worker thread and io_uring each (1-64).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_queues: u32,
    /// Maximum queue size (power of two, 2-1024).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u32,
    /// Host cache mode.
    #[arg(long, value_enum, default_value_t = CacheArg::Writeback)]
    pub cache: CacheArg,
    /// Logical block size reported to the guest: 512 or 4096.
    #[arg(long, default_value_t = 512, value_name = "BYTES")]
    pub logical_block_size: u32,
    /// Serial returned by GET_ID (at most 20 bytes; default: the image's file name).
    #[arg(long, value_name = "ID")]
    pub serial: Option<String>,
    /// Busy-poll the rings for N microseconds after the last request before
    /// sleeping on the kick eventfd (0 = interrupt mode: sleep at once, least CPU; at most
    /// 1000000). The default, as Cloud Hypervisor's vhost-user-block does,
    /// trades up to 50 µs of CPU per burst for 3x the IOPS at QD32 and 4x
    /// at QD1 (docs/benchmarks.md).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub poll_us: u64,
    /// Benchmarking only: complete reads and writes at once without touching
    /// the image (like qemu-storage-daemon's null-co), to measure the
    /// vhost-user and ring overhead alone. Written data is NOT stored.
    #[arg(long)]
    pub null_io: bool,
    /// This daemon serves the destination of a live migration while the
    /// source daemon still has the image open: the image's lock is taken
    /// when the frontend starts the first queue (after the switch-over,
    /// when the source daemon has flushed and released it), not at start.
    #[arg(long)]
    pub incoming: bool,
}

/// The capabilities JSON printed by `--print-capabilities`.
pub const CAPABILITIES_JSON: &str = r#"{"type":"block","features":["read-only","blk-file"]}"#;
