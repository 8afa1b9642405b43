//! The seccomp half of the sandbox: the base allowlist every daemon needs
//! (the serve loop, the relay, the vhost-user-backend threads, the logger;
//! derived with `strace -f` and `--sandbox log` runs of the test suites, see
//! docs/hardening.md) plus the [`SeccompExtras`] a daemon adds for its
//! device. The program is built by the shared glue in
//! `virtio_devices::seccomp`, which also stacks the filter that turns
//! opening files into EACCES.

use seccompiler::{BpfProgram, SeccompAction};
use virtio_devices::seccomp::{self, SeccompError};

/// What a daemon allows on top of the base list, for its device: syscalls
/// with any arguments and exact `ioctl` requests.
#[derive(Debug, Clone, Copy)]
pub struct SeccompExtras<'a> {
    pub syscalls: &'a [i64],
    pub ioctls: &'a [u64],
}

/// Syscalls every daemon may make, with any arguments.
const BASE: &[i64] = &[
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
    // the relay's private socket (socket(2) for AF_UNIX only, see `filter`)
    libc::SYS_connect,
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

/// ioctls every daemon may make (second argument): the FIONBIO/FIOCLEX std
/// uses on sockets, and the read-only terminal queries the logger makes
/// when stderr is a terminal (TCGETS, TIOCGWINSZ).
const BASE_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS, libc::TIOCGWINSZ];

/// The allowlist program: the base lists plus `extras`, `socket(2)` for
/// AF_UNIX only, or also for AF_INET and AF_INET6 if `extras` lists
/// `SYS_socket` (a device whose storage is across the network, such as a
/// Ceph client); `mismatch` is what happens to off-list syscalls.
pub fn filter(extras: &SeccompExtras, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let inet = extras.syscalls.contains(&libc::SYS_socket);
    let syscalls: Vec<i64> = BASE
        .iter()
        .chain(extras.syscalls)
        .copied()
        .filter(|&nr| nr != libc::SYS_socket)
        .collect();
    let ioctls: Vec<u64> = extras.ioctls.iter().chain(BASE_IOCTLS).copied().collect();
    let (nr, mut socket) = seccomp::unix_socket_rule()?;
    if inet {
        for family in [libc::AF_INET, libc::AF_INET6] {
            socket.push(seccomp::arg_eq(0, u64::from(family.unsigned_abs()))?);
        }
    }
    seccomp::allowlist(&syscalls, &ioctls, vec![], vec![(nr, socket)], mismatch)
}

/// For tests: runs `body` in a forked child under the open filter and
/// this allowlist (base + `extras`, off-list syscalls kill); returns the
/// child's wait status.
pub fn in_confined_child(extras: &SeccompExtras, body: fn() -> i32) -> libc::c_int {
    match filter(extras, SeccompAction::KillProcess) {
        Ok(prog) => seccomp::in_filtered_child(&prog, body),
        Err(_) => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: SeccompExtras<'static> = SeccompExtras {
        syscalls: &[],
        ioctls: &[],
    };

    /// Runs `body` in a forked child under the base filters; returns its
    /// wait status.
    fn in_filtered_child(body: fn() -> i32) -> libc::c_int {
        in_confined_child(&NONE, body)
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
    fn allowed_syscalls_pass() {
        let status = in_filtered_child(|| {
            // SAFETY: socket(AF_UNIX) + eventfd2 + write + close on fresh fds.
            unsafe {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if s < 0 {
                    return 2;
                }
                libc::close(s);
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

    #[test]
    fn extras_are_allowed_on_top_of_the_base() {
        const EXTRAS: SeccompExtras<'static> = SeccompExtras {
            syscalls: &[libc::SYS_getppid],
            ioctls: &[libc::TIOCSTI],
        };
        let status = in_confined_child(&EXTRAS, || {
            // SAFETY: getppid(2) takes no arguments.
            let ppid = unsafe { libc::getppid() };
            // SAFETY: TIOCSTI on an invalid fd: allowed, fails with EBADF.
            let rc = unsafe { libc::ioctl(-1, libc::TIOCSTI, std::ptr::null::<u8>()) };
            if ppid > 0 && rc == -1 { 5 } else { 1 }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 5,
            "status {status:#x}"
        );
    }
    #[test]
    fn socket_as_an_extra_allows_ip_families_only() {
        const INET: SeccompExtras<'static> = SeccompExtras {
            syscalls: &[libc::SYS_socket],
            ioctls: &[],
        };
        let status = in_confined_child(&INET, || {
            // SAFETY: socket(2) calls; the fds are closed at once.
            unsafe {
                for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
                    let s = libc::socket(family, libc::SOCK_STREAM, 0);
                    if s < 0 {
                        return 2;
                    }
                    libc::close(s);
                }
            }
            6
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 6,
            "status {status:#x}"
        );
        let status = in_confined_child(&INET, || {
            // SAFETY: a raw socket(2) call; any result is fine.
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    }
}
