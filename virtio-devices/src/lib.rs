//! Virtio, shared by Viaduct's VMM and its vhost-user daemons: device
//! semantics (`block`, `net`), the virtio-pci transport (`transport`, built
//! on the `pci` crate), and the VMM's vhost-user frontend (`vhost_user`).
//! It never depends on KVM or VFIO.
//!
//! Device semantics know nothing of sockets: a block request is parsed and
//! validated, a net header is checked, from plain guest-memory buffers, so
//! unit tests drive them with mock rings. The `backend` feature adds what
//! both vhost-user daemons need around vhost-user-backend and the guest
//! memory a frontend shares (module `backend`).

#[cfg(feature = "backend")]
pub mod backend;
pub mod block;
pub mod net;
#[cfg(feature = "seccomp")]
pub mod seccomp;
pub mod transport;
pub mod vhost_user;
