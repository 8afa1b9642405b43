//! Before a device is opened: is it there, behind an IOMMU, bound to
//! vfio-pci, and is its IOMMU group viable (every function in it bound to
//! vfio-pci or to no driver)? Each refusal names the device and the fix.
//! Paths are relative to a sysfs root so unit tests use a fabricated tree.

use std::path::{Path, PathBuf};

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("{0} is not a PCI address (expected dddd:bb:dd.f, e.g. 0000:01:10.0)")]
    BadBdf(String),
    #[error("no PCI function {0} in /sys/bus/pci/devices")]
    NoDevice(String),
    #[error(
        "{0} has no IOMMU group: the IOMMU is off; boot the host with intel_iommu=on (or amd_iommu=on) and load vfio-pci"
    )]
    NoIommu(String),
    #[error(
        "{bdf} is bound to {driver}, not vfio-pci: bind it first with `viaduct sriov bind --vf {bdf}` (a VF) or `echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe`"
    )]
    NotVfio { bdf: String, driver: String },
    #[error(
        "{bdf} is not bound to any driver: bind it to vfio-pci (`echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe`)"
    )]
    Unbound { bdf: String },
    #[error(
        "IOMMU group {group} of {bdf} is not viable: {other} in the same group is bound to {driver}; unbind it or bind it to vfio-pci too (echo {other} > /sys/bus/pci/devices/{other}/driver/unbind)"
    )]
    NotViable {
        bdf: String,
        group: u32,
        other: String,
        driver: String,
    },
    #[error("/dev/vfio/{0} is missing: load vfio-pci and vfio_iommu_type1 (modprobe vfio-pci)")]
    NoGroupNode(u32),
}

/// A device that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDevice {
    pub bdf: String,
    pub sysfs_path: PathBuf,
    pub group: u32,
}

fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Accepts `dddd:bb:dd.f` or the short `bb:dd.f` (domain 0).
pub fn normalize_bdf(s: &str) -> Result<String, GroupError> {
    let full = if s.len() == 7 {
        format!("0000:{s}")
    } else {
        s.to_string()
    };
    let full = full.to_ascii_lowercase();
    if is_bdf(&full) {
        Ok(full)
    } else {
        Err(GroupError::BadBdf(s.to_string()))
    }
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()))
}

/// Checks `bdf` under `sysfs` (normally `/sys`) and `dev_vfio` (normally `/dev/vfio`).
pub fn check(sysfs: &Path, dev_vfio: &Path, bdf: &str) -> Result<CheckedDevice, GroupError> {
    let bdf = normalize_bdf(bdf)?;
    let dev = sysfs.join("bus/pci/devices").join(&bdf);
    if !dev.exists() {
        return Err(GroupError::NoDevice(bdf));
    }
    let group: u32 = link_name(&dev.join("iommu_group"))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| GroupError::NoIommu(bdf.clone()))?;
    match link_name(&dev.join("driver")) {
        Some(d) if d == "vfio-pci" => {}
        Some(driver) => return Err(GroupError::NotVfio { bdf, driver }),
        None => return Err(GroupError::Unbound { bdf }),
    }
    let members = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut others: Vec<String> = std::fs::read_dir(&members)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    for other in others.into_iter().filter(|o| *o != bdf) {
        let d = sysfs.join("bus/pci/devices").join(&other).join("driver");
        if let Some(driver) = link_name(&d) {
            // pcieport is what the kernel itself accepts in a viable group.
            if driver != "vfio-pci" && driver != "pcieport" {
                return Err(GroupError::NotViable {
                    bdf,
                    group,
                    other,
                    driver,
                });
            }
        }
    }
    if !dev_vfio.join(group.to_string()).exists() {
        return Err(GroupError::NoGroupNode(group));
    }
    Ok(CheckedDevice {
        sysfs_path: dev,
        bdf,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Group 7 holds 0000:01:00.0 (vfio-pci) and 0000:01:00.1 (`other`).
    fn tree(name: &str, other: Option<&str>) -> Tree {
        let root =
            std::env::temp_dir().join(format!("viaduct-group-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devs = root.join("sys/bus/pci/devices");
        let drivers = root.join("sys/bus/pci/drivers");
        let group = root.join("sys/kernel/iommu_groups/7");
        std::fs::create_dir_all(group.join("devices")).unwrap();
        std::fs::create_dir_all(root.join("dev/vfio/7")).unwrap();
        for (bdf, drv) in [("0000:01:00.0", Some("vfio-pci")), ("0000:01:00.1", other)] {
            let d = devs.join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            symlink(&group, d.join("iommu_group")).unwrap();
            symlink(&d, group.join("devices").join(bdf)).unwrap();
            if let Some(drv) = drv {
                std::fs::create_dir_all(drivers.join(drv)).unwrap();
                symlink(drivers.join(drv), d.join("driver")).unwrap();
            }
        }
        std::fs::create_dir_all(devs.join("0000:02:00.0")).unwrap();
        Tree(root)
    }

    fn run(t: &Tree, bdf: &str) -> Result<CheckedDevice, GroupError> {
        check(&t.0.join("sys"), &t.0.join("dev/vfio"), bdf)
    }

    #[test]
    fn viable_group_passes() {
        let t = tree("ok", None);
        let d = run(&t, "01:00.0").unwrap();
        assert_eq!((d.bdf.as_str(), d.group), ("0000:01:00.0", 7));
        let t = tree("ok2", Some("vfio-pci"));
        assert!(run(&t, "0000:01:00.0").is_ok());
    }

    #[test]
    fn group_member_on_a_host_driver_is_named() {
        let t = tree("busy", Some("igb"));
        let e = run(&t, "0000:01:00.0").unwrap_err();
        assert_eq!(
            e,
            GroupError::NotViable {
                bdf: "0000:01:00.0".into(),
                group: 7,
                other: "0000:01:00.1".into(),
                driver: "igb".into()
            }
        );
        assert!(
            e.to_string()
                .contains("0000:01:00.1 in the same group is bound to igb")
        );
    }

    #[test]
    fn refusals_name_the_fix() {
        let t = tree("fix", Some("igb"));
        let e = run(&t, "0000:01:00.1").unwrap_err();
        assert!(matches!(e, GroupError::NotVfio { .. }));
        assert!(e.to_string().contains("driver_override"), "{e}");
        assert!(matches!(
            run(&t, "0000:02:00.0"),
            Err(GroupError::NoIommu(_))
        ));
        assert!(
            run(&t, "0000:02:00.0")
                .unwrap_err()
                .to_string()
                .contains("intel_iommu=on")
        );
        assert_eq!(
            run(&t, "0000:09:00.0"),
            Err(GroupError::NoDevice("0000:09:00.0".into()))
        );
        assert_eq!(
            run(&t, "zz:00.0"),
            Err(GroupError::BadBdf("zz:00.0".into()))
        );
        assert_eq!(
            run(&t, "../../etc"),
            Err(GroupError::BadBdf("../../etc".into()))
        );
        let t = tree("nonode", None);
        std::fs::remove_dir(t.0.join("dev/vfio/7")).unwrap();
        assert_eq!(run(&t, "0000:01:00.0"), Err(GroupError::NoGroupNode(7)));
    }
}
