//! The seam itself, on real files and a real io_uring: tokens come back
//! with block-level results, whichever engine runs.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use virtio_devices::block::{BlockStatus, RequestKind, Segment};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::{BlockEngine, Completion, Engine, EngineParams, Mem, Reaped, Submitted};
use crate::cli::Args;
use crate::config::Config;
use crate::disk::Disk;

fn disk(file: &TempFile, cache: &str) -> Arc<Disk> {
    let argv = [
        "vhost-user-blk",
        "--socket-path",
        "/nonexistent",
        "--blk-file",
        file.as_path().to_str().unwrap(),
        "--cache",
        cache,
    ];
    let config = Config::try_from(Args::try_parse_from(argv).unwrap()).unwrap();
    Arc::new(Disk::open(&config).unwrap())
}

fn engine(disk: &Arc<Disk>, null_io: bool) -> Engine {
    let params = EngineParams {
        queue: 0,
        queue_size: 8,
        writeback: Arc::new(AtomicBool::new(true)),
        null_io,
    };
    Engine::new(disk, params).unwrap()
}

fn mem() -> Arc<Mem> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap())
}

fn read(sector: u64, addr: u64, len: u32) -> RequestKind {
    RequestKind::Read {
        sector,
        data: vec![Segment {
            addr: GuestAddress(addr),
            len,
        }],
        len: u64::from(len),
    }
}

/// Submit and, if queued, wait until the engine gives `token` back.
fn run(e: &mut Engine, mem: &Arc<Mem>, kind: &RequestKind, token: u64) -> Completion {
    match e.submit(mem, kind, token).unwrap() {
        Submitted::Done(c) => c,
        Submitted::Queued => {
            e.commit().unwrap();
            let mut out: Vec<Reaped> = Vec::new();
            while out.is_empty() {
                e.wait().unwrap();
                e.reap(&mut out);
            }
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].token, token);
            out[0].completion
        }
    }
}

#[test]
fn raw_engine_queues_on_the_ring_and_returns_tokens_with_block_results() {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    // cache=none: nothing goes inline, so every transfer is queued.
    let d = disk(&f, "none");
    let mut e = engine(&d, false);
    assert!(e.completion_fd().is_some());
    let mem = mem();
    mem.write_slice(&[0xc3; 4096], GuestAddress(0x1000))
        .unwrap();
    let write = RequestKind::Write {
        sector: 8,
        data: vec![Segment {
            addr: GuestAddress(0x1000),
            len: 4096,
        }],
        len: 4096,
    };
    assert_eq!(e.submit(&mem, &write, 41).unwrap(), Submitted::Queued);
    e.commit().unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        e.wait().unwrap();
        e.reap(&mut out);
    }
    // A write puts no data into the guest.
    let expected = Reaped {
        token: 41,
        completion: Completion::ok(0),
    };
    assert_eq!(out, vec![expected]);
    assert_eq!(
        run(&mut e, &mem, &read(8, 0x4000, 4096), 7),
        Completion::ok(4096)
    );
    let mut back = [0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
    assert!(back.iter().all(|&b| b == 0xc3));
    assert_eq!(run(&mut e, &mem, &RequestKind::Flush, 3), Completion::ok(0));
    // A buffer outside guest memory ends with IOERR at once.
    let outside = read(0, 0x20_0000, 512);
    assert_eq!(
        e.submit(&mem, &outside, 9).unwrap(),
        Submitted::Done(Completion::io_err())
    );
}

#[test]
fn null_engine_answers_transfers_at_once_and_passes_the_rest_on() {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    std::fs::write(f.as_path(), vec![0x11; 1 << 20]).unwrap();
    let d = disk(&f, "none");
    let mut e = engine(&d, true);
    let mem = mem();
    let got = e.submit(&mem, &read(0, 0, 4096), 1).unwrap();
    assert_eq!(got, Submitted::Done(Completion::ok(4096)));
    let mut buf = [0u8; 16];
    mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
    assert_eq!(buf, [0u8; 16], "no data moved");
    // DISCARD goes to the raw engine underneath (a ring fallocate).
    let discard = RequestKind::Discard {
        sector: 0,
        num_sectors: 8,
    };
    let c = run(&mut e, &mem, &discard, 2);
    assert_eq!(c.status, BlockStatus::Ok);
    let image = std::fs::read(f.as_path()).unwrap();
    assert!(
        image[..4096].iter().all(|&b| b == 0),
        "the discard reached the file"
    );
    assert!(image[4096..8192].iter().all(|&b| b == 0x11));
}
