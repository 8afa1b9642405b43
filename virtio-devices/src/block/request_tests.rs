//! Request parsing against virtio-queue's mock split rings: the happy paths
//! and every row of bad-inputs.md that applies to a block device.

use super::*;
use crate::narrow::u16_of;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{GuestMemoryMmap, GuestUsize};

const MEM_SIZE: GuestUsize = 0x10_0000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const W: u16 = u16_of(VRING_DESC_F_WRITE);

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_SIZE).unwrap())]).unwrap()
}

fn limits() -> RequestLimits {
    RequestLimits {
        capacity_sectors: 1024,
        read_only: false,
        max_discard_sectors: 4096,
        max_write_zeroes_sectors: 4096,
        max_data_segments: 14,
    }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn header(m: &GuestMemoryMmap, addr: u64, req_type: u32, sector: u64) {
    m.write_obj(req_type.to_le(), GuestAddress(addr)).unwrap();
    m.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
    m.write_obj(sector.to_le(), GuestAddress(addr + 8)).unwrap();
}

fn range_payload(m: &GuestMemoryMmap, addr: u64, sector: u64, n: u32, flags: u32) {
    m.write_obj(sector.to_le(), GuestAddress(addr)).unwrap();
    m.write_obj(n.to_le(), GuestAddress(addr + 8)).unwrap();
    m.write_obj(flags.to_le(), GuestAddress(addr + 12)).unwrap();
}

/// Build a chain from `descs` (NEXT flags set for us) and parse it.
fn parse_chain(m: &GuestMemoryMmap, descs: &[RawDescriptor], l: &RequestLimits) -> ParseOutcome {
    let vq = MockSplitQueue::create(m, GuestAddress(0), 32);
    let chain = vq.build_desc_chain(descs).unwrap();
    let head = chain.head_index();
    parse(head, chain, m, l)
}

/// Parse the first chain of a queue whose descriptors are written verbatim
/// (no NEXT fix-ups), for loops and bad indices.
fn parse_raw(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> ParseOutcome {
    let vq = MockSplitQueue::create(m, GuestAddress(0), 16);
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table()
            .store(u16::try_from(i).unwrap(), *d)
            .unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let mut q: Queue = vq.create_queue().unwrap();
    let chain = q.iter(m).unwrap().next().unwrap();
    parse(chain.head_index(), chain, m, &limits())
}

fn rejected(outcome: ParseOutcome) -> (RequestError, BlockStatus) {
    match outcome {
        ParseOutcome::Rejected {
            error, status_addr, ..
        } => {
            assert_eq!(status_addr, GuestAddress(STATUS));
            let status = error.status().unwrap();
            (error, status)
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn dropped(outcome: ParseOutcome) -> RequestError {
    match outcome {
        ParseOutcome::Dropped { error, .. } => {
            assert_eq!(error.status(), None);
            error
        }
        other => panic!("expected a drop, got {other:?}"),
    }
}

#[test]
fn read_request_is_parsed() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 8);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(DATA, 4096, W),
            desc(DATA + 0x1000, 512, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    let ParseOutcome::Valid(req) = out else {
        panic!("{out:?}")
    };
    assert_eq!(req.status_addr, GuestAddress(STATUS));
    assert_eq!(
        req.kind,
        RequestKind::Read {
            sector: 8,
            data: vec![
                Segment {
                    addr: GuestAddress(DATA),
                    len: 4096
                },
                Segment {
                    addr: GuestAddress(DATA + 0x1000),
                    len: 512
                }
            ],
            len: 4608
        }
    );
}

#[test]
fn any_layout_header_and_status_share_descriptors() {
    // Header split over two descriptors, data and status in one.
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 10, 0),
            desc(HDR + 10, 6, 0),
            desc(STATUS - 512, 513, W),
        ],
        &limits(),
    );
    let ParseOutcome::Valid(req) = out else {
        panic!("{out:?}")
    };
    assert_eq!(req.status_addr, GuestAddress(STATUS));
    assert_eq!(
        req.kind,
        RequestKind::Read {
            sector: 0,
            data: vec![Segment {
                addr: GuestAddress(STATUS - 512),
                len: 512
            }],
            len: 512
        }
    );
}

#[test]
fn write_flush_get_id_discard_write_zeroes() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 1016);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 4096, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(
        out,
        ParseOutcome::Valid(Request {
            kind: RequestKind::Write {
                sector: 1016,
                len: 4096,
                ..
            },
            ..
        })
    ));

    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let out = parse_chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, W)], &limits());
    assert!(matches!(
        out,
        ParseOutcome::Valid(Request {
            kind: RequestKind::Flush,
            ..
        })
    ));

    header(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(
        out,
        ParseOutcome::Valid(Request {
            kind: RequestKind::GetId { len: 20, .. },
            ..
        })
    ));

    header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    range_payload(&m, DATA, 16, 32, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(
        out,
        ParseOutcome::Valid(Request {
            kind: RequestKind::Discard {
                sector: 16,
                num_sectors: 32
            },
            ..
        })
    ));

    header(&m, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    range_payload(&m, DATA, 0, 1024, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(
        out,
        ParseOutcome::Valid(Request {
            kind: RequestKind::WriteZeroes {
                sector: 0,
                num_sectors: 1024,
                unmap: true
            },
            ..
        })
    ));
}

#[test]
fn looping_chain_is_dropped() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let next = u16_of(VRING_DESC_F_NEXT);
    let out = parse_raw(
        &m,
        &[
            RawDescriptor::from(Descriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 512, next | W, 0)),
        ],
    );
    assert_eq!(dropped(out), RequestError::ChainTruncated);
}

#[test]
fn next_index_past_queue_size_is_dropped() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let next = u16_of(VRING_DESC_F_NEXT);
    let out = parse_raw(
        &m,
        &[RawDescriptor::from(Descriptor::new(HDR, 16, next, 16))],
    );
    assert_eq!(dropped(out), RequestError::ChainTruncated);
}

#[test]
fn nested_indirect_table_is_dropped() {
    let m = mem();
    let table = 0x4_0000u64;
    let inner = 0x5_0000u64;
    let ind = u16_of(VRING_DESC_F_INDIRECT);
    m.write_obj(Descriptor::new(inner, 16, ind, 0), GuestAddress(table))
        .unwrap();
    let out = parse_raw(
        &m,
        &[RawDescriptor::from(Descriptor::new(table, 16, ind, 0))],
    );
    assert_eq!(dropped(out), RequestError::EmptyChain);
}

#[test]
fn indirect_table_length_not_multiple_of_16_is_dropped() {
    let m = mem();
    let ind = u16_of(VRING_DESC_F_INDIRECT);
    let out = parse_raw(
        &m,
        &[RawDescriptor::from(Descriptor::new(0x4_0000, 24, ind, 0))],
    );
    assert_eq!(dropped(out), RequestError::EmptyChain);
}

#[test]
fn indirect_table_is_followed() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let table = 0x4_0000u64;
    let next = u16_of(VRING_DESC_F_NEXT);
    let entries = [
        Descriptor::new(HDR, 16, next, 1),
        Descriptor::new(DATA, 512, next | W, 2),
        Descriptor::new(STATUS, 1, W, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        m.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let ind = u16_of(VRING_DESC_F_INDIRECT);
    let out = parse_raw(
        &m,
        &[RawDescriptor::from(Descriptor::new(table, 48, ind, 0))],
    );
    assert!(matches!(out, ParseOutcome::Valid(_)), "{out:?}");
}

#[test]
fn buffer_past_end_of_memory_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(MEM_SIZE - 256, 512, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    let (e, s) = rejected(out);
    assert!(matches!(e, RequestError::BufferOutOfMemory { .. }));
    assert_eq!(s, BlockStatus::IoErr);
}

#[test]
fn buffer_address_overflow_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(u64::MAX - 100, 512, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(rejected(out).1, BlockStatus::IoErr);
}

#[test]
fn buffer_straddling_two_regions_is_valid() {
    let m = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x8_0000),
        (GuestAddress(0x8_0000), 0x8_0000),
    ])
    .unwrap();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(0x8_0000 - 512, 1024, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert!(matches!(out, ParseOutcome::Valid(_)), "{out:?}");
}

#[test]
fn zero_length_descriptor_is_skipped() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    // Address far outside memory: must not be dereferenced or checked.
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(u64::MAX - 1, 0, W),
            desc(DATA, 512, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    let ParseOutcome::Valid(req) = out else {
        panic!("{out:?}")
    };
    assert!(matches!(req.kind, RequestKind::Read { len: 512, .. }));
}

#[test]
fn read_into_device_readable_buffer_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(
        rejected(out),
        (RequestError::WrongDirection, BlockStatus::IoErr)
    );
}

#[test]
fn write_from_device_writable_buffer_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(
        rejected(out),
        (RequestError::WrongDirection, BlockStatus::IoErr)
    );
}

#[test]
fn readable_after_writable_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let out = parse_chain(
        &m,
        &[
            desc(HDR, 16, 0),
            desc(DATA, 512, W),
            desc(DATA + 512, 512, 0),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(rejected(out), (RequestError::BadOrder, BlockStatus::IoErr));
}

#[test]
fn past_capacity_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 1023);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
        &limits(),
    );
    let (e, s) = rejected(out);
    assert!(matches!(e, RequestError::OutOfBounds { .. }));
    assert_eq!(s, BlockStatus::IoErr);

    // Exactly up to the end is fine.
    header(&m, HDR, VIRTIO_BLK_T_IN, 1022);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(out, ParseOutcome::Valid(_)));
}

#[test]
fn sector_overflow_is_ioerr() {
    let m = mem();
    for sector in [u64::MAX, u64::MAX - 1, u64::MAX >> 8] {
        header(&m, HDR, VIRTIO_BLK_T_OUT, sector);
        let out = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 1024, 0), desc(STATUS, 1, W)],
            &limits(),
        );
        assert_eq!(rejected(out), (RequestError::Overflow, BlockStatus::IoErr));
    }
    let unlimited = RequestLimits {
        capacity_sectors: u64::MAX,
        ..limits()
    };
    header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    range_payload(&m, DATA, u64::MAX - 1, 8, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
        &unlimited,
    );
    assert_eq!(rejected(out), (RequestError::Overflow, BlockStatus::IoErr));
}

#[test]
fn unaligned_length_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 513, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(
        rejected(out),
        (RequestError::UnalignedLength(513), BlockStatus::IoErr)
    );
}

#[test]
fn unknown_type_is_unsupp() {
    let m = mem();
    header(&m, HDR, 0xdead, 0);
    let out = parse_chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, W)], &limits());
    assert_eq!(
        rejected(out),
        (RequestError::UnsupportedType(0xdead), BlockStatus::Unsupp)
    );
}

#[test]
fn unknown_range_flags_are_unsupp() {
    let m = mem();
    for (t, flags) in [
        (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        (VIRTIO_BLK_T_DISCARD, 0x80),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0x2),
    ] {
        header(&m, HDR, t, 0);
        range_payload(&m, DATA, 0, 8, flags);
        let out = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
            &limits(),
        );
        assert_eq!(
            rejected(out),
            (RequestError::UnsupportedFlags(flags), BlockStatus::Unsupp)
        );
    }
}

#[test]
fn range_payload_problems_are_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    range_payload(&m, DATA, 0, 8, 0);
    for len in [0u32, 8, 32] {
        let mut descs = vec![desc(HDR, 16, 0)];
        if len > 0 {
            descs.push(desc(DATA, len, 0));
        }
        descs.push(desc(STATUS, 1, W));
        let (e, s) = rejected(parse_chain(&m, &descs, &limits()));
        assert_eq!(e, RequestError::BadRangePayload(u64::from(len)));
        assert_eq!(s, BlockStatus::IoErr);
    }
    range_payload(&m, DATA, 0, 4097, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(
        rejected(out),
        (RequestError::RangeTooLarge(4097), BlockStatus::IoErr)
    );
    range_payload(&m, DATA, 1000, 100, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert!(matches!(rejected(out).0, RequestError::OutOfBounds { .. }));
}

#[test]
fn read_only_device_refuses_modifications() {
    let m = mem();
    let ro = RequestLimits {
        read_only: true,
        ..limits()
    };
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        &ro,
    );
    assert_eq!(rejected(out), (RequestError::ReadOnly, BlockStatus::IoErr));
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&m, HDR, t, 0);
        range_payload(&m, DATA, 0, 8, 0);
        let out = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
            &ro,
        );
        assert_eq!(rejected(out), (RequestError::ReadOnly, BlockStatus::IoErr));
    }
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let out = parse_chain(
        &m,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        &ro,
    );
    assert!(matches!(out, ParseOutcome::Valid(_)));
}

#[test]
fn too_many_segments_is_ioerr() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![desc(HDR, 16, 0)];
    for i in 0..15 {
        descs.push(desc(DATA + 512 * i, 512, W));
    }
    descs.push(desc(STATUS, 1, W));
    let (e, _) = rejected(parse_chain(&m, &descs, &limits()));
    assert_eq!(e, RequestError::TooManySegments(15));
}

#[test]
fn short_header_is_ioerr() {
    let m = mem();
    let out = parse_chain(&m, &[desc(HDR, 8, 0), desc(STATUS, 1, W)], &limits());
    assert_eq!(
        rejected(out),
        (RequestError::ShortHeader, BlockStatus::IoErr)
    );
}

#[test]
fn missing_status_is_dropped() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let out = parse_chain(&m, &[desc(HDR, 16, 0), desc(DATA, 512, 0)], &limits());
    assert_eq!(dropped(out), RequestError::NoStatus);
}

#[test]
fn status_outside_memory_is_dropped() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let out = parse_chain(&m, &[desc(HDR, 16, 0), desc(MEM_SIZE, 1, W)], &limits());
    assert_eq!(dropped(out), RequestError::StatusOutOfMemory);
}
