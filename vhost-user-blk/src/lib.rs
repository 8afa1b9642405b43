//! Viaduct's vhost-user-blk daemon: serves one disk image to one vhost-user
//! frontend at a time, processing virtqueues in shared guest memory with
//! io_uring (raw) or imago (qcow2).
//!
//! Where things live: `cli` (options and help) → `config` (validation) →
//! `disk` (open the image; `qcow2_chain` and `chain` open a qcow2 image's backing chain and data file, only where `--backing-dir`/`--backing`/`--data-file` allow) (`image_lock`: the advisory lock, handed over at a migration's switch-over) → `serve` (listener loop, a fresh `backend` per
//! connection) → `worker` (one per queue: ring → requests → completions) →
//! `engine` (the `BlockEngine` seam: raw io_uring, qcow2, null); `inflight_relay` (INFLIGHT_SHMFD: the relay in front of vhost-user-backend, on `private_socket`); `checked_vring` (refuses bad SET_VRING_NUM sizes); `memguard` (short or truncated guest memory files); `privileges` (`--user`); `sandbox` (this daemon's syscalls and image files for `vhost_user_daemon::sandbox`).

pub mod backend;
pub mod chain;
pub mod cli;
pub mod config;
pub mod counters;
pub mod disk;
pub mod engine;
pub mod image_lock;
pub mod inflight_relay;
pub mod qcow2_chain;
pub mod sandbox;
pub mod serve;
pub mod worker;
pub use vhost_user_daemon::{checked_vring, memguard, private_socket, privileges};
