//! Virtio, shared by Viaduct's VMM and its vhost-user daemons: device
//! semantics (`block`, `net`), the virtio-pci transport (`transport`, built
//! on the `pci` crate), and the VMM's vhost-user frontend (`vhost_user`).
//! It never depends on KVM or VFIO.
//!
//! Device semantics know nothing of sockets: a block request is parsed and
//! validated, a net header is checked, from plain guest-memory buffers, so
//! unit tests drive them with mock rings. What the daemons share around
//! vhost-user-backend lives in the `vhost-user-daemon` crate. Feature
//! `seccomp`: the seccomp mode both daemons and viaduct take. `narrow`:
//! virtio-bindings constants narrowed to their field's width at compile time.

pub mod block;
pub mod narrow;
pub mod net;
#[cfg(feature = "seccomp")]
pub mod seccomp;
pub mod transport;
pub mod vhost_user;
