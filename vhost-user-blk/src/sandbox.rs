//! The block daemon's part of the sandbox (`vhost_user_daemon::sandbox`
//! holds the rest, entered once the image is open and the socket bound):
//! the syscalls the io_uring and qcow2 engines and the in-flight region
//! need on top of the base list, and the image's files (the image, a qcow2
//! data file and backing chain, by their open descriptors, with the rights
//! they were opened with) for Landlock. io_uring opcodes are not seen by
//! seccomp; the ring only ever gets our own read/write/fsync SQEs on the
//! image fd.

use std::os::fd::AsFd;

use vhost_user_daemon::sandbox::{FileRule, SeccompExtras};

use crate::chain::ChainFile;
use crate::disk::{Disk, DiskBackend};

/// Syscalls this daemon adds to the base list, with any arguments.
pub const SECCOMP: SeccompExtras<'static> = SeccompExtras {
    syscalls: &[
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
        // the image lock, handed over at a live migration's switch-over
        libc::SYS_flock,
    ],
    ioctls: &[],
};

/// What an RBD disk adds: librados' threads keep TCP connections to the
/// monitors and OSDs (and open new ones when an OSD restarts), so
/// `socket(2)` is allowed for AF_INET/AF_INET6 as well as AF_UNIX, with
/// the socket options and names the messenger uses (found with
/// `--sandbox log` runs of `tests/rbd.rs`, an OSD restart included).
/// Landlock needs nothing: librados reads ceph.conf and opens its
/// connections in `Disk::open`, before the sandbox, and its threads,
/// created then, are outside the Landlock domain (seccomp covers every
/// thread; opening files stays refused there too).
const RBD_SYSCALLS: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_uname,
];

/// The seccomp extras for `disk`: [`SECCOMP`], plus the network calls of
/// librados for an RBD image.
pub fn seccomp_for(disk: &Disk) -> SeccompExtras<'static> {
    static RBD: std::sync::OnceLock<Vec<i64>> = std::sync::OnceLock::new();
    match disk.backend {
        DiskBackend::Rbd(_) => SeccompExtras {
            syscalls: RBD.get_or_init(|| {
                SECCOMP
                    .syscalls
                    .iter()
                    .chain(RBD_SYSCALLS)
                    .copied()
                    .collect()
            }),
            ioctls: SECCOMP.ioctls,
        },
        _ => SECCOMP,
    }
}

/// The Landlock rules for the image's files: exactly these, each with the
/// rights it was opened with.
pub fn file_rules(chain: &[ChainFile]) -> Vec<FileRule<'_>> {
    chain
        .iter()
        .map(|f| FileRule {
            fd: f.fd.as_fd(),
            writable: f.writable,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vhost_user_daemon::sandbox::seccomp::in_confined_child;
    use virtio_devices::seccomp::killed_by_seccomp;

    use super::*;

    #[test]
    fn image_syscalls_pass_and_sockets_still_kill() {
        let status = in_confined_child(&SECCOMP, || {
            // SAFETY: fsync, fallocate and io_uring_enter on an invalid fd:
            // allowed, each fails with EBADF without touching memory.
            let rcs = unsafe {
                [
                    libc::fsync(-1),
                    libc::fallocate(-1, 0, 0, 1),
                    i32::try_from(libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0))
                        .unwrap_or(0),
                ]
            };
            if rcs == [-1; 3] { 7 } else { 1 }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "status {status:#x}"
        );
        let status = in_confined_child(&SECCOMP, || {
            // SAFETY: a raw socket(2) call; any result is fine.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            0
        });
        assert!(killed_by_seccomp(status), "status {status:#x}");
    }
}
