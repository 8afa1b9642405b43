//! Viaduct's test kit (dev-only, never shipped): what the daemons' tests
//! and examples, the bench and the fuzzers share instead of copying.
//!
//! - `frontend`: well-behaved vhost-user frontends (virtio-blk, virtio-net)
//!   over memfd guest memory (`memory`) with hand-built split rings;
//! - `hostile`: a hostile frontend, its hand-built wire format and the
//!   catalogue of bad sessions both daemons must survive;
//! - `dirty_log`: the frontend's dirty-page bitmap (migration tests);
//! - `frames`, `packet`, `netns`: Ethernet/virtio-net frames, the AF_PACKET
//!   host side of a TAP, a private network namespace;
//! - `ceph`: a one-node Ceph cluster (monitor, manager, BlueStore OSD) on
//!   loopback with a pool and a 256 MiB image, for the RBD tests;
//! - `images`, `procfs`: disk images (raw pattern, qemu-img), and what
//!   /proc says about a daemon;
//! - `net_daemon` (feature `net-daemon`): vhost-user-net serving in-process.
//!
//! Helpers that only tests call panic with a message on failure (the data
//! is the test's own); what the bench also calls returns errors.

pub mod ceph;
pub mod dirty_log;
pub mod frames;
pub mod frontend;
pub mod hostile;
pub mod images;
pub mod memory;
#[cfg(feature = "net-daemon")]
pub mod net_daemon;
pub mod netns;
pub mod packet;
pub mod procfs;
