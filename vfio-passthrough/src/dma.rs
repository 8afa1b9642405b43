//! DMA for passed-through devices: all guest RAM mapped in the container's
//! IOMMU domain at IOVA = GPA, before any device is enabled, and unmapped
//! when the VM ends.

use vfio_ioctls::VfioContainer;

/// One contiguous piece of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRange {
    pub gpa: u64,
    pub size: u64,
    /// Host virtual address of the piece's first byte.
    pub hva: u64,
}

/// Why guest RAM could not be mapped for DMA.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("guest RAM range at {0:#x} is too large for this host")]
    TooLarge(u64),
    #[error(
        "VFIO_IOMMU_MAP_DMA of guest RAM at {gpa:#x} ({size:#x} bytes) failed (locked-memory limit? `ulimit -l`)"
    )]
    Map {
        gpa: u64,
        size: u64,
        #[source]
        source: vfio_ioctls::VfioError,
    },
}

/// Guest RAM as mapped in one container.
#[derive(Debug, Default)]
pub struct DmaMap {
    mapped: Vec<DmaRange>,
}

impl DmaMap {
    /// Maps every range at IOVA = GPA.
    ///
    /// # Safety
    ///
    /// Every range must be a live mapping of guest RAM that stays mapped
    /// until [`DmaMap::unmap`] (the VM's whole life), that the VMM touches
    /// only through volatile accesses and system calls (vm-memory), never
    /// through Rust references: the device reads and writes it at any time.
    pub unsafe fn map(container: &VfioContainer, ranges: &[DmaRange]) -> Result<Self, DmaError> {
        let mut map = DmaMap::default();
        for r in ranges {
            let size = usize::try_from(r.size).map_err(|_| DmaError::TooLarge(r.gpa))?;
            // SAFETY: the caller guarantees the range is live guest RAM
            // accessed only volatilely until it is unmapped.
            let res = unsafe { container.vfio_dma_map(r.gpa, size, r.hva as *mut u8) };
            if let Err(source) = res {
                map.unmap(container);
                return Err(DmaError::Map {
                    gpa: r.gpa,
                    size: r.size,
                    source,
                });
            }
            map.mapped.push(*r);
        }
        Ok(map)
    }

    /// Unmaps everything mapped; failures are logged (the VM is ending).
    pub fn unmap(&mut self, container: &VfioContainer) {
        for r in self.mapped.drain(..) {
            let Ok(size) = usize::try_from(r.size) else {
                continue;
            };
            if let Err(e) = container.vfio_dma_unmap(r.gpa, size) {
                log::warn!("VFIO DMA unmap of {:#x}+{:#x}: {e}", r.gpa, r.size);
            }
        }
    }

    pub fn ranges(&self) -> &[DmaRange] {
        &self.mapped
    }
}
