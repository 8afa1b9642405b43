//! Which feature bits and config fields a vhost-user device shows the
//! guest, per device kind: the backend's offer filtered to what our
//! transport supports, and the VMM's own settings (queue counts, MAC)
//! written over the backend's config space. Pure, for tests.

/// VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_VERSION_1.
const TRANSPORT_FEATURES: u64 = 1 << 28 | 1 << 29 | 1 << 32;
/// Device-specific feature bits live in 0..=23.
const DEVICE_FEATURES: u64 = (1 << 24) - 1;
/// vhost-user's own bit in GET_FEATURES: not a virtio feature.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
const VIRTIO_NET_F_CTRL_VLAN: u64 = 1 << 19;
const VIRTIO_NET_F_CTRL_RX_EXTRA: u64 = 1 << 20;
const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Everything that needs a control queue: the VMM decides these, never
/// the backend (which does not see the control queue).
const NET_CTRL_FEATURES: u64 = VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
    | VIRTIO_NET_F_CTRL_VQ
    | VIRTIO_NET_F_CTRL_RX
    | VIRTIO_NET_F_CTRL_VLAN
    | VIRTIO_NET_F_CTRL_RX_EXTRA
    | VIRTIO_NET_F_GUEST_ANNOUNCE
    | VIRTIO_NET_F_CTRL_MAC_ADDR;

/// What kind of device, with the VMM's settings for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    Block {
        num_queues: u16,
    },
    Net {
        mac: Option<[u8; 6]>,
        queue_pairs: u16,
    },
}

impl DeviceKind {
    /// Virtio device type.
    pub fn device_type(&self) -> u32 {
        match self {
            DeviceKind::Block { .. } => 2,
            DeviceKind::Net { .. } => 1,
        }
    }

    /// Virtqueues the guest gets: a NIC's control queue comes last.
    pub fn num_queues(&self) -> u16 {
        match self {
            DeviceKind::Block { num_queues } => *num_queues,
            DeviceKind::Net { queue_pairs, .. } => queue_pairs.saturating_mul(2).saturating_add(1),
        }
    }

    /// Virtqueues the backend serves (all but the control queue).
    pub fn backend_queues(&self) -> u16 {
        match self {
            DeviceKind::Block { num_queues } => *num_queues,
            DeviceKind::Net { queue_pairs, .. } => queue_pairs.saturating_mul(2),
        }
    }

    /// The index of the queue the VMM serves itself (a NIC's control queue).
    pub fn ctrl_queue_index(&self) -> Option<u16> {
        match self {
            DeviceKind::Block { .. } => None,
            DeviceKind::Net { .. } => Some(self.backend_queues()),
        }
    }

    /// What the backend is told the driver acked: without the features
    /// the VMM implements itself (the control queue's).
    pub fn backend_features(&self, acked: u64) -> u64 {
        match self {
            DeviceKind::Block { .. } => acked,
            DeviceKind::Net { .. } => acked & !NET_CTRL_FEATURES,
        }
    }

    /// Bytes of device config space fetched from the backend (what
    /// libvhost-user and rust-vmm backends accept as a whole).
    pub fn config_size(&self) -> u32 {
        match self {
            DeviceKind::Block { .. } => 60,
            DeviceKind::Net { .. } => 12,
        }
    }

    /// Features offered to the guest, from the backend's.
    pub fn offered_features(&self, backend: u64) -> u64 {
        let mut f = backend & (TRANSPORT_FEATURES | DEVICE_FEATURES);
        match self {
            DeviceKind::Block { num_queues } => {
                if *num_queues <= 1 {
                    f &= !VIRTIO_BLK_F_MQ;
                }
            }
            DeviceKind::Net { mac, queue_pairs } => {
                // The VMM serves the control queue (always, as Cloud
                // Hypervisor offers it) with the commands it handles: RX
                // mode and MAC table (acked; the TAP filters nothing) and,
                // with more than one pair, the queue-pair count. Linux
                // refuses MQ without CTRL_VQ.
                f &= !(NET_CTRL_FEATURES | VIRTIO_NET_F_MQ);
                f |= VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX;
                if *queue_pairs > 1 && backend & VIRTIO_NET_F_MQ != 0 {
                    f |= VIRTIO_NET_F_MQ;
                }
                if mac.is_some() {
                    f |= VIRTIO_NET_F_MAC;
                }
            }
        }
        f
    }

    /// Overwrites the VMM-owned fields of a config image.
    pub fn patch_config(&self, config: &mut [u8]) {
        let mut put = |off: usize, bytes: &[u8]| {
            if let Some(dst) = config.get_mut(off..off + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        match self {
            DeviceKind::Block { num_queues } => put(34, &num_queues.to_le_bytes()),
            DeviceKind::Net { mac, queue_pairs } => {
                if let Some(m) = mac {
                    put(0, m);
                }
                put(8, &queue_pairs.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_features_are_filtered() {
        let backend = 1 << 32 | 1 << 30 | 1 << 29 | 1 << 34 | VIRTIO_BLK_F_MQ | 1 << 9 | 1 << 40;
        let one = DeviceKind::Block { num_queues: 1 };
        assert_eq!(one.offered_features(backend), 1 << 32 | 1 << 29 | 1 << 9);
        let two = DeviceKind::Block { num_queues: 2 };
        assert_ne!(two.offered_features(backend) & VIRTIO_BLK_F_MQ, 0);
        let mut cfg = vec![0u8; 60];
        two.patch_config(&mut cfg);
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2);
        assert_eq!((one.device_type(), two.num_queues()), (2, 2));
    }

    #[test]
    fn net_mac_and_queue_pairs() {
        let k = DeviceKind::Net {
            mac: Some([2, 0, 0, 0, 0, 1]),
            queue_pairs: 2,
        };
        let f = k.offered_features(
            1 << 32 | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VLAN | VIRTIO_NET_F_CTRL_MAC_ADDR,
        );
        // Linux refuses MQ without CTRL_VQ: both, and CTRL_RX, come from
        // the VMM; control features the VMM does not handle never pass.
        let want = VIRTIO_NET_F_MAC | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX;
        assert_eq!(f & want, want);
        assert_eq!(f & (VIRTIO_NET_F_CTRL_VLAN | VIRTIO_NET_F_CTRL_MAC_ADDR), 0);
        assert_eq!(
            k.backend_features(f),
            f & !(VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX)
        );
        // One pair: a control queue, no MQ.
        let one = DeviceKind::Net {
            mac: None,
            queue_pairs: 1,
        };
        let f1 = one.offered_features(1 << 32 | VIRTIO_NET_F_MQ);
        assert_eq!(f1 & VIRTIO_NET_F_MQ, 0);
        assert_ne!(f1 & VIRTIO_NET_F_CTRL_VQ, 0);
        assert_eq!((one.num_queues(), one.backend_queues()), (3, 2));
        assert_eq!(one.ctrl_queue_index(), Some(2));
        let mut cfg = vec![0u8; 12];
        k.patch_config(&mut cfg);
        assert_eq!(&cfg[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(cfg[8], 2);
        assert_eq!((k.num_queues(), k.backend_queues()), (5, 4));
        assert_eq!(k.ctrl_queue_index(), Some(4));
        // Short images are left alone rather than panicking.
        let mut short = vec![0u8; 4];
        k.patch_config(&mut short);
    }
}
