//! PCI functions as sysfs shows them: PFs with SR-IOV, their VFs, drivers
//! and IOMMU groups; VF creation through `sriov_numvfs`; driver binding
//! through `driver_override` + `drivers_probe`.
//!
//! Every path is relative to a sysfs root so unit tests can use a
//! fabricated tree; the end-to-end tests use the real one in test host B.

use std::path::{Path, PathBuf};

/// Why a sysfs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no PCI function {0} (not in /sys/bus/pci/devices)")]
    NoDevice(String),
    #[error("no network interface {0} (not in /sys/class/net)")]
    NoInterface(String),
    #[error("{0} is not a PCI device (virtual interface?)")]
    NotPci(String),
    #[error("{0} has no SR-IOV capability (no sriov_totalvfs)")]
    NoSriov(String),
    #[error("{pf} supports at most {total} VFs; {asked} requested, nothing changed")]
    TooManyVfs { pf: String, total: u32, asked: u32 },
    #[error("{bdf} is a PF; only VFs are bound by this command")]
    NotVf { bdf: String },
    #[error("{0} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) and reboot")]
    NoIommuGroup(String),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content in {0}: {1:?}")]
    Parse(PathBuf, String),
    #[error("{bdf} is bound to {driver} after binding, not {want}")]
    BindMismatch {
        bdf: String,
        driver: String,
        want: String,
    },
}

/// The sysfs tree PCI functions are found in.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

/// One SR-IOV virtual function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfInfo {
    pub index: u32,
    pub bdf: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

/// One SR-IOV physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfInfo {
    pub bdf: String,
    pub interface: Option<String>,
    pub driver: Option<String>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub vfs: Vec<VfInfo>,
}

fn is_bdf(s: &str) -> bool {
    // dddd:bb:dd.f
    let b = s.as_bytes();
    b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn devices(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    fn device(&self, bdf: &str) -> Result<PathBuf, PciError> {
        let p = self.devices().join(bdf);
        if is_bdf(bdf) && p.exists() {
            Ok(p)
        } else {
            Err(PciError::NoDevice(bdf.to_string()))
        }
    }

    fn read(&self, path: &Path) -> Result<String, PciError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| PciError::Read(path.into(), e))
    }

    fn read_u32(&self, path: &Path) -> Result<u32, PciError> {
        let s = self.read(path)?;
        s.parse()
            .map_err(|_| PciError::Parse(path.into(), s.clone()))
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), PciError> {
        std::fs::write(path, value).map_err(|source| PciError::Write {
            path: path.into(),
            value: value.to_string(),
            source,
        })
    }

    fn link_name(path: &Path) -> Option<String> {
        std::fs::read_link(path)
            .ok()
            .and_then(|t| t.file_name().map(|f| f.to_string_lossy().to_string()))
    }

    /// The driver a function is bound to.
    pub fn driver(&self, bdf: &str) -> Result<Option<String>, PciError> {
        Ok(Self::link_name(&self.device(bdf)?.join("driver")))
    }

    /// The IOMMU group of a function, if the IOMMU is on.
    pub fn iommu_group(&self, bdf: &str) -> Result<Option<u32>, PciError> {
        Ok(Self::link_name(&self.device(bdf)?.join("iommu_group")).and_then(|g| g.parse().ok()))
    }

    /// Resolves a PF given as a BDF or a network interface name.
    pub fn resolve_pf(&self, pf: &str) -> Result<String, PciError> {
        let bdf = if is_bdf(pf) {
            self.device(pf)?;
            pf.to_string()
        } else {
            let dev = self.root.join("class/net").join(pf);
            if !dev.exists() {
                return Err(PciError::NoInterface(pf.to_string()));
            }
            let target = std::fs::canonicalize(dev.join("device"))
                .map_err(|_| PciError::NotPci(pf.to_string()))?;
            let name = target
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            if !is_bdf(&name) {
                return Err(PciError::NotPci(pf.to_string()));
            }
            name
        };
        if !self.device(&bdf)?.join("sriov_totalvfs").exists() {
            return Err(PciError::NoSriov(bdf));
        }
        Ok(bdf)
    }

    /// The network interface of a function, if it has one.
    pub fn interface(&self, bdf: &str) -> Result<Option<String>, PciError> {
        let net = self.device(bdf)?.join("net");
        let Ok(entries) = std::fs::read_dir(&net) else {
            return Ok(None);
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        Ok(names.into_iter().next())
    }

    /// Everything about one PF and its VFs.
    pub fn pf_info(&self, pf_bdf: &str) -> Result<PfInfo, PciError> {
        let dev = self.device(pf_bdf)?;
        let total_vfs = self.read_u32(&dev.join("sriov_totalvfs"))?;
        let num_vfs = self.read_u32(&dev.join("sriov_numvfs"))?;
        let mut vfs = Vec::new();
        for index in 0..num_vfs {
            let Some(bdf) = Self::link_name(&dev.join(format!("virtfn{index}"))) else {
                continue;
            };
            vfs.push(VfInfo {
                index,
                driver: self.driver(&bdf)?,
                iommu_group: self.iommu_group(&bdf)?,
                bdf,
            });
        }
        Ok(PfInfo {
            bdf: pf_bdf.to_string(),
            interface: self.interface(pf_bdf)?,
            driver: self.driver(pf_bdf)?,
            total_vfs,
            num_vfs,
            vfs,
        })
    }

    /// Every PF with SR-IOV on this host.
    pub fn list_pfs(&self) -> Result<Vec<PfInfo>, PciError> {
        let dir = self.devices();
        let entries = std::fs::read_dir(&dir).map_err(|e| PciError::Read(dir.clone(), e))?;
        let mut bdfs: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|b| dir.join(b).join("sriov_totalvfs").exists())
            .collect();
        bdfs.sort();
        bdfs.iter().map(|b| self.pf_info(b)).collect()
    }

    /// Sets the number of VFs. The kernel only accepts a change from or to
    /// zero, so a different non-zero count first goes through zero. A count
    /// above `sriov_totalvfs` fails before anything is written.
    pub fn set_num_vfs(&self, pf_bdf: &str, n: u32) -> Result<(), PciError> {
        let dev = self.device(pf_bdf)?;
        let total = self.read_u32(&dev.join("sriov_totalvfs"))?;
        if n > total {
            return Err(PciError::TooManyVfs {
                pf: pf_bdf.to_string(),
                total,
                asked: n,
            });
        }
        let path = dev.join("sriov_numvfs");
        let current = self.read_u32(&path)?;
        if current == n {
            return Ok(());
        }
        if current != 0 && n != 0 {
            self.write(&path, "0")?;
        }
        self.write(&path, &n.to_string())
    }

    /// The PF a VF belongs to (its `physfn` link), or an error for a PF.
    pub fn physfn(&self, vf_bdf: &str) -> Result<String, PciError> {
        Self::link_name(&self.device(vf_bdf)?.join("physfn")).ok_or_else(|| PciError::NotVf {
            bdf: vf_bdf.to_string(),
        })
    }

    /// Binds a function to `driver` (e.g. vfio-pci) with `driver_override`,
    /// unbinding it from its current driver first, and checks the result.
    pub fn bind(&self, bdf: &str, driver: &str) -> Result<(), PciError> {
        let dev = self.device(bdf)?;
        self.write(&dev.join("driver_override"), driver)?;
        if let Some(current) = self.driver(bdf)? {
            if current == driver {
                return Ok(());
            }
            self.write(&dev.join("driver/unbind"), bdf)?;
        }
        self.write(&self.root.join("bus/pci/drivers_probe"), bdf)?;
        let now = self.driver(bdf)?.unwrap_or_else(|| "none".into());
        if now != driver {
            return Err(PciError::BindMismatch {
                bdf: bdf.to_string(),
                driver: now,
                want: driver.to_string(),
            });
        }
        Ok(())
    }

    /// Clears `driver_override` and lets the kernel pick the host driver.
    pub fn unbind_to_host(&self, bdf: &str) -> Result<Option<String>, PciError> {
        let dev = self.device(bdf)?;
        if self.driver(bdf)?.is_some() {
            self.write(&dev.join("driver/unbind"), bdf)?;
        }
        // An empty write (a lone newline) clears the override.
        self.write(&dev.join("driver_override"), "\n")?;
        self.write(&self.root.join("bus/pci/drivers_probe"), bdf)?;
        self.driver(bdf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fabricated sysfs with one PF (2 of 7 VFs) and its interface.
    fn fake() -> (PathBuf, Sysfs) {
        let root = std::env::temp_dir().join(format!(
            "viaduct-sysfs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let devs = root.join("bus/pci/devices");
        let pf = devs.join("0000:01:00.0");
        std::fs::create_dir_all(pf.join("net/enp1s0")).unwrap();
        std::fs::write(pf.join("sriov_totalvfs"), "7\n").unwrap();
        std::fs::write(pf.join("sriov_numvfs"), "2\n").unwrap();
        std::fs::create_dir_all(root.join("drivers/igb")).unwrap();
        std::fs::create_dir_all(root.join("kernel/iommu_groups/13")).unwrap();
        symlink(root.join("drivers/igb"), pf.join("driver")).unwrap();
        for i in 0..2 {
            let vf = devs.join(format!("0000:01:10.{i}"));
            std::fs::create_dir_all(&vf).unwrap();
            symlink(&vf, pf.join(format!("virtfn{i}"))).unwrap();
            symlink(&pf, vf.join("physfn")).unwrap();
        }
        symlink(
            root.join("kernel/iommu_groups/13"),
            devs.join("0000:01:10.0/iommu_group"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("class/net")).unwrap();
        symlink(pf.join("net/enp1s0"), root.join("class/net/enp1s0")).unwrap();
        // class/net/<if>/device -> the PF
        symlink(&pf, pf.join("net/enp1s0/device")).unwrap();
        (root.clone(), Sysfs::new(root))
    }

    #[test]
    fn reads_pf_and_vfs() {
        let (root, s) = fake();
        let info = s.pf_info("0000:01:00.0").unwrap();
        assert_eq!(info.total_vfs, 7);
        assert_eq!(info.num_vfs, 2);
        assert_eq!(info.interface.as_deref(), Some("enp1s0"));
        assert_eq!(info.driver.as_deref(), Some("igb"));
        assert_eq!(info.vfs.len(), 2);
        assert_eq!(info.vfs[0].bdf, "0000:01:10.0");
        assert_eq!(info.vfs[0].iommu_group, Some(13));
        assert_eq!(info.vfs[1].iommu_group, None);
        assert_eq!(s.list_pfs().unwrap(), vec![info]);
        assert_eq!(s.physfn("0000:01:10.1").unwrap(), "0000:01:00.0");
        assert!(matches!(
            s.physfn("0000:01:00.0"),
            Err(PciError::NotVf { .. })
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn resolves_pf_by_interface_or_bdf() {
        let (root, s) = fake();
        assert_eq!(s.resolve_pf("enp1s0").unwrap(), "0000:01:00.0");
        assert_eq!(s.resolve_pf("0000:01:00.0").unwrap(), "0000:01:00.0");
        assert!(matches!(
            s.resolve_pf("eth9"),
            Err(PciError::NoInterface(_))
        ));
        assert!(matches!(
            s.resolve_pf("0000:09:00.0"),
            Err(PciError::NoDevice(_))
        ));
        assert!(matches!(
            s.resolve_pf("0000:01:10.0"),
            Err(PciError::NoSriov(_))
        ));
        assert!(matches!(
            s.resolve_pf("../../etc"),
            Err(PciError::NoInterface(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn too_many_vfs_changes_nothing() {
        let (root, s) = fake();
        let err = s.set_num_vfs("0000:01:00.0", 8).unwrap_err();
        assert!(matches!(
            err,
            PciError::TooManyVfs {
                total: 7,
                asked: 8,
                ..
            }
        ));
        let numvfs = root.join("bus/pci/devices/0000:01:00.0/sriov_numvfs");
        assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "2\n");
        // Same count: no write at all.
        s.set_num_vfs("0000:01:00.0", 2).unwrap();
        assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "2\n");
        s.set_num_vfs("0000:01:00.0", 3).unwrap();
        assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "3");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn rejects_malformed_bdfs() {
        let (root, s) = fake();
        for bad in ["", "0000:01:00", "0000:01:00.0/../..", "x"] {
            assert!(s.driver(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
