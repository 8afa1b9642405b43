//! A vhost-user message relay between the frontend and vhost-user-backend,
//! for one quirk: QEMU sends `SET_VRING_ENABLE` while realizing/resetting
//! the device, before `SET_FEATURES`, and vhost-user-backend 0.24 answers
//! that with `InactiveFeature(PROTOCOL_FEATURES)` and drops the connection.
//!
//! The relay swallows such early enables (acking them if asked: rings start
//! disabled anyway) and replays the last early *enable=1* per ring right
//! after `SET_FEATURES`.
//!
//! It also implements the NET_MTU protocol feature, which vhost 0.18 cannot
//! parse: it adds the feature to the backend's GET_PROTOCOL_FEATURES reply,
//! strips it from SET_PROTOCOL_FEATURES on the way in, and answers
//! `VHOST_USER_NET_SET_MTU` itself: valid (0) when the frontend's MTU is at
//! most the TAP's (`--mtu`), invalid (1) otherwise, so a frontend whose
//! `host_mtu` the TAP cannot carry fails at start-up instead of dropping
//! frames. Everything else, fds included, passes unchanged.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, info, warn};
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR_LEN: usize = 12;
/// Largest payload accepted (vhost-user messages are far smaller).
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;

const REQ_SET_FEATURES: u32 = 2;
const REQ_GET_PROTOCOL_FEATURES: u32 = 15;
const REQ_SET_PROTOCOL_FEATURES: u32 = 16;
const REQ_NET_SET_MTU: u32 = 20;
/// VHOST_USER_PROTOCOL_F_NET_MTU.
const PROTOCOL_F_NET_MTU: u64 = 1 << 4;
/// Smallest MTU a frontend may ask for (IPv4's minimum).
const MIN_MTU: u64 = 68;
const REQ_RESET_OWNER: u32 = 4;
const REQ_SET_VRING_ENABLE: u32 = 18;
const REQ_RESET_DEVICE: u32 = 34;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// A relay failure (ends the connection).
#[derive(Debug, Error)]
pub enum FilterError {
    #[error("socket")]
    Io(#[from] io::Error),
    #[error("message payload of {0} bytes")]
    TooBig(usize),
}

/// One vhost-user message with its fds.
struct Msg {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }
    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }
}

fn read_msg(s: &UnixStream, with_fds: bool) -> Result<Option<Msg>, FilterError> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = Vec::new();
    let mut got = 0usize;
    if with_fds {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: HDR_LEN,
        }];
        // SAFETY: the iovec points at `hdr`, alive and writable for the call.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        fds = raw[..nfds]
            .iter()
            // SAFETY: recvmsg just installed these fds for us; we own them.
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Ok(None);
        }
        got = n;
    }
    let mut reader = s;
    if got == 0 {
        match reader.read(&mut hdr) {
            Ok(0) => return Ok(None),
            Ok(n) => got = n,
            Err(e) => return Err(e.into()),
        }
    }
    reader.read_exact(&mut hdr[got..])?;
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(FilterError::TooBig(size));
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

fn write_msg(s: &UnixStream, m: &Msg) -> Result<(), FilterError> {
    let mut buf = Vec::with_capacity(HDR_LEN + m.payload.len());
    buf.extend_from_slice(&m.hdr);
    buf.extend_from_slice(&m.payload);
    if m.fds.is_empty() {
        let mut w = s;
        w.write_all(&buf)?;
        return Ok(());
    }
    let raw: Vec<RawFd> = m.fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let n = s
        .send_with_fds(&[&buf[..]], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let mut w = s;
    w.write_all(&buf[n..])?;
    Ok(())
}

fn ack(request: u32) -> Msg {
    reply_u64(request, 0)
}

fn reply_u64(request: u32, value: u64) -> Msg {
    let mut hdr = [0u8; HDR_LEN];
    hdr[0..4].copy_from_slice(&request.to_le_bytes());
    hdr[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
    Msg {
        hdr,
        payload: value.to_le_bytes().to_vec(),
        fds: Vec::new(),
    }
}

fn payload_u64(m: &Msg) -> Option<u64> {
    let b: [u8; 8] = m.payload.get(..8)?.try_into().ok()?;
    (m.payload.len() == 8).then_some(u64::from_le_bytes(b))
}

fn with_payload_u64(m: Msg, value: u64) -> Msg {
    Msg {
        payload: value.to_le_bytes().to_vec(),
        ..m
    }
}

fn enable_msg(index: u32, enable: u32) -> Msg {
    let mut hdr = [0u8; HDR_LEN];
    hdr[0..4].copy_from_slice(&REQ_SET_VRING_ENABLE.to_le_bytes());
    hdr[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
    hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend_from_slice(&enable.to_le_bytes());
    Msg {
        hdr,
        payload,
        fds: Vec::new(),
    }
}

/// Frontend → backend direction, where the filtering happens.
fn frontend_to_backend(
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<()>,
    tap_mtu: u16,
) -> Result<(), FilterError> {
    let mut features_set = false;
    let mut mtu_negotiated = false;
    let mut early_enables: BTreeMap<u32, u32> = BTreeMap::new();
    while let Some(m) = read_msg(front, true)? {
        match m.request() {
            REQ_SET_VRING_ENABLE if !features_set && m.payload.len() >= 8 => {
                let index =
                    u32::from_le_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                let enable =
                    u32::from_le_bytes([m.payload[4], m.payload[5], m.payload[6], m.payload[7]]);
                debug!("event=early_vring_enable index={index} enable={enable} action=deferred");
                early_enables.insert(index, enable);
                if m.flags() & FLAG_NEED_REPLY != 0 {
                    let _guard = front_writer.lock();
                    write_msg(front, &ack(REQ_SET_VRING_ENABLE))?;
                }
                continue;
            }
            REQ_SET_FEATURES => {
                write_msg(back, &m)?;
                features_set = true;
                for (index, enable) in std::mem::take(&mut early_enables) {
                    if enable != 0 {
                        write_msg(back, &enable_msg(index, enable))?;
                    }
                }
                continue;
            }
            REQ_SET_PROTOCOL_FEATURES => {
                if let Some(features) = payload_u64(&m) {
                    mtu_negotiated = features & PROTOCOL_F_NET_MTU != 0;
                    write_msg(back, &with_payload_u64(m, features & !PROTOCOL_F_NET_MTU))?;
                    continue;
                }
            }
            REQ_NET_SET_MTU if mtu_negotiated => {
                let mtu = payload_u64(&m).unwrap_or(0);
                let valid = (MIN_MTU..=u64::from(tap_mtu)).contains(&mtu);
                if valid {
                    info!("event=set_mtu mtu={mtu} tap_mtu={tap_mtu} result=ok");
                } else {
                    warn!("event=set_mtu mtu={mtu} tap_mtu={tap_mtu} result=refused");
                }
                if m.flags() & FLAG_NEED_REPLY != 0 {
                    let _guard = front_writer.lock();
                    write_msg(front, &reply_u64(REQ_NET_SET_MTU, u64::from(!valid)))?;
                }
                continue;
            }
            REQ_RESET_OWNER | REQ_RESET_DEVICE => features_set = false,
            _ => {}
        }
        write_msg(back, &m)?;
    }
    Ok(())
}

/// Backend → frontend direction: whole replies, so the relay's own acks
/// never land inside one.
fn backend_to_frontend(
    back: &UnixStream,
    front: &UnixStream,
    front_writer: &Mutex<()>,
) -> Result<(), FilterError> {
    while let Some(mut m) = read_msg(back, false)? {
        if m.request() == REQ_GET_PROTOCOL_FEATURES
            && let Some(features) = payload_u64(&m)
        {
            m = with_payload_u64(m, features | PROTOCOL_F_NET_MTU);
        }
        let _guard = front_writer.lock();
        write_msg(front, &m)?;
    }
    Ok(())
}

/// Relays between `front` (the frontend) and `back` (the daemon's end)
/// until either side closes; then shuts both down. `tap_mtu` is the largest
/// MTU a frontend may set with `VHOST_USER_NET_SET_MTU`.
pub fn spawn_relay(
    front: UnixStream,
    back: UnixStream,
    tap_mtu: u16,
) -> io::Result<Vec<JoinHandle<()>>> {
    let front = Arc::new(front);
    let back = Arc::new(back);
    let lock = Arc::new(Mutex::new(()));
    let (f1, b1, l1) = (front.clone(), back.clone(), lock.clone());
    let down = |a: &UnixStream, b: &UnixStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let t1 = std::thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || {
            if let Err(e) = frontend_to_backend(&f1, &b1, &l1, tap_mtu) {
                debug!("event=relay_end dir=frontend_to_backend err={e}");
            }
            down(&f1, &b1);
        })?;
    let t2 = std::thread::Builder::new()
        .name("vu-relay-out".into())
        .spawn(move || {
            if let Err(e) = backend_to_frontend(&back, &front, &lock) {
                debug!("event=relay_end dir=backend_to_frontend err={e}");
            }
            down(&back, &front);
        })?;
    Ok(vec![t1, t2])
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    fn raw(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&request.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
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
        let threads = spawn_relay(relay_front, relay_back, 1500).unwrap();

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
    fn oversized_message_closes_the_connection() {
        let (mut fe, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut be) = UnixStream::pair().unwrap();
        be.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let threads = spawn_relay(relay_front, relay_back, 1500).unwrap();
        let mut hdr = raw(REQ_SET_FEATURES, FLAG_VERSION, &[]);
        hdr[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
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
        let threads = spawn_relay(relay_front, relay_back, 9000).unwrap();

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
