//! The one ring-sanity check the data paths need beyond virtio-queue: an
//! avail index more than the queue size ahead of the device. virtio-queue
//! then pops nothing (and logs) while `enable_notification` keeps saying
//! "more available", so a loop of "pop until empty, re-arm, retry" would
//! spin forever on a hostile guest's ring. Both paths call [`avail_sane`]
//! where they are about to retry and stop that queue on an error.

use std::sync::atomic::Ordering;

use virtio_queue::{Error, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Err(InvalidAvailRingIndex) if the guest's avail index ran more than the
/// queue size ahead of the device's next index.
pub fn avail_sane(q: &Queue, mem: &GuestMemoryMmap) -> Result<(), Error> {
    let avail = q.avail_idx(mem, Ordering::Acquire)?;
    if avail.0.wrapping_sub(q.next_avail()) > q.size() {
        return Err(Error::InvalidAvailRingIndex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn index_ahead_by_more_than_the_size_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let q: Queue = mock.create_queue().unwrap();
        let idx_at = mock.avail_addr().0 + 2;
        mem.write_obj(16u16, GuestAddress(idx_at)).unwrap();
        assert!(avail_sane(&q, &mem).is_ok());
        mem.write_obj(17u16, GuestAddress(idx_at)).unwrap();
        assert!(matches!(
            avail_sane(&q, &mem),
            Err(Error::InvalidAvailRingIndex)
        ));
    }
}
