//! Pausing and resuming the vCPUs. Each vCPU thread passes a park point
//! before every KVM_RUN; pausing raises a flag and signals the threads
//! (a real-time signal with an empty handler makes KVM_RUN return EINTR)
//! until every vCPU is parked. A signal that lands while a thread is
//! outside KVM_RUN is harmless: the pauser signals again until all park.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::lifecycle::StopReason;

/// Why the vCPUs could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("cannot install the vCPU kick signal handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("{parked} of {total} vCPUs parked within {0:?}", .timeout)]
    Timeout {
        parked: usize,
        total: usize,
        timeout: Duration,
    },
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; call once before vCPU threads start.
pub fn install_kick_handler() -> Result<(), PauseError> {
    register_signal_handler(kick_signal(), on_kick).map_err(PauseError::Handler)
}

#[derive(Debug, Default)]
struct State {
    requested: bool,
    parked: usize,
}

/// Shared by the vCPU threads and whoever pauses them.
#[derive(Debug, Default)]
pub struct PauseControl {
    state: Mutex<State>,
    changed: Condvar,
    threads: Mutex<Vec<JoinHandle<StopReason>>>,
}

impl PauseControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vCPU threads to kick (the process keeps them until it exits).
    pub fn adopt_threads(&self, handles: Vec<JoinHandle<StopReason>>) {
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) = handles;
    }

    /// vCPU side, before each KVM_RUN: blocks while a pause is requested.
    pub fn park_point(&self) {
        let mut s = self.lock();
        if !s.requested {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.requested {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    pub fn is_paused(&self) -> bool {
        self.lock().requested
    }

    /// Stops every vCPU; returns once all of them are parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        let total = self.threads.lock().unwrap_or_else(|e| e.into_inner()).len();
        {
            let mut s = self.lock();
            if s.requested {
                return Err(PauseError::AlreadyPaused);
            }
            s.requested = true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            for t in self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                // A thread that already left its loop has nothing to park.
                if !t.is_finished() {
                    let _ = t.kill(kick_signal());
                }
            }
            let s = self.lock();
            let (s, _) = self
                .changed
                .wait_timeout(s, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner());
            if s.parked >= total {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let parked = s.parked;
                drop(s);
                self.resume_unchecked();
                return Err(PauseError::Timeout {
                    parked,
                    total,
                    timeout,
                });
            }
        }
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) -> Result<(), PauseError> {
        if !self.lock().requested {
            return Err(PauseError::NotPaused);
        }
        self.resume_unchecked();
        Ok(())
    }

    fn resume_unchecked(&self) {
        self.lock().requested = false;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Real threads spinning through park points, as vCPU threads do.
    fn spinners(n: usize) -> (Arc<PauseControl>, Arc<AtomicU64>, Arc<Mutex<bool>>) {
        install_kick_handler().unwrap();
        let pc = Arc::new(PauseControl::default());
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(Mutex::new(false));
        let handles = (0..n)
            .map(|_| {
                let (pc, count, stop) = (pc.clone(), count.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !*stop.lock().unwrap() {
                        pc.park_point();
                        count.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    StopReason::PowerOff
                })
            })
            .collect();
        pc.adopt_threads(handles);
        (pc, count, stop)
    }

    #[test]
    fn pause_parks_every_thread_and_resume_releases_them() {
        let (pc, count, stop) = spinners(2);
        std::thread::sleep(Duration::from_millis(10));
        pc.pause(Duration::from_secs(5)).unwrap();
        assert!(pc.is_paused());
        let frozen = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            count.load(Ordering::SeqCst),
            frozen,
            "no progress while paused"
        );
        assert!(matches!(
            pc.pause(Duration::from_secs(1)),
            Err(PauseError::AlreadyPaused)
        ));
        pc.resume().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(count.load(Ordering::SeqCst) > frozen, "running again");
        assert!(matches!(pc.resume(), Err(PauseError::NotPaused)));
        *stop.lock().unwrap() = true;
    }

    #[test]
    fn a_thread_that_never_parks_times_out_and_the_pause_is_undone() {
        install_kick_handler().unwrap();
        let pc = PauseControl::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = rx.recv();
            StopReason::PowerOff
        });
        pc.adopt_threads(vec![stuck]);
        let err = pc.pause(Duration::from_millis(30)).unwrap_err();
        assert!(err.to_string().contains("0 of 1 vCPUs parked"), "{err}");
        assert!(!pc.is_paused());
        drop(tx);
    }
}
