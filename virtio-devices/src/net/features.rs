//! virtio-net feature bits: what the device offers and what follows from
//! the driver's choice (header length).

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net as vn;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Turns a feature bit number into its mask.
const fn bit(n: u32) -> u64 {
    1u64 << n
}

pub const VERSION_1: u64 = bit(VIRTIO_F_VERSION_1);
pub const INDIRECT_DESC: u64 = bit(VIRTIO_RING_F_INDIRECT_DESC);
pub const EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);
pub const CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
pub const GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
pub const MTU: u64 = bit(vn::VIRTIO_NET_F_MTU);
pub const MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
pub const GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
pub const GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
pub const GUEST_ECN: u64 = bit(vn::VIRTIO_NET_F_GUEST_ECN);
pub const GUEST_UFO: u64 = bit(vn::VIRTIO_NET_F_GUEST_UFO);
pub const HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
pub const HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
pub const HOST_ECN: u64 = bit(vn::VIRTIO_NET_F_HOST_ECN);
pub const HOST_UFO: u64 = bit(vn::VIRTIO_NET_F_HOST_UFO);
pub const MRG_RXBUF: u64 = bit(vn::VIRTIO_NET_F_MRG_RXBUF);
pub const STATUS: u64 = bit(vn::VIRTIO_NET_F_STATUS);
pub const MQ: u64 = bit(vn::VIRTIO_NET_F_MQ);
pub const GUEST_USO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_USO4);
pub const GUEST_USO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_USO6);
pub const HOST_USO: u64 = bit(vn::VIRTIO_NET_F_HOST_USO);

/// Size of the legacy header without `num_buffers` (`struct virtio_net_hdr`).
pub const HDR_LEN_LEGACY: usize = 10;
/// Size of the header with `num_buffers` (`struct virtio_net_hdr_v1`).
pub const HDR_LEN_V1: usize = 12;

/// Which optional offloads the host side (the TAP) accepted when probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionalOffloads {
    /// UDP fragmentation offload (`TUN_F_UFO`).
    pub ufo: bool,
    /// UDP segmentation offload (`TUN_F_USO4|TUN_F_USO6`).
    pub uso: bool,
}

/// The virtio feature set a TAP-backed net device offers.
///
/// Packed rings are never offered: virtio-queue only implements split rings.
pub fn device_features(optional: OptionalOffloads) -> u64 {
    let mut f = VERSION_1
        | MAC
        | MTU
        | STATUS
        | MQ
        | MRG_RXBUF
        | CSUM
        | GUEST_CSUM
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | INDIRECT_DESC
        | EVENT_IDX;
    if optional.ufo {
        f |= GUEST_UFO | HOST_UFO;
    }
    if optional.uso {
        f |= GUEST_USO4 | GUEST_USO6 | HOST_USO;
    }
    f
}

/// Length of the virtio-net header for a negotiated feature set.
///
/// Virtio 1.x always carries `num_buffers` (12 bytes); a legacy driver gets
/// it only with `MRG_RXBUF`.
pub fn vnet_hdr_len(acked: u64) -> usize {
    if acked & (VERSION_1 | MRG_RXBUF) != 0 {
        HDR_LEN_V1
    } else {
        HDR_LEN_LEGACY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_negotiation() {
        assert_eq!(vnet_hdr_len(0), 10);
        assert_eq!(vnet_hdr_len(MRG_RXBUF), 12);
        assert_eq!(vnet_hdr_len(VERSION_1), 12);
        assert_eq!(vnet_hdr_len(VERSION_1 | MRG_RXBUF), 12);
    }

    #[test]
    fn optional_offloads_only_when_probed() {
        let base = device_features(OptionalOffloads::default());
        assert_eq!(base & (GUEST_UFO | HOST_UFO | GUEST_USO4 | HOST_USO), 0);
        assert_ne!(base & VERSION_1, 0);
        assert_eq!(base & (1 << 34), 0, "packed ring must never be offered");
        let all = device_features(OptionalOffloads {
            ufo: true,
            uso: true,
        });
        assert_eq!(
            all & (GUEST_UFO | HOST_UFO | GUEST_USO4 | GUEST_USO6 | HOST_USO),
            GUEST_UFO | HOST_UFO | GUEST_USO4 | GUEST_USO6 | HOST_USO
        );
    }
}
