//! `--null-io`: reads, writes and flushes complete at once without I/O (a
//! read leaves the guest's buffers as they were but reports them filled);
//! DISCARD and WRITE_ZEROES still go to the image's own engine. Measures
//! the protocol path alone (the bench's null case).

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_devices::block::RequestKind;

use super::{BlockEngine, Completion, Engine, EngineError, Mem, Reaped, Submitted};

/// The null engine in front of the image's engine.
#[derive(Debug)]
pub struct NullEngine {
    inner: Engine,
}

impl NullEngine {
    /// Null reads, writes and flushes; everything else to `inner`.
    pub fn new(inner: Engine) -> Self {
        NullEngine { inner }
    }
}

impl BlockEngine for NullEngine {
    fn submit(
        &mut self,
        mem: &Arc<Mem>,
        kind: &RequestKind,
        token: u64,
    ) -> Result<Submitted, EngineError> {
        match kind {
            RequestKind::Read { len, .. } => Ok(Submitted::Done(Completion::ok(*len))),
            RequestKind::Write { .. } | RequestKind::Flush => {
                Ok(Submitted::Done(Completion::ok(0)))
            }
            _ => self.inner.submit(mem, kind, token),
        }
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        self.inner.commit()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }

    fn reap(&mut self, out: &mut Vec<Reaped>) {
        self.inner.reap(out)
    }

    fn wait(&mut self) -> Result<(), EngineError> {
        self.inner.wait()
    }
}
