//! viaduct's Landlock domain: once the VM is built, the filesystem is
//! closed to the VMM but for the few paths it may still need, as the
//! daemons' domains are (their `sandbox.rs`). The main thread enters it
//! before it starts the vCPU threads, which inherit it (Landlock binds
//! threads created after `restrict_self`); the seccomp filter follows.
//!
//! What stays allowed:
//! - `/dev/kvm` and, with passthrough, `/dev/vfio/` (read, write, device
//!   ioctls): the devices a VMM works with;
//! - removing files in the API socket's directory: the socket is unlinked
//!   at exit.
//!
//! Backend reconnects need no rule: connecting to a unix socket is not a
//! filesystem access Landlock (ABI 5) mediates, so a restarted daemon's
//! new socket is reached as before. TCP bind/connect are denied outright.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

use crate::config::VmConfig;

/// Why the Landlock domain could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("setting up landlock")]
    Ruleset(#[source] landlock::RulesetError),
    #[error("cannot open {0} for a landlock rule")]
    Path(String, #[source] landlock::PathFdError),
}

/// One exception to the domain: `access` beneath `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

const ABI_USED: ABI = ABI::V5;

/// The exceptions a VM with `cfg` needs (pure, for tests).
pub fn allowed(cfg: &VmConfig) -> Vec<Allowed> {
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let mut list = vec![Allowed {
        path: PathBuf::from("/dev/kvm"),
        access: device,
    }];
    if !cfg.vfio.is_empty() {
        list.push(Allowed {
            path: PathBuf::from("/dev/vfio"),
            access: device | AccessFs::ReadDir,
        });
    }
    if let Some(api) = &cfg.api_socket {
        let dir = match api.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        list.push(Allowed {
            path: dir,
            access: AccessFs::RemoveFile.into(),
        });
    }
    list
}

/// Restricts the calling thread (and the threads it starts later) to
/// `allowed`. Returns whether the kernel enforced it fully, partly or not
/// at all (kernels without Landlock run on, as the daemons do).
pub fn restrict(allowed: &[Allowed]) -> Result<RulesetStatus, LandlockError> {
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_USED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_USED)))
        .and_then(|r| r.create())
        .map_err(LandlockError::Ruleset)?;
    for a in allowed {
        let fd = PathFd::new(&a.path)
            .map_err(|e| LandlockError::Path(a.path.display().to_string(), e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, a.access))
            .map_err(LandlockError::Ruleset)?;
    }
    let status = ruleset.restrict_self().map_err(LandlockError::Ruleset)?;
    Ok(status.ruleset)
}

/// Enters the domain for `cfg` (skipped with `--seccomp off`, the
/// debugging switch for the whole sandbox).
pub fn install(cfg: &VmConfig) -> Result<(), LandlockError> {
    if cfg.seccomp.mismatch().is_none() {
        log::warn!("event=landlock state=off");
        return Ok(());
    }
    let list = allowed(cfg);
    let status = restrict(&list)?;
    let paths: Vec<String> = list.iter().map(|a| a.path.display().to_string()).collect();
    log::info!(
        "event=landlock state={status:?} allowed={}",
        paths.join(",")
    );
    Ok(())
}

/// True when `path` is somewhere beneath one of `allowed` (for tests and
/// diagnostics).
pub fn is_allowed(allowed: &[Allowed], path: &Path) -> bool {
    allowed.iter().any(|a| path.starts_with(&a.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    fn cfg() -> VmConfig {
        crate::config::tests::minimal()
    }

    #[test]
    fn the_list_follows_the_configuration() {
        let mut c = cfg();
        let l = allowed(&c);
        assert_eq!(l.len(), 1);
        assert!(is_allowed(&l, Path::new("/dev/kvm")));
        assert!(!is_allowed(&l, Path::new("/etc/passwd")));
        c.api_socket = Some(PathBuf::from("/run/viaduct/vm.api"));
        let l = allowed(&c);
        assert!(is_allowed(&l, Path::new("/run/viaduct/vm.api")));
        assert_eq!(l[1].access, BitFlags::from(AccessFs::RemoveFile));
        c.api_socket = Some(PathBuf::from("vm.api"));
        assert_eq!(allowed(&c)[1].path, PathBuf::from("."));
    }

    /// Landlock binds the thread that calls `restrict_self` (and threads it
    /// starts), so a fresh thread is enough to see the domain at work.
    #[test]
    fn outside_the_ruleset_is_refused_once_applied() {
        let dir = std::env::temp_dir().join(format!("viaduct-landlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inside = dir.join("api.sock");
        std::fs::write(&inside, b"x").unwrap();
        let outside = std::env::temp_dir().join(format!("viaduct-ll-out-{}", std::process::id()));
        std::fs::write(&outside, b"secret").unwrap();
        let list = vec![Allowed {
            path: dir.clone(),
            access: AccessFs::RemoveFile.into(),
        }];
        let (o, i) = (outside.clone(), inside.clone());
        let result = std::thread::spawn(move || {
            let status = restrict(&list).unwrap();
            let read = std::fs::read(&o).map_err(|e| e.kind());
            let removed = std::fs::remove_file(&i).map_err(|e| e.kind());
            let created = std::fs::write(i.with_extension("new"), b"y").map_err(|e| e.kind());
            (status, read, removed, created)
        })
        .join()
        .unwrap();
        // Still readable from this (unrestricted) thread.
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        let _ = std::fs::remove_file(&outside);
        let _ = std::fs::remove_dir_all(&dir);
        let (status, read, removed, created) = result;
        // The testbed's kernel (6.18) has Landlock: an unenforced domain is a bug.
        assert_eq!(status, RulesetStatus::FullyEnforced);
        assert_eq!(
            read,
            Err(ErrorKind::PermissionDenied),
            "outside the ruleset"
        );
        assert_eq!(removed, Ok(()), "the API socket's directory allows removal");
        assert_eq!(created, Err(ErrorKind::PermissionDenied), "only removal");
    }
}
