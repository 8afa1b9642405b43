//! BARs of a passed-through function in the guest: the mmap-able parts of
//! each VFIO BAR region are mapped once into the VMM and placed in the
//! guest as KVM user memory slots at the BAR's guest address (moved when
//! the guest moves the BAR, dropped while memory decoding is off), so
//! guest accesses reach the device without an exit. The pages holding the
//! MSI-X table and PBA are never mapped: the VMM emulates them. Whatever
//! is not mapped exits to the VMM and is forwarded to the region.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pci::BarRegion;

/// Why a BAR area could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum BarError {
    #[error("mmap of BAR {bar} at {offset:#x} ({size:#x} bytes) failed")]
    Mmap {
        bar: usize,
        offset: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("no free KVM memory slot")]
    NoSlot,
    #[error("KVM_SET_USER_MEMORY_REGION for BAR {bar} at {gpa:#x} failed")]
    Slot {
        bar: usize,
        gpa: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A byte range inside a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub offset: u64,
    pub size: u64,
}

/// The parts of a region to map into the guest (pure): the region's
/// mmap-able areas (its sparse list, or all of it) minus the pages that
/// hold `trapped` ranges, trimmed to whole pages.
pub fn mappable_areas(
    region_size: u64,
    mmap: bool,
    sparse: Option<&[Area]>,
    trapped: &[Area],
    page: u64,
) -> Vec<Area> {
    if !mmap || region_size < page {
        return Vec::new();
    }
    let whole = [Area {
        offset: 0,
        size: region_size,
    }];
    let mut areas: Vec<(u64, u64)> = sparse
        .unwrap_or(&whole)
        .iter()
        .filter_map(|a| {
            let end = a.offset.saturating_add(a.size).min(region_size);
            Some((a.offset.checked_next_multiple_of(page)?, end / page * page))
        })
        .filter(|(s, e)| s < e)
        .collect();
    for t in trapped.iter().filter(|t| t.size > 0) {
        let ts = t.offset / page * page;
        let te = t
            .offset
            .saturating_add(t.size)
            .checked_next_multiple_of(page)
            .unwrap_or(u64::MAX);
        let mut next = Vec::with_capacity(areas.len() + 1);
        for (s, e) in areas {
            if te <= s || ts >= e {
                next.push((s, e));
                continue;
            }
            if s < ts {
                next.push((s, ts));
            }
            if te < e {
                next.push((te, e));
            }
        }
        areas = next;
    }
    areas
        .into_iter()
        .map(|(s, e)| Area {
            offset: s,
            size: e - s,
        })
        .collect()
}

/// KVM memory slot numbers shared by every passed-through device of a VM.
#[derive(Debug)]
pub struct SlotAllocator {
    next: u32,
    limit: u32,
    free: Vec<u32>,
}

impl SlotAllocator {
    /// Slots `first..limit` (the VMM keeps the ones below for RAM).
    pub fn new(first: u32, limit: u32) -> Self {
        Self {
            next: first,
            limit,
            free: Vec::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.next >= self.limit {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// One area of a BAR mapped into the VMM.
#[derive(Debug)]
struct MappedArea {
    bar: usize,
    area: Area,
    hva: usize,
    /// The length passed to mmap (`area.size`, which fits in a usize).
    len: usize,
    /// (slot, guest address) while the area is in the guest.
    placed: Option<(u32, u64)>,
}

/// Every mapped BAR area of one device, and where each is in the guest.
pub struct BarMaps {
    vm: Arc<VmFd>,
    slots: Arc<Mutex<SlotAllocator>>,
    areas: Vec<MappedArea>,
}

impl std::fmt::Debug for BarMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarMaps")
            .field("areas", &self.areas)
            .finish_non_exhaustive()
    }
}

impl BarMaps {
    pub fn new(vm: Arc<VmFd>, slots: Arc<Mutex<SlotAllocator>>) -> Self {
        Self {
            vm,
            slots,
            areas: Vec::new(),
        }
    }

    /// Maps `area` of BAR `bar` (at `region_offset` in the device fd) into the VMM.
    pub fn mmap(
        &mut self,
        device_fd: i32,
        bar: usize,
        region_offset: u64,
        area: Area,
    ) -> Result<(), BarError> {
        let err = |source| BarError::Mmap {
            bar,
            offset: area.offset,
            size: area.size,
            source,
        };
        let len = usize::try_from(area.size)
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        let off = region_offset
            .checked_add(area.offset)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        // SAFETY: a fresh shared mapping of the device fd chosen by the
        // kernel (no MAP_FIXED), so no existing memory is replaced; it is
        // only handed to KVM and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device_fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        self.areas.push(MappedArea {
            bar,
            area,
            hva: p as usize,
            len,
            placed: None,
        });
        Ok(())
    }

    fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        hva: usize,
    ) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva as u64,
        };
        // SAFETY: `hva..hva+size` is a live mapping of the device's BAR
        // owned by `self`; the slot is removed (size 0) before the mapping
        // is unmapped in Drop.
        unsafe { self.vm.set_user_memory_region(region) }
    }

    /// Places every area at its BAR's address in `placed` (the BARs the
    /// guest has enabled), and takes out areas whose BAR is gone.
    pub fn reconcile(&mut self, placed: &[BarRegion]) -> Result<(), BarError> {
        for i in 0..self.areas.len() {
            let a = &self.areas[i];
            let want = placed
                .iter()
                .find(|b| b.index == a.bar)
                .and_then(|b| b.addr.checked_add(a.area.offset));
            if a.placed.map(|p| p.1) == want {
                continue;
            }
            if let Some((slot, gpa)) = a.placed {
                if let Err(e) = self.set_slot(slot, gpa, 0, a.hva) {
                    log::warn!("removing BAR {} slot at {gpa:#x}: {e}", a.bar);
                }
                self.slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(slot);
                self.areas[i].placed = None;
            }
            let a = &self.areas[i];
            if let Some(gpa) = want {
                let slot = self
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allocate()
                    .ok_or(BarError::NoSlot)?;
                if let Err(source) = self.set_slot(slot, gpa, a.area.size, a.hva) {
                    self.slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .release(slot);
                    return Err(BarError::Slot {
                        bar: a.bar,
                        gpa,
                        source,
                    });
                }
                log::debug!(
                    "BAR {} +{:#x} ({:#x} bytes) mapped at {gpa:#x} (slot {slot})",
                    a.bar,
                    a.area.offset,
                    a.area.size
                );
                self.areas[i].placed = Some((slot, gpa));
            }
        }
        Ok(())
    }

    /// The mapped areas: (BAR, area, guest address if placed).
    pub fn areas(&self) -> Vec<(usize, Area, Option<u64>)> {
        self.areas
            .iter()
            .map(|a| (a.bar, a.area, a.placed.map(|p| p.1)))
            .collect()
    }
}

impl Drop for BarMaps {
    fn drop(&mut self) {
        let _ = self.reconcile(&[]);
        for a in self.areas.drain(..) {
            // SAFETY: `hva`/`len` is exactly a mapping made in `mmap` and
            // no longer in any KVM slot (reconcile above removed them).
            unsafe { libc::munmap(a.hva as *mut libc::c_void, a.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn a(offset: u64, size: u64) -> Area {
        Area { offset, size }
    }

    #[test]
    fn whole_bar_minus_msix_pages() {
        // igb BAR3: 16K, table at 0 (10 vectors), PBA at 0x2000.
        let got = mappable_areas(0x4000, true, None, &[a(0, 160), a(0x2000, 8)], P);
        assert_eq!(got, vec![a(0x1000, 0x1000), a(0x3000, 0x1000)]);
    }

    #[test]
    fn sparse_areas_are_honoured_and_trimmed() {
        let sparse = [a(0, 0x2000), a(0x3000, 0x1800), a(0x8000, 0x100)];
        let got = mappable_areas(0x10000, true, Some(&sparse), &[], P);
        assert_eq!(got, vec![a(0, 0x2000), a(0x3000, 0x1000)]);
        // An area running past the region is cut at its end.
        let got = mappable_areas(0x2000, true, Some(&[a(0x1000, u64::MAX)]), &[], P);
        assert_eq!(got, vec![a(0x1000, 0x1000)]);
    }

    #[test]
    fn nothing_for_small_or_unmappable_regions() {
        assert!(mappable_areas(0x20, true, None, &[], P).is_empty());
        assert!(mappable_areas(0x20000, false, None, &[], P).is_empty());
        // Table in the middle of an NVMe-like BAR0 splits it.
        let got = mappable_areas(0x4000, true, None, &[a(0x2000, 65 * 16)], P);
        assert_eq!(got, vec![a(0, 0x2000), a(0x3000, 0x1000)]);
        // A table spanning everything leaves nothing.
        assert!(mappable_areas(0x2000, true, None, &[a(0, 0x2000)], P).is_empty());
    }

    #[test]
    fn slots_are_reused() {
        let mut s = SlotAllocator::new(16, 18);
        assert_eq!(
            (s.allocate(), s.allocate(), s.allocate()),
            (Some(16), Some(17), None)
        );
        s.release(16);
        assert_eq!(s.allocate(), Some(16));
    }
}
