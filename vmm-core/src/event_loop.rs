//! The VMM's own event loop (one epoll thread, the main one): host stdin
//! into the serial console, and the stop event that ends the run.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::serial::SerialDevice;
use crate::lifecycle::Lifecycle;

/// Why the event loop failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("epoll failed")]
    Epoll(#[source] std::io::Error),
}

const TOKEN_STOP: u64 = 0;
const TOKEN_STDIN: u64 = 1;

/// Serves events until the VM is asked to stop.
pub fn run(
    lifecycle: &Lifecycle,
    serial: Option<Arc<Mutex<SerialDevice>>>,
) -> Result<(), EventLoopError> {
    let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
    epoll
        .ctl(
            ControlOperation::Add,
            lifecycle.event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )
        .map_err(EventLoopError::Epoll)?;
    let stdin = std::io::stdin();
    // stdin may be /dev/null or a regular file, which epoll refuses: no input then.
    let mut have_stdin = serial.is_some()
        && epoll
            .ctl(
                ControlOperation::Add,
                stdin.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_STDIN),
            )
            .is_ok();
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        if lifecycle.is_stopping() {
            return Ok(());
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EventLoopError::Epoll(e)),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return Ok(()),
                // EOF or error: stop watching stdin, keep the VM running.
                TOKEN_STDIN if have_stdin && !forward_stdin(&mut stdin.lock(), serial.as_ref()) => {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        stdin.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    have_stdin = false;
                }
                _ => {}
            }
        }
    }
}

/// Moves what stdin has into the UART; false on EOF or error.
fn forward_stdin(input: &mut impl Read, serial: Option<&Arc<Mutex<SerialDevice>>>) -> bool {
    let mut buf = [0u8; 64];
    let n = match input.read(&mut buf) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    if let Some(s) = serial {
        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
        let queued = s.enqueue_input(&buf[..n]);
        if queued < n {
            log::debug!("serial input FIFO full: dropped {} bytes", n - queued);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::console::ConsoleOutput;
    use crate::lifecycle::StopReason;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn stdin_bytes_reach_the_uart() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            ConsoleOutput::new(None, lc),
        )));
        assert!(forward_stdin(&mut &b"ok"[..], Some(&serial)));
        let mut b = [0u8];
        serial.lock().unwrap().read(0, &mut b);
        assert_eq!(b, [b'o']);
        assert!(!forward_stdin(&mut &b""[..], Some(&serial)), "EOF");
    }

    #[test]
    fn returns_when_stopped() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let l2 = lc.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            l2.request_stop(StopReason::PowerOff);
        });
        run(&lc, None).unwrap();
        t.join().unwrap();
        assert_eq!(lc.stop_reason(), Some(StopReason::PowerOff));
    }
}
