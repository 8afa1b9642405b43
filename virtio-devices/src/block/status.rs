//! virtio-blk status bytes and the single mapping from outcomes to them.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};

use crate::narrow::u8_of;

/// The status byte a device writes at the end of every request it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// The request succeeded.
    Ok,
    /// The request failed (bad bounds, bad buffers, host I/O error).
    IoErr,
    /// The request type or its flags are not supported.
    Unsupp,
}

impl BlockStatus {
    /// The byte written into the guest's status descriptor.
    pub fn as_byte(self) -> u8 {
        const OK: u8 = u8_of(VIRTIO_BLK_S_OK);
        const IOERR: u8 = u8_of(VIRTIO_BLK_S_IOERR);
        const UNSUPP: u8 = u8_of(VIRTIO_BLK_S_UNSUPP);
        match self {
            BlockStatus::Ok => OK,
            BlockStatus::IoErr => IOERR,
            BlockStatus::Unsupp => UNSUPP,
        }
    }

    /// Status for a host I/O result in the io_uring convention (`>= 0` ok,
    /// `-errno` failure).
    pub fn from_io_result(result: i32) -> Self {
        if result >= 0 {
            BlockStatus::Ok
        } else {
            BlockStatus::IoErr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_the_spec() {
        assert_eq!(BlockStatus::Ok.as_byte(), 0);
        assert_eq!(BlockStatus::IoErr.as_byte(), 1);
        assert_eq!(BlockStatus::Unsupp.as_byte(), 2);
        assert_eq!(BlockStatus::from_io_result(4096), BlockStatus::Ok);
        assert_eq!(BlockStatus::from_io_result(-libc::EIO), BlockStatus::IoErr);
    }
}
