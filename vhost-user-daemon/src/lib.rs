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
//!   connection.
//!
//! It knows no device: it never depends on a daemon crate.

pub mod cli;
pub mod exit_fds;
pub mod listen;
pub mod logging;
pub mod serve;
pub mod shutdown;
pub mod signals;
