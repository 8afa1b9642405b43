//! `--device vfio=BDF[,mac=MAC][,vlan=ID]`: passed-through PCI functions on
//! the VM's PCI bus. The VFIO work is in the `vfio_passthrough` crate; this
//! file connects it to the VM: guest RAM for DMA, MSI routes over the VM's
//! GSI table, INTx on the IOAPIC GSI the DSDT's `_PRT` gives the slot, BAR
//! placement, and shutdown after the guest ends.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use pci::{MsiRoutes, PciDevice};
use vfio_passthrough::dma::DmaRange;
use vfio_passthrough::session::{DeviceSpec, SessionError, VfioSession};
use vm_memory::GuestMemoryBackend;

use crate::memory::GuestRam;
use crate::pci::msi::{GsiRouting, KvmMsiRoutes};
use crate::pci::root::{PciRoot, PciRootError};
use pci::{BarAllocError, BarAllocator};

/// First KVM memory slot for BAR mappings (RAM uses the ones below).
const FIRST_BAR_SLOT: u32 = 16;

/// Why passthrough could not be added to the VM.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("--device vfio={0}")]
    Session(String, #[source] SessionError),
    #[error("--device vfio={0}: guest RAM at {1:#x} has no host mapping")]
    NoHostMapping(String, u64),
    #[error("--device vfio={0}: BAR placement")]
    Bar(String, #[source] BarAllocError),
    #[error(transparent)]
    Slot(#[from] PciRootError),
}

/// The VM's passthrough devices, shut down (reset, DMA unmapped) when the
/// guest has ended.
#[derive(Default, Debug)]
pub struct Passthrough {
    session: Mutex<Option<VfioSession>>,
}

/// Where passed-through functions go on the VM's PCI bus.
#[derive(Debug)]
pub struct PciPlacement<'a> {
    pub root: &'a mut PciRoot,
    /// BAR window (passthrough BARs may be 32-bit only).
    pub bars: &'a mut BarAllocator,
    pub routing: &'a Arc<Mutex<GsiRouting>>,
    /// The first free slot; functions take consecutive slots from here.
    pub first_slot: u8,
}

impl Passthrough {
    /// Opens every `--device vfio=` function and puts it on the bus from
    /// `at.first_slot` on, before any vCPU runs. DMA covers all of
    /// `guest_ram`; MSI routes and irqfds go to `vmfd`.
    pub fn attach(
        &self,
        vmfd: &Arc<VmFd>,
        guest_ram: &GuestRam,
        specs: &[DeviceSpec],
        at: PciPlacement<'_>,
    ) -> Result<(), VfioError> {
        let PciPlacement {
            root,
            bars,
            routing,
            first_slot,
        } = at;
        let Some(first) = specs.first() else {
            return Ok(());
        };
        let mut ram = Vec::with_capacity(guest_ram.ranges.len());
        for r in &guest_ram.ranges {
            let hva = guest_ram
                .mem
                .get_host_address(vm_memory::GuestAddress(r.guest_addr))
                .map_err(|_| VfioError::NoHostMapping(first.bdf.clone(), r.guest_addr))?;
            ram.push(DmaRange {
                gpa: r.guest_addr,
                size: r.size,
                hva: hva as u64,
            });
        }
        // SAFETY: `ram` is the VM's memfd mapping, alive as long as the VM
        // (the process) and touched by the VMM only through vm-memory's
        // volatile accessors and system calls.
        let mut session = unsafe { VfioSession::new(vmfd.clone(), ram, FIRST_BAR_SLOT) }
            .map_err(|e| VfioError::Session(first.bdf.clone(), e))?;
        for (i, spec) in specs.iter().enumerate() {
            let slot = u8::try_from(i)
                .ok()
                .and_then(|i| first_slot.checked_add(i))
                .ok_or(PciRootError::Slot(u8::MAX))?;
            let vmfd = vmfd.clone();
            let routing = routing.clone();
            let routes = move |n: u16| -> std::io::Result<Box<dyn MsiRoutes>> {
                let r = KvmMsiRoutes::new(vmfd.clone(), routing.clone(), n)
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(r))
            };
            let intx = move |pin: u8| crate::pci::intx_gsi(slot, pin);
            let dev = session
                .open(spec, routes, &intx)
                .map_err(|e| VfioError::Session(spec.bdf.clone(), e))?;
            {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                for bar in d.bars() {
                    let addr = bars
                        .allocate(bar.size)
                        .map_err(|e| VfioError::Bar(spec.bdf.clone(), e))?;
                    d.set_bar_addr(bar.index, addr);
                    log::info!(
                        "vfio {}: PCI 00:{slot:02x}.0, BAR {} ({:#x} bytes) at {addr:#x}",
                        spec.bdf,
                        bar.index,
                        bar.size
                    );
                }
            }
            root.add(slot, dev)?;
        }
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
        Ok(())
    }

    /// After the guest: MSI-X off, BARs unmapped, devices reset, DMA unmapped.
    pub fn shutdown(&self) {
        if let Some(mut s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.shutdown();
        }
    }
}
