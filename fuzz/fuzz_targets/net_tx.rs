//! virtio-net TX: header parsing/validation (`virtio_devices::net::header`)
//! and the daemon's chain → iovec gathering (`vhost_user_net::iov`).
//!
//! The header is 12 arbitrary bytes, mostly with flags/gso types from the
//! valid set; the acked feature set is a random subset of the offloads. The
//! chain is built in virtio-queue's mock ring over two adjacent memory
//! regions. Checked: a header that validates never carries an offload the
//! driver did not negotiate or a checksum window outside the frame; lengths
//! add up; every gathered iovec lies inside the region it came from.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vhost_user_net::iov;
use virtio_devices::net::features::{CSUM, HOST_ECN, HOST_TSO4, HOST_TSO6, HOST_UFO};
use virtio_devices::net::header::{
    F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, MAX_TX_FRAME,
    MIN_TX_FRAME, VirtioNetHdr, check_tx_len,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const REGION: u64 = 0x4_0000;

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: u32,
    len: u16,
    huge: bool,
    write: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    hdr: [u8; 12],
    pick_flags: Option<bool>,
    pick_gso: Option<u8>,
    legacy_len: bool,
    acked: u8,
    frame_len: u32,
    descs: Vec<Desc>,
    writable: bool,
}

fn acked(bits: u8) -> u64 {
    [
        CSUM,
        HOST_TSO4,
        HOST_TSO6,
        HOST_ECN,
        HOST_UFO,
        virtio_devices::net::features::HOST_USO,
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| bits & (1 << i) != 0)
    .fold(0, |a, (_, f)| a | f)
}

fn check_header(input: &Input) {
    let mut bytes = input.hdr;
    if let Some(csum) = input.pick_flags {
        bytes[0] = if csum { F_NEEDS_CSUM } else { 0 };
    }
    if let Some(g) = input.pick_gso {
        let gsos = [GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4];
        bytes[1] = gsos[usize::from(g) % gsos.len()] | if g & 0x80 != 0 { GSO_ECN } else { 0 };
    }
    let hdr_len = if input.legacy_len { 10 } else { 12 };
    let h = VirtioNetHdr::parse(&bytes, hdr_len).expect("full-length header parses");
    assert_eq!(
        VirtioNetHdr::parse(&h.to_bytes(), 12).expect("round trip"),
        h
    );
    assert!(VirtioNetHdr::parse(&bytes[..hdr_len - 1], hdr_len).is_err());
    let acked = acked(input.acked);
    let frame_len = input.frame_len as usize % (MAX_TX_FRAME + 64);
    if let Ok(out) = h.validate_tx(acked, frame_len) {
        assert_eq!(out.num_buffers, 0);
        assert_eq!(out.flags & !F_NEEDS_CSUM, 0, "flag passed through");
        if out.flags & F_NEEDS_CSUM != 0 {
            assert!(acked & CSUM != 0, "csum without CSUM");
            let end = usize::from(out.csum_start) + usize::from(out.csum_offset) + 2;
            assert!(end <= frame_len, "checksum window outside the frame");
        }
        let need = match out.gso_type & !GSO_ECN {
            GSO_NONE => {
                assert_eq!(out.gso_type, GSO_NONE, "ECN without GSO");
                0
            }
            GSO_TCPV4 => HOST_TSO4,
            GSO_TCPV6 => HOST_TSO6,
            GSO_UDP => HOST_UFO,
            GSO_UDP_L4 => virtio_devices::net::features::HOST_USO,
            other => panic!("gso type {other} passed"),
        };
        assert_eq!(acked & need, need, "offload not negotiated passed");
        if need != 0 {
            assert!(out.gso_size != 0);
        }
        if out.gso_type & GSO_ECN != 0 {
            assert!(acked & HOST_ECN != 0);
        }
    }
    let total = input.frame_len as usize;
    if let Ok(n) = check_tx_len(total, hdr_len) {
        assert_eq!(n + hdr_len, total);
        assert!((MIN_TX_FRAME..=MAX_TX_FRAME).contains(&n));
    }
}

fn check_gather(input: &Input) {
    if input.descs.is_empty() || input.descs.len() > 40 {
        return;
    }
    let Ok(m) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ]) else {
        return;
    };
    let descs: Vec<RawDescriptor> = input
        .descs
        .iter()
        .map(|d| {
            let addr = 0x1_0000 + u64::from(d.addr) % (2 * REGION);
            let len = if d.huge {
                u32::MAX - u32::from(d.len)
            } else {
                u32::from(d.len)
            };
            RawDescriptor::from(Descriptor::new(addr, len, if d.write { 2 } else { 0 }, 0))
        })
        .collect();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
    let Ok(chain) = vq.build_desc_chain(&descs) else {
        return;
    };
    let mut out = Vec::new();
    let Ok(total) = iov::gather(chain, &m, input.writable, &mut out) else {
        return;
    };
    assert_eq!(out.iter().map(|v| v.iov_len).sum::<usize>(), total);
    for v in &out {
        assert!(v.iov_len > 0, "empty iovec");
        let start = v.iov_base as usize;
        let inside = m.iter().any(|r| {
            let Ok(host) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
                return false;
            };
            let base = host as usize;
            start >= base && start + v.iov_len <= base + r.len() as usize
        });
        assert!(inside, "iovec outside every region");
    }
}

fuzz_target!(|input: Input| {
    check_header(&input);
    check_gather(&input);
});
