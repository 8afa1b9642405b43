//! The Landlock half of the sandbox: a domain that denies all filesystem
//! access and TCP bind/connect (where the kernel has Landlock), except the
//! path exceptions the skeleton needs (removing its sockets on exit) and
//! the files a device serves from, listed by their open descriptors with
//! the rights they were opened with.

use std::os::fd::BorrowedFd;
use std::path::Path;

use ::landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

/// Setting up the Landlock domain failed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("setting up landlock")]
    Ruleset(#[source] ::landlock::RulesetError),
    #[error("opening a path for a landlock rule")]
    Path(#[source] ::landlock::PathFdError),
}

/// One filesystem exception to the domain: `access` beneath `path`.
#[derive(Debug)]
pub struct FsException<'a> {
    pub path: &'a Path,
    pub access: BitFlags<AccessFs>,
}

/// A file the daemon serves from: read (and write, if `writable`) access
/// to that file alone.
#[derive(Debug)]
pub struct FileRule<'a> {
    pub fd: BorrowedFd<'a>,
    pub writable: bool,
}

impl FileRule<'_> {
    /// The Landlock rights the rule grants.
    pub fn access(&self) -> BitFlags<AccessFs> {
        if self.writable {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate
        } else {
            AccessFs::ReadFile.into()
        }
    }
}

/// Confines the calling thread (and the threads it creates from now on):
/// no filesystem access but `exceptions` and `files`, no TCP. Returns
/// whether the kernel enforced it (best effort on older kernels).
pub fn restrict(
    exceptions: &[FsException],
    files: &[FileRule],
) -> Result<RulesetStatus, LandlockError> {
    let abi = ABI::V5;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.create())
        .map_err(LandlockError::Ruleset)?;
    for e in exceptions {
        let fd = PathFd::new(e.path).map_err(LandlockError::Path)?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, e.access))
            .map_err(LandlockError::Ruleset)?;
    }
    for f in files {
        ruleset = ruleset
            .add_rule(PathBeneath::new(f.fd, f.access()))
            .map_err(LandlockError::Ruleset)?;
    }
    let status = ruleset.restrict_self().map_err(LandlockError::Ruleset)?;
    Ok(status.ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landlock_lists_exactly_the_image_files() {
        use std::fs::OpenOptions;
        use std::os::fd::AsFd;
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ll").unwrap();
        let p = |n: &str| dir.as_path().join(n);
        for n in ["backing", "image", "other"] {
            std::fs::write(p(n), n).unwrap();
        }
        let backing = std::fs::File::open(p("backing")).unwrap();
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("image"))
            .unwrap();
        let status = std::thread::scope(|s| {
            s.spawn(|| {
                let files = [
                    FileRule {
                        fd: backing.as_fd(),
                        writable: false,
                    },
                    FileRule {
                        fd: image.as_fd(),
                        writable: true,
                    },
                ];
                let status = restrict(&[], &files).unwrap();
                let open = |n: &str, w: bool| {
                    OpenOptions::new()
                        .read(true)
                        .write(w)
                        .open(p(n))
                        .map(drop)
                        .map_err(|e| e.raw_os_error())
                };
                assert_eq!(open("backing", false), Ok(()));
                assert_eq!(open("backing", true), Err(Some(libc::EACCES)));
                assert_eq!(open("image", true), Ok(()));
                assert_eq!(open("other", false), Err(Some(libc::EACCES)));
                status
            })
            .join()
            .unwrap()
        });
        assert_eq!(status, RulesetStatus::FullyEnforced);
        // This thread is not in the domain.
        assert!(std::fs::File::open(p("other")).is_ok());
    }
}
