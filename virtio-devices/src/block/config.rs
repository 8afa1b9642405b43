//! virtio-blk feature bits and config space, derived from what the disk
//! really is (size, block size, cache mode, queue layout).

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use super::SECTOR_SIZE;
use super::request::RequestLimits;

/// Largest discard / write-zeroes range we accept in one segment (sectors).
/// 2 GiB keeps every per-request byte count inside `u32` arithmetic.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 22) - 1;
/// Discard / write-zeroes segments per request we accept.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Offset of the `writeback` byte (toggled by the driver when CONFIG_WCE is
/// negotiated).
pub const WRITEBACK_OFFSET: usize = 32;

/// What the device is: everything the features and config space are derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDeviceInfo {
    /// Disk size in 512-byte sectors (rounded down to the logical block size).
    pub capacity_sectors: u64,
    /// 512 or 4096.
    pub logical_block_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Maximum queue size the driver may choose.
    pub queue_size: u16,
    /// Writes are refused with IOERR and VIRTIO_BLK_F_RO is offered.
    pub read_only: bool,
    /// The host keeps a volatile write cache (flushes are needed).
    pub writeback: bool,
}

impl BlockDeviceInfo {
    /// Virtio feature bits the device offers (transport bits included).
    pub fn features(&self) -> u64 {
        let mut bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | (1u64 << bit));
        if self.logical_block_size > 512 {
            bits |= 1 << VIRTIO_BLK_F_TOPOLOGY;
        }
        if self.read_only {
            bits |= 1 << VIRTIO_BLK_F_RO;
        }
        bits
    }

    /// The config space as the driver reads it.
    pub fn config_space(&self) -> VirtioBlkConfig {
        let sectors_per_block = self.logical_block_size / 512;
        VirtioBlkConfig {
            capacity: self.capacity_sectors,
            size_max: 0,
            seg_max: u32::from(self.queue_size.saturating_sub(2)).max(1),
            blk_size: self.logical_block_size,
            physical_block_exp: 0,
            alignment_offset: 0,
            min_io_size: 1,
            opt_io_size: 0,
            writeback: u8::from(self.writeback),
            num_queues: self.num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEGMENTS,
            discard_sector_alignment: sectors_per_block,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS,
            write_zeroes_may_unmap: 1,
        }
    }

    /// The limits request validation enforces for this device.
    pub fn limits(&self) -> RequestLimits {
        RequestLimits {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_data_segments: u32::from(self.queue_size),
        }
    }

    /// Disk size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR_SIZE)
    }
}

/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` (little endian on
/// the wire; see [`VirtioBlkConfig::to_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct VirtioBlkConfig {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl VirtioBlkConfig {
    /// Size of the serialized layout (through `unused1`).
    pub const LEN: usize = 60;

    /// Serialize in the virtio layout (geometry left zero: not offered).
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry (VIRTIO_BLK_F_GEOMETRY not offered).
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = self.alignment_offset;
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[WRITEBACK_OFFSET] = self.writeback;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// The `size` bytes at `offset` of the config space; bytes past the end of
    /// our layout (fields we don't offer) read as zero.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let mut out = vec![0u8; size as usize];
        let start = offset as usize;
        if start < bytes.len() {
            let n = (bytes.len() - start).min(out.len());
            out[..n].copy_from_slice(&bytes[start..start + n]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BlockDeviceInfo {
        BlockDeviceInfo {
            capacity_sectors: 2048,
            logical_block_size: 512,
            num_queues: 2,
            queue_size: 256,
            read_only: false,
            writeback: true,
        }
    }

    #[test]
    fn features_follow_the_device() {
        let f = info().features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_TOPOLOGY), 0);
        let ro4k = BlockDeviceInfo {
            read_only: true,
            logical_block_size: 4096,
            ..info()
        };
        let f = ro4k.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_TOPOLOGY), 0);
    }

    #[test]
    fn config_layout_offsets() {
        let c = info().config_space();
        let b = c.to_bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
        assert_eq!(b[32], 1);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            MAX_DISCARD_SECTORS
        );
        assert_eq!(b[56], 1);
    }

    #[test]
    fn partial_and_out_of_range_reads() {
        let c = info().config_space();
        assert_eq!(c.read(34, 2), vec![2, 0]);
        assert_eq!(c.read(58, 4), vec![0, 0, 0, 0]);
        assert_eq!(c.read(1000, 3), vec![0, 0, 0]);
        assert_eq!(c.read(0, 96).len(), 96);
    }
}
