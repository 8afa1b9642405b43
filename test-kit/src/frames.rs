//! Frames the net tests and the bench put on the wire: plain Ethernet
//! frames with a local-experimental ethertype (nothing in the kernel
//! answers them) and a recognisable payload, the 12-byte virtio-net header,
//! IPv4/TCP headers, and 64 KiB TCPv4 GSO packets.

/// Destination of every frame (the "guest" MAC).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Source of generated frames (the "host" MAC).
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// IEEE "local experimental" ethertype: nothing in the kernel answers it.
pub const ETHERTYPE: u16 = 0x88b5;
/// virtio-net header length with VERSION_1 / MRG_RXBUF.
pub const VNET_HDR_LEN: usize = 12;
/// TCP segment size of [`gso_packet`] (1500-byte MTU).
pub const GSO_MSS: u16 = 1448;

const ETHERTYPE_IPV4: u16 = 0x0800;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// Ethernet + IPv4 + TCP (20-byte header, no options).
const HDRS: u16 = 14 + 20 + 20;

/// Ethernet header from [`HOST_MAC`] to [`GUEST_MAC`].
pub fn eth_header(ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet frame of `len` bytes (at least 14) with a payload that
/// differs by `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = eth_header(ETHERTYPE);
    f.reserve(len.saturating_sub(f.len()));
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x.to_le_bytes()[0]);
    }
    f
}

/// A 12-byte virtio-net header: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers = 0.
pub fn vnet_hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [hdr_len, gso_size, cs, co, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// Header + plain frame, as a driver puts it in one TX buffer.
pub fn plain_packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vnet_hdr(0, 0, 0, 0, 0, 0);
    p.extend_from_slice(&frame(len, seed));
    p
}

/// A 20-byte IPv4 header (TCP, TTL 64, DF) for a packet of `ip_len` bytes
/// from `src` to `dst`, checksum filled in.
pub fn ipv4_tcp_header(ip_len: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// Header + one TCPv4 GSO frame of `total` bytes (≤ 65535 + 14): a valid
/// Ethernet/IPv4/TCP packet the kernel will segment at [`GSO_MSS`].
pub fn gso_packet(total: usize) -> Vec<u8> {
    let total = total.clamp(usize::from(HDRS) + 1, 65535 + 14);
    let mut p = vnet_hdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        HDRS,
        GSO_MSS,
        14 + 20,
        16,
    );
    let mut f = eth_header(ETHERTYPE_IPV4);
    f.reserve(total - f.len());
    f.extend(ipv4_tcp_header(
        u16::try_from(total - 14).expect("clamped to 65535 above"),
        [10, 0, 0, 2],
        [10, 0, 0, 1],
    ));
    // TCP: ports 40000 -> 5201, seq 1, ack 0, data offset 5, ACK|PSH,
    // window 65535; the checksum field holds the pseudo-header sum
    // (NEEDS_CSUM: the stack completes it).
    let mut tcp = vec![
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let tcp_len = u32::try_from(total - 14 - 20).expect("clamped to 65535 above");
    let pseudo = 0x0a00 + 0x0002 + 0x0a00 + 0x0001 + 6 + tcp_len;
    // pseudo < 0x1_1400, so one fold cannot carry out of 16 bits.
    let folded = u16::try_from((pseudo & 0xffff) + (pseudo >> 16)).expect("one fold suffices");
    tcp[16..18].copy_from_slice(&folded.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(total, 0x5a);
    p.extend_from_slice(&f);
    p
}

/// The Internet checksum of `h`.
pub fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !u16::try_from(s).expect("folded to 16 bits above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_length() {
        assert_eq!(frame(64, 0).len(), 64);
        assert_eq!(plain_packet(1500, 0).len(), 1500 + VNET_HDR_LEN);
        let g = gso_packet(65536);
        assert_eq!(g.len(), VNET_HDR_LEN + 65536);
        assert_eq!(g[1], VIRTIO_NET_HDR_GSO_TCPV4);
    }

    #[test]
    fn ip_header_checksum_verifies() {
        let g = gso_packet(9000);
        let ip = &g[VNET_HDR_LEN + 14..VNET_HDR_LEN + 34];
        assert_eq!(ip_checksum(ip), 0);
    }

    #[test]
    fn seeds_change_the_payload_only() {
        let (a, b) = (frame(100, 1), frame(100, 2));
        assert_eq!(a[..14], b[..14]);
        assert_ne!(a[14..], b[14..]);
    }
}
