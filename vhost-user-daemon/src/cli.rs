//! The flags every daemon shares, following the vhost-user spec's
//! "Backend program conventions". A daemon puts [`CommonArgs`] into its
//! own clap `Parser` with `#[command(flatten)]`.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Args;
use virtio_devices::seccomp::FilterMode;

use crate::listen::Listen;

/// An operator error in the common flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("give exactly one of --socket-path or --fd")]
    ListenChoice,
    #[error("--fd {0} is not a valid file descriptor")]
    BadFd(RawFd),
}

/// `--socket-path`/`--fd`, `--print-capabilities`, `--log-level`,
/// `--sandbox`, `--user`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Listen for the vhost-user frontend on this unix socket path (a stale
    /// socket there is replaced; a live daemon's socket or any other file
    /// is refused).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,
    /// Use this already-listening unix socket file descriptor instead.
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,
    /// Print the capabilities JSON of the vhost-user spec and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,
    /// After start-up, confine the daemon: seccomp allowlist on every
    /// thread and Landlock (no filesystem access). `log` only reports
    /// off-list syscalls to the kernel log.
    #[arg(long, value_enum, default_value_t = FilterMode::On)]
    pub sandbox: FilterMode,
    /// After start-up (and before the sandbox), drop root and run as this
    /// user (its uid and primary gid, no supplementary groups).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Test-only negative control (hidden): accept dirty logging and never
    /// mark a page, so a migration test can show it detects lost writes.
    #[arg(long, hide = true)]
    pub test_never_mark_dirty: bool,
}

impl CommonArgs {
    /// Where the frontend connects: exactly one of `--socket-path`, `--fd`.
    pub fn listen(&self) -> Result<Listen, CliError> {
        match (&self.socket_path, self.fd) {
            (Some(path), None) => Ok(Listen::Path(path.clone())),
            (None, Some(fd)) if fd >= 0 => Ok(Listen::Fd(fd)),
            (None, Some(fd)) => Err(CliError::BadFd(fd)),
            _ => Err(CliError::ListenChoice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn listen(args: &[&str]) -> Result<Listen, CliError> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::parse_from(v).common.listen()
    }

    #[test]
    fn exactly_one_listen_source() {
        assert_eq!(
            listen(&["--socket-path", "/s"]),
            Ok(Listen::Path("/s".into()))
        );
        assert_eq!(listen(&["--fd", "3"]), Ok(Listen::Fd(3)));
        assert_eq!(listen(&["--fd=-1"]), Err(CliError::BadFd(-1)));
        assert_eq!(listen(&[]), Err(CliError::ListenChoice));
        assert_eq!(
            listen(&["--socket-path", "/s", "--fd", "3"]),
            Err(CliError::ListenChoice)
        );
    }

    #[test]
    fn defaults_are_confined_and_informative() {
        let t = T::parse_from(["t", "--fd", "3"]);
        assert_eq!(t.common.sandbox, FilterMode::On);
        assert_eq!(t.common.log_level, log::LevelFilter::Info);
        assert!(t.common.user.is_none());
    }
}
