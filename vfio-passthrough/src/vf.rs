//! `mac=` and `vlan=` of `--device vfio=...`: when the function is an
//! SR-IOV VF, its PF driver is told the VF's MAC and VLAN over rtnetlink
//! before the guest's VF driver loads (it reads them at probe).

use crate::sriov::netlink::{self, NetlinkError, VfSettings};
use crate::sriov::pci::{PciError, Sysfs};

/// Why the VF could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    #[error("{0} is not an SR-IOV VF; mac= and vlan= need a VF (set a PF's MAC inside the guest)")]
    NotVf(String),
    #[error("{vf}: PF {pf} has no network interface (is its driver loaded and the PF up?)")]
    NoInterface { vf: String, pf: String },
    #[error("{0}: not found among its PF's virtfn links")]
    NoIndex(String),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Sets `mac`/`vlan` of VF `vf_bdf` on its PF; returns (PF interface, VF index).
pub fn configure(
    sysfs: &Sysfs,
    vf_bdf: &str,
    mac: Option<[u8; 6]>,
    vlan: Option<u16>,
) -> Result<(String, u32), VfError> {
    let pf = sysfs
        .physfn(vf_bdf)
        .map_err(|_| VfError::NotVf(vf_bdf.into()))?;
    let info = sysfs.pf_info(&pf)?;
    let index = info
        .vfs
        .iter()
        .find(|v| v.bdf == vf_bdf)
        .map(|v| v.index)
        .ok_or_else(|| VfError::NoIndex(vf_bdf.into()))?;
    let iface = info.interface.ok_or_else(|| VfError::NoInterface {
        vf: vf_bdf.into(),
        pf: pf.clone(),
    })?;
    let settings = VfSettings {
        mac,
        vlan: vlan.map(|v| (v, 0)),
        ..Default::default()
    };
    let ifindex = netlink::ifindex(&iface)?;
    netlink::set_vf(ifindex, index, &settings)?;
    let state = netlink::get_vf(ifindex, index)?;
    if let Err(why) = netlink::verify(&settings, &state) {
        log::warn!("{vf_bdf}: PF {iface} reports VF {index} as {why}");
    }
    Ok((iface, index))
}
