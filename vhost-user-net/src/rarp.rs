//! The announcement a migrated guest's NIC makes (`VHOST_USER_SEND_RARP`):
//! QEMU asks the backend, after the switch-over, to tell the switches and
//! bridges on the way that the guest's MAC now lives behind this TAP. The
//! frame is the one QEMU's own announce sends (`announce_self_create`): a
//! broadcast RARP reverse request from and about the guest's MAC, padded
//! to the 60-byte Ethernet minimum.

use std::io;
use std::sync::Arc;

use log::{debug, info};

use crate::tap::TapQueue;

/// Bytes of the announcement (Ethernet minimum without FCS).
pub const FRAME_LEN: usize = 60;
/// `ETH_P_RARP`.
const ETHERTYPE_RARP: u16 = 0x8035;
/// ARP hardware type Ethernet, protocol type IPv4.
const HTYPE_ETH: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;
/// `ARPOP_RREQUEST`: reverse request.
const OP_REVERSE_REQUEST: u16 = 3;

/// The RARP announcement of `mac`.
pub fn frame(mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&HTYPE_ETH.to_be_bytes());
    f[16..18].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&OP_REVERSE_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address
    // 28..32: sender protocol address 0.0.0.0
    f[32..38].copy_from_slice(&mac); // target hardware address
    // 38..42: target protocol address 0.0.0.0; 42..60: padding
    f
}

/// The guest MAC in a SEND_RARP payload: a u64 whose first 6 bytes are it.
pub fn mac_of(payload: &[u8]) -> Option<[u8; 6]> {
    if payload.len() != 8 {
        return None;
    }
    payload.get(..6)?.try_into().ok()
}

/// Writes the announcement of `mac` into the TAP once, through the first
/// queue that takes it (a multi-queue TAP's detached queues refuse
/// writes), behind a zeroed virtio-net header of the length that queue
/// is set to.
pub fn announce(taps: &[Arc<TapQueue>], mac: [u8; 6]) -> io::Result<()> {
    let body = frame(mac);
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no tap queue");
    for (i, tap) in taps.iter().enumerate() {
        let sent = tap.vnet_hdr_len().and_then(|hdr_len| {
            let mut bytes = vec![0u8; hdr_len];
            bytes.extend_from_slice(&body);
            tap.write_frame(&bytes)
        });
        match sent {
            Ok(()) => {
                info!("event=rarp_sent tap={} queue={i}", tap.name());
                return Ok(());
            }
            Err(e) => {
                debug!("event=rarp_queue_failed queue={i} err={e}");
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_qemus_announcement() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let f = frame(mac);
        let mut want = vec![0xff; 6];
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3]);
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[0; 4]);
        want.resize(60, 0);
        assert_eq!(f.as_slice(), want.as_slice());
    }

    #[test]
    fn the_mac_is_the_payloads_first_six_bytes() {
        let p = 0x0000_5634_1200_5452u64.to_le_bytes();
        assert_eq!(mac_of(&p), Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(mac_of(&p[..6]), None);
        assert_eq!(mac_of(&[0; 16]), None);
    }
}
