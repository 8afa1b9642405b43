//! Seccomp glue shared by the daemons' sandboxes and viaduct's own filter:
//! an allowlist program (syscalls with any arguments, exact ioctl
//! requests, extra argument rules, and `prctl` only to name threads), the
//! stacked filter that turns opening files into EACCES, installing both on
//! every thread, and a forked-child harness for tests that prove a filter
//! is real. Each binary keeps its own lists.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `--sandbox` / `--seccomp`: how strict a binary is once it runs (the
/// same choice for both daemons and viaduct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FilterMode {
    /// Off-list syscalls kill the process (the daemons also enter Landlock).
    #[default]
    On,
    /// Like `on`, but off-list syscalls are only logged by the kernel
    /// (audit/dmesg) — for finding what a new code path needs.
    Log,
    /// No filter (debugging, or kernels without seccomp).
    Off,
}

impl FilterMode {
    /// What an off-list syscall gets; `None`: no filter at all.
    pub fn mismatch(self) -> Option<SeccompAction> {
        match self {
            FilterMode::On => Some(SeccompAction::KillProcess),
            FilterMode::Log => Some(SeccompAction::Log),
            FilterMode::Off => None,
        }
    }
}

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// A rule: argument `arg` (32-bit compare) equals `value`.
pub fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
    Ok(SeccompRule::new(vec![c])?)
}

/// A rule: argument `arg` masked with `mask` equals `value`.
pub fn arg_masked_eq(arg: u8, mask: u64, value: u64) -> Result<SeccompRule, SeccompError> {
    let c = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )?;
    Ok(SeccompRule::new(vec![c])?)
}

/// `socket(2)` for AF_UNIX only: a daemon's backend connecting to its own
/// message relay (`backend::relay`).
pub fn unix_socket_rule() -> Result<(i64, Vec<SeccompRule>), SeccompError> {
    Ok((libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]))
}

/// The allowlist program: `allowed` with any arguments, `ioctl` with the
/// requests in `ioctls` (plus `ioctl_rules`), `extra` per-syscall rules,
/// and `prctl(PR_SET_NAME)` (std names each new thread). open/openat/
/// openat2 pass here so that the stacked [`open_filter`] answers them with
/// EACCES. Everything else gets `mismatch`.
pub fn allowlist(
    allowed: &[i64],
    ioctls: &[u64],
    ioctl_rules: Vec<SeccompRule>,
    extra: Vec<(i64, Vec<SeccompRule>)>,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let opens = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed
        .iter()
        .chain(opens.iter())
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let mut ioctl = ioctls
        .iter()
        .map(|&req| arg_eq(1, req))
        .collect::<Result<Vec<_>, _>>()?;
    ioctl.extend(ioctl_rules);
    rules.insert(libc::SYS_ioctl, ioctl);
    rules.insert(libc::SYS_prctl, vec![arg_eq(0, libc::PR_SET_NAME as u64)?]);
    rules.extend(extra);
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(BpfProgram::try_from(f)?)
}

/// A second filter that makes opening files fail with EACCES instead of
/// killing: glibc's malloc reads /proc/sys/vm/overcommit_memory when it
/// trims a heap and copes with an error. (Stacked filters: the kernel takes
/// the most restrictive verdict, so this only turns allow/kill of the
/// allowlist into EACCES for these calls.)
pub fn open_filter() -> Result<BpfProgram, SeccompError> {
    let rules = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2]
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )?;
    Ok(BpfProgram::try_from(f)?)
}

/// Installs the open filter and then `allowlist` on every thread (the
/// open filter first: once the allowlist is in, seccomp(2) is not).
pub fn install_all_threads(allowlist: &BpfProgram) -> Result<(), SeccompError> {
    for prog in [&open_filter()?, allowlist] {
        seccompiler::apply_filter_all_threads(prog).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// For tests: runs `body` in a forked child under the open filter and
/// `allowlist`; returns the child's wait status (exit 100: install failed).
pub fn in_filtered_child(allowlist: &BpfProgram, body: fn() -> i32) -> libc::c_int {
    let open = open_filter().ok();
    // SAFETY: the child only installs prebuilt filters (prctl + seccomp)
    // and makes the body's raw syscalls before _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let applied = open.as_ref().is_some_and(|o| {
            seccompiler::apply_filter(o)
                .and_then(|()| seccompiler::apply_filter(allowlist))
                .is_ok()
        });
        let code = if applied { body() } else { 100 };
        // SAFETY: ends the forked child without running destructors.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return -1;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is valid for the call.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    if waited == pid { status } else { -1 }
}

/// Whether a wait status says "killed by SIGSYS" (a seccomp kill).
pub fn killed_by_seccomp(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_kills_what_it_does_not_name() {
        let prog = allowlist(
            &[libc::SYS_exit_group, libc::SYS_exit, libc::SYS_write],
            &[libc::FIONBIO],
            vec![],
            vec![],
            SeccompAction::KillProcess,
        )
        .unwrap();
        let status = in_filtered_child(&prog, || {
            // SAFETY: a raw getppid(2); it is killed first.
            unsafe { libc::getppid() };
            0
        });
        assert!(killed_by_seccomp(status), "status {status:#x}");
        let status = in_filtered_child(&prog, || {
            // SAFETY: FIONBIO on an invalid fd: allowed, fails with EBADF.
            let rc = unsafe { libc::ioctl(-1, libc::FIONBIO, std::ptr::null_mut::<i32>()) };
            // SAFETY: an open(2) of a static path: EACCES from the open filter.
            let fd = unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) };
            if rc == -1 && fd == -1 { 7 } else { 1 }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "status {status:#x}"
        );
    }
}
