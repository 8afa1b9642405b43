//! The sandbox a daemon enters once its device is open and its sockets are
//! bound, in this order: `--user` (the relay's socket is handed to the
//! user, then root is dropped), Landlock on the calling thread (call before
//! any other thread exists: threads inherit the domain when created), then
//! the seccomp allowlist on every thread (TSYNC). A daemon supplies only
//! its device's part: extra syscalls and ioctls ([`SeccompExtras`]) and the
//! files it serves from ([`FileRule`]).

pub mod landlock;
pub mod seccomp;

use std::io;
use std::path::Path;

use ::landlock::AccessFs;
use virtio_devices::seccomp::SeccompError;

use crate::cli::CommonArgs;
use crate::listen::Listen;
use crate::private_socket::PrivateSocket;
use crate::privileges::{self, PrivilegesError};

pub use self::landlock::{FileRule, FsException, LandlockError};
pub use self::seccomp::SeccompExtras;
/// `--sandbox`: how strict the daemon is after start-up.
pub use virtio_devices::seccomp::FilterMode;

/// Entering the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Privileges(#[from] PrivilegesError),
    #[error("handing the relay socket to --user")]
    GiveSocket(#[source] io::Error),
    #[error("sandbox")]
    Landlock(#[from] LandlockError),
    #[error("sandbox")]
    Seccomp(#[from] SeccompError),
}

/// What a daemon is confined to after start-up.
#[derive(Debug)]
pub struct Sandbox<'a> {
    /// `--sandbox`.
    pub mode: FilterMode,
    /// `--user`: whom to become before the sandbox.
    pub user: Option<&'a str>,
    /// The frontend's socket (a bound path is removed on exit).
    pub listen: &'a Listen,
    /// The relay's private socket (removed with its directory on exit).
    pub private: &'a PrivateSocket,
    /// The device's syscalls and ioctls on top of the base list.
    pub seccomp: SeccompExtras<'a>,
    /// The files the device serves from.
    pub files: &'a [FileRule<'a>],
}

impl<'a> Sandbox<'a> {
    /// The sandbox the common flags (`--sandbox`, `--user`) ask for, around
    /// the daemon's sockets, with the device's `seccomp` extras and no
    /// files.
    pub fn new(
        common: &'a CommonArgs,
        listen: &'a Listen,
        private: &'a PrivateSocket,
        seccomp: SeccompExtras<'a>,
    ) -> Self {
        Sandbox {
            mode: common.sandbox,
            user: common.user.as_deref(),
            listen,
            private,
            seccomp,
            files: &[],
        }
    }

    /// Lists `files` (the device serves from them) in the Landlock domain.
    pub fn files(self, files: &'a [FileRule<'a>]) -> Self {
        Sandbox { files, ..self }
    }

    /// Drops privileges and enters the sandbox (from the main thread,
    /// before it spawns the threads that Landlock should cover; seccomp
    /// covers all).
    pub fn apply(self) -> Result<(), SandboxError> {
        if let Some(user) = self.user {
            become_user(user, self.private)?;
        }
        let Some(mismatch) = self.mode.mismatch() else {
            log::warn!("event=sandbox state=off");
            return Ok(());
        };
        let socket_dir = self.listen.socket_dir();
        let private = self.private.path();
        let private_dir = private.parent().unwrap_or(private);
        let tmp = std::env::temp_dir();
        // What the filesystem may still be used for: removing our sockets,
        // and the relay's directory, on exit.
        let mut removable: Vec<(&Path, AccessFs)> = socket_dir
            .iter()
            .map(|d| (d.as_path(), AccessFs::RemoveFile))
            .collect();
        removable.push((private_dir, AccessFs::RemoveFile));
        removable.push((&tmp, AccessFs::RemoveDir));
        let exceptions: Vec<_> = removable
            .into_iter()
            .map(|(path, access)| FsException {
                path,
                access: access.into(),
            })
            .collect();
        let landlock = landlock::restrict(&exceptions, self.files)?;
        let filter = seccomp::filter(&self.seccomp, mismatch)?;
        virtio_devices::seccomp::install_all_threads(&filter)?;
        log::info!(
            "event=sandbox state={:?} seccomp=all_threads landlock={landlock:?} landlock_files={}",
            self.mode,
            self.files.len()
        );
        Ok(())
    }
}

/// `--user`: hands the relay socket to `user` (so the daemon can still use
/// and remove it), then becomes `user` for good.
fn become_user(user: &str, private: &PrivateSocket) -> Result<(), SandboxError> {
    let ids = privileges::lookup(user)?;
    private
        .give_to(ids.uid, ids.gid)
        .map_err(SandboxError::GiveSocket)?;
    privileges::drop_to(ids)?;
    log::info!(
        "event=privileges_dropped user={user} uid={} gid={}",
        ids.uid,
        ids.gid
    );
    Ok(())
}
