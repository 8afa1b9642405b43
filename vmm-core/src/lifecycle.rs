//! How a VM run ends: who asked it to stop (an i8042 reset, a triple fault,
//! the guest's console announcing power-off or a panic, a fatal VMM error)
//! and the exit status that follows. The first stop request wins; the
//! decision from (reason, what the console said) is a pure function.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 0xFE, triple fault, KVM reset event).
    Reset,
    /// The guest powered off (ACPI S5, a KVM shutdown event, or the
    /// kernel's halt line when it runs without ACPI).
    PowerOff,
    /// The guest kernel panicked (its panic report ended on the console).
    Panic,
    /// The control API asked the VMM to end.
    Shutdown,
    /// The VMM cannot go on.
    Fatal(String),
}

/// Facts the console watcher established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleFlags {
    /// "reboot: Restarting system" was printed.
    pub restart_line: bool,
    /// "reboot: ... System halted" was printed.
    pub halt_line: bool,
    /// "Kernel panic - not syncing" was printed.
    pub panic: bool,
}

/// The process exit status and its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    pub message: String,
}

/// Decides the exit status.
pub fn outcome(reason: &StopReason, console: ConsoleFlags) -> Outcome {
    let fail = |m: &str| Outcome {
        code: 1,
        message: m.to_string(),
    };
    let ok = |m: &str| Outcome {
        code: 0,
        message: m.to_string(),
    };
    if console.panic {
        return fail("guest kernel panicked");
    }
    match reason {
        StopReason::Panic => fail("guest kernel panicked"),
        StopReason::Fatal(why) => fail(why),
        StopReason::PowerOff => ok("guest powered off"),
        StopReason::Shutdown => ok("shut down through the API"),
        StopReason::Reset if console.restart_line || console.halt_line => {
            ok("guest rebooted (treated as exit)")
        }
        StopReason::Reset => fail("guest reset without announcing it (triple fault?)"),
    }
}

/// Shared between vCPU threads, devices and the event loop.
#[derive(Debug)]
pub struct Lifecycle {
    evt: EventFd,
    reason: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    console: Mutex<ConsoleFlags>,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            console: Mutex::new(ConsoleFlags::default()),
        })
    }

    /// Asks the VM to stop; only the first reason is kept.
    pub fn request_stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            log::debug!("stop requested: {reason:?}");
            *slot = Some(reason);
            self.stopping.store(true, Ordering::SeqCst);
            // A full counter already means "stop"; nothing more to signal.
            let _ = self.evt.write(1);
        }
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Readable once a stop was requested.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// Records what the console watcher saw.
    pub fn update_console(&self, f: impl FnOnce(&mut ConsoleFlags)) {
        f(&mut self.console.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn console(&self) -> ConsoleFlags {
        *self.console.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status, once stopped.
    pub fn outcome(&self) -> Option<Outcome> {
        self.stop_reason().map(|r| outcome(&r, self.console()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_endings_exit_zero() {
        let halted = ConsoleFlags {
            halt_line: true,
            ..Default::default()
        };
        let restarted = ConsoleFlags {
            restart_line: true,
            ..Default::default()
        };
        assert_eq!(outcome(&StopReason::PowerOff, halted).code, 0);
        assert_eq!(outcome(&StopReason::Reset, restarted).code, 0);
        assert_eq!(
            outcome(&StopReason::PowerOff, ConsoleFlags::default()).code,
            0
        );
        assert_eq!(
            outcome(&StopReason::Shutdown, ConsoleFlags::default()).code,
            0
        );
    }

    #[test]
    fn panics_and_silent_resets_fail() {
        let panicked = ConsoleFlags {
            panic: true,
            restart_line: true,
            ..Default::default()
        };
        let o = outcome(&StopReason::Reset, panicked);
        assert_eq!((o.code, o.message.as_str()), (1, "guest kernel panicked"));
        assert_eq!(outcome(&StopReason::Reset, ConsoleFlags::default()).code, 1);
        assert_eq!(outcome(&StopReason::Panic, ConsoleFlags::default()).code, 1);
        let f = outcome(
            &StopReason::Fatal("KVM_RUN failed".into()),
            ConsoleFlags::default(),
        );
        assert_eq!((f.code, f.message.as_str()), (1, "KVM_RUN failed"));
    }

    #[test]
    fn first_stop_request_wins_and_signals() {
        let lc = Lifecycle::new().unwrap();
        assert!(!lc.is_stopping());
        assert!(lc.event().read().is_err(), "nothing signalled yet");
        lc.request_stop(StopReason::Reset);
        lc.request_stop(StopReason::Panic);
        assert!(lc.is_stopping());
        assert_eq!(lc.stop_reason(), Some(StopReason::Reset));
        assert_eq!(lc.event().read().unwrap(), 1);
        lc.update_console(|c| c.restart_line = true);
        assert_eq!(lc.outcome().map(|o| o.code), Some(0));
    }
}
