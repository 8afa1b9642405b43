//! Support both vhost-user daemons need around vhost-user-backend 0.24 and
//! shared guest memory, kept once (feature `backend`):
//!
//! - [`checked_vring`]: a vring that refuses SET_VRING_NUM sizes that are not
//!   a power of two;
//! - [`memguard`]: refuse short memory files, survive truncated ones (SIGBUS);
//! - [`notify_fd`]: kick/call/error fds must be eventfds, written without
//!   ever blocking;
//! - [`privileges`]: `--user`, dropping root after start-up;
//! - [`relay`] and [`private_socket`]: a message relay in front of
//!   vhost-user-backend for what it cannot handle, on a private socket;
//! - [`inflight`] and [`chain`]: the INFLIGHT_SHMFD region and the
//!   descriptor-chain walk that resubmits what it records.

pub mod chain;
pub mod checked_vring;
pub mod inflight;
pub mod memguard;
pub mod notify_fd;
pub mod private_socket;
pub mod privileges;
pub mod relay;
