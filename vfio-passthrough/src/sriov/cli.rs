//! `viaduct sriov ...`: the operator's surface for SR-IOV. Every command
//! validates before it changes anything, and `set` reads the VF back and
//! verifies it.

use std::io::Write;

use clap::{Args, Subcommand};

use super::netlink::{self, NetlinkError, VfLink, VfSettings, format_mac, parse_mac};
use super::pci::{PciError, PfInfo, Sysfs};

/// Why an SR-IOV command failed.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "{0} has no network interface (is its driver loaded?); VF settings go through the PF's interface"
    )]
    NoPfInterface(String),
    #[error("invalid MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    #[error("{0:?} is a multicast MAC; a VF needs a unicast address")]
    MulticastMac(String),
    #[error("--qos needs --vlan")]
    QosWithoutVlan,
    #[error("VF {vf} does not exist: {pf} has {num_vfs} VFs")]
    NoSuchVf { pf: String, vf: u32, num_vfs: u32 },
    #[error("VF {vf} was set but reads back differently: {diff}")]
    NotApplied { vf: u32, diff: String },
    #[error("writing output")]
    Output(#[source] std::io::Error),
}

/// SR-IOV management commands.
#[derive(Subcommand, Debug, Clone)]
pub enum SriovCommand {
    /// List PFs with SR-IOV, their VFs (BDF, driver, IOMMU group) and VF settings.
    List,
    /// Create VFs on a PF (through sysfs sriov_numvfs).
    Create {
        /// The PF: its network interface (e.g. enp1s0) or PCI address (0000:01:00.0).
        #[arg(long)]
        pf: String,
        /// How many VFs; at most the PF's sriov_totalvfs.
        #[arg(long)]
        num_vfs: u32,
    },
    /// Remove every VF of a PF.
    Destroy {
        /// The PF: network interface or PCI address.
        #[arg(long)]
        pf: String,
    },
    /// Configure a VF from its PF (rtnetlink), then read it back and verify.
    Set(SetArgs),
    /// Bind a VF to vfio-pci (driver_override + drivers_probe) for passthrough.
    Bind {
        /// The VF's PCI address, e.g. 0000:01:10.0.
        #[arg(long)]
        vf: String,
    },
    /// Give a VF back to its host driver.
    Unbind {
        /// The VF's PCI address.
        #[arg(long)]
        vf: String,
    },
}

/// Arguments of `sriov set`.
#[derive(Args, Debug, Clone)]
pub struct SetArgs {
    /// The PF: network interface or PCI address.
    #[arg(long)]
    pub pf: String,
    /// VF number (0-based, as in `ip link show`).
    #[arg(long)]
    pub vf: u32,
    /// MAC address the VF's guest gets, e.g. 02:00:00:00:00:01.
    #[arg(long)]
    pub mac: Option<String>,
    /// VLAN id 0..=4095 the PF tags the VF's traffic with (0 = none).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=4095))]
    pub vlan: Option<u16>,
    /// 802.1p priority 0..=7 for the VLAN tag.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub qos: Option<u8>,
    /// Drop frames the VF sends with a source MAC other than its own.
    #[arg(long, value_parser = on_off)]
    pub spoofchk: Option<bool>,
    /// Let the VF change its MAC and enter promiscuous mode.
    #[arg(long, value_parser = on_off)]
    pub trust: Option<bool>,
    /// Link state the VF reports.
    #[arg(long, value_enum)]
    pub link_state: Option<VfLink>,
    /// Max transmit rate in Mbit/s (0 = unlimited).
    #[arg(long)]
    pub max_tx_rate: Option<u32>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

fn onoff(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "n/a",
    }
}

impl SetArgs {
    /// The settings these arguments ask for, validated.
    pub fn settings(&self) -> Result<VfSettings, SriovError> {
        let mac = match &self.mac {
            Some(s) => {
                let mac = parse_mac(s).ok_or_else(|| SriovError::BadMac(s.clone()))?;
                if mac[0] & 1 != 0 {
                    return Err(SriovError::MulticastMac(s.clone()));
                }
                Some(mac)
            }
            None => None,
        };
        if self.qos.is_some() && self.vlan.is_none() {
            return Err(SriovError::QosWithoutVlan);
        }
        Ok(VfSettings {
            mac,
            vlan: self.vlan.map(|v| (v, self.qos.unwrap_or(0))),
            spoofchk: self.spoofchk,
            trust: self.trust,
            link_state: self.link_state,
            max_tx_rate: self.max_tx_rate,
        })
    }
}

fn print_pf(out: &mut impl Write, pf: &PfInfo) -> Result<(), SriovError> {
    let w = |e| SriovError::Output(e);
    writeln!(
        out,
        "pf {} iface={} driver={} totalvfs={} numvfs={}",
        pf.bdf,
        pf.interface.as_deref().unwrap_or("-"),
        pf.driver.as_deref().unwrap_or("-"),
        pf.total_vfs,
        pf.num_vfs
    )
    .map_err(w)?;
    let states = match &pf.interface {
        Some(iface) => netlink::ifindex(iface)
            .and_then(netlink::get_vfs)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for vf in &pf.vfs {
        write!(
            out,
            "  vf {} bdf={} driver={} iommu_group={}",
            vf.index,
            vf.bdf,
            vf.driver.as_deref().unwrap_or("-"),
            vf.iommu_group.map(|g| g.to_string()).unwrap_or("-".into())
        )
        .map_err(w)?;
        if let Some(st) = states.iter().find(|s| s.vf == vf.index) {
            write!(
                out,
                " mac={} vlan={} qos={} spoofchk={} trust={} link_state={}",
                format_mac(&st.mac),
                st.vlan,
                st.qos,
                onoff(st.spoofchk),
                onoff(st.trust),
                st.link_state.as_deref().unwrap_or("n/a")
            )
            .map_err(w)?;
        }
        writeln!(out).map_err(w)?;
    }
    Ok(())
}

/// Runs one SR-IOV command against `sysfs`, writing its report to `out`.
pub fn run(cmd: &SriovCommand, sysfs: &Sysfs, out: &mut impl Write) -> Result<(), SriovError> {
    match cmd {
        SriovCommand::List => {
            for pf in sysfs.list_pfs()? {
                print_pf(out, &pf)?;
            }
        }
        SriovCommand::Create { pf, num_vfs } => {
            let bdf = sysfs.resolve_pf(pf)?;
            sysfs.set_num_vfs(&bdf, *num_vfs)?;
            print_pf(out, &sysfs.pf_info(&bdf)?)?;
        }
        SriovCommand::Destroy { pf } => {
            let bdf = sysfs.resolve_pf(pf)?;
            sysfs.set_num_vfs(&bdf, 0)?;
            print_pf(out, &sysfs.pf_info(&bdf)?)?;
        }
        SriovCommand::Set(args) => {
            let settings = args.settings()?;
            let bdf = sysfs.resolve_pf(&args.pf)?;
            let info = sysfs.pf_info(&bdf)?;
            if args.vf >= info.num_vfs {
                return Err(SriovError::NoSuchVf {
                    pf: bdf,
                    vf: args.vf,
                    num_vfs: info.num_vfs,
                });
            }
            let iface = info
                .interface
                .clone()
                .ok_or_else(|| SriovError::NoPfInterface(bdf.clone()))?;
            let idx = netlink::ifindex(&iface)?;
            netlink::set_vf(idx, args.vf, &settings)?;
            let state = netlink::get_vf(idx, args.vf)?;
            netlink::verify(&settings, &state)
                .map_err(|diff| SriovError::NotApplied { vf: args.vf, diff })?;
            print_pf(out, &sysfs.pf_info(&bdf)?)?;
        }
        SriovCommand::Bind { vf } => {
            sysfs.physfn(vf)?;
            let group = sysfs
                .iommu_group(vf)?
                .ok_or_else(|| PciError::NoIommuGroup(vf.clone()))?;
            sysfs.bind(vf, "vfio-pci")?;
            writeln!(
                out,
                "vf {vf} driver=vfio-pci iommu_group={group} dev=/dev/vfio/{group}"
            )
            .map_err(SriovError::Output)?;
        }
        SriovCommand::Unbind { vf } => {
            sysfs.physfn(vf)?;
            let driver = sysfs.unbind_to_host(vf)?;
            writeln!(out, "vf {vf} driver={}", driver.as_deref().unwrap_or("-"))
                .map_err(SriovError::Output)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mac: Option<&str>, vlan: Option<u16>, qos: Option<u8>) -> SetArgs {
        SetArgs {
            pf: "eth0".into(),
            vf: 0,
            mac: mac.map(Into::into),
            vlan,
            qos,
            spoofchk: Some(true),
            trust: None,
            link_state: None,
            max_tx_rate: None,
        }
    }

    #[test]
    fn settings_are_validated_before_anything_changes() {
        let s = args(Some("02:00:00:00:00:01"), Some(10), Some(2))
            .settings()
            .unwrap();
        assert_eq!(s.vlan, Some((10, 2)));
        assert_eq!(s.spoofchk, Some(true));
        assert!(matches!(
            args(Some("zz"), None, None).settings(),
            Err(SriovError::BadMac(_))
        ));
        assert!(matches!(
            args(Some("01:00:5e:00:00:01"), None, None).settings(),
            Err(SriovError::MulticastMac(_))
        ));
        assert!(matches!(
            args(None, None, Some(1)).settings(),
            Err(SriovError::QosWithoutVlan)
        ));
    }

    #[test]
    fn on_off_parses_only_on_and_off() {
        assert_eq!(on_off("on"), Ok(true));
        assert_eq!(on_off("off"), Ok(false));
        assert!(on_off("yes").is_err());
    }
}
