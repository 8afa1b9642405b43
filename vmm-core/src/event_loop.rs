//! The VMM's own event loop (one epoll thread, the main one): host stdin
//! into the serial console, the control API socket and its connections,
//! hang-ups of vhost-user backends (and retries until they come back),
//! and the stop event that ends the run. Nothing on the data path comes
//! here: kicks and interrupts go between KVM and the backends directly.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::routes::VmControl;
use crate::api::server::ApiServer;
use crate::backends::{Backends, Event, RETRY_EVERY};
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
const TOKEN_API: u64 = 2;
/// Backend sockets and error eventfds: from `TOKEN_BACKENDS` (see [`Backends`]).
pub const TOKEN_BACKENDS: u64 = 0x100;
/// API connections: `TOKEN_CONNS + connection id`.
const TOKEN_CONNS: u64 = 1 << 32;

/// What the loop serves besides the stop event.
pub struct Sources<'a> {
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    pub api: Option<(ApiServer, &'a dyn VmControl)>,
    pub backends: Backends,
}

impl std::fmt::Debug for Sources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("serial", &self.serial.is_some())
            .field("api", &self.api.as_ref().map(|(server, _)| server))
            .field("backends", &self.backends)
            .finish()
    }
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> Result<(), EventLoopError> {
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
        .map_err(EventLoopError::Epoll)
}

/// Serves events until the VM is asked to stop.
pub fn run(lifecycle: &Lifecycle, mut src: Sources) -> Result<(), EventLoopError> {
    let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
    add(&epoll, lifecycle.event().as_raw_fd(), TOKEN_STOP)?;
    let stdin = std::io::stdin();
    // stdin may be /dev/null or a regular file, which epoll refuses: no input then.
    let mut have_stdin =
        src.serial.is_some() && add(&epoll, stdin.as_raw_fd(), TOKEN_STDIN).is_ok();
    if let Some((server, _)) = &src.api {
        add(&epoll, server.listener_fd(), TOKEN_API)?;
    }
    src.backends.watch_all(&epoll);
    let mut events = vec![EpollEvent::default(); 16];
    let mut last_retry = std::time::Instant::now();
    loop {
        if lifecycle.is_stopping() {
            return Ok(());
        }
        let timeout = if src.backends.any_lost() {
            i32::try_from(RETRY_EVERY.as_millis()).unwrap_or(i32::MAX)
        } else {
            -1
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EventLoopError::Epoll(e)),
        };
        // Retry lost backends on schedule even when other events keep
        // the loop busy (API polling, console input).
        if src.backends.any_lost() && last_retry.elapsed() >= RETRY_EVERY {
            src.backends.retry(&epoll);
            last_retry = std::time::Instant::now();
        }
        for ev in &events[..n] {
            let token = ev.data();
            match token {
                TOKEN_STOP => return Ok(()),
                TOKEN_STDIN if have_stdin => {
                    if !forward_stdin(&mut stdin.lock(), src.serial.as_ref()) {
                        // EOF or error: stop watching stdin, keep the VM running.
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            stdin.as_raw_fd(),
                            EpollEvent::default(),
                        );
                        have_stdin = false;
                    }
                }
                TOKEN_API => {
                    if let Some((server, _)) = src.api.as_mut() {
                        for (id, fd) in server.accept() {
                            if add(&epoll, fd, TOKEN_CONNS + id).is_err() {
                                log::warn!("cannot watch API connection {id}");
                            }
                        }
                    }
                }
                t if t >= TOKEN_CONNS => {
                    if let Some((server, vm)) = src.api.as_mut() {
                        server.serve(t - TOKEN_CONNS, *vm);
                    }
                }
                t => match src.backends.event_of(t) {
                    Some(Event::HangUp(i)) => src.backends.hung_up(i, &epoll),
                    Some(Event::RingError(i)) => src.backends.ring_error(i),
                    Some(Event::CtrlKick(i)) => src.backends.ctrl_kick(i),
                    None => {}
                },
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
        let src = Sources {
            serial: None,
            api: None,
            backends: Backends::new(Vec::new(), TOKEN_BACKENDS),
        };
        run(&lc, src).unwrap();
        t.join().unwrap();
        assert_eq!(lc.stop_reason(), Some(StopReason::PowerOff));
    }
}
