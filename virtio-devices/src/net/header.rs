//! The virtio-net header (`struct virtio_net_hdr[_v1]`): parsing from guest
//! bytes and validation of a transmitted frame's header against the features
//! the driver acked.
//!
//! The TX path validates a private copy of the header and hands that copy to
//! the TAP, so the guest cannot change a header after it was checked.

use thiserror::Error;
use virtio_bindings::bindings::virtio_net as vn;

use crate::narrow::u8_of;

use super::features::{
    CSUM, HDR_LEN_LEGACY, HDR_LEN_V1, HOST_ECN, HOST_TSO4, HOST_TSO6, HOST_UFO, HOST_USO,
};

/// `flags`: the frame carries a partial checksum to complete.
pub const F_NEEDS_CSUM: u8 = u8_of(vn::VIRTIO_NET_HDR_F_NEEDS_CSUM);
/// `flags`: the checksum was already validated (receive side only).
pub const F_DATA_VALID: u8 = u8_of(vn::VIRTIO_NET_HDR_F_DATA_VALID);
/// `flags`: coalescing info (receive side, RSC_EXT only).
pub const F_RSC_INFO: u8 = u8_of(vn::VIRTIO_NET_HDR_F_RSC_INFO);
pub const GSO_NONE: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_NONE);
pub const GSO_TCPV4: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_TCPV4);
pub const GSO_UDP: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_UDP);
pub const GSO_TCPV6: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_TCPV6);
pub const GSO_UDP_L4: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_UDP_L4);
pub const GSO_ECN: u8 = u8_of(vn::VIRTIO_NET_HDR_GSO_ECN);

/// Largest frame (without the virtio-net header) a guest may transmit:
/// a 64 KiB GSO super-frame. Anything longer is dropped and counted.
pub const MAX_TX_FRAME: usize = 64 * 1024;

/// Shortest frame (without the header) worth sending: an Ethernet header.
pub const MIN_TX_FRAME: usize = 14;

/// Offset of `num_buffers` inside the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a guest-supplied header or frame is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error(
        "frame of {len} bytes is shorter than the {hdr_len}-byte header plus an ethernet header"
    )]
    Short { len: usize, hdr_len: usize },
    #[error("frame of {len} bytes exceeds the 64 KiB limit")]
    TooLong { len: usize },
    #[error("unknown header flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("checksum offload requested but not negotiated")]
    CsumNotNegotiated,
    #[error("unknown gso type {0:#04x}")]
    UnknownGsoType(u8),
    #[error("gso type {0:#04x} not negotiated")]
    GsoNotNegotiated(u8),
    #[error("gso with zero segment size")]
    GsoSizeZero,
    #[error("gso without a partial checksum")]
    GsoWithoutCsum,
    #[error("checksum at {start}+{offset} lies outside a {len}-byte frame")]
    CsumOutOfFrame { start: u16, offset: u16, len: usize },
}

/// A decoded virtio-net header (little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Only present in the 12-byte layout; 0 when parsed from 10 bytes.
    pub num_buffers: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl VirtioNetHdr {
    /// Parses a header of `hdr_len` (10 or 12) bytes from the front of `bytes`.
    pub fn parse(bytes: &[u8], hdr_len: usize) -> Result<Self, HeaderError> {
        if bytes.len() < hdr_len || hdr_len < HDR_LEN_LEGACY {
            return Err(HeaderError::Short {
                len: bytes.len(),
                hdr_len,
            });
        }
        Ok(Self {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(bytes, 2),
            gso_size: le16(bytes, 4),
            csum_start: le16(bytes, 6),
            csum_offset: le16(bytes, 8),
            num_buffers: if hdr_len >= HDR_LEN_V1 {
                le16(bytes, NUM_BUFFERS_OFFSET)
            } else {
                0
            },
        })
    }

    /// Serializes into the 12-byte layout; callers use the first `hdr_len`.
    pub fn to_bytes(self) -> [u8; HDR_LEN_V1] {
        let mut b = [0u8; HDR_LEN_V1];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Validates the header of a transmitted frame and returns the copy that
    /// may be passed to the TAP.
    ///
    /// `frame_len` is the length of the Ethernet frame after the header.
    /// Offloads the driver did not negotiate are refused (the frame is to be
    /// dropped); receive-only flags are cleared, `num_buffers` is zeroed.
    pub fn validate_tx(&self, acked: u64, frame_len: usize) -> Result<Self, HeaderError> {
        let mut out = *self;
        out.num_buffers = 0;
        // DATA_VALID / RSC_INFO mean nothing on transmit: drop them rather
        // than let a guest vouch for checksums the host never verified.
        out.flags &= !(F_DATA_VALID | F_RSC_INFO);
        if out.flags & !F_NEEDS_CSUM != 0 {
            return Err(HeaderError::UnknownFlags(self.flags));
        }
        if out.flags & F_NEEDS_CSUM != 0 {
            if acked & CSUM == 0 {
                return Err(HeaderError::CsumNotNegotiated);
            }
            let end = usize::from(out.csum_start) + usize::from(out.csum_offset) + 2;
            if end > frame_len {
                return Err(HeaderError::CsumOutOfFrame {
                    start: out.csum_start,
                    offset: out.csum_offset,
                    len: frame_len,
                });
            }
        }
        let gso = out.gso_type & !GSO_ECN;
        let needed = match gso {
            GSO_NONE => {
                if out.gso_type & GSO_ECN != 0 {
                    return Err(HeaderError::UnknownGsoType(out.gso_type));
                }
                return Ok(out);
            }
            GSO_TCPV4 => HOST_TSO4,
            GSO_TCPV6 => HOST_TSO6,
            GSO_UDP => HOST_UFO,
            GSO_UDP_L4 => HOST_USO,
            other => return Err(HeaderError::UnknownGsoType(other)),
        };
        if acked & needed == 0 {
            return Err(HeaderError::GsoNotNegotiated(out.gso_type));
        }
        if out.gso_type & GSO_ECN != 0 && acked & HOST_ECN == 0 {
            return Err(HeaderError::GsoNotNegotiated(out.gso_type));
        }
        if out.gso_size == 0 {
            return Err(HeaderError::GsoSizeZero);
        }
        if gso != GSO_UDP && out.flags & F_NEEDS_CSUM == 0 {
            return Err(HeaderError::GsoWithoutCsum);
        }
        Ok(out)
    }
}

/// Checks a transmitted chain's total length (header included).
pub fn check_tx_len(total: usize, hdr_len: usize) -> Result<usize, HeaderError> {
    if total < hdr_len + MIN_TX_FRAME {
        return Err(HeaderError::Short {
            len: total,
            hdr_len,
        });
    }
    let frame = total - hdr_len;
    if frame > MAX_TX_FRAME {
        return Err(HeaderError::TooLong { len: frame });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN | HOST_UFO | HOST_USO;

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, off: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags,
            gso_type,
            hdr_len: 54,
            gso_size,
            csum_start: start,
            csum_offset: off,
            num_buffers: 0,
        }
    }

    #[test]
    fn parse_round_trip_v1_and_legacy() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: GSO_TCPV4,
            hdr_len: 0x1234,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(VirtioNetHdr::parse(&b, 12), Ok(h));
        let legacy = VirtioNetHdr::parse(&b, 10).unwrap();
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.gso_size, 1448);
        assert_eq!(&b[2..4], &[0x34, 0x12], "little endian");
    }

    #[test]
    fn parse_rejects_short_input() {
        assert!(matches!(
            VirtioNetHdr::parse(&[0u8; 11], 12),
            Err(HeaderError::Short { len: 11, .. })
        ));
        assert!(VirtioNetHdr::parse(&[0u8; 9], 10).is_err());
        assert!(VirtioNetHdr::parse(&[0u8; 12], 4).is_err());
    }

    #[test]
    fn plain_frame_passes_without_any_feature() {
        let h = hdr(0, GSO_NONE, 0, 0, 0);
        assert_eq!(h.validate_tx(0, 60), Ok(h));
    }

    #[test]
    fn num_buffers_and_rx_only_flags_are_cleared() {
        let mut h = hdr(F_NEEDS_CSUM | F_DATA_VALID, GSO_NONE, 0, 14, 16);
        h.num_buffers = 7;
        let out = h.validate_tx(CSUM, 100).unwrap();
        assert_eq!(out.num_buffers, 0);
        assert_eq!(out.flags, F_NEEDS_CSUM);
    }

    #[test]
    fn unknown_flags_refused() {
        assert_eq!(
            hdr(0x80, GSO_NONE, 0, 0, 0).validate_tx(ALL, 60),
            Err(HeaderError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn csum_needs_negotiation_and_must_lie_inside_frame() {
        let h = hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 16);
        assert_eq!(h.validate_tx(0, 100), Err(HeaderError::CsumNotNegotiated));
        assert!(h.validate_tx(CSUM, 52).is_ok());
        assert!(matches!(
            h.validate_tx(CSUM, 51),
            Err(HeaderError::CsumOutOfFrame { .. })
        ));
        // u16::MAX + u16::MAX must not overflow.
        let h = hdr(F_NEEDS_CSUM, GSO_NONE, 0, u16::MAX, u16::MAX);
        assert!(h.validate_tx(CSUM, 100).is_err());
    }

    #[test]
    fn gso_types_need_their_host_feature() {
        let cases = [
            (GSO_TCPV4, HOST_TSO4),
            (GSO_TCPV6, HOST_TSO6),
            (GSO_UDP, HOST_UFO),
            (GSO_UDP_L4, HOST_USO),
        ];
        for (gso, feat) in cases {
            let h = hdr(F_NEEDS_CSUM, gso, 1448, 34, 16);
            assert_eq!(
                h.validate_tx(CSUM, 9000),
                Err(HeaderError::GsoNotNegotiated(gso)),
                "gso {gso}"
            );
            assert!(h.validate_tx(CSUM | feat, 9000).is_ok(), "gso {gso}");
        }
    }

    #[test]
    fn ecn_needs_host_ecn() {
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1448, 34, 16);
        assert!(h.validate_tx(CSUM | HOST_TSO4, 9000).is_err());
        assert!(h.validate_tx(CSUM | HOST_TSO4 | HOST_ECN, 9000).is_ok());
        let bare_ecn = hdr(0, GSO_ECN, 0, 0, 0);
        assert!(bare_ecn.validate_tx(ALL, 60).is_err());
    }

    #[test]
    fn bad_gso_fields_refused() {
        assert_eq!(
            hdr(F_NEEDS_CSUM, 2, 1448, 34, 16).validate_tx(ALL, 9000),
            Err(HeaderError::UnknownGsoType(2))
        );
        assert_eq!(
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16).validate_tx(ALL, 9000),
            Err(HeaderError::GsoSizeZero)
        );
        assert_eq!(
            hdr(0, GSO_TCPV4, 1448, 0, 0).validate_tx(ALL, 9000),
            Err(HeaderError::GsoWithoutCsum)
        );
    }

    #[test]
    fn tx_length_bounds() {
        assert!(matches!(
            check_tx_len(11, 12),
            Err(HeaderError::Short { .. })
        ));
        assert!(check_tx_len(12, 12).is_err(), "empty frame");
        assert!(check_tx_len(25, 12).is_err(), "runt ethernet header");
        assert_eq!(check_tx_len(26, 12), Ok(14));
        assert_eq!(check_tx_len(12 + MAX_TX_FRAME, 12), Ok(MAX_TX_FRAME));
        assert_eq!(
            check_tx_len(13 + MAX_TX_FRAME, 12),
            Err(HeaderError::TooLong {
                len: MAX_TX_FRAME + 1
            })
        );
    }
}
