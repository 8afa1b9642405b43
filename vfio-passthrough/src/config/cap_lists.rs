//! The capability lists as the guest sees them: standard capabilities kept
//! (PM, MSI, PCIe, MSI-X unless hidden) relinked, extended ones hidden
//! (SR-IOV, ARI, resizable BAR) with their headers rewritten, and the
//! MSI-X layout read from its capability.

use pci::msi_cap::MsiCap;

use super::{
    CAP_MSI, CAP_MSIX, CAP_PTR, EXT_SIZE, HIDDEN_ECAPS, KEPT_CAPS, STD_SIZE, VirtualConfig,
    byte_at, le32,
};
use crate::cap_extent::{HiddenRanges, ext_extent, std_extent};

/// Where the MSI-X table and PBA are, from the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Offset of the capability in config space.
    pub cap: u64,
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u64,
    pub pba_bar: u8,
    pub pba_offset: u64,
}

impl MsixLayout {
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * 16
    }
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// The standard capability list as the guest sees it.
pub(super) struct StdCaps {
    /// (offset of a kept capability, next kept offset).
    pub(super) chain: Vec<(u64, u8)>,
    pub(super) first: u8,
    pub(super) msix: Option<MsixLayout>,
    pub(super) msi: Option<MsiCap>,
    /// Where the capabilities left out lie.
    pub(super) hidden: HiddenRanges,
}

impl VirtualConfig {
    pub(super) fn filter_std_caps(raw: &[u8], keep_msix: bool) -> StdCaps {
        let status = u16::from_le_bytes([raw[6], raw[7]]);
        // Pointers of the capabilities kept, in list order.
        let mut kept: Vec<u8> = Vec::new();
        let mut msix = None;
        let mut msi = None;
        // (offset, id) of every capability on the device's list.
        let mut listed: Vec<(u64, u8)> = Vec::new();
        if status & 0x10 != 0 {
            let mut ptr = byte_at(raw, CAP_PTR).unwrap_or(0) & 0xfc;
            let mut seen = Vec::new();
            // 48 capabilities at most fit in 192 bytes; a loop ends here.
            for _ in 0..48 {
                if ptr < 0x40 || seen.contains(&ptr) {
                    break;
                }
                seen.push(ptr);
                let off = usize::from(ptr);
                let id = raw[off];
                listed.push((off as u64, id));
                let hidden = id == CAP_MSIX && !keep_msix;
                if id == CAP_MSI {
                    // Kept only if its registers fit in the standard space.
                    msi = MsiCap::parse(raw, off as u64);
                    if msi.is_some() {
                        kept.push(ptr);
                    }
                } else if KEPT_CAPS.contains(&id) && !hidden {
                    kept.push(ptr);
                }
                if id == CAP_MSIX && !hidden && off + 12 <= STD_SIZE {
                    let ctrl = u16::from_le_bytes([raw[off + 2], raw[off + 3]]);
                    let table = le32(raw, off as u64 + 4);
                    let pba = le32(raw, off as u64 + 8);
                    msix = Some(MsixLayout {
                        cap: off as u64,
                        vectors: (ctrl & 0x7ff) + 1,
                        table_bar: (table & 7) as u8,
                        table_offset: u64::from(table & !7),
                        pba_bar: (pba & 7) as u8,
                        pba_offset: u64::from(pba & !7),
                    });
                }
                ptr = raw[off + 1] & 0xfc;
            }
        }
        let mut chain: Vec<(u64, u8)> = Vec::with_capacity(kept.len());
        for (i, ptr) in kept.iter().enumerate() {
            let next = kept.get(i + 1).copied().unwrap_or(0);
            chain.push((u64::from(*ptr), next));
        }
        let first = kept.first().copied().unwrap_or(0);
        let offsets: Vec<u64> = listed.iter().map(|(o, _)| *o).collect();
        let mut hidden = HiddenRanges::default();
        let is_kept = |o: &u64| chain.iter().any(|(c, _)| c == o);
        for &(off, id) in listed.iter().filter(|(o, _)| !is_kept(o)) {
            hidden.push(std_extent(raw, id, off, &offsets, STD_SIZE as u64));
        }
        StdCaps {
            chain,
            first,
            msix,
            msi,
            hidden,
        }
    }

    /// The virtual headers of the extended list; adds the hidden
    /// capabilities' extents to `hidden`.
    pub(super) fn filter_ext_caps(raw: &[u8], hidden: &mut HiddenRanges) -> Vec<(u64, u32)> {
        let mut all = Vec::new();
        let mut off = 0x100u64;
        // 4 KiB holds at most 960 four-byte headers; a loop ends here.
        for _ in 0..960 {
            let h = le32(raw, off);
            if h == 0 || h == u32::MAX || all.iter().any(|(o, _)| *o == off) {
                break;
            }
            all.push((off, h));
            let next = u64::from((h >> 20) & 0xffc);
            if next < 0x100 {
                break;
            }
            off = next;
        }
        let kept: Vec<(u64, u32)> = all
            .iter()
            .copied()
            .filter(|(_, h)| !HIDDEN_ECAPS.contains(&((h & 0xffff) as u16)))
            .collect();
        if kept.len() == all.len() {
            return Vec::new();
        }
        let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
        for (off, h) in &all {
            let id = (h & 0xffff) as u16;
            if HIDDEN_ECAPS.contains(&id) {
                hidden.push(ext_extent(raw, id, *off, &offsets, EXT_SIZE as u64));
            }
        }
        // A header's next pointer: the offsets above are dword-aligned and
        // below 4 KiB (read through the 0xffc mask), so masking loses nothing.
        let ptr = |off: u64| (off & 0xffc) as u32;
        let mut headers = Vec::new();
        for (i, (off, h)) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |n| ptr(n.0));
            headers.push((*off, (h & 0x000f_ffff) | next << 20));
        }
        // The list must start at 0x100: a hidden first capability becomes
        // a null header that links to the first one kept.
        if kept.first().map(|k| k.0) != Some(0x100) {
            let next = kept.first().map_or(0, |k| ptr(k.0));
            headers.push((0x100, next << 20));
        }
        // Hidden headers elsewhere read as zero, so a scan by offset finds nothing.
        for (off, h) in &all {
            if *off != 0x100 && HIDDEN_ECAPS.contains(&((h & 0xffff) as u16)) {
                headers.push((*off, 0));
            }
        }
        headers
    }
}
