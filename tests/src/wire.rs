//! The host end of test host B's igb wire: QEMU's `-netdev dgram` sends
//! every frame the NIC transmits as one UDP datagram to us, and a datagram
//! we send is a frame the NIC receives. The responder answers ARP and ICMP
//! echo for its address and counts frames per source MAC.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot bind the wire's UDP socket on loopback")]
    Bind(#[source] std::io::Error),
}

/// Frame counters of the wire.
#[derive(Debug, Clone, Default)]
pub struct WireStats {
    /// Frames received from the NIC, per source MAC.
    pub frames_by_mac: BTreeMap<[u8; 6], u64>,
    pub arp_replies: u64,
    pub echo_replies: u64,
}

/// A running responder; stops when dropped.
pub struct Responder {
    /// Port the NIC sends to (QEMU's `remote.port`).
    pub wire_port: u16,
    /// Port QEMU listens on (QEMU's `local.port`).
    pub nic_port: u16,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WireStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("wire_port", &self.wire_port)
            .field("nic_port", &self.nic_port)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The responder's MAC on the wire.
pub const RESPONDER_MAC: [u8; 6] = [0x02, 0x56, 0x49, 0x41, 0x44, 0x01];

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded to 16 bits just above.
    !((sum & 0xffff) as u16)
}

/// The reply to one frame, if it is an ARP request or ICMP echo for `ip`.
pub fn reply_to(frame: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let src_mac = &frame[6..12];
    match ethertype {
        0x0806 if frame.len() >= 42 => {
            let op = u16::from_be_bytes([frame[20], frame[21]]);
            if op != 1 || frame[38..42] != ip.octets() {
                return None;
            }
            let mut r = vec![0u8; 42];
            r[0..6].copy_from_slice(src_mac);
            r[6..12].copy_from_slice(&RESPONDER_MAC);
            r[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            r[14..20].copy_from_slice(&frame[14..20]); // htype, ptype, hlen, plen
            r[20..22].copy_from_slice(&2u16.to_be_bytes());
            r[22..28].copy_from_slice(&RESPONDER_MAC);
            r[28..32].copy_from_slice(&ip.octets());
            r[32..42].copy_from_slice(&frame[22..32]); // requester's MAC and IP
            Some(r)
        }
        0x0800 if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let ip_end = 14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if ihl < 20 || ip_end > frame.len() || 14 + ihl + 8 > ip_end {
                return None;
            }
            if frame[23] != 1 || frame[30..34] != ip.octets() || frame[14 + ihl] != 8 {
                return None;
            }
            let mut r = frame[..ip_end].to_vec();
            r[0..6].copy_from_slice(src_mac);
            r[6..12].copy_from_slice(&RESPONDER_MAC);
            let (src, dst) = (frame[26..30].to_vec(), frame[30..34].to_vec());
            r[26..30].copy_from_slice(&dst);
            r[30..34].copy_from_slice(&src);
            r[22] = 64;
            r[24..26].copy_from_slice(&[0, 0]);
            let hc = csum(&r[14..14 + ihl]);
            r[24..26].copy_from_slice(&hc.to_be_bytes());
            let icmp = 14 + ihl;
            r[icmp] = 0;
            r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
            let ic = csum(&r[icmp..ip_end]);
            r[icmp + 2..icmp + 4].copy_from_slice(&ic.to_be_bytes());
            Some(r)
        }
        _ => None,
    }
}

fn free_udp_port() -> Result<u16, WireError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(WireError::Bind)?;
    Ok(s.local_addr().map_err(WireError::Bind)?.port())
}

impl Responder {
    /// Starts answering for `ip` on a fresh pair of loopback ports.
    pub fn start(ip: Ipv4Addr) -> Result<Self, WireError> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(WireError::Bind)?;
        let wire_port = sock.local_addr().map_err(WireError::Bind)?.port();
        let nic_port = free_udp_port()?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(WireError::Bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WireStats::default()));
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let nic: SocketAddr = SocketAddr::from(([127, 0, 0, 1], nic_port));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let frame = &buf[..n];
                let reply = reply_to(frame, ip);
                if let Ok(mut st) = stats2.lock() {
                    if n >= 12 {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&frame[6..12]);
                        *st.frames_by_mac.entry(mac).or_default() += 1;
                    }
                    match reply.as_ref().map(|r| u16::from_be_bytes([r[12], r[13]])) {
                        Some(0x0806) => st.arp_replies += 1,
                        Some(_) => st.echo_replies += 1,
                        None => {}
                    }
                }
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, nic);
                }
            }
        });
        Ok(Self {
            wire_port,
            nic_port,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// QEMU `-netdev` argument for a NIC on this wire.
    pub fn netdev_arg(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.nic_port, self.wire_port
        )
    }

    pub fn stats(&self) -> WireStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `aa:bb:...` rendering of a MAC.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[10, 0, 2, 15]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let ip = Ipv4Addr::new(10, 0, 2, 2);
        let r = reply_to(&arp_request(ip), ip).unwrap();
        assert_eq!(&r[0..6], &GUEST_MAC);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[28..32], &ip.octets());
        assert_eq!(&r[38..42], &[10, 0, 2, 15]);
        assert!(reply_to(&arp_request(Ipv4Addr::new(10, 0, 2, 3)), ip).is_none());
        assert!(reply_to(&[0u8; 10], ip).is_none());
    }

    #[test]
    fn answers_echo_with_valid_checksums() {
        let ip = Ipv4Addr::new(10, 0, 2, 2);
        let mut f = RESPONDER_MAC.to_vec();
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut iph = vec![
            0x45,
            0,
            0,
            28 + 4,
            0,
            1,
            0x40,
            0,
            64,
            1,
            0,
            0,
            10,
            0,
            2,
            15,
            10,
            0,
            2,
            2,
        ];
        let c = csum(&iph);
        iph[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&iph);
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1, b'p', b'i', b'n', b'g'];
        let c = csum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&icmp);
        let r = reply_to(&f, ip).unwrap();
        assert_eq!(&r[0..6], &GUEST_MAC);
        assert_eq!(&r[26..30], &ip.octets());
        assert_eq!(csum(&r[14..34]), 0, "ip header checksum");
        assert_eq!(r[34], 0, "echo reply");
        assert_eq!(csum(&r[34..]), 0, "icmp checksum");
        assert_eq!(&r[42..], b"ping");
        // Truncated or lying length fields are ignored, not a panic.
        let mut bad = f.clone();
        bad[16..18].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(reply_to(&bad, ip).is_none());
        assert!(reply_to(&f[..30], ip).is_none());
    }
}
