//! Where a queue's rings are, as the backend must see them: guest
//! addresses translated into the VMM's mapping, the ring sizes, and the
//! used index read back from guest memory when a backend that died must
//! be told where to resume.

use vmm_sys_util::eventfd::EventFd;

use super::GuestRegion;

/// Translates a guest ring of `len` bytes at `gpa` to a VMM address.
pub fn ring_hva(regions: &[GuestRegion], gpa: u64, len: u64) -> Option<u64> {
    let r = regions
        .iter()
        .find(|r| gpa >= r.gpa && gpa - r.gpa < r.size)?;
    let end = (gpa - r.gpa).checked_add(len)?;
    (end <= r.size).then(|| r.hva + (gpa - r.gpa))
}

/// Bytes of the descriptor table, avail ring and used ring for `size` entries
/// (with the event-idx fields).
pub fn ring_sizes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// The used ring's `idx` field (offset 2), read from guest memory: how far
/// the backend got. None when the ring is not inside guest RAM.
pub fn used_idx(regions: &[GuestRegion], used_gpa: u64) -> Option<u16> {
    let idx_gpa = used_gpa.checked_add(2)?;
    let hva = ring_hva(regions, idx_gpa, 2)?;
    let p = hva as *const u8;
    // SAFETY: `ring_hva` checked that both bytes lie inside one region the
    // VMM maps for the VM's whole lifetime; byte reads need no alignment,
    // and volatile reads are right for memory the guest and a backend
    // write concurrently.
    let (lo, hi) = unsafe { (p.read_volatile(), p.add(1).read_volatile()) };
    Some(u16::from_le_bytes([lo, hi]))
}

/// A started queue, kept so a restarted backend can be given the same
/// rings and eventfds again.
#[derive(Debug)]
pub struct SavedQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Duplicates of the kick (ioeventfd) and call (irqfd) eventfds: the
    /// same files KVM signals and listens to.
    pub kick: EventFd,
    pub call: EventFd,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two regions around the 32-bit MMIO hole (also used by the device's tests).
    pub(crate) fn regions() -> Vec<GuestRegion> {
        vec![
            GuestRegion {
                gpa: 0,
                size: 0x1000_0000,
                hva: 0x7f00_0000_0000,
                fd: 3,
                file_offset: 0,
            },
            GuestRegion {
                gpa: 1 << 32,
                size: 0x1000_0000,
                hva: 0x7f10_0000_0000,
                fd: 3,
                file_offset: 0x1000_0000,
            },
        ]
    }

    #[test]
    fn rings_translate_inside_one_region() {
        let r = regions();
        assert_eq!(ring_hva(&r, 0x1000, 0x100), Some(0x7f00_0000_1000));
        assert_eq!(ring_hva(&r, (1 << 32) + 0x10, 8), Some(0x7f10_0000_0010));
        assert_eq!(ring_hva(&r, 0x0fff_fff0, 0x20), None, "straddles the end");
        assert_eq!(ring_hva(&r, 0xc000_0000, 1), None, "in the MMIO hole");
        assert_eq!(ring_hva(&r, u64::MAX, 2), None);
        assert_eq!(ring_sizes(256), (4096, 518, 2054));
    }

    #[test]
    fn used_idx_reads_guest_memory_and_refuses_outside_it() {
        let mut mem = vec![0u8; 64];
        mem[0x12..0x14].copy_from_slice(&0x1234u16.to_le_bytes());
        let r = [GuestRegion {
            gpa: 0x1000,
            size: mem.len() as u64,
            hva: mem.as_mut_ptr() as u64,
            fd: -1,
            file_offset: 0,
        }];
        assert_eq!(used_idx(&r, 0x1010), Some(0x1234));
        assert_eq!(
            used_idx(&r, 0x1000 + 63),
            None,
            "idx would straddle the end"
        );
        assert_eq!(used_idx(&r, 0x2000), None);
        assert_eq!(used_idx(&r, u64::MAX - 1), None);
    }
}
