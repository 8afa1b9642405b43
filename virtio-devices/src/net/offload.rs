//! Mapping of acked guest receive offloads to TAP `TUNSETOFFLOAD` flags.
//!
//! The TAP's offload flags say which partially-checksummed or GSO frames the
//! *reader* of the TAP (our RX path, i.e. the guest) can take. So only the
//! `GUEST_*` features matter here; what the guest may *send* (`HOST_*`) is
//! checked per frame in [`crate::net::header`].

use super::features::{
    GUEST_CSUM, GUEST_ECN, GUEST_TSO4, GUEST_TSO6, GUEST_UFO, GUEST_USO4, GUEST_USO6,
};

/// `TUN_F_CSUM`: the reader accepts frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the reader accepts TCPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the reader accepts TCPv6 GSO frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: the reader accepts TSO frames with ECN (CWR) set.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUN_F_UFO`: the reader accepts UDP fragmentation offload frames.
pub const TUN_F_UFO: u32 = 0x10;
/// `TUN_F_USO4`: the reader accepts UDPv4 segmentation offload frames.
pub const TUN_F_USO4: u32 = 0x20;
/// `TUN_F_USO6`: the reader accepts UDPv6 segmentation offload frames.
pub const TUN_F_USO6: u32 = 0x40;

/// TAP offload flags for the features a guest acked.
///
/// Every segmentation offload needs the guest to take partial checksums, so
/// without `GUEST_CSUM` the result is 0 whatever else was acked; ECN only
/// means something on top of TSO.
pub fn tap_offload_flags(acked: u64) -> u32 {
    if acked & GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if acked & GUEST_TSO4 != 0 {
        flags |= TUN_F_TSO4;
    }
    if acked & GUEST_TSO6 != 0 {
        flags |= TUN_F_TSO6;
    }
    if acked & GUEST_ECN != 0 && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        flags |= TUN_F_TSO_ECN;
    }
    if acked & GUEST_UFO != 0 {
        flags |= TUN_F_UFO;
    }
    if acked & GUEST_USO4 != 0 {
        flags |= TUN_F_USO4;
    }
    if acked & GUEST_USO6 != 0 {
        flags |= TUN_F_USO6;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::super::features::{CSUM, HOST_TSO4, HOST_TSO6, MRG_RXBUF, VERSION_1};
    use super::*;

    #[test]
    fn nothing_without_guest_csum() {
        assert_eq!(tap_offload_flags(0), 0);
        assert_eq!(
            tap_offload_flags(GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_UFO),
            0
        );
    }

    #[test]
    fn host_features_do_not_touch_tap_offloads() {
        assert_eq!(
            tap_offload_flags(CSUM | HOST_TSO4 | HOST_TSO6 | VERSION_1 | MRG_RXBUF),
            0
        );
    }

    #[test]
    fn each_guest_feature_maps_to_its_flag() {
        assert_eq!(tap_offload_flags(GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offload_flags(GUEST_CSUM | GUEST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4
        );
        assert_eq!(
            tap_offload_flags(GUEST_CSUM | GUEST_TSO6),
            TUN_F_CSUM | TUN_F_TSO6
        );
        assert_eq!(
            tap_offload_flags(GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offload_flags(GUEST_CSUM | GUEST_UFO),
            TUN_F_CSUM | TUN_F_UFO
        );
        assert_eq!(
            tap_offload_flags(GUEST_CSUM | GUEST_USO4 | GUEST_USO6),
            TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6
        );
    }

    #[test]
    fn ecn_alone_is_meaningless() {
        assert_eq!(tap_offload_flags(GUEST_CSUM | GUEST_ECN), TUN_F_CSUM);
    }
}
