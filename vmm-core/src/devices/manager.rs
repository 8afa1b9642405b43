//! The device manager: creates the VM's devices and wires them to KVM and
//! the buses. Platform devices go on the port bus; PCI bus 0 gets the host
//! bridge, one virtio-pci function per vhost-user disk and NIC, and the
//! passed-through functions, with BARs placed, MSI-X routed over KVM and
//! doorbells turned into ioeventfds. It borrows the VM's parts; the `Vm`
//! itself stays out of here.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use pci::{BarAllocError, BarAllocator};
use virtio_devices::transport::VirtioDevice;
use virtio_devices::transport::virtio_pci::{VirtioPciDevice, VirtioPciError};
use virtio_devices::vhost_user::{DeviceKind, GuestRegion, VhostUserDevice, VhostUserError};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::boot::layout;
use crate::config::VmConfig;
use crate::control::DeviceEntry;
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::bus::{Bus, BusError};
use crate::devices::cmos::{self, Cmos};
use crate::devices::console::ConsoleOutput;
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{COM1_BASE, COM1_GSI, COM1_LEN, SerialDevice};
use crate::lifecycle::Lifecycle;
use crate::memory::GuestRam;
use crate::pci::ecam::Ecam;
use crate::pci::host_bridge::HostBridge;
use crate::pci::msi::{GsiRouting, KvmMsiRoutes, MsiError};
use crate::pci::root::{self as pci_root, PciRoot, PciRootError};
use crate::vfio::{Passthrough, PciPlacement, VfioError};

/// Why a device could not be created or wired.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("KVM {0} failed")]
    KvmCall(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("{0}")]
    VhostUser(String, #[source] VhostUserError),
    #[error(transparent)]
    VirtioPci(#[from] VirtioPciError),
    #[error(transparent)]
    Msi(#[from] MsiError),
    #[error(transparent)]
    BarAlloc(#[from] BarAllocError),
    #[error(transparent)]
    PciSlot(#[from] PciRootError),
    #[error("guest memory region at {0:#x} has no host mapping")]
    NoHostMapping(u64),
    #[error(transparent)]
    Vfio(#[from] VfioError),
}

/// The parts of a VM its devices are wired to.
pub struct DeviceManager<'a> {
    pub fd: &'a Arc<VmFd>,
    pub ram: &'a GuestRam,
    pub pio: &'a Arc<Bus>,
    pub mmio: &'a Arc<Bus>,
    pub lifecycle: &'a Arc<Lifecycle>,
    pub passthrough: &'a Passthrough,
}

impl std::fmt::Debug for DeviceManager<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("ram", &self.ram)
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl DeviceManager<'_> {
    /// COM1 (IRQ 4 via irqfd), the i8042 reset line, the CMOS clock and the
    /// ACPI power-management registers.
    pub fn add_platform_devices(
        &self,
        console: Option<Box<dyn Write + Send>>,
    ) -> Result<Arc<Mutex<SerialDevice>>, DeviceError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        self.fd
            .register_irqfd(&irq, COM1_GSI)
            .map_err(|e| DeviceError::KvmCall("IRQFD (COM1)", e))?;
        let out = ConsoleOutput::new(console, self.lifecycle.clone());
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
        self.pio.insert(serial.clone(), COM1_BASE, COM1_LEN)?;
        for port in [i8042::DATA_PORT, i8042::COMMAND_PORT] {
            let dev = Arc::new(Mutex::new(I8042::new(self.lifecycle.clone(), port)));
            self.pio.insert(dev, port, 1)?;
        }
        self.pio
            .insert(Arc::new(Mutex::new(Cmos::default())), cmos::PORT, 2)?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(self.lifecycle.clone())));
        self.pio.insert(pm, acpi_pm::BASE, acpi_pm::LEN)?;
        Ok(serial)
    }

    /// All guest RAM as a vhost-user backend must map it.
    pub fn guest_regions(&self) -> Result<Vec<GuestRegion>, DeviceError> {
        self.ram
            .ranges
            .iter()
            .map(|r| {
                let hva = self
                    .ram
                    .mem
                    .get_host_address(GuestAddress(r.guest_addr))
                    .map_err(|_| DeviceError::NoHostMapping(r.guest_addr))?;
                Ok(GuestRegion {
                    gpa: r.guest_addr,
                    size: r.size,
                    hva: hva as u64,
                    fd: self.ram.memfd.as_raw_fd(),
                    file_offset: r.file_offset,
                })
            })
            .collect()
    }

    /// PCI bus 0 (ports 0xCF8-0xCFF) with the host bridge and one
    /// virtio-pci function per vhost-user disk and NIC, connected to
    /// their backends now, before any vCPU runs.
    pub fn add_pci_devices(&self, cfg: &VmConfig) -> Result<Vec<DeviceEntry>, DeviceError> {
        let routing = Arc::new(Mutex::new(GsiRouting::new(self.fd.clone())));
        let mut root = PciRoot::new(self.mmio.clone(), Some(self.fd.clone()));
        root.add(0, Arc::new(Mutex::new(HostBridge::default())))?;
        // Virtio BARs are 64-bit: above RAM. Passthrough BARs may be 32-bit only.
        let mut bars = BarAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
        let mut bars64 = BarAllocator::new(layout::PCI_MMIO64_START, layout::PCI_MMIO64_SIZE);
        let regions = self.guest_regions()?;
        // (id, name, socket, kind, queue size) of every vhost-user device,
        // disks first: they get the lower slots.
        let disks = cfg.disks.iter().enumerate().map(|(i, d)| {
            let kind = DeviceKind::Block {
                num_queues: d.num_queues,
            };
            (format!("disk{i}"), "disk", &d.socket, kind, d.queue_size)
        });
        let nets = cfg.nets.iter().enumerate().map(|(i, n)| {
            let kind = DeviceKind::Net {
                mac: n.mac,
                queue_pairs: n.num_queue_pairs,
            };
            (format!("net{i}"), "net", &n.socket, kind, n.queue_size)
        });
        let mut devices: Vec<(String, String, Arc<Mutex<VhostUserDevice>>)> = Vec::new();
        for (id, what, socket, kind, queue_size) in disks.chain(nets) {
            let name = format!("{what} {}", socket.display());
            let dev = VhostUserDevice::connect(
                socket,
                kind,
                queue_size,
                regions.clone(),
                self.ram.mem.clone(),
            )
            .map_err(|e| DeviceError::VhostUser(name.clone(), e))?;
            devices.push((id, name, Arc::new(Mutex::new(dev))));
        }
        let first_vfio_slot =
            u8::try_from(devices.len() + 1).map_err(|_| PciRootError::Slot(u8::MAX))?;
        let mut entries = Vec::with_capacity(devices.len());
        for (i, (id, name, dev)) in devices.into_iter().enumerate() {
            let slot = u8::try_from(i + 1).map_err(|_| PciRootError::Slot(u8::MAX))?;
            let routes = KvmMsiRoutes::new(self.fd.clone(), routing.clone(), dev.num_queues() + 1)?;
            let transport: Box<dyn VirtioDevice> = Box::new(dev.clone());
            let mut pci = VirtioPciDevice::new(transport, Box::new(routes))?;
            use pci::PciDevice;
            for bar in pci.bars() {
                let addr = bars64.allocate(bar.size)?;
                pci.set_bar_addr(bar.index, addr);
                log::info!(
                    "{name}: PCI 00:{slot:02x}.0, BAR {} at {addr:#x}",
                    bar.index
                );
            }
            let notify_exits = pci.notify_exit_counter();
            let pci = Arc::new(Mutex::new(pci));
            root.add(slot, pci.clone())?;
            entries.push(DeviceEntry {
                id,
                pci: format!("00:{slot:02x}.0"),
                backend: dev,
                transport: pci,
                notify_exits,
            });
        }
        self.passthrough.attach(
            self.fd,
            self.ram,
            &cfg.vfio,
            PciPlacement {
                root: &mut root,
                bars: &mut bars,
                routing: &routing,
                first_slot: first_vfio_slot,
            },
        )?;
        let root = Arc::new(Mutex::new(root));
        self.mmio.insert(
            Arc::new(Mutex::new(Ecam::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        self.pio
            .insert(root, pci_root::CONFIG_PORT, pci_root::CONFIG_PORT_LEN)?;
        Ok(entries)
    }
}
