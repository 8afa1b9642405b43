//! virtio-blk device semantics, free of any transport.
//!
//! * [`request`]: turns a descriptor chain into a validated [`request::Request`]
//!   (or the status the spec demands for a bad one) before any I/O happens;
//! * [`config`]: feature bits and the config-space layout, filled from the disk;
//! * [`status`]: the one mapping from outcomes to virtio-blk status bytes.

pub mod config;
pub mod request;
pub mod status;

pub use config::{BlockDeviceInfo, VirtioBlkConfig};
pub use request::{ParseOutcome, Request, RequestError, RequestKind, RequestLimits, Segment};
pub use status::BlockStatus;

/// Bytes per virtio-blk sector: the unit of every sector field, whatever the
/// logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the answer to a GET_ID request.
pub const ID_BYTES: usize = 20;
