//! The control queue of a vhost-user NIC, served by the VMM itself (as QEMU
//! and Cloud Hypervisor do): the backend only ever sees the data queues.
//! The VMM's event loop calls [`CtrlQueue::process`] when the queue's
//! ioeventfd fires; each chain's device-readable bytes go through
//! [`crate::net::ctrl::parse`], accepted commands that change the backend
//! (queue pairs) go to the caller, and the ack byte goes back into the
//! chain. Everything in the ring is the guest's: chains come through
//! virtio-queue (bounded, addresses checked against guest memory), a
//! broken ring stops the queue instead of spinning on it, and one wake-up
//! serves at most a ring's worth of chains.

use std::io::Read;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::net::ctrl::{self, CtrlAck, CtrlCommand, CtrlError, CtrlFeatures};
use crate::transport::QueueConfig;

/// Guest memory as the VMM maps it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Why the control queue could not be set up or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum CtrlQueueError {
    #[error("control queue configuration refused")]
    Setup(#[source] virtio_queue::Error),
    #[error("control queue rings lie outside guest memory")]
    Invalid,
    #[error("control queue ring is corrupt")]
    Ring(#[source] virtio_queue::Error),
    #[error("cannot duplicate the control queue eventfds")]
    EventFd(#[source] std::io::Error),
}

/// What one chain turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// A command with its ack (`None` when the chain had no room for it).
    Command(Result<CtrlCommand, CtrlError>, Option<CtrlAck>),
    /// A chain whose buffers are not in guest memory.
    BadChain,
}

/// The control queue, started with the driver's ring addresses.
pub struct CtrlQueue {
    queue: Queue,
    mem: GuestMem,
    kick: EventFd,
    call: EventFd,
    features: CtrlFeatures,
    broken: bool,
    /// Chains served per wake-up at most (a ring's worth).
    budget: usize,
}

impl std::fmt::Debug for CtrlQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlQueue")
            .field("queue", &self.queue)
            .field("features", &self.features)
            .field("broken", &self.broken)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl CtrlQueue {
    /// Sets the queue up as the driver configured it.
    pub fn new(
        mem: GuestMem,
        q: &QueueConfig,
        event_idx: bool,
        features: CtrlFeatures,
    ) -> Result<Self, CtrlQueueError> {
        let mut queue = Queue::new(q.size).map_err(CtrlQueueError::Setup)?;
        queue.try_set_size(q.size).map_err(CtrlQueueError::Setup)?;
        queue
            .try_set_desc_table_address(GuestAddress(q.desc))
            .map_err(CtrlQueueError::Setup)?;
        queue
            .try_set_avail_ring_address(GuestAddress(q.avail))
            .map_err(CtrlQueueError::Setup)?;
        queue
            .try_set_used_ring_address(GuestAddress(q.used))
            .map_err(CtrlQueueError::Setup)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err(CtrlQueueError::Invalid);
        }
        Ok(Self {
            queue,
            mem,
            kick: q.kick.try_clone().map_err(CtrlQueueError::EventFd)?,
            call: q.call.try_clone().map_err(CtrlQueueError::EventFd)?,
            features,
            broken: false,
            budget: usize::from(q.size),
        })
    }

    /// Serves the commands the driver queued: `apply` carries out an
    /// accepted queue-pair change and says whether it worked. Returns what
    /// each chain was (for logs and tests). After a ring error the queue
    /// serves nothing until the driver resets the device.
    pub fn process(
        &mut self,
        mut apply: impl FnMut(CtrlCommand) -> bool,
    ) -> Result<Vec<Served>, CtrlQueueError> {
        let mut served = Vec::new();
        if self.broken {
            return Ok(served);
        }
        let result = self.serve_all(&mut apply, &mut served);
        if result.is_err() {
            self.broken = true;
        }
        if !served.is_empty() {
            let notify = self
                .queue
                .needs_notification(&self.mem)
                .map_err(CtrlQueueError::Ring);
            if notify.unwrap_or(true) {
                // A full counter already means "look at the ring".
                let _ = self.call.write(1);
            }
        }
        result.map(|()| served)
    }

    fn serve_all(
        &mut self,
        apply: &mut impl FnMut(CtrlCommand) -> bool,
        served: &mut Vec<Served>,
    ) -> Result<(), CtrlQueueError> {
        let budget = self.budget;
        loop {
            self.queue
                .disable_notification(&self.mem)
                .map_err(CtrlQueueError::Ring)?;
            let room = budget - served.len();
            let chains: Vec<DescriptorChain<&GuestMem>> = self
                .queue
                .iter(&self.mem)
                .map_err(CtrlQueueError::Ring)?
                .take(room)
                .collect();
            for chain in chains {
                let head = chain.head_index();
                let (what, len) = serve_chain(&self.mem, chain, self.features, apply);
                served.push(what);
                self.queue
                    .add_used(&self.mem, head, len)
                    .map_err(CtrlQueueError::Ring)?;
            }
            if served.len() >= budget {
                // Fair to the rest of the event loop: come back later.
                let _ = self.kick.write(1);
                return Ok(());
            }
            if !self
                .queue
                .enable_notification(&self.mem)
                .map_err(CtrlQueueError::Ring)?
            {
                return Ok(());
            }
        }
    }
}

/// One chain: parse, act, ack. Returns what it was and the used length.
fn serve_chain(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    features: CtrlFeatures,
    apply: &mut impl FnMut(CtrlCommand) -> bool,
) -> (Served, u32) {
    let Ok(mut reader) = chain.clone().reader(mem) else {
        return (Served::BadChain, 0);
    };
    let Ok(mut writer) = chain.writer(mem) else {
        return (Served::BadChain, 0);
    };
    let parsed = match reader.available_bytes() {
        n if n > ctrl::MAX_PAYLOAD + 2 => Err(CtrlError::TooLong(n.saturating_sub(2))),
        n => {
            let mut bytes = vec![0u8; n];
            if reader.read_exact(&mut bytes).is_err() {
                return (Served::BadChain, 0);
            }
            ctrl::parse(&bytes, features)
        }
    };
    let ack = match &parsed {
        Ok(cmd @ CtrlCommand::QueuePairs(_)) if !apply(*cmd) => CtrlAck::Err,
        Ok(_) => CtrlAck::Ok,
        Err(_) => CtrlAck::Err,
    };
    let written = writer.write_obj(ack as u8).is_ok();
    let len = if written { 1 } else { 0 };
    (Served::Command(parsed, written.then_some(ack)), len)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::narrow::u16_of;

    const NEXT: u16 = u16_of(VRING_DESC_F_NEXT);
    const WRITE: u16 = u16_of(VRING_DESC_F_WRITE);
    const FEATURES: CtrlFeatures = CtrlFeatures {
        rx: true,
        max_queue_pairs: Some(2),
    };

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    struct Rig {
        kick: EventFd,
        call: EventFd,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        }

        fn queue(&self, m: &GuestMem, q: &MockSplitQueue<GuestMem>) -> CtrlQueue {
            let cfg = QueueConfig {
                index: 4,
                size: 16,
                desc: q.desc_table_addr().0,
                avail: q.avail_addr().0,
                used: q.used_addr().0,
                kick: &self.kick,
                call: &self.call,
            };
            CtrlQueue::new(m.clone(), &cfg, false, FEATURES).unwrap()
        }
    }

    /// Puts `chains` in the descriptor table from index `first` on (with
    /// their `next` links) and publishes their heads, as the driver would.
    fn publish(q: &MockSplitQueue<GuestMem>, first: u16, chains: &[Vec<Descriptor>]) {
        let mut raw = Vec::new();
        let mut i = first;
        for c in chains {
            for d in c {
                i += 1;
                let next = if d.flags() & NEXT != 0 { i } else { 0 };
                raw.push(RawDescriptor::from(Descriptor::new(
                    d.addr().0,
                    d.len(),
                    d.flags(),
                    next,
                )));
            }
        }
        q.add_desc_chains(&raw, first).unwrap();
    }

    fn command(m: &GuestMem, at: u64, bytes: &[u8], ack_at: Option<u64>) -> Vec<Descriptor> {
        m.write_slice(bytes, GuestAddress(at)).unwrap();
        match ack_at {
            Some(a) => {
                m.write_obj(0xffu8, GuestAddress(a)).unwrap();
                vec![
                    Descriptor::new(at, u32::try_from(bytes.len()).unwrap(), NEXT, 0),
                    Descriptor::new(a, 1, WRITE, 0),
                ]
            }
            None => vec![Descriptor::new(
                at,
                u32::try_from(bytes.len()).unwrap(),
                0,
                0,
            )],
        }
    }

    #[test]
    fn queue_pairs_command_is_applied_and_acked() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rig = Rig::new();
        let mut cq = rig.queue(&m, &q);
        publish(
            &q,
            0,
            &[
                command(&m, 0x8000, &[4, 0, 2, 0], Some(0x9000)),
                command(&m, 0x8100, &[4, 0, 3, 0], Some(0x9100)),
                command(&m, 0x8200, &[0, 0, 1], Some(0x9200)),
                command(&m, 0x8300, &[9, 9], Some(0x9300)),
            ],
        );
        let mut applied = Vec::new();
        let served = cq
            .process(|c| {
                applied.push(c);
                true
            })
            .unwrap();
        assert_eq!(applied, vec![CtrlCommand::QueuePairs(2)]);
        assert_eq!(served.len(), 4);
        let ack = |a| m.read_obj::<u8>(GuestAddress(a)).unwrap();
        assert_eq!(
            [ack(0x9000), ack(0x9100), ack(0x9200), ack(0x9300)],
            [0, 1, 0, 1]
        );
        assert_eq!(q.used().idx().load(), 4);
        assert_eq!(rig.call.read().unwrap(), 1, "one interrupt");
        // A backend that refuses the change turns into VIRTIO_NET_ERR.
        publish(&q, 8, &[command(&m, 0x8400, &[4, 0, 1, 0], Some(0x9400))]);
        cq.process(|_| false).unwrap();
        assert_eq!(ack(0x9400), 1);
    }

    #[test]
    fn hostile_chains_are_completed_without_reading_outside_memory() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rig = Rig::new();
        let mut cq = rig.queue(&m, &q);
        let chains = vec![
            // No room for the ack: completed with length 0.
            command(&m, 0x8000, &[4, 0, 2, 0], None),
            // Header outside guest memory.
            vec![
                Descriptor::new(0x10_0000 - 1, 4, NEXT, 0),
                Descriptor::new(0x9100, 1, WRITE, 0),
            ],
            // Address + length overflowing.
            vec![
                Descriptor::new(u64::MAX - 1, 8, NEXT, 0),
                Descriptor::new(0x9200, 1, WRITE, 0),
            ],
            // Ack buffer outside guest memory.
            vec![
                Descriptor::new(0x8300, 4, NEXT, 0),
                Descriptor::new(0x20_0000, 1, WRITE, 0),
            ],
            // A payload far above any command.
            vec![
                Descriptor::new(0x1_0000, 0x2_0000, NEXT, 0),
                Descriptor::new(0x9400, 1, WRITE, 0),
            ],
        ];
        publish(&q, 0, &chains);
        let mut applied = 0;
        let served = cq
            .process(|_| {
                applied += 1;
                true
            })
            .unwrap();
        assert_eq!(applied, 1, "only the well-formed MQ command acts");
        assert_eq!(served.len(), 5);
        assert_eq!(
            served[0],
            Served::Command(Ok(CtrlCommand::QueuePairs(2)), None)
        );
        assert_eq!(served[1], Served::BadChain);
        assert_eq!(served[2], Served::BadChain);
        assert_eq!(served[3], Served::BadChain);
        assert!(matches!(
            served[4],
            Served::Command(Err(CtrlError::TooLong(_)), Some(CtrlAck::Err))
        ));
        assert_eq!(q.used().idx().load(), 5, "every chain given back");
    }

    #[test]
    fn a_corrupt_avail_index_stops_the_queue_instead_of_spinning() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rig = Rig::new();
        let mut cq = rig.queue(&m, &q);
        // 200 entries ahead of a 16-entry ring.
        q.avail().idx().store(200);
        assert!(matches!(cq.process(|_| true), Err(CtrlQueueError::Ring(_))));
        q.avail().idx().store(0);
        assert!(cq.process(|_| true).unwrap().is_empty(), "stays stopped");
    }

    #[test]
    fn one_wake_up_serves_at_most_a_ring_and_kicks_itself_for_the_rest() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rig = Rig::new();
        let mut cq = rig.queue(&m, &q);
        cq.budget = 4;
        // 6 chains of one descriptor each (head 0 reused).
        let one = command(&m, 0x8000, &[0, 0, 1], Some(0x9000));
        publish(&q, 0, std::slice::from_ref(&one));
        q.avail().idx().store(6);
        for i in 0..6 {
            q.avail().ring().ref_at(i).unwrap().store(0);
        }
        let served = cq.process(|_| true).unwrap();
        assert_eq!(served.len(), 4);
        assert_eq!(rig.kick.read().unwrap(), 1, "self-kick for the rest");
        assert_eq!(cq.process(|_| true).unwrap().len(), 2);
        assert!(rig.kick.read().is_err(), "no kick once all are served");
        assert_eq!(q.used().idx().load(), 6);
    }
}
