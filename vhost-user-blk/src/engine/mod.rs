//! I/O engines: `uring` submits raw-image requests to a per-queue io_uring
//! straight from guest memory; `qcow2` runs qcow2 requests synchronously
//! through imago on the queue's worker thread; `zeroes` writes zeroes
//! where fallocate cannot zero a range.

pub mod qcow2;
pub mod uring;
pub mod zeroes;
