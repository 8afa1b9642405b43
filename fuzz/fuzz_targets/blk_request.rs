//! virtio-blk request chains → `virtio_devices::block::request::parse`.
//!
//! Structured and mostly valid: the chain is built in virtio-queue's mock
//! split ring over two adjacent guest memory regions (so buffers can
//! straddle them) with a hole after; descriptors point at the header, data,
//! status or discard-payload areas with sector-sized lengths, and only
//! sometimes at garbage. In "raw" mode descriptors are stored verbatim
//! (their `next` fields may loop or point past the table). Every outcome is
//! checked against what the daemon relies on before doing I/O.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_devices::block::request::{
    MAX_DATA_BYTES, ParseOutcome, RequestKind, RequestLimits, Segment, parse,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const REGION: u64 = 0x8_0000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x7_ff00;
const RANGE: u64 = 0x7_fe00;

#[derive(Arbitrary, Debug)]
enum ReqType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Header,
    Data(u8),
    /// Data crossing the boundary between the two regions.
    Straddle(u8),
    Status,
    Range,
    PastEnd(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Len {
    Natural,
    Sectors(u8),
    Raw(u32),
    Zero,
}

#[derive(Arbitrary, Debug)]
struct Desc {
    target: Target,
    len: Len,
    write: bool,
    indirect: bool,
    next: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    req: ReqType,
    sector: u64,
    small_sector: bool,
    range: (u64, u32, u32),
    descs: Vec<Desc>,
    capacity_sectors: u16,
    read_only: bool,
    max_segments: u8,
    raw: bool,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .expect("guest memory")
}

fn raw_desc(d: &Desc) -> RawDescriptor {
    let (addr, natural) = match d.target {
        Target::Header => (HDR, 16),
        Target::Data(i) => (DATA + u64::from(i) * 0x1000, 512),
        Target::Straddle(i) => (REGION - 512 * (u64::from(i % 8) + 1), 4096),
        Target::Status => (STATUS, 1),
        Target::Range => (RANGE, 16),
        Target::PastEnd(o) => (2 * REGION - 8 + u64::from(o), 512),
        Target::Raw(a) => (a, 512),
    };
    let len = match d.len {
        Len::Natural => natural,
        Len::Sectors(n) => 512 * u32::from(n % 64),
        Len::Raw(l) => l,
        Len::Zero => 0,
    };
    let mut flags = 0u16;
    if d.write {
        flags |= 2;
    }
    if d.indirect {
        flags |= 4;
    }
    RawDescriptor::from(Descriptor::new(addr, len, flags, u16::from(d.next % 20)))
}

fn in_memory(m: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    GuestMemoryBackend::check_range(m, addr, len as usize)
}

fn check_segments(m: &GuestMemoryMmap, segs: &[Segment]) -> u64 {
    let mut total = 0u64;
    for s in segs {
        assert!(s.len > 0, "zero-length segment kept");
        assert!(
            in_memory(m, s.addr, u64::from(s.len)),
            "segment {s:?} outside memory"
        );
        total += u64::from(s.len);
    }
    total
}

fn check(m: &GuestMemoryMmap, out: &ParseOutcome, limits: &RequestLimits) {
    match out {
        ParseOutcome::Valid(r) => {
            assert!(in_memory(m, r.status_addr, 1), "status outside memory");
            match &r.kind {
                RequestKind::Read { sector, data, len }
                | RequestKind::Write { sector, data, len } => {
                    let is_write = matches!(r.kind, RequestKind::Write { .. });
                    assert!(!(is_write && limits.read_only), "write on read-only");
                    assert_eq!(check_segments(m, data), *len);
                    assert_eq!(len % 512, 0);
                    assert!(*len <= MAX_DATA_BYTES);
                    assert!(data.len() <= limits.max_data_segments as usize);
                    let end = sector
                        .checked_add(len / 512)
                        .expect("sector overflow accepted");
                    assert!(end <= limits.capacity_sectors, "past capacity");
                }
                RequestKind::GetId { data, len } => {
                    assert_eq!(check_segments(m, data), *len);
                }
                RequestKind::Discard {
                    sector,
                    num_sectors,
                }
                | RequestKind::WriteZeroes {
                    sector,
                    num_sectors,
                    ..
                } => {
                    assert!(!limits.read_only, "discard/zeroes on read-only");
                    let end = sector
                        .checked_add(u64::from(*num_sectors))
                        .expect("range overflow accepted");
                    assert!(end <= limits.capacity_sectors, "range past capacity");
                }
                RequestKind::Flush => {}
            }
        }
        ParseOutcome::Rejected {
            status_addr, error, ..
        } => {
            assert!(in_memory(m, *status_addr, 1), "status outside memory");
            assert!(error.status().is_some());
        }
        ParseOutcome::Dropped { error, .. } => assert!(error.status().is_none()),
    }
}

fuzz_target!(|input: Input| {
    if input.descs.is_empty() || input.descs.len() > 24 {
        return;
    }
    let m = mem();
    let req_type = match input.req {
        ReqType::In => 0,
        ReqType::Out => 1,
        ReqType::Flush => 4,
        ReqType::GetId => 8,
        ReqType::Discard => 11,
        ReqType::WriteZeroes => 13,
        ReqType::Raw(t) => t,
    };
    let sector = if input.small_sector {
        input.sector % 4096
    } else {
        input.sector
    };
    let _ = m.write_obj(req_type.to_le(), GuestAddress(HDR));
    let _ = m.write_obj(sector.to_le(), GuestAddress(HDR + 8));
    let _ = m.write_obj(input.range.0.to_le(), GuestAddress(RANGE));
    let _ = m.write_obj(input.range.1.to_le(), GuestAddress(RANGE + 8));
    let _ = m.write_obj(input.range.2.to_le(), GuestAddress(RANGE + 12));
    let limits = RequestLimits {
        capacity_sectors: u64::from(input.capacity_sectors) * 8,
        read_only: input.read_only,
        max_discard_sectors: 4096,
        max_write_zeroes_sectors: 4096,
        max_data_segments: u32::from(input.max_segments % 32).max(1),
    };
    let descs: Vec<RawDescriptor> = input.descs.iter().map(raw_desc).collect();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 32);
    let out = if input.raw {
        for (i, d) in descs.iter().enumerate() {
            if vq.desc_table().store(i as u16, *d).is_err() {
                return;
            }
        }
        vq.avail().ring().ref_at(0).expect("avail slot").store(0);
        vq.avail().idx().store(1);
        let Ok(mut q) = vq.create_queue::<Queue>() else {
            return;
        };
        let Some(chain) = q.iter(&m).ok().and_then(|mut it| it.next()) else {
            return;
        };
        parse(chain.head_index(), chain, &m, &limits)
    } else {
        let Ok(chain) = vq.build_desc_chain(&descs) else {
            return;
        };
        parse(chain.head_index(), chain, &m, &limits)
    };
    check(&m, &out, &limits);
});
