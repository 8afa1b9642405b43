//! The virtio-net device configuration space (`struct virtio_net_config`).
//!
//! Layout (little endian): mac\[6\] @0, status u16 @6, max_virtqueue_pairs
//! u16 @8, mtu u16 @10, speed u32 @12, duplex u8 @16, then RSS fields the
//! device does not offer (zero).

/// `status`: the link is up.
pub const STATUS_LINK_UP: u16 = 1;
/// `speed` value for "unknown".
pub const SPEED_UNKNOWN: u32 = u32::MAX;
/// `duplex` value for "unknown".
pub const DUPLEX_UNKNOWN: u8 = 0xff;
/// Size of the layout served (up to and including the RSS fields).
pub const CONFIG_LEN: usize = 24;

/// The values a net device publishes in its configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfigSpace {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfigSpace {
    /// The whole layout as bytes.
    pub fn to_bytes(self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_virtqueue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b[12..16].copy_from_slice(&SPEED_UNKNOWN.to_le_bytes());
        b[16] = DUPLEX_UNKNOWN;
        b
    }

    /// A read of `len` bytes at `offset`; `None` if any byte lies outside
    /// the layout (the caller decides how to refuse).
    pub fn read(&self, offset: usize, len: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(len)?;
        self.to_bytes().get(offset..end).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfigSpace {
        NetConfigSpace {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            status: STATUS_LINK_UP,
            max_virtqueue_pairs: 4,
            mtu: 9000,
        }
    }

    #[test]
    fn layout_matches_the_spec() {
        let b = cfg().to_bytes();
        assert_eq!(&b[0..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&b[6..8], &[1, 0]);
        assert_eq!(&b[8..10], &[4, 0]);
        assert_eq!(&b[10..12], &9000u16.to_le_bytes());
        assert_eq!(&b[12..16], &[0xff; 4]);
        assert_eq!(b[16], 0xff);
    }

    #[test]
    fn partial_and_out_of_range_reads() {
        let c = cfg();
        assert_eq!(c.read(8, 2), Some(vec![4, 0]));
        assert_eq!(c.read(0, CONFIG_LEN).map(|v| v.len()), Some(CONFIG_LEN));
        assert_eq!(c.read(20, 8), None);
        assert_eq!(c.read(usize::MAX, 2), None);
        assert_eq!(c.read(CONFIG_LEN, 0), Some(vec![]));
    }
}
