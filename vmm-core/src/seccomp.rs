//! viaduct's seccomp filter, installed on every thread (TSYNC) once the VM
//! is built and its vCPU threads run: from then on the process only needs
//! KVM and VFIO ioctls, its eventfds, sockets to the control API and to
//! vhost-user backends (reconnects), memory management and the console.
//! Opening files is refused with EACCES (the shared glue in
//! `virtio_devices::seccomp` stacks that filter), any other off-list syscall kills
//! the process (`--seccomp log` only logs it, `off` disables the filter).
//!
//! ioctls are matched on their type byte: KVM (`0xAE`), VFIO (`;`), plus
//! FIONBIO/FIOCLEX on sockets and the terminal queries the logger makes.

use seccompiler::{BpfProgram, SeccompAction};
use virtio_devices::seccomp;
pub use virtio_devices::seccomp::SeccompError;

/// `--seccomp`: how strict viaduct is once the VM runs.
pub use virtio_devices::seccomp::FilterMode as SeccompMode;

/// Syscalls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // memory, threads, signals (the vCPU kick), time
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getrusage,
    // fds and events: console, eventfds, epoll, VFIO regions
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    // the VFIO teardown reads sysfs links (driver, IOMMU group)
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_dup,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // unix sockets: the control API, vhost-user backends (and reconnects)
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    // the API socket file is removed at exit
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// ioctl type bytes allowed: KVM and VFIO.
const IOCTL_TYPES: &[u64] = &[0xae, b';' as u64];
/// Single ioctls allowed: socket flags and the logger's terminal queries.
const IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS, libc::TIOCGWINSZ];

/// The allowlist; `mismatch` is what happens to everything else.
pub fn filter(mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let by_type = IOCTL_TYPES
        .iter()
        .map(|&t| seccomp::arg_masked_eq(1, 0xff00, t << 8))
        .collect::<Result<Vec<_>, _>>()?;
    seccomp::allowlist(ALLOWED, IOCTLS, by_type, vec![], mismatch)
}

/// Installs the filters on every thread of the process.
pub fn install(mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(mismatch) = mode.mismatch() else {
        log::warn!("event=seccomp state=off");
        return Ok(());
    };
    seccomp::install_all_threads(&filter(mismatch)?)?;
    log::info!("event=seccomp state={mode:?} threads=all");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_devices::seccomp::killed_by_seccomp;

    fn in_filtered_child(body: fn() -> i32) -> libc::c_int {
        seccomp::in_filtered_child(&filter(SeccompAction::KillProcess).unwrap(), body)
    }

    #[test]
    fn off_list_syscalls_and_ioctls_kill() {
        // execve: a VMM never needs to start another program.
        let status = in_filtered_child(|| {
            let argv: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: a raw execve of a static path; it is killed first.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), argv.as_ptr()) };
            0
        });
        assert!(killed_by_seccomp(status), "execve: status {status:#x}");
        let status = in_filtered_child(|| {
            let byte = 0u8;
            // SAFETY: TIOCSTI is off the list; the byte lives for the call.
            unsafe { libc::ioctl(0, libc::TIOCSTI, &byte) };
            0
        });
        assert!(killed_by_seccomp(status), "TIOCSTI: status {status:#x}");
    }

    #[test]
    fn kvm_ioctls_pass_and_opening_files_fails_softly() {
        let status = in_filtered_child(|| {
            // KVM_GET_API_VERSION on a bad fd: allowed, fails with EBADF.
            // SAFETY: a raw ioctl on fd -1; nothing is dereferenced.
            let rc = unsafe { libc::ioctl(-1, 0xae00, 0) };
            if rc != -1 {
                return 1;
            }
            // SAFETY: a raw openat of a static path.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if fd == -1 && errno == Some(libc::EACCES) {
                0
            } else {
                2
            }
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
