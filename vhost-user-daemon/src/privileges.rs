//! `--user USER`: drop root after start-up (image/TAP open, sockets bound),
//! before the sandbox. Supplementary groups are cleared, then the real,
//! effective and saved gid and uid all become the user's; getting root back
//! is checked to fail. Call while the process has a single thread (glibc
//! would otherwise have to broadcast the change to every thread).

use std::ffi::CString;
use std::io;

/// Dropping privileges failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegesError {
    #[error("user name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    #[error("looking up user {0:?}")]
    Lookup(String, #[source] io::Error),
    #[error("{0} failed")]
    Syscall(&'static str, #[source] io::Error),
    #[error("could regain root after dropping privileges")]
    StillRoot,
}

/// A user's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `name` up in the user database.
pub fn lookup(name: &str) -> Result<Ids, PrivilegesError> {
    let c = CString::new(name).map_err(|_| PrivilegesError::BadName(name.into()))?;
    // SAFETY: passwd is plain data; zeroed is a valid value to be filled.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf` (of the given length)
    // and sets `out` to `&pw` or null.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(PrivilegesError::Lookup(
            name.into(),
            io::Error::from_raw_os_error(rc),
        ));
    }
    if out.is_null() {
        return Err(PrivilegesError::NoSuchUser(name.into()));
    }
    Ok(Ids {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), PrivilegesError> {
    if rc != 0 {
        return Err(PrivilegesError::Syscall(what, io::Error::last_os_error()));
    }
    Ok(())
}

/// Becomes `ids` for good.
pub fn drop_to(ids: Ids) -> Result<(), PrivilegesError> {
    // SAFETY: setgroups with an empty list reads no memory.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(rc, "setgroups")?;
    // SAFETY: plain id-changing syscall, no memory access.
    let rc = unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) };
    check(rc, "setresgid")?;
    // SAFETY: plain id-changing syscall, no memory access.
    let rc = unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) };
    check(rc, "setresuid")?;
    // SAFETY: setuid(0) only tests whether root can be regained.
    if ids.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(PrivilegesError::StillRoot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_users() {
        assert_eq!(lookup("root").unwrap(), Ids { uid: 0, gid: 0 });
        assert!(matches!(
            lookup("no-such-user-viaduct"),
            Err(PrivilegesError::NoSuchUser(_))
        ));
        assert!(matches!(lookup("a\0b"), Err(PrivilegesError::BadName(_))));
    }
}
