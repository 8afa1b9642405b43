//! The skeleton both vhost-user daemons stand on, so that a daemon is its
//! device plus a page of `main`:
//!
//! - [`cli`]: the flags every backend program has (`--socket-path`, `--fd`,
//!   `--print-capabilities`, `--log-level`, `--sandbox`, `--user`), for
//!   `#[command(flatten)]`;
//! - [`listen`]: binding the socket (the rules: never over a non-socket,
//!   never over a live daemon, a stale socket replaced) or adopting `--fd`;
//! - [`shutdown`] and [`signals`]: SIGTERM/SIGINT end the serve loop and
//!   the current connection, SIGUSR1 logs counters;
//! - [`serve`]: accept a frontend, build a fresh backend and relay, serve,
//!   stop the workers, let the device drain, accept again;
//! - [`exit_fds`]: closes the fds vhost-user-backend 0.24 leaks per
//!   connection;
//! - [`relay`] and [`private_socket`]: a message relay in front of
//!   vhost-user-backend for what it cannot handle, on a private socket;
//!   [`notify_fd`]: kick/call/error fds must be eventfds, written without
//!   ever blocking;
//! - [`inflight`] and [`chain`]: the INFLIGHT_SHMFD region and the
//!   descriptor-chain walk that resubmits what it records;
//! - [`checked_vring`]: a vring that refuses SET_VRING_NUM sizes that are
//!   not a power of two;
//! - [`iovec`]: the iovec of a buffer of our own;
//! - [`memguard`]: refuse short memory files, survive truncated ones
//!   (SIGBUS, guest-memory ranges only);
//! - [`privileges`]: `--user`, dropping root after start-up;
//! - [`sandbox`]: `--user`, then Landlock and the seccomp allowlist (a base
//!   list plus the syscalls, ioctls and files a daemon adds), in that order;
//! - [`dirty_log`]: live migration's dirty-page log (SET_LOG_BASE,
//!   LOG_ALL), marked by the workers for every page they write.
//!
//! It knows no device: it never depends on a daemon crate.

pub mod chain;
pub mod checked_vring;
pub mod cli;
pub mod dirty_log;
pub mod exit_fds;
pub mod inflight;
pub mod iovec;
pub mod listen;
pub mod logging;
pub mod memguard;
pub mod notify_fd;
pub mod private_socket;
pub mod privileges;
pub mod relay;
pub mod sandbox;
pub mod serve;
pub mod shutdown;
pub mod signals;
