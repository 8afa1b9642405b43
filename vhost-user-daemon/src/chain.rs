//! Walking a split-ring descriptor chain from a head index.
//!
//! Resubmitting requests recorded in the in-flight region means parsing
//! chains whose heads come from that region, not from the avail ring, and
//! virtio-queue 0.18 only builds a `DescriptorChain` from the avail ring
//! (`DescriptorChain::new` is crate-private). This walk follows the same
//! rules as virtio-queue's iterator, so a resubmitted chain parses exactly
//! as it would have when first popped: at most `queue_size` descriptors,
//! one level of indirection (a table of `len / 16` entries, `len` a
//! multiple of 16, no indirect descriptor inside it), and the walk stops
//! (yielding what it has) at the first index, address or table that is out
//! of bounds; the request parser then rejects the short chain.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// The descriptors of the chain starting at `head` in the table at
/// `desc_table` of a queue of `queue_size` entries (indirect tables
/// followed).
pub fn collect<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
) -> Vec<Descriptor> {
    let mut out = Vec::new();
    let mut table = desc_table;
    let mut size = queue_size;
    let mut next = head;
    let mut ttl = queue_size;
    let mut indirect = false;
    while next < size {
        let Some(addr) = table.checked_add(u64::from(next) * DESC_SIZE) else {
            break;
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(addr) else {
            break;
        };
        if desc.refers_to_indirect_table() {
            let len = desc.len();
            if indirect || u64::from(len) % DESC_SIZE != 0 {
                break;
            }
            let Ok(entries) = u16::try_from(u64::from(len) / DESC_SIZE) else {
                break;
            };
            table = desc.addr();
            size = entries;
            ttl = entries;
            next = 0;
            indirect = true;
            continue;
        }
        if ttl == 0 {
            break;
        }
        ttl -= 1;
        out.push(desc);
        if !desc.has_next() {
            break;
        }
        next = desc.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_devices::narrow::u16_of;
    use virtio_queue::QueueOwnedT;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const NEXT: u16 = u16_of(VRING_DESC_F_NEXT);
    const WRITE: u16 = u16_of(VRING_DESC_F_WRITE);
    const INDIRECT: u16 = u16_of(VRING_DESC_F_INDIRECT);

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// What virtio-queue's own iterator yields for the first avail entry.
    fn via_virtio_queue(
        mem: &GuestMemoryMmap<()>,
        q: &MockSplitQueue<GuestMemoryMmap<()>>,
    ) -> Vec<(u64, u32, u16, u16)> {
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(mem).unwrap().next().unwrap();
        key(&chain.collect::<Vec<_>>())
    }

    /// Descriptors as comparable tuples (Descriptor has no PartialEq).
    fn key(descs: &[Descriptor]) -> Vec<(u64, u32, u16, u16)> {
        descs
            .iter()
            .map(|d| (d.addr().0, d.len(), d.flags(), d.next()))
            .collect()
    }

    fn raw(descs: &[Descriptor]) -> Vec<RawDescriptor> {
        descs.iter().map(|d| RawDescriptor::from(*d)).collect()
    }

    fn write_descs(mem: &GuestMemoryMmap<()>, at: u64, descs: &[Descriptor]) {
        for (i, d) in descs.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(at + i as u64 * DESC_SIZE))
                .unwrap();
        }
    }

    #[test]
    fn direct_chain_matches_virtio_queue() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let descs = [
            Descriptor::new(0x8000, 16, NEXT, 1),
            Descriptor::new(0x9000, 4096, NEXT | WRITE, 2),
            Descriptor::new(0xa000, 1, WRITE, 0),
        ];
        q.build_desc_chain(&raw(&descs)).unwrap();
        let ours = collect(&m, q.desc_table_addr(), 16, 0);
        assert_eq!(key(&ours), via_virtio_queue(&m, &q));
        assert_eq!(ours.len(), 3);
    }

    #[test]
    fn indirect_table_is_followed_once() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let table = 0x4_0000;
        write_descs(
            &m,
            table,
            &[
                Descriptor::new(0x8000, 16, NEXT, 1),
                Descriptor::new(0xa000, 1, WRITE, 0),
            ],
        );
        q.build_desc_chain(&raw(&[Descriptor::new(table, 32, INDIRECT, 0)]))
            .unwrap();
        let ours = collect(&m, q.desc_table_addr(), 16, 0);
        assert_eq!(ours.len(), 2);
        assert_eq!(key(&ours), via_virtio_queue(&m, &q));
    }

    #[test]
    fn hostile_chains_end_without_panic() {
        let m = mem();
        let table = 0x2_0000;
        // A loop: 0 → 1 → 0 ... bounded by the queue size.
        write_descs(
            &m,
            table,
            &[
                Descriptor::new(0x8000, 1, NEXT, 1),
                Descriptor::new(0x8000, 1, NEXT, 0),
            ],
        );
        assert_eq!(collect(&m, GuestAddress(table), 4, 0).len(), 4);
        // Head and next out of range.
        assert!(collect(&m, GuestAddress(table), 4, 9).is_empty());
        write_descs(&m, table, &[Descriptor::new(0x8000, 1, NEXT, 200)]);
        assert_eq!(collect(&m, GuestAddress(table), 4, 0).len(), 1);
        // Indirect with a bad length, nested indirect, table outside memory.
        write_descs(&m, table, &[Descriptor::new(0x3_0000, 17, INDIRECT, 0)]);
        assert!(collect(&m, GuestAddress(table), 4, 0).is_empty());
        write_descs(&m, table, &[Descriptor::new(0x3_0000, 16, INDIRECT, 0)]);
        write_descs(&m, 0x3_0000, &[Descriptor::new(0x3_0000, 16, INDIRECT, 0)]);
        assert!(collect(&m, GuestAddress(table), 4, 0).is_empty());
        write_descs(&m, table, &[Descriptor::new(u64::MAX - 8, 32, INDIRECT, 0)]);
        assert!(collect(&m, GuestAddress(table), 4, 0).is_empty());
        // Descriptor table itself outside memory.
        assert!(collect(&m, GuestAddress(0x100_0000), 4, 0).is_empty());
    }
}
