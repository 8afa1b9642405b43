//! An iovec for a buffer of our own (a message header, a bounce buffer, a
//! test's data), for the readv/writev/recvmsg family and io_uring.

/// The iovec that describes all of `buf`. It holds a raw pointer: use it
/// only while `buf` is alive and not moved.
pub fn of_buf(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_whole_buffer() {
        let mut buf = [0u8; 7];
        let iov = of_buf(&mut buf[2..]);
        assert_eq!(iov.iov_len, 5);
        assert_eq!(iov.iov_base.cast::<u8>(), buf[2..].as_mut_ptr());
    }
}
