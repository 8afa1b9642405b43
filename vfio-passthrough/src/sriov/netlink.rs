//! Per-VF settings applied by the PF driver, over rtnetlink: RTM_SETLINK on
//! the PF with one `IFLA_VFINFO_LIST` entry, and RTM_GETLINK with the VF
//! extension mask to read them back. Synchronous (a plain netlink socket),
//! so the VMM needs no async runtime for it.

use std::ffi::CString;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("the kernel rejected the request for {what}")]
    Rejected {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink reply: {0}")]
    Decode(String),
    #[error("VF {vf} does not exist on this PF (it has {count} VFs)")]
    NoVf { vf: u32, count: usize },
    #[error("VLAN id {0} out of range (0..=4095)")]
    BadVlan(u16),
    #[error("QoS priority {0} out of range (0..=7)")]
    BadQos(u8),
}

/// Link state a VF reports to its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VfLink {
    /// Follow the PF's link.
    Auto,
    /// Always up.
    Enable,
    /// Always down.
    Disable,
}

impl From<VfLink> for VfLinkState {
    fn from(v: VfLink) -> Self {
        match v {
            VfLink::Auto => VfLinkState::Auto,
            VfLink::Enable => VfLinkState::Enable,
            VfLink::Disable => VfLinkState::Disable,
        }
    }
}

/// What to change on one VF; `None` leaves a setting alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfSettings {
    pub mac: Option<[u8; 6]>,
    /// VLAN id (0 = none) and QoS priority.
    pub vlan: Option<(u16, u8)>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLink>,
    /// Max transmit rate in Mbit/s (0 = unlimited).
    pub max_tx_rate: Option<u32>,
}

/// A VF's settings as the PF driver reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfState {
    pub vf: u32,
    pub mac: [u8; 6],
    pub vlan: u32,
    pub qos: u32,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<String>,
    pub max_tx_rate: Option<u32>,
}

/// Renders a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    let c = CString::new(name).map_err(|_| NetlinkError::NoInterface(name.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(NetlinkError::NoInterface(name.into()))
    } else {
        Ok(idx)
    }
}

/// The netlink attributes that apply `settings` to VF `vf`.
pub fn vf_attributes(vf: u32, s: &VfSettings) -> Result<Vec<VfInfo>, NetlinkError> {
    let mut attrs = Vec::new();
    if let Some(mac) = s.mac {
        attrs.push(VfInfo::Mac(VfInfoMac::new(vf, &mac)));
    }
    if let Some((vlan, qos)) = s.vlan {
        if vlan > 4095 {
            return Err(NetlinkError::BadVlan(vlan));
        }
        if qos > 7 {
            return Err(NetlinkError::BadQos(qos));
        }
        attrs.push(VfInfo::Vlan(VfInfoVlan::new(vf, vlan.into(), qos.into())));
    }
    if let Some(on) = s.spoofchk {
        attrs.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)));
    }
    if let Some(on) = s.trust {
        attrs.push(VfInfo::Trust(VfInfoTrust::new(vf, on)));
    }
    if let Some(state) = s.link_state {
        attrs.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state.into())));
    }
    if let Some(rate) = s.max_tx_rate {
        attrs.push(VfInfo::Rate(VfInfoRate::new(vf, 0, rate)));
    }
    Ok(attrs)
}

fn connect() -> Result<Socket, NetlinkError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    sock.bind_auto().map_err(NetlinkError::Socket)?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    Ok(sock)
}

fn request(sock: &Socket, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0).map_err(NetlinkError::Socket)?;
    Ok(())
}

/// Receives replies until an ACK/NACK; returns the link messages seen.
fn replies(sock: &Socket, what: &str) -> Result<Vec<LinkMessage>, NetlinkError> {
    let mut links = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().map_err(NetlinkError::Socket)?;
        let mut off = 0;
        while off < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(NetlinkError::Decode("zero-length message".into()));
            }
            off += len.next_multiple_of(4);
            match msg.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::Rejected {
                        what: what.to_string(),
                        source: e.to_io(),
                    });
                }
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(link)
                }
                _ => {}
            }
        }
    }
}

/// Applies `settings` to VF `vf` of the PF with interface index `pf`.
pub fn set_vf(pf: u32, vf: u32, settings: &VfSettings) -> Result<(), NetlinkError> {
    let attrs = vf_attributes(vf, settings)?;
    if attrs.is_empty() {
        return Ok(());
    }
    let mut link = LinkMessage::default();
    link.header.index = pf;
    link.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(attrs)]));
    let sock = connect()?;
    request(&sock, RouteNetlinkMessage::SetLink(link), NLM_F_ACK)?;
    replies(&sock, &format!("VF {vf}"))?;
    Ok(())
}

/// Reads every VF's settings from the PF with interface index `pf`.
pub fn get_vfs(pf: u32) -> Result<Vec<VfState>, NetlinkError> {
    let mut link = LinkMessage::default();
    link.header.index = pf;
    link.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
    let sock = connect()?;
    request(&sock, RouteNetlinkMessage::GetLink(link), NLM_F_ACK)?;
    let links = replies(&sock, "link query")?;
    let mut out = Vec::new();
    for link in links {
        for attr in link.attributes {
            if let LinkAttribute::VfInfoList(list) = attr {
                out.extend(list.into_iter().map(|LinkVfInfo(infos)| vf_state(&infos)));
            }
        }
    }
    Ok(out)
}

/// Reads one VF's settings, failing if it does not exist.
pub fn get_vf(pf: u32, vf: u32) -> Result<VfState, NetlinkError> {
    let all = get_vfs(pf)?;
    let count = all.len();
    all.into_iter()
        .find(|s| s.vf == vf)
        .ok_or(NetlinkError::NoVf { vf, count })
}

fn vf_state(infos: &[VfInfo]) -> VfState {
    let mut st = VfState::default();
    for info in infos {
        match info {
            VfInfo::Mac(m) => {
                st.vf = m.vf_id;
                st.mac.copy_from_slice(&m.mac[..6]);
            }
            VfInfo::Vlan(v) => {
                st.vlan = v.vlan_id;
                st.qos = v.qos;
            }
            VfInfo::SpoofCheck(s) => st.spoofchk = Some(s.enabled),
            VfInfo::Trust(t) => st.trust = Some(t.enabled),
            VfInfo::LinkState(l) => st.link_state = Some(format!("{:?}", l.state).to_lowercase()),
            VfInfo::Rate(r) => st.max_tx_rate = Some(r.max_tx_rate),
            _ => {}
        }
    }
    st
}

/// Checks that `state` shows every setting asked for in `want`.
pub fn verify(want: &VfSettings, state: &VfState) -> Result<(), String> {
    let mut diffs = Vec::new();
    if let Some(mac) = want.mac
        && mac != state.mac
    {
        diffs.push(format!(
            "mac {} != {}",
            format_mac(&state.mac),
            format_mac(&mac)
        ));
    }
    if let Some((vlan, qos)) = want.vlan
        && (u32::from(vlan), u32::from(qos)) != (state.vlan, state.qos)
    {
        diffs.push(format!("vlan {}/{} != {vlan}/{qos}", state.vlan, state.qos));
    }
    if want.spoofchk.is_some() && want.spoofchk != state.spoofchk {
        diffs.push(format!(
            "spoofchk {:?} != {:?}",
            state.spoofchk, want.spoofchk
        ));
    }
    if want.trust.is_some() && want.trust != state.trust {
        diffs.push(format!("trust {:?} != {:?}", state.trust, want.trust));
    }
    if want.max_tx_rate.is_some() && want.max_tx_rate != state.max_tx_rate {
        diffs.push(format!(
            "max_tx_rate {:?} != {:?}",
            state.max_tx_rate, want.max_tx_rate
        ));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac = parse_mac("02:00:5e:10:00:01").unwrap();
        assert_eq!(format_mac(&mac), "02:00:5e:10:00:01");
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "0g:00:5e:10:00:01",
            "2:00:5e:10:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn attributes_follow_settings() {
        let s = VfSettings {
            mac: Some([2, 0, 0, 0, 0, 1]),
            vlan: Some((100, 3)),
            spoofchk: Some(true),
            ..Default::default()
        };
        let attrs = vf_attributes(1, &s).unwrap();
        assert_eq!(attrs.len(), 3);
        assert!(
            matches!(&attrs[1], VfInfo::Vlan(v) if v.vf_id == 1 && v.vlan_id == 100 && v.qos == 3)
        );
        assert!(vf_attributes(0, &VfSettings::default()).unwrap().is_empty());
        let bad = VfSettings {
            vlan: Some((4096, 0)),
            ..Default::default()
        };
        assert!(matches!(
            vf_attributes(0, &bad),
            Err(NetlinkError::BadVlan(4096))
        ));
        let bad = VfSettings {
            vlan: Some((1, 8)),
            ..Default::default()
        };
        assert!(matches!(
            vf_attributes(0, &bad),
            Err(NetlinkError::BadQos(8))
        ));
    }

    #[test]
    fn verify_reports_differences() {
        let want = VfSettings {
            mac: Some([2, 0, 0, 0, 0, 1]),
            vlan: Some((5, 0)),
            spoofchk: Some(true),
            ..Default::default()
        };
        let mut st = VfState {
            vf: 0,
            mac: [2, 0, 0, 0, 0, 1],
            vlan: 5,
            qos: 0,
            spoofchk: Some(true),
            ..Default::default()
        };
        assert!(verify(&want, &st).is_ok());
        st.vlan = 6;
        st.spoofchk = Some(false);
        let err = verify(&want, &st).unwrap_err();
        assert!(err.contains("vlan") && err.contains("spoofchk"), "{err}");
    }

    #[test]
    fn loopback_has_no_vfs_and_unknown_interfaces_fail() {
        // Real netlink on the host: lo exists and has no VFs.
        let lo = ifindex("lo").unwrap();
        assert!(get_vfs(lo).unwrap().is_empty());
        assert!(matches!(
            get_vf(lo, 0),
            Err(NetlinkError::NoVf { vf: 0, count: 0 })
        ));
        assert!(matches!(
            ifindex("viaduct-none0"),
            Err(NetlinkError::NoInterface(_))
        ));
        // Setting a VF on lo is refused by the kernel, as a clear error.
        let s = VfSettings {
            mac: Some([2, 0, 0, 0, 0, 1]),
            ..Default::default()
        };
        assert!(matches!(
            set_vf(lo, 0, &s),
            Err(NetlinkError::Rejected { .. })
        ));
    }
}
