//! A private network namespace per test (or per bench run): the TAPs, the
//! packet sockets and the daemon threads created afterwards all live there.

/// Errors entering the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("unshare(CLONE_NEWNET)")]
    Unshare(#[source] std::io::Error),
}

/// Moves the calling thread (and every process and thread it starts
/// afterwards) into a new, empty network namespace.
pub fn enter_private_netns() -> Result<(), NetnsError> {
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Unshare(std::io::Error::last_os_error()));
    }
    Ok(())
}
