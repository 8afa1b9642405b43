//! Connecting a well-behaved frontend: the handshake QEMU does (owner,
//! features, protocol features, memory table or ADD_MEM_REG), then every
//! queue set up and enabled.

use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{F_EVENT_IDX, TestQueue, guest_memory};

/// A connected, fully set-up frontend.
pub struct Session {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap,
    pub queues: Vec<TestQueue>,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
}

// vhost's Frontend has no Debug: everything but the connection.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("mem", &self.mem)
            .field("queues", &self.queues)
            .field("features", &self.features)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Connect and negotiate; `want` masks the virtio features we ack.
pub fn connect(socket: &Path, num_queues: usize, queue_size: u16, want: u64) -> Session {
    connect_with(socket, num_queues, queue_size, want, false)
}

/// Like [`connect`]; with `mem_slots`, negotiate CONFIGURE_MEM_SLOTS and
/// hand memory over with ADD_MEM_REG instead of SET_MEM_TABLE.
pub fn connect_with(
    socket: &Path,
    num_queues: usize,
    queue_size: u16,
    want: u64,
    mem_slots: bool,
) -> Session {
    connect_mem(
        socket,
        guest_memory(),
        num_queues,
        queue_size,
        want,
        mem_slots,
    )
}

/// Like [`connect_with`], with guest memory the caller prepared (its ring
/// areas must be zero).
pub fn connect_mem(
    socket: &Path,
    mem: GuestMemoryMmap,
    num_queues: usize,
    queue_size: u16,
    want: u64,
    mem_slots: bool,
) -> Session {
    let mut fe = Frontend::connect(socket, num_queues as u64).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    let features = offered & (want | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
    fe.set_features(features).unwrap();
    let offered_pf = fe.get_protocol_features().unwrap();
    let mut wanted_pf = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK;
    if mem_slots {
        wanted_pf |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    }
    let protocol = offered_pf & wanted_pf;
    fe.set_protocol_features(protocol).unwrap();
    let regions: Vec<_> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    if mem_slots {
        assert!(fe.get_max_mem_slots().unwrap() >= regions.len() as u64);
        for r in &regions {
            fe.add_mem_region(r).unwrap();
        }
    } else {
        fe.set_mem_table(&regions).unwrap();
    }
    let event_idx = features & F_EVENT_IDX != 0;
    let mut queues = Vec::new();
    for q in 0..num_queues {
        let tq = TestQueue::new(&mem, q, queue_size, event_idx);
        let va = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        fe.set_vring_num(q, queue_size).unwrap();
        fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: va(tq.desc),
                used_ring_addr: va(tq.used),
                avail_ring_addr: va(tq.avail),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(q, 0).unwrap();
        fe.set_vring_call(q, &tq.call).unwrap();
        fe.set_vring_kick(q, &tq.kick).unwrap();
        fe.set_vring_enable(q, true).unwrap();
        queues.push(tq);
    }
    let _ = mem.iter().map(|r| r.len()).sum::<u64>();
    Session {
        fe,
        mem,
        queues,
        features,
        protocol,
    }
}
