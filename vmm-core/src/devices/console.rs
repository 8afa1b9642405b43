//! The serial console's output side: bytes go to the chosen sink, and a
//! line watcher notices the kernel's reboot, halt and panic lines so the VM
//! stops with the right status. Power-off normally arrives through ACPI
//! S5; the halt line matters for guests booted `acpi=off`, which halt in
//! HLT forever instead of powering off.

use std::io::Write;
use std::sync::Arc;

use crate::lifecycle::{Lifecycle, StopReason};

/// A kernel console line that matters for the VM's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Restart,
    Halt,
    PanicStart,
    PanicEnd,
}

/// Classifies one console line (pure).
pub fn classify(line: &str) -> Option<Marker> {
    if line.contains("reboot: Restarting system") {
        Some(Marker::Restart)
    } else if line.contains("reboot: ") && line.contains("System halted") {
        Some(Marker::Halt)
    } else if line.contains("---[ end Kernel panic") {
        Some(Marker::PanicEnd)
    } else if line.contains("Kernel panic - not syncing") {
        Some(Marker::PanicStart)
    } else {
        None
    }
}

/// Longest line the watcher keeps; longer lines are cut (markers are short).
const MAX_LINE: usize = 512;

/// Serial output: a sink plus the lifecycle line watcher.
pub struct ConsoleOutput {
    sink: Option<Box<dyn Write + Send>>,
    line: Vec<u8>,
    lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput")
            .field("has_sink", &self.sink.is_some())
            .field("buffered", &self.line.len())
            .finish_non_exhaustive()
    }
}

impl ConsoleOutput {
    /// `sink` None discards the output (the watcher still runs).
    pub fn new(sink: Option<Box<dyn Write + Send>>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            sink,
            line: Vec::with_capacity(MAX_LINE),
            lifecycle,
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        match classify(&text) {
            Some(Marker::Restart) => self.lifecycle.update_console(|c| c.restart_line = true),
            Some(Marker::Halt) => {
                self.lifecycle.update_console(|c| c.halt_line = true);
                self.lifecycle.request_stop(StopReason::PowerOff);
            }
            Some(Marker::PanicStart) => self.lifecycle.update_console(|c| c.panic = true),
            Some(Marker::PanicEnd) => self.lifecycle.request_stop(StopReason::Panic),
            None => {}
        }
        self.line.clear();
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        match &mut self.sink {
            Some(s) => s.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kernel_lines() {
        assert_eq!(
            classify("[   5.1] reboot: Restarting system"),
            Some(Marker::Restart)
        );
        assert_eq!(classify("reboot: System halted"), Some(Marker::Halt));
        assert_eq!(
            classify("[    9.1] reboot: Power off not available: System halted instead"),
            Some(Marker::Halt)
        );
        assert_eq!(classify("System halted"), None);
        assert_eq!(
            classify("[ 1.0] reboot: Power down"),
            None,
            "ACPI S5 follows"
        );
        assert_eq!(
            classify("Kernel panic - not syncing: Attempted to kill init!"),
            Some(Marker::PanicStart)
        );
        assert_eq!(
            classify("---[ end Kernel panic - not syncing: VFS ]---"),
            Some(Marker::PanicEnd)
        );
        assert_eq!(classify("Run /init as init process"), None);
    }

    #[test]
    fn halt_line_stops_with_power_off() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let mut out = ConsoleOutput::new(None, lc.clone());
        out.write_all(b"hello\r\nreboot: System ha").unwrap();
        assert!(!lc.is_stopping());
        out.write_all(b"lted\r\n").unwrap();
        assert_eq!(lc.stop_reason(), Some(StopReason::PowerOff));
        assert_eq!(lc.outcome().map(|o| o.code), Some(0));
    }

    #[test]
    fn panic_report_stops_with_failure() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let mut out = ConsoleOutput::new(None, lc.clone());
        out.write_all(b"Kernel panic - not syncing: oops\n")
            .unwrap();
        assert!(!lc.is_stopping(), "wait for the whole report");
        out.write_all(b"---[ end Kernel panic - not syncing: oops ]---\n")
            .unwrap();
        assert_eq!(lc.outcome().map(|o| o.code), Some(1));
    }

    #[test]
    fn long_lines_are_bounded_and_output_passes_through() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = ConsoleOutput::new(Some(Box::new(Shared(buf.clone()))), lc);
        let long = vec![b'x'; 10 * MAX_LINE];
        out.write_all(&long).unwrap();
        assert!(out.line.len() <= MAX_LINE);
        assert_eq!(buf.lock().unwrap().len(), long.len());
    }
}
