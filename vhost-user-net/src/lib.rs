//! Viaduct's vhost-user-net daemon as a library, so the integration tests can
//! run it in-process next to a TAP in a private network namespace.
//!
//! * [`cli`] / [`config`]: command line → validated [`config::Config`].
//! * [`tap`]: TAP ioctls (open, vnet header size, offloads, queues, host side).
//! * [`backend`]: the vhost-user-backend glue (features, config space, events).
//! * [`pair`]: one queue pair's state, owned by its worker thread;
//!   [`pair_types`]: the vocabulary it shares with the backend and the data
//!   paths (a leaf: the modules here import in one direction only).
//! * [`tx`] / [`rx`]: the two data paths, over any [`pair_types::Virtqueue`]
//!   and fd ([`ring_check`]: avail overrun); [`iov`]: guest buffers → iovecs.
//! * [`dirty`]: dirty-page marks for what the data paths write (migration).
//! * [`counters`]: per-queue packet/byte/drop counters.
//! * [`serve`]: the listen/accept loop with a fresh backend per connection.
//! * [`filter`]: relay that hides a QEMU message-order quirk from the
//!   vhost-user-backend framework and answers NET_SET_MTU and SEND_RARP
//!   ([`rarp`]: the announcement); [`private_socket`]: its private,
//!   peer-checked socket to the backend.
//! * [`checked_vring`]: refuses SET_VRING_NUM sizes that are not a power of two.
//! * [`memguard`]: refuse short memory files, survive truncated ones.
//! * [`privileges`]: `--user`, dropping root after start-up.
//! * [`sandbox`]: this daemon's syscalls and ioctls for `vhost_user_daemon::sandbox`.

pub mod backend;
pub mod cli;
pub mod config;
pub mod counters;
pub mod dirty;
pub mod filter;
pub mod iov;
pub mod pair;
pub mod pair_types;
pub mod rarp;
pub mod ring_check;
pub mod rx;
pub mod sandbox;
pub mod serve;
pub mod tap;
#[cfg(test)]
mod test_ring;
pub mod tx;
pub use vhost_user_daemon::{checked_vring, memguard, private_socket, privileges};
