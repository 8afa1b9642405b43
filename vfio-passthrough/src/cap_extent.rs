//! Where a capability the guest must not see lies in configuration space,
//! so [`crate::config`] can make its whole body read as zero (what a device
//! without it has there) and drop writes to it, not only unlink its header.
//!
//! A capability's length is its architected size where the specification
//! fixes one (or the vendor-specific capability's own length byte), never
//! past the next capability in address order or the end of its space; a
//! capability of unknown size runs up to that next capability.

use std::ops::Range;

/// Standard capability ids whose size is fixed (endpoint layouts).
const STD_SIZES: [(u8, u64); 7] = [
    (0x03, 8),  // VPD
    (0x04, 4),  // slot identification
    (0x06, 4),  // CompactPCI hot swap
    (0x07, 8),  // PCI-X (endpoint)
    (0x0a, 4),  // debug port
    (0x11, 12), // MSI-X
    (0x13, 6),  // advanced features
];
const CAP_VENDOR: u8 = 0x09;

/// Extended capability ids (those we hide) with a fixed size.
const ECAP_ARI: u16 = 0x0e;
const ECAP_SRIOV: u16 = 0x10;
const ECAP_REBAR: u16 = 0x15;
const ECAP_VF_REBAR: u16 = 0x24;

/// The bytes `[start, end)` of config space the guest must not reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiddenRanges(Vec<Range<u64>>);

impl HiddenRanges {
    pub fn push(&mut self, r: Range<u64>) {
        if !r.is_empty() {
            self.0.push(r);
        }
    }

    pub fn contains(&self, off: u64) -> bool {
        self.0.iter().any(|r| r.contains(&off))
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }
}

/// The first capability offset above `off` (any capability, kept or not),
/// or `end`.
fn next_above(off: u64, all: &[u64], end: u64) -> u64 {
    all.iter()
        .copied()
        .filter(|&o| o > off && o < end)
        .min()
        .unwrap_or(end)
}

/// Extent of the standard capability `id` at `off`; `all` holds the offset
/// of every capability on the list, the space ends at `end` (256).
pub fn std_extent(raw: &[u8], id: u8, off: u64, all: &[u64], end: u64) -> Range<u64> {
    let limit = next_above(off, all, end);
    let known = if id == CAP_VENDOR {
        // Byte 2 is the capability's own length, header included.
        usize::try_from(off + 2)
            .ok()
            .and_then(|i| raw.get(i))
            .map(|&l| u64::from(l).max(3))
    } else {
        STD_SIZES.iter().find(|(i, _)| *i == id).map(|(_, s)| *s)
    };
    let stop = known.map_or(limit, |len| (off + len).min(limit));
    off..stop
}

/// Extent of the extended capability `id` at `off` (header included); `all`
/// holds the offset of every extended capability, the space ends at `end`.
pub fn ext_extent(raw: &[u8], id: u16, off: u64, all: &[u64], end: u64) -> Range<u64> {
    let limit = next_above(off, all, end);
    let known = match id {
        ECAP_ARI => Some(8),
        ECAP_SRIOV => Some(0x40),
        ECAP_REBAR | ECAP_VF_REBAR => {
            // Control register of the first BAR, bits 7:5: how many BARs
            // (1-6), each with a capability and a control dword.
            let n = usize::try_from(off + 8)
                .ok()
                .and_then(|i| raw.get(i))
                .map_or(1, |&c| u64::from((c >> 5) & 7).clamp(1, 6));
            Some(4 + 8 * n)
        }
        _ => None,
    };
    let stop = known.map_or(limit, |len| (off + len).min(limit));
    off..stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_architected_and_bounded_by_the_next_capability() {
        let mut raw = vec![0u8; 4096];
        raw[0x4a] = 0x0c; // vendor length 12
        assert_eq!(
            std_extent(&raw, 0x09, 0x48, &[0x40, 0x48, 0x70], 256),
            0x48..0x54
        );
        raw[0x4a] = 0xff; // a bogus length stops at the next capability
        assert_eq!(
            std_extent(&raw, 0x09, 0x48, &[0x40, 0x48, 0x50], 256),
            0x48..0x50
        );
        assert_eq!(std_extent(&raw, 0x11, 0x70, &[0x70], 256), 0x70..0x7c);
        assert_eq!(std_extent(&raw, 0x42, 0xe0, &[0xe0], 256), 0xe0..0x100);
        assert_eq!(
            ext_extent(&raw, ECAP_SRIOV, 0x160, &[0x100, 0x160, 0x1a0], 4096),
            0x160..0x1a0
        );
        assert_eq!(
            ext_extent(&raw, ECAP_SRIOV, 0x140, &[0x140, 0x160], 4096),
            0x140..0x160
        );
        raw[0x188] = 3 << 5;
        assert_eq!(
            ext_extent(&raw, ECAP_REBAR, 0x180, &[0x180], 4096),
            0x180..0x19c
        );
        assert_eq!(
            ext_extent(&raw, 0x7777, 0x200, &[0x200], 4096),
            0x200..0x1000
        );
    }
}
