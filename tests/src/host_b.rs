//! Test host B: a nested KVM host. L1 runs under TCG with an emulated AMD
//! CPU (nested SVM with nested paging, so L1 gets a real `kvm_amd`), an Intel
//! IOMMU with interrupt remapping, QEMU's igb (82576, SR-IOV with 7 VFs)
//! whose wire ends on this host, and an NVMe controller backed by a host
//! image file. Scenarios run inside L1 with project binaries on board.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::initramfs::{Initramfs, InitramfsError};
use crate::kernel::GuestKernel;
use crate::modules::ModuleTree;
use crate::qemu::{GuestRun, RunError, run_guest};
use crate::wire::Responder;

/// Modules L1 loads at boot (dependencies are added automatically).
pub const L1_MODULES: &[&str] = &[
    "kvm_amd",
    "tun",
    "vfio_iommu_type1",
    "vfio_pci",
    "igb",
    "igbvf",
    "nvme",
];

/// Where project binaries live inside L1.
pub const L1_BIN_DIR: &str = "/opt/viaduct/bin";

/// Shell helpers every L1 scenario can call (sourced before the scenario).
pub const L1_LIB: &str = r#"
# The first PCI function with vendor:device $1:$2, as a sysfs path.
pci_find() {
  for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor)" = "$1" ] && [ "$(cat $d/device)" = "$2" ]; then echo $d; return 0; fi
  done
  return 1
}
# The igb PF (82576).
igb_pf() { pci_find 0x8086 0x10c9; }
# Bind a PCI function (sysfs path) to vfio-pci; prints its IOMMU group.
bind_vfio() {
  dev=$1; bdf=$(basename $dev)
  echo vfio-pci > $dev/driver_override
  [ -e $dev/driver ] && echo $bdf > $dev/driver/unbind
  echo $bdf > /sys/bus/pci/drivers_probe
  basename $(readlink $dev/iommu_group)
}
# Count of replies from `ping -c N` output on stdin.
ping_received() { sed -n 's/.* \([0-9]*\) packets received.*/\1/p'; }
"#;

/// The nested test host's QEMU configuration.
#[derive(Debug, Clone)]
pub struct HostB {
    kernel: GuestKernel,
    memory_mib: u32,
    cpus: u32,
    cmdline: String,
    nvme_image: Option<PathBuf>,
    igb_netdev: Option<String>,
}

impl HostB {
    pub fn new(kernel: &GuestKernel) -> Self {
        Self {
            kernel: kernel.clone(),
            memory_mib: 2048,
            cpus: 1,
            cmdline: "console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt".into(),
            nvme_image: None,
            igb_netdev: None,
        }
    }

    pub fn memory_mib(&mut self, mib: u32) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(&mut self, n: u32) -> &mut Self {
        self.cpus = n;
        self
    }

    /// An NVMe controller backed by a raw image file on this host.
    pub fn nvme(&mut self, image: &Path) -> &mut Self {
        self.nvme_image = Some(image.to_path_buf());
        self
    }

    /// An igb NIC whose wire ends at `responder` on this host.
    pub fn igb(&mut self, responder: &Responder) -> &mut Self {
        self.igb_netdev = Some(responder.netdev_arg("n0"));
        self
    }

    /// An L1 initramfs with busybox, the L1 modules, the helper library and
    /// the named project binaries under [`L1_BIN_DIR`].
    pub fn base_initramfs(
        kernel: &GuestKernel,
        binaries: &[(&str, &Path)],
    ) -> Result<Initramfs, InitramfsError> {
        let tree = ModuleTree::open(&kernel.modules)?;
        let mut img = Initramfs::new();
        img.busybox()?.modules(&tree, L1_MODULES)?;
        img.file("etc/viaduct/lib.sh", L1_LIB, 0o644);
        for (name, path) in binaries {
            img.binary(&format!("{L1_BIN_DIR}/{name}"), path)?;
        }
        Ok(img)
    }

    /// The QEMU command for L1 with `initramfs`.
    pub fn command(&self, initramfs: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "EPYC",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-machine", "q35,kernel-irqchip=split"])
        .args(["-device", "intel-iommu,intremap=on"])
        .args([
            "-m",
            &format!("{}M", self.memory_mib),
            "-smp",
            &self.cpus.to_string(),
        ])
        .arg("-kernel")
        .arg(&self.kernel.bzimage)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &self.cmdline]);
        if let Some(netdev) = &self.igb_netdev {
            cmd.args(["-netdev", netdev])
                .args(["-device", "igb,netdev=n0,mac=52:54:00:12:34:56"]);
        }
        if let Some(img) = &self.nvme_image {
            cmd.args([
                "-drive",
                &format!(
                    "file={},if=none,id=nvm,format=raw,cache=writeback",
                    img.display()
                ),
            ])
            .args(["-device", "nvme,serial=viaduct-nvme,drive=nvm"]);
        }
        cmd
    }

    /// Boots L1, runs its scenario, and waits for power-off (or `timeout`).
    pub fn boot(
        &self,
        initramfs: &Path,
        timeout: Duration,
        log: Option<PathBuf>,
    ) -> Result<GuestRun, RunError> {
        run_guest(self.command(initramfs), timeout, log.as_deref())
    }
}
