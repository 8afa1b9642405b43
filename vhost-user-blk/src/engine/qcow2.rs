//! qcow2 requests, executed synchronously through imago on the queue's
//! worker thread (correctness first: one lock around the driver; guest
//! buffers are handed to imago as vm-memory slices, no bounce copy here).
//! Every request is `Done` when `submit` returns; there is no completion fd.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use imago::io_buffers::{IoVector, IoVectorMut};
use virtio_devices::block::{BlockStatus, Request, RequestKind, Segment};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{BlockEngine, Completion, EngineError, EngineParams, Mem, Reaped, Submitted};
use crate::disk::{Disk, DiskBackend, Qcow2Access};

/// A qcow2 request failed.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// A guest buffer vanished (memory table changed under us).
    #[error("guest buffer not mapped")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// imago reported an I/O error.
    #[error("qcow2 I/O failed")]
    Io(#[source] std::io::Error),
    /// Another thread panicked while holding the driver.
    #[error("qcow2 driver lock poisoned")]
    Poisoned,
}

/// One queue's qcow2 engine (the driver and its lock are the disk's,
/// shared by every queue).
#[derive(Debug)]
pub struct Qcow2Engine {
    disk: Arc<Disk>,
    writeback: Arc<AtomicBool>,
    queue: usize,
}

impl Qcow2Engine {
    /// Engine for queue `params.queue` of `disk`.
    pub fn new(disk: &Arc<Disk>, params: &EngineParams) -> Self {
        Qcow2Engine {
            disk: Arc::clone(disk),
            writeback: Arc::clone(&params.writeback),
            queue: params.queue,
        }
    }
}

impl BlockEngine for Qcow2Engine {
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        _token: u64,
    ) -> Result<Submitted, EngineError> {
        let cache = self.disk.cache;
        let DiskBackend::Qcow2(access) = &self.disk.backend else {
            // Never built for another backend (see `Engine::new`).
            return Ok(Submitted::Done(Completion::io_err()));
        };
        if matches!(kind, RequestKind::Flush) && !cache.flush_syncs() {
            return Ok(Submitted::Done(Completion::ok(0)));
        }
        let write_through = cache.dsync() || !self.writeback.load(Ordering::Relaxed);
        let (status, n) = match execute(access, mem, kind, cache.flush_syncs(), write_through) {
            Ok(n) => (BlockStatus::Ok, n),
            Err(e) => {
                log::warn!("qcow2_error queue={} error=\"{e}\"", self.queue);
                (BlockStatus::IoErr, 0)
            }
        };
        let len = if matches!(kind, RequestKind::Read { .. }) {
            n
        } else {
            0
        };
        Ok(Submitted::Done(Completion { status, len }))
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    fn reap(&mut self, _out: &mut Vec<Reaped>) {}

    fn wait(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// Execute `kind` against the image; returns the bytes moved to or from the
/// guest. `flush_syncs`: FLUSH syncs to disk (false for cache=unsafe);
/// `write_through`: every write is flushed before it completes.
pub fn execute(
    access: &Mutex<Qcow2Access>,
    mem: &GuestMemoryMmap,
    kind: &RequestKind,
    flush_syncs: bool,
    write_through: bool,
) -> Result<u64, Qcow2Error> {
    let mut access = access.lock().map_err(|_| Qcow2Error::Poisoned)?;
    match kind {
        RequestKind::Read { sector, data, len } => {
            let slices = slices(mem, data)?;
            let (vector, _guard) = IoVectorMut::from_volatile_slice(&slices);
            access
                .readv(vector, Request::sector_to_offset(*sector))
                .map_err(Qcow2Error::Io)?;
            Ok(*len)
        }
        RequestKind::Write { sector, data, len } => {
            let slices = slices(mem, data)?;
            let (vector, _guard) = IoVector::from_volatile_slice(&slices);
            access
                .writev(vector, Request::sector_to_offset(*sector))
                .map_err(Qcow2Error::Io)?;
            if write_through {
                sync(&access)?;
            }
            Ok(*len)
        }
        RequestKind::Flush => {
            if flush_syncs {
                sync(&access)?;
            }
            Ok(0)
        }
        RequestKind::Discard {
            sector,
            num_sectors,
        } => {
            let offset = Request::sector_to_offset(*sector);
            let len = Request::sector_to_offset(u64::from(*num_sectors));
            // Discard is advisory: a range the driver cannot free is not an error.
            match access.discard_to_any(offset, len) {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(0),
                Err(e) => Err(Qcow2Error::Io(e)),
            }
        }
        RequestKind::WriteZeroes {
            sector,
            num_sectors,
            ..
        } => {
            let offset = Request::sector_to_offset(*sector);
            let len = Request::sector_to_offset(u64::from(*num_sectors));
            access.write_zeroes(offset, len).map_err(Qcow2Error::Io)?;
            if write_through {
                sync(&access)?;
            }
            Ok(0)
        }
        // GET_ID never reaches an engine.
        RequestKind::GetId { .. } => Ok(0),
    }
}

fn sync(access: &Qcow2Access) -> Result<(), Qcow2Error> {
    access.flush().map_err(Qcow2Error::Io)?;
    access.sync().map_err(Qcow2Error::Io)
}

/// Resolve validated segments into host slices (one per memory region piece).
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    segs: &[Segment],
) -> Result<Vec<VolatileSlice<'m, ()>>, Qcow2Error> {
    let mut out = Vec::with_capacity(segs.len());
    for seg in segs {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            out.push(slice.map_err(Qcow2Error::Memory)?);
        }
    }
    Ok(out)
}
