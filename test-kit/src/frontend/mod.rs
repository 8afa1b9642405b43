//! Well-behaved vhost-user frontends that play the guest's driver: rings
//! built by hand in memfd guest memory, negotiated with the vhost crate's
//! `Frontend` the way QEMU does it.

pub mod blk;
pub mod net;
