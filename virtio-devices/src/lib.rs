//! Device semantics shared by Viaduct's VMM and its vhost-user daemons.
//!
//! Nothing here knows about sockets or KVM: a block request is parsed and
//! validated, a net header is checked, from plain guest-memory buffers, so
//! unit tests drive them with mock rings. The `backend` feature adds what
//! both vhost-user daemons need around vhost-user-backend and the guest
//! memory a frontend shares (module `backend`).

#[cfg(feature = "backend")]
pub mod backend;
pub mod block;
pub mod net;
pub mod pci;
#[cfg(feature = "seccomp")]
pub mod seccomp;
pub mod transport;
pub mod vhost_user;
