//! Dirty-page marks for what the data paths write into guest memory while
//! the frontend logs (live migration, `vhost_user_daemon::dirty_log`).
//!
//! The data paths hold guest buffers as host iovecs ([`crate::iov`]); the
//! log is indexed by guest physical address. Only with logging on is a
//! host pointer turned back into a GPA, through the memory table the
//! iovecs were built from, so logging off costs the data paths nothing
//! beyond the one load that finds it off.
//!
//! Order (the callers keep it): the bytes are written, then marked, then
//! the used entry that publishes them is added; the used ring is marked
//! after the pass wrote it. A frontend that copies a page between a mark
//! and a later write to it would otherwise lose that write.

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use vhost_user_daemon::dirty_log::{LogRegion, used_ring_bytes};

/// Marks the guest pages under the first `len` bytes of `iovs`, host
/// iovecs [`crate::iov::gather`] built from `mem`.
pub fn mark_iovs(log: &LogRegion, mem: &GuestMemoryMmap, iovs: &[libc::iovec], len: usize) {
    let mut left = len;
    for iov in iovs {
        if left == 0 {
            break;
        }
        let n = iov.iov_len.min(left);
        match gpa_of(mem, iov.iov_base as usize, n) {
            Some(gpa) => log.mark(gpa, n as u64),
            // Cannot happen for iovecs built from `mem`; a lost mark would
            // be a silently stale page on the destination, so say so.
            None => warn!("event=dirty_mark_lost host={:p} len={n}", iov.iov_base),
        }
        left -= n;
    }
}

/// Marks `q`'s whole used ring: flags, idx, the entries and `avail_event`.
pub fn mark_used_ring(log: &LogRegion, q: &Queue) {
    log.mark(q.used_ring(), used_ring_bytes(q.size()));
}

/// The guest physical address of the `len` host bytes at `host`, if they
/// lie inside one region of `mem`.
fn gpa_of(mem: &GuestMemoryMmap, host: usize, len: usize) -> Option<u64> {
    mem.iter().find_map(|r| {
        let base = r.get_host_address(MemoryRegionAddress(0)).ok()? as usize;
        let size = usize::try_from(r.len()).ok()?;
        let off = host.checked_sub(base)?;
        (off.checked_add(len)? <= size).then(|| r.start_addr().0 + off as u64)
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::test_ring::{log_region, marked};

    #[test]
    fn host_iovecs_are_marked_by_guest_address_in_each_region() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x40000), 0x10000),
        ])
        .expect("memory");
        let host = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .expect("mapped")
                .cast::<libc::c_void>()
        };
        let iovs = [
            libc::iovec {
                iov_base: host(0x1ff0),
                iov_len: 0x20,
            },
            libc::iovec {
                iov_base: host(0x48000),
                iov_len: 0x3000,
            },
        ];
        let log = log_region(64);
        // Only the first 0x20 + 0x1001 bytes were written.
        mark_iovs(&log, &mem, &iovs, 0x20 + 0x1001);
        let want = vec![0x1000, 0x2000, 0x48000, 0x49000];
        assert_eq!(marked(&log, 0x60000), want);
        // Bytes from outside guest memory are never marked anywhere.
        let mut own = [0u8; 16];
        let stray = [vhost_user_daemon::iovec::of_buf(&mut own)];
        let before = log.beyond();
        mark_iovs(&log, &mem, &stray, 16);
        assert_eq!(log.beyond(), before);
        assert_eq!(marked(&log, 0x60000), want, "nothing new marked");
    }
}
