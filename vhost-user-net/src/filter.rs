//! A vhost-user message relay between the frontend and vhost-user-backend,
//! for one quirk: QEMU sends `SET_VRING_ENABLE` while realizing/resetting
//! the device, before `SET_FEATURES`, and vhost-user-backend 0.24 answers
//! that with `InactiveFeature(PROTOCOL_FEATURES)` and drops the connection.
//!
//! The relay swallows such early enables (acking them if asked: rings start
//! disabled anyway) and replays the last early *enable=1* per ring right
//! after `SET_FEATURES`. Only ring indices the device has are kept (so at
//! most one entry per queue); an early enable for any other index is
//! refused (a failure ack if asked, dropped otherwise), as the backend
//! would refuse it after `SET_FEATURES`.
//!
//! It also implements the NET_MTU protocol feature, which vhost 0.18 cannot
//! parse: it adds the feature to the backend's GET_PROTOCOL_FEATURES reply,
//! strips it from SET_PROTOCOL_FEATURES on the way in, and answers
//! `VHOST_USER_NET_SET_MTU` itself: valid (0) when the frontend's MTU is at
//! most the TAP's (`--mtu`), invalid (1) otherwise, so a frontend whose
//! `host_mtu` the TAP cannot carry fails at start-up instead of dropping
//! frames. Everything else, fds included, passes unchanged (the framing is
//! [`vhost_user_daemon::relay`]'s).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use log::{debug, info, warn};
use vhost_user_daemon::relay::{
    self, Filter, Msg, REQ_RESET_DEVICE, REQ_RESET_OWNER, REQ_SET_FEATURES,
    REQ_SET_PROTOCOL_FEATURES, REQ_SET_VRING_ENABLE, Routed,
};
#[cfg(test)]
use vhost_user_daemon::relay::{
    FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, HDR_LEN, MAX_PAYLOAD, REQ_GET_PROTOCOL_FEATURES,
};

const REQ_NET_SET_MTU: u32 = 20;
/// VHOST_USER_PROTOCOL_F_NET_MTU.
const PROTOCOL_F_NET_MTU: u64 = 1 << 4;
/// Smallest MTU a frontend may ask for (IPv4's minimum).
const MIN_MTU: u64 = 68;

/// The net daemon's message policy (see the module docs).
#[derive(Debug)]
pub struct NetFilter {
    tap_mtu: u16,
    /// The device's vring count: early enables are kept for these only.
    num_queues: u32,
    features_set: bool,
    mtu_negotiated: bool,
    early_enables: BTreeMap<u32, u32>,
}

fn enable_msg(index: u32, enable: u32) -> Msg {
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend_from_slice(&enable.to_le_bytes());
    Msg::new(
        REQ_SET_VRING_ENABLE,
        relay::FLAG_VERSION,
        payload,
        Vec::new(),
    )
}

impl Filter for NetFilter {
    fn on_frontend(&mut self, m: Msg, out: &mut Vec<Routed>) {
        match m.request() {
            REQ_SET_VRING_ENABLE if !self.features_set && m.payload.len() >= 8 => {
                let p = &m.payload;
                let index = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let enable = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
                let known = index < self.num_queues;
                if known {
                    debug!(
                        "event=early_vring_enable index={index} enable={enable} action=deferred"
                    );
                    self.early_enables.insert(index, enable);
                } else {
                    warn!(
                        "event=early_vring_enable index={index} num_queues={} action=refused",
                        self.num_queues
                    );
                }
                if m.needs_reply() {
                    out.push(Routed::ToFrontend(Msg::reply_u64(
                        REQ_SET_VRING_ENABLE,
                        u64::from(!known),
                    )));
                }
                return;
            }
            REQ_SET_FEATURES => {
                out.push(Routed::ToBackend(m));
                self.features_set = true;
                for (index, enable) in std::mem::take(&mut self.early_enables) {
                    if enable != 0 {
                        out.push(Routed::ToBackend(enable_msg(index, enable)));
                    }
                }
                return;
            }
            REQ_SET_PROTOCOL_FEATURES => {
                if let Some(features) = m.payload_u64() {
                    self.mtu_negotiated = features & PROTOCOL_F_NET_MTU != 0;
                    out.push(Routed::ToBackend(
                        m.with_payload_u64(features & !PROTOCOL_F_NET_MTU),
                    ));
                    return;
                }
            }
            REQ_NET_SET_MTU if self.mtu_negotiated => {
                let mtu = m.payload_u64().unwrap_or(0);
                let tap_mtu = self.tap_mtu;
                let valid = (MIN_MTU..=u64::from(tap_mtu)).contains(&mtu);
                if valid {
                    info!("event=set_mtu mtu={mtu} tap_mtu={tap_mtu} result=ok");
                } else {
                    warn!("event=set_mtu mtu={mtu} tap_mtu={tap_mtu} result=refused");
                }
                if m.needs_reply() {
                    out.push(Routed::ToFrontend(Msg::reply_u64(
                        REQ_NET_SET_MTU,
                        u64::from(!valid),
                    )));
                }
                return;
            }
            REQ_RESET_OWNER | REQ_RESET_DEVICE => self.features_set = false,
            _ => {}
        }
        out.push(Routed::ToBackend(m));
    }

    fn to_frontend(&self, m: Msg) -> Msg {
        match (m.request(), m.payload_u64()) {
            (relay::REQ_GET_PROTOCOL_FEATURES, Some(features)) => {
                m.with_payload_u64(features | PROTOCOL_F_NET_MTU)
            }
            _ => m,
        }
    }
}

/// Relays between `front` (the frontend) and `back` (the daemon's end)
/// until either side closes; then shuts both down. `tap_mtu` is the largest
/// MTU a frontend may set with `VHOST_USER_NET_SET_MTU`; `num_queues` the
/// device's vring count.
impl NetFilter {
    /// A filter for a device of `num_queues` rings whose TAP carries
    /// `tap_mtu`.
    pub fn new(tap_mtu: u16, num_queues: u32) -> Self {
        NetFilter {
            tap_mtu,
            num_queues,
            features_set: false,
            mtu_negotiated: false,
            early_enables: BTreeMap::new(),
        }
    }
}

/// Starts a relay between `front` and `back` with a [`NetFilter`].
pub fn spawn_relay(
    front: UnixStream,
    back: UnixStream,
    tap_mtu: u16,
    num_queues: u32,
) -> io::Result<Vec<JoinHandle<()>>> {
    relay::spawn_relay(front, back, NetFilter::new(tap_mtu, num_queues))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    fn raw(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&request.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn enable_payload(index: u32, enable: u32) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&enable.to_le_bytes());
        p
    }

    fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn early_enable_is_acked_deferred_and_replayed_after_set_features() {
        let (mut fe, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut be) = UnixStream::pair().unwrap();
        be.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        fe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let threads = spawn_relay(relay_front, relay_back, 1500, 4).unwrap();

        // Early enables: ring 0 on (with NEED_REPLY), ring 2 off.
        fe.write_all(&raw(
            REQ_SET_VRING_ENABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            &enable_payload(0, 1),
        ))
        .unwrap();
        let reply = read_exactly(&mut fe, HDR_LEN + 8);
        assert_eq!(
            reply,
            raw(
                REQ_SET_VRING_ENABLE,
                FLAG_VERSION | FLAG_REPLY,
                &0u64.to_le_bytes()
            )
        );
        fe.write_all(&raw(
            REQ_SET_VRING_ENABLE,
            FLAG_VERSION,
            &enable_payload(2, 0),
        ))
        .unwrap();

        // SET_FEATURES passes, then the deferred enable=1 (only) follows.
        let features = raw(REQ_SET_FEATURES, FLAG_VERSION, &(1u64 << 30).to_le_bytes());
        fe.write_all(&features).unwrap();
        assert_eq!(read_exactly(&mut be, features.len()), features);
        assert_eq!(
            read_exactly(&mut be, HDR_LEN + 8),
            raw(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable_payload(0, 1))
        );

        // Later enables and replies pass unchanged.
        let late = raw(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable_payload(2, 1));
        fe.write_all(&late).unwrap();
        assert_eq!(read_exactly(&mut be, late.len()), late);
        let answer = raw(1, FLAG_VERSION | FLAG_REPLY, &7u64.to_le_bytes());
        be.write_all(&answer).unwrap();
        assert_eq!(read_exactly(&mut fe, answer.len()), answer);

        // Hang-up on one side ends the relay and closes the other.
        drop(fe);
        let mut rest = Vec::new();
        assert_eq!(be.read_to_end(&mut rest).unwrap(), 0);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn early_enables_are_kept_for_existing_rings_only() {
        let mut f = NetFilter {
            tap_mtu: 1500,
            num_queues: 4,
            features_set: false,
            mtu_negotiated: false,
            early_enables: BTreeMap::new(),
        };
        let mut out = Vec::new();
        for index in (0..100_000u32).chain([u32::MAX]) {
            let m = Msg::new(
                REQ_SET_VRING_ENABLE,
                FLAG_VERSION | FLAG_NEED_REPLY,
                enable_payload(index, 1),
                Vec::new(),
            );
            f.on_frontend(m, &mut out);
            let Some(Routed::ToFrontend(reply)) = out.pop() else {
                panic!("index {index}: no reply");
            };
            assert!(out.is_empty(), "index {index}: nothing reaches the backend");
            let nack = reply.payload_u64();
            assert_eq!(nack, Some(u64::from(index >= 4)), "index {index}");
        }
        assert_eq!(f.early_enables.len(), 4, "one entry per ring at most");
        // SET_FEATURES replays the four rings only.
        let m = Msg::new(
            REQ_SET_FEATURES,
            FLAG_VERSION,
            (1u64 << 30).to_le_bytes().to_vec(),
            Vec::new(),
        );
        f.on_frontend(m, &mut out);
        assert_eq!(out.len(), 1 + 4);
    }

    #[test]
    fn oversized_message_closes_the_connection() {
        let (mut fe, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut be) = UnixStream::pair().unwrap();
        be.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let threads = spawn_relay(relay_front, relay_back, 1500, 4).unwrap();
        let mut hdr = raw(REQ_SET_FEATURES, FLAG_VERSION, &[]);
        hdr[8..12].copy_from_slice(&(u32::try_from(MAX_PAYLOAD).unwrap() + 1).to_le_bytes());
        fe.write_all(&hdr).unwrap();
        let mut rest = Vec::new();
        assert_eq!(be.read_to_end(&mut rest).unwrap(), 0, "nothing forwarded");
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn net_mtu_is_offered_stripped_and_answered_by_the_relay() {
        let (mut fe, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut be) = UnixStream::pair().unwrap();
        be.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        fe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let threads = spawn_relay(relay_front, relay_back, 9000, 2).unwrap();

        // The backend's protocol features gain NET_MTU on the way out.
        let offered = 0x0000_0000_0000_8223u64;
        be.write_all(&raw(
            REQ_GET_PROTOCOL_FEATURES,
            FLAG_VERSION | FLAG_REPLY,
            &offered.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(
            read_exactly(&mut fe, HDR_LEN + 8),
            raw(
                REQ_GET_PROTOCOL_FEATURES,
                FLAG_VERSION | FLAG_REPLY,
                &(offered | PROTOCOL_F_NET_MTU).to_le_bytes()
            )
        );
        // ...and lose it on the way in: the backend never sees what it
        // did not offer.
        let acked = 0x23 | PROTOCOL_F_NET_MTU;
        fe.write_all(&raw(
            REQ_SET_PROTOCOL_FEATURES,
            FLAG_VERSION,
            &acked.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(
            read_exactly(&mut be, HDR_LEN + 8),
            raw(
                REQ_SET_PROTOCOL_FEATURES,
                FLAG_VERSION,
                &0x23u64.to_le_bytes()
            )
        );
        // SET_MTU: valid up to the TAP's MTU, refused above it or below 68.
        for (mtu, want) in [(9000u64, 0u64), (1500, 0), (9001, 1), (67, 1)] {
            fe.write_all(&raw(
                REQ_NET_SET_MTU,
                FLAG_VERSION | FLAG_NEED_REPLY,
                &mtu.to_le_bytes(),
            ))
            .unwrap();
            assert_eq!(
                read_exactly(&mut fe, HDR_LEN + 8),
                raw(
                    REQ_NET_SET_MTU,
                    FLAG_VERSION | FLAG_REPLY,
                    &want.to_le_bytes()
                ),
                "mtu {mtu}"
            );
        }
        // Nothing of it reached the backend: the next message it sees is this.
        let features = raw(REQ_SET_FEATURES, FLAG_VERSION, &(1u64 << 32).to_le_bytes());
        fe.write_all(&features).unwrap();
        assert_eq!(read_exactly(&mut be, features.len()), features);
        drop(fe);
        for t in threads {
            t.join().unwrap();
        }
    }
}
