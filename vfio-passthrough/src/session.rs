//! One VM's passthrough: the KVM VFIO pseudo-device and the VFIO container
//! (one IOMMU domain for all the VM's devices), guest RAM mapped for DMA
//! once the first group is attached, each device checked, opened and reset
//! before the guest starts, and the reverse at the end (MSI-X off, BARs
//! out, reset, DMA unmapped) so the devices stay on vfio-pci, reusable.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use pci::MsiRoutes;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use crate::bars::SlotAllocator;
use crate::device::{DeviceError, VfioPciDevice};
use crate::dma::{DmaError, DmaMap, DmaRange};
use crate::group::{self, GroupError};
use crate::reset;
use crate::sriov::pci::Sysfs;
use crate::vf::{self, VfError};

/// Why passthrough could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot create the KVM VFIO device (is the kvm module built with VFIO support?)")]
    KvmDevice(#[source] kvm_ioctls::Error),
    #[error(
        "no VFIO on this host (/dev/vfio/vfio missing): load vfio-pci (modprobe vfio-pci) with the IOMMU on (intel_iommu=on or amd_iommu=on)"
    )]
    NoVfio,
    #[error("cannot open the VFIO container")]
    Container(#[source] VfioError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("{0} is in use (another VM or process holds /dev/vfio/{1}); stop it first")]
    InUse(String, u32),
    #[error("cannot open {0} through VFIO")]
    Open(String, #[source] VfioError),
    #[error("{0}: mac=/vlan=")]
    Vf(String, #[source] VfError),
    #[error(transparent)]
    Dma(#[from] DmaError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What the operator asked for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub bdf: String,
    pub mac: Option<[u8; 6]>,
    pub vlan: Option<u16>,
    /// Show the device's MSI-X capability to the guest (default); without
    /// it the guest uses MSI.
    pub msix: bool,
}

/// The passthrough devices of one VM.
pub struct VfioSession {
    vm: Arc<VmFd>,
    container: Arc<VfioContainer>,
    ram: Vec<DmaRange>,
    dma: Option<DmaMap>,
    slots: Arc<Mutex<SlotAllocator>>,
    devices: Vec<Arc<Mutex<VfioPciDevice>>>,
}

impl std::fmt::Debug for VfioSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioSession")
            .field("ram", &self.ram)
            .field("dma", &self.dma)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl VfioSession {
    /// Creates the container for `vm`; memory slots from `first_slot` up
    /// are used for BAR mappings.
    ///
    /// # Safety
    ///
    /// `ram` must describe live guest RAM mappings that stay mapped for the
    /// session's life and that the VMM touches only through volatile
    /// accesses and system calls, never Rust references (devices DMA into it).
    pub unsafe fn new(
        vm: Arc<VmFd>,
        ram: Vec<DmaRange>,
        first_slot: u32,
    ) -> Result<Self, SessionError> {
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(SessionError::NoVfio);
        }
        let mut cd = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_dev = vm.create_device(&mut cd).map_err(SessionError::KvmDevice)?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_dev));
        let container = VfioContainer::new(Some(handle)).map_err(SessionError::Container)?;
        Ok(Self {
            vm,
            container: Arc::new(container),
            ram,
            dma: None,
            // KVM allows 32764 user slots on x86; RAM uses the first few.
            slots: Arc::new(Mutex::new(SlotAllocator::new(first_slot, 32_000))),
            devices: Vec::new(),
        })
    }

    /// Checks, configures (mac/vlan on a VF), opens and resets one device,
    /// maps guest RAM for DMA (first device), and builds its model.
    pub fn open(
        &mut self,
        spec: &DeviceSpec,
        routes: impl FnMut(u16) -> std::io::Result<Box<dyn MsiRoutes>>,
        intx_gsi: &dyn Fn(u8) -> Option<u32>,
    ) -> Result<Arc<Mutex<VfioPciDevice>>, SessionError> {
        let checked = group::check(Path::new("/sys"), Path::new("/dev/vfio"), &spec.bdf)?;
        let bdf = checked.bdf.clone();
        if spec.mac.is_some() || spec.vlan.is_some() {
            let (iface, index) = vf::configure(&Sysfs::default(), &bdf, spec.mac, spec.vlan)
                .map_err(|e| SessionError::Vf(bdf.clone(), e))?;
            log::info!("{bdf}: VF {index} of {iface} configured (mac/vlan) before the guest");
        }
        let container: Arc<dyn vfio_ioctls::VfioOps> = self.container.clone();
        let dev = VfioDevice::new(&checked.sysfs_path, container, false).map_err(|e| match &e {
            VfioError::OpenGroup(io, _) if io.raw_os_error() == Some(libc::EBUSY) => {
                SessionError::InUse(bdf.clone(), checked.group)
            }
            VfioError::GroupViable => SessionError::Group(GroupError::NotViable {
                bdf: bdf.clone(),
                group: checked.group,
                other: "another function".into(),
                driver: "a host driver".into(),
            }),
            _ => SessionError::Open(bdf.clone(), e),
        })?;
        let dev = Arc::new(dev);
        match reset::reset(&*dev) {
            Ok(()) => log::info!("{bdf}: reset before the guest"),
            Err(e) => log::warn!("{bdf}: reset before the guest: {e}"),
        }
        if self.dma.is_none() {
            // SAFETY: `self.ram` satisfies DmaMap::map's contract by the
            // contract of `VfioSession::new`.
            self.dma = Some(unsafe { DmaMap::map(&self.container, &self.ram) }?);
            log::info!(
                "guest RAM mapped for DMA at IOVA = GPA ({} ranges)",
                self.ram.len()
            );
        }
        let model = VfioPciDevice::new(
            &bdf,
            dev,
            self.vm.clone(),
            self.slots.clone(),
            spec.msix,
            routes,
            intx_gsi,
        )?;
        let model = Arc::new(Mutex::new(model));
        self.devices.push(model.clone());
        Ok(model)
    }

    /// Ends passthrough: every device shut down and reset, DMA unmapped.
    pub fn shutdown(&mut self) {
        for d in self.devices.drain(..) {
            d.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        if let Some(mut dma) = self.dma.take() {
            dma.unmap(&self.container);
            log::info!("guest RAM unmapped from the IOMMU");
        }
    }
}
