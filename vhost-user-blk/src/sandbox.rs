//! The sandbox entered once the image is open and the socket bound: a
//! seccomp-bpf allowlist on every thread (TSYNC), and a Landlock domain that
//! denies all filesystem access and TCP (where the kernel has Landlock) but
//! lists the image's files (the image, a qcow2 data file and backing
//! chain, by their open descriptors, with the rights they were opened with).
//!
//! The allowlist is what the serve loop, the vhost-user-backend threads,
//! the io_uring and qcow2 engines and the logger call after start-up
//! (derived with `strace -f` and `--sandbox log` runs of the test suites,
//! see docs/hardening.md). Anything else kills the process. io_uring
//! opcodes are not seen by seccomp; the ring only ever gets our own
//! read/write/fsync SQEs on the image fd.

use std::os::fd::BorrowedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};
use seccompiler::{BpfProgram, SeccompAction};
use virtio_devices::seccomp;

/// `--sandbox`: how strict the daemon is after start-up.
pub use virtio_devices::seccomp::FilterMode as SandboxMode;

/// Entering the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("setting up landlock")]
    Landlock(#[source] landlock::RulesetError),
    #[error("opening a path for a landlock rule")]
    LandlockPath(#[source] landlock::PathFdError),
}

/// One filesystem exception to the Landlock domain: `access` beneath `path`.
pub struct FsException<'a> {
    pub path: &'a Path,
    pub access: BitFlags<AccessFs>,
}

/// A file the daemon serves from, listed in the Landlock ruleset: read
/// (and write, if `writable`) access to that file alone.
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

/// Syscalls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // memory, threads, signals (std, glibc, vhost-user-backend workers)
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    // fds, events, the vhost-user socket
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_dup,
    // is a frontend's kick/call/error fd an eventfd? (/proc/self/fd link)
    libc::SYS_readlinkat,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    // the relay's private socket (AF_UNIX only, see `filter`)
    libc::SYS_connect,
    // in-flight regions (INFLIGHT_SHMFD): a sealed memfd per GET_INFLIGHT_FD
    libc::SYS_memfd_create,
    // the image: io_uring engine, qcow2 engine, flushes, discard
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    // removing our own socket file and the relay's socket and directory on
    // exit (Landlock limits where)
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
    // turned into EACCES by the stacked open filter (virtio_devices::seccomp)
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
];

/// ioctls allowed (second argument): the
/// FIONBIO/FIOCLEX std uses on sockets, and the read-only terminal queries
/// the logger makes when stderr is a terminal (TCGETS, TIOCGWINSZ).
const IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS, libc::TIOCGWINSZ];

/// The seccomp program; `mismatch` is what happens to off-list syscalls.
pub fn filter(mismatch: SeccompAction) -> Result<BpfProgram, SandboxError> {
    Ok(seccomp::allowlist(
        ALLOWED,
        IOCTLS,
        vec![],
        vec![seccomp::unix_socket_rule()?],
        mismatch,
    )?)
}

/// Landlock: no filesystem access but `exceptions` and `files`, no TCP
/// bind/connect. Returns whether the kernel enforced it (best effort on
/// older kernels).
pub fn landlock(
    exceptions: &[FsException],
    files: &[FileRule],
) -> Result<RulesetStatus, SandboxError> {
    let abi = ABI::V5;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.create())
        .map_err(SandboxError::Landlock)?;
    for e in exceptions {
        let fd = PathFd::new(e.path).map_err(SandboxError::LandlockPath)?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, e.access))
            .map_err(SandboxError::Landlock)?;
    }
    for f in files {
        ruleset = ruleset
            .add_rule(PathBeneath::new(f.fd, f.access()))
            .map_err(SandboxError::Landlock)?;
    }
    let status = ruleset.restrict_self().map_err(SandboxError::Landlock)?;
    Ok(status.ruleset)
}

/// Enters the sandbox (call from the main thread before it spawns the
/// threads that should be confined by Landlock; seccomp covers all).
/// `exceptions` is what the filesystem may still be used for (removing our
/// listening socket on exit); `files` are the image's files.
pub fn enter(
    mode: SandboxMode,
    exceptions: &[FsException],
    files: &[FileRule],
) -> Result<(), SandboxError> {
    let Some(mismatch) = mode.mismatch() else {
        log::warn!("event=sandbox state=off");
        return Ok(());
    };
    let landlock = landlock(exceptions, files)?;
    seccomp::install_all_threads(&filter(mismatch)?)?;
    log::info!(
        "event=sandbox state={mode:?} seccomp=all_threads landlock={landlock:?} landlock_files={}",
        files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child under the filters; returns its wait status.
    fn in_filtered_child(body: fn() -> i32) -> libc::c_int {
        let prog = filter(SeccompAction::KillProcess).unwrap();
        seccomp::in_filtered_child(&prog, body)
    }

    #[test]
    fn forbidden_syscall_kills_the_process() {
        let status = in_filtered_child(|| {
            // SAFETY: a raw socket(2) call; any result is fine.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        let status = in_filtered_child(|| {
            let byte = 0u8;
            // SAFETY: TIOCSTI (push a byte into a terminal's input) is not on
            // the list; the byte lives on this stack for the call.
            unsafe { libc::ioctl(0, libc::TIOCSTI, &byte) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        // Terminal queries are allowed: a daemon run in a terminal must not
        // die when its logger asks whether stderr is one.
        let status = in_filtered_child(|| {
            let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: TCGETS writes a termios into `t`, valid for the call.
            unsafe { libc::ioctl(2, libc::TCGETS, t.as_mut_ptr()) };
            let mut w = std::mem::MaybeUninit::<libc::winsize>::uninit();
            // SAFETY: TIOCGWINSZ writes a winsize into `w`, valid for the call.
            unsafe { libc::ioctl(2, libc::TIOCGWINSZ, w.as_mut_ptr()) };
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        let status = in_filtered_child(|| {
            // SAFETY: prctl(PR_SET_DUMPABLE) is not PR_SET_NAME: refused.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    }

    #[test]
    fn opening_files_fails_with_eacces() {
        let status = in_filtered_child(|| {
            // SAFETY: open(2) of a path that exists; the fd is not used.
            let fd = unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) };
            // SAFETY: reads this thread's errno.
            let errno = unsafe { *libc::__errno_location() };
            if fd < 0 && errno == libc::EACCES {
                9
            } else {
                1
            }
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 9);
    }

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
                let status = landlock(&[], &files).unwrap();
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

    #[test]
    fn allowed_syscalls_pass() {
        let status = in_filtered_child(|| {
            // SAFETY: eventfd2 + write + close on a fresh fd.
            unsafe {
                let fd = libc::eventfd(0, 0);
                let one = 1u64;
                let w = libc::write(fd, (&one as *const u64).cast(), 8);
                libc::close(fd);
                if fd >= 0 && w == 8 { 7 } else { 1 }
            }
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 7);
    }
}
