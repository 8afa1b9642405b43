//! The 16550 UART at 0x3f8 (vm-superio), raising IRQ 4 through an irqfd.

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::console::ConsoleOutput;

/// COM1's port base and the number of ports it decodes.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
/// COM1's ISA IRQ (= GSI with KVM's default routing).
pub const COM1_GSI: u32 = 4;

/// Raises the UART's interrupt by writing its irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// The UART on the port bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
    errors: u64,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleOutput) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
            errors: 0,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                self.note_error(&format!("{e:?}"));
                0
            }
        }
    }

    /// Room in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    fn note_error(&mut self, what: &str) {
        self.errors += 1;
        // Guest-triggerable: log the first few only.
        if self.errors <= 3 {
            log::warn!("serial: {what}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *byte) {
                self.note_error(&format!("{e:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use std::sync::Arc;

    #[test]
    fn transmits_and_interrupts() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), ConsoleOutput::new(None, lc));
        s.write(1, &[0x02]); // IER: THR empty interrupt
        s.write(0, b"a");
        assert!(irq.read().unwrap() >= 1);
        // Odd-sized accesses: all-ones, ignored.
        let mut two = [0u8; 2];
        s.read(5, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        s.write(0, &[1, 2]);
        assert_eq!(s.enqueue_input(b"hi"), 2);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b, [b'h']);
    }
}
