//! Support both vhost-user daemons need around vhost-user-backend 0.24 and
//! shared guest memory, kept once (feature `backend`):
//!
//! - [`checked_vring`]: a vring that refuses SET_VRING_NUM sizes that are not
//!   a power of two;
//! - [`memguard`]: refuse short memory files, survive truncated ones (SIGBUS);
//! - [`privileges`]: `--user`, dropping root after start-up.

pub mod checked_vring;
pub mod memguard;
pub mod privileges;
