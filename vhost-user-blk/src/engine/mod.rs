//! Block engines: what a validated request becomes on the disk.
//!
//! The queue worker speaks to an engine in block terms only: it submits a
//! parsed [`RequestKind`] with a token and gets [`Submitted::Done`] (a
//! virtio status and the bytes written to the guest) or
//! [`Submitted::Queued`]; queued requests come back from [`BlockEngine::reap`]
//! once the engine's completion fd is readable. Iovecs, CQEs, fallocate modes
//! and locks stay in here.
//!
//! - `raw`: raw files and block devices through a per-queue io_uring
//!   (`uring`), reads and writes tried inline first (`raw_inline`), requests
//!   turned into ring operations by `raw_op`, WRITE_ZEROES falling back to
//!   writing zeroes (`zeroes`).
//! - `qcow2`: imago, synchronously on the worker thread (always `Done`).
//! - `rbd`: Ceph RBD through librbd's AIO calls (`rbd_ffi`, loaded at run
//!   time), one image shared by the queues (`rbd_image`), named
//!   `rbd:POOL/IMAGE[@SNAP]` (`rbd_spec`).
//! - `null`: `--null-io`, reads, writes and flushes complete at once;
//!   the rest goes to the engine it wraps.
//!
//! A new backend (NBD, Ceph RBD) is one more file implementing
//! [`BlockEngine`] and one more [`Engine`] variant: its completion fd is the
//! socket or the librbd eventfd, `reap` turns what arrived into
//! [`Reaped`] entries. FLUSH is a request like any other (submitted, so it
//! may run asynchronously); the final flush at shutdown belongs to the
//! opened image (`disk`).
//!
//! Dispatch is static: [`Engine`] is an enum, and each call is one `match`.

pub mod null;
pub mod qcow2;
pub mod raw;
pub mod raw_inline;
pub mod raw_op;
pub mod rbd;
pub mod rbd_ffi;
pub mod rbd_image;
pub mod rbd_spec;
pub mod uring;
pub mod zeroes;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use vhost_user_daemon::serve::GuestMemory;
use virtio_devices::block::{BlockStatus, RequestKind};

use crate::disk::{Disk, DiskBackend};

/// Guest memory as an engine sees it (a snapshot of the connection's table).
pub type Mem = GuestMemory;

/// The engine cannot go on (the host's fault, never the guest's; a request
/// that fails ends with IOERR instead).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The io_uring could not be set up or refused a submission.
    #[error("io_uring failure")]
    Uring(#[from] uring::UringError),
    /// The RBD engine's completion plumbing could not be set up.
    #[error("rbd engine failure")]
    Rbd(#[from] rbd::RbdEngineError),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The status byte for the guest.
    pub status: BlockStatus,
    /// Data bytes written into guest memory (the used length minus the
    /// status byte).
    pub len: u64,
}

impl Completion {
    /// Success with `len` bytes written to the guest.
    pub fn ok(len: u64) -> Self {
        Completion {
            status: BlockStatus::Ok,
            len,
        }
    }

    /// IOERR, nothing written to the guest.
    pub fn io_err() -> Self {
        Completion {
            status: BlockStatus::IoErr,
            len: 0,
        }
    }
}

/// What [`BlockEngine::submit`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Finished already.
    Done(Completion),
    /// In flight: its token comes back from [`BlockEngine::reap`].
    Queued,
}

/// A queued request that finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// The token it was submitted with.
    pub token: u64,
    /// How it ended.
    pub completion: Completion,
}

/// One queue's block backend.
pub trait BlockEngine {
    /// Start `kind` (validated) against the disk; its data buffers live in
    /// `mem`, which a queued request keeps mapped until it is reaped.
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        token: u64,
    ) -> Result<Submitted, EngineError>;

    /// Hand everything queued since the last call to the backend (once per
    /// batch of submits).
    fn commit(&mut self) -> Result<(), EngineError>;

    /// Readable when [`BlockEngine::reap`] has something; `None` if every
    /// request is `Done` at once.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Append every finished queued request to `out`.
    fn reap(&mut self, out: &mut Vec<Reaped>);

    /// Block until at least one queued request can be reaped (draining:
    /// the worker waits, reaps and reports until nothing is in flight).
    fn wait(&mut self) -> Result<(), EngineError>;
}

/// The engines, statically dispatched.
// One per queue, built once and never moved on the request path: the raw
// engine is kept inline rather than behind another pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Engine {
    /// Raw file or block device (io_uring).
    Raw(raw::RawEngine),
    /// qcow2 (imago).
    Qcow2(qcow2::Qcow2Engine),
    /// Ceph RBD image (librbd AIO).
    Rbd(rbd::RbdEngine),
    /// `--null-io` in front of one of the others.
    Null(Box<null::NullEngine>),
}

/// What every engine is built from.
#[derive(Debug)]
pub struct EngineParams {
    /// Queue index (logs).
    pub queue: usize,
    /// Queue size: requests in flight at most.
    pub queue_size: u16,
    /// Guest-visible write cache enabled (CONFIG_WCE).
    pub writeback: Arc<AtomicBool>,
    /// `--null-io`.
    pub null_io: bool,
}

impl Engine {
    /// The engine `disk` needs for one queue.
    pub fn new(disk: &Arc<Disk>, params: EngineParams) -> Result<Self, EngineError> {
        let engine = match &disk.backend {
            DiskBackend::Raw { file, .. } => {
                Engine::Raw(raw::RawEngine::new(disk, file.as_raw_fd(), &params)?)
            }
            DiskBackend::Qcow2(_) => Engine::Qcow2(qcow2::Qcow2Engine::new(disk, &params)),
            DiskBackend::Rbd(image) => Engine::Rbd(rbd::RbdEngine::new(disk, image, &params)?),
        };
        Ok(if params.null_io {
            Engine::Null(Box::new(null::NullEngine::new(engine)))
        } else {
            engine
        })
    }
}

/// `$call` on whichever engine `$self` holds.
macro_rules! each {
    ($self:expr, $e:ident => $call:expr) => {
        match $self {
            Engine::Raw($e) => $call,
            Engine::Qcow2($e) => $call,
            Engine::Rbd($e) => $call,
            Engine::Null($e) => $call,
        }
    };
}

impl BlockEngine for Engine {
    #[inline]
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        token: u64,
    ) -> Result<Submitted, EngineError> {
        each!(self, e => e.submit(mem, kind, token))
    }

    #[inline]
    fn commit(&mut self) -> Result<(), EngineError> {
        each!(self, e => e.commit())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        each!(self, e => e.completion_fd())
    }

    #[inline]
    fn reap(&mut self, out: &mut Vec<Reaped>) {
        each!(self, e => e.reap(out))
    }

    fn wait(&mut self) -> Result<(), EngineError> {
        each!(self, e => e.wait())
    }
}

#[cfg(test)]
mod tests;
