//! Decoding vCPU exits: a pure function from KVM's exit to what the VMM
//! must do (an I/O access for a bus, a stop, or nothing), tested with
//! fabricated exits; and the dispatcher that performs the access. Unknown
//! exits stop the VM with a reason instead of panicking; odd-sized
//! accesses read all-ones and writes are dropped.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::devices::bus::Bus;
use crate::lifecycle::StopReason;

/// Port I/O or memory-mapped I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Pio,
    Mmio,
}

/// What an exit asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A read the bus must answer (`valid` false: odd size, answer all-ones).
    Read {
        space: Space,
        addr: u64,
        len: usize,
        valid: bool,
    },
    /// A write for the bus (`valid` false: odd size, drop it).
    Write {
        space: Space,
        addr: u64,
        len: usize,
        valid: bool,
    },
    /// Stop the VM.
    Stop(StopReason),
    /// Nothing to do; run the vCPU again.
    Resume,
}

fn valid_len(space: Space, len: usize) -> bool {
    match space {
        Space::Pio => matches!(len, 1 | 2 | 4),
        Space::Mmio => matches!(len, 1 | 2 | 4 | 8),
    }
}

fn access(space: Space, addr: u64, len: usize, write: bool) -> Decoded {
    let valid = valid_len(space, len);
    if write {
        Decoded::Write {
            space,
            addr,
            len,
            valid,
        }
    } else {
        Decoded::Read {
            space,
            addr,
            len,
            valid,
        }
    }
}

/// Decides what an exit means (pure).
pub fn decode(exit: &VcpuExit) -> Decoded {
    let fatal = |m: String| Decoded::Stop(StopReason::Fatal(m));
    match exit {
        VcpuExit::IoIn(port, data) => access(Space::Pio, u64::from(*port), data.len(), false),
        VcpuExit::IoOut(port, data) => access(Space::Pio, u64::from(*port), data.len(), true),
        VcpuExit::MmioRead(addr, data) => access(Space::Mmio, *addr, data.len(), false),
        VcpuExit::MmioWrite(addr, data) => access(Space::Mmio, *addr, data.len(), true),
        // A triple fault: the machine resets.
        VcpuExit::Shutdown => Decoded::Stop(StopReason::Reset),
        VcpuExit::SystemEvent(kind, _) => match *kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Decoded::Stop(StopReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Decoded::Stop(StopReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => Decoded::Stop(StopReason::Panic),
            other => fatal(format!("unexpected KVM system event {other}")),
        },
        // Signals, interrupt windows and (without an in-kernel LAPIC) HLT
        // need nothing from us.
        VcpuExit::Intr
        | VcpuExit::Hlt
        | VcpuExit::IrqWindowOpen
        | VcpuExit::IoapicEoi(_)
        | VcpuExit::SetTpr
        | VcpuExit::TprAccess
        | VcpuExit::Debug(_) => Decoded::Resume,
        VcpuExit::InternalError => fatal("KVM internal error (emulation failure)".into()),
        VcpuExit::FailEntry(reason, cpu) => fatal(format!(
            "KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        )),
        VcpuExit::MemoryFault { gpa, size, .. } => {
            fatal(format!("guest memory fault at {gpa:#x}+{size:#x}"))
        }
        VcpuExit::Unsupported(reason) => fatal(format!("unsupported vCPU exit reason {reason}")),
        other => fatal(format!("unexpected vCPU exit {other:?}")),
    }
}

/// Performs an exit's I/O on the buses; returns a stop reason if the exit is one.
pub fn dispatch(exit: VcpuExit, pio: &Bus, mmio: &Bus) -> Option<StopReason> {
    let decoded = decode(&exit);
    let bus = |s: Space| if s == Space::Pio { pio } else { mmio };
    match (decoded, exit) {
        (
            Decoded::Read {
                space, addr, valid, ..
            },
            VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data),
        ) => {
            if valid {
                if !bus(space).read(addr, data) {
                    log::trace!("unclaimed {space:?} read at {addr:#x}");
                }
            } else {
                data.fill(0xff);
            }
            None
        }
        (
            Decoded::Write {
                space, addr, valid, ..
            },
            VcpuExit::IoOut(_, data) | VcpuExit::MmioWrite(_, data),
        ) => {
            if valid && !bus(space).write(addr, data) {
                log::trace!("unclaimed {space:?} write at {addr:#x}");
            }
            None
        }
        (Decoded::Stop(reason), _) => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[test]
    fn io_exits_decode_to_accesses() {
        let mut buf = [0u8; 2];
        assert_eq!(
            decode(&VcpuExit::IoIn(0x3fd, &mut buf)),
            Decoded::Read {
                space: Space::Pio,
                addr: 0x3fd,
                len: 2,
                valid: true
            }
        );
        assert_eq!(
            decode(&VcpuExit::IoOut(0x3f8, b"a")),
            Decoded::Write {
                space: Space::Pio,
                addr: 0x3f8,
                len: 1,
                valid: true
            }
        );
        let mut eight = [0u8; 8];
        assert_eq!(
            decode(&VcpuExit::MmioRead(0xd000_0000, &mut eight)),
            Decoded::Read {
                space: Space::Mmio,
                addr: 0xd000_0000,
                len: 8,
                valid: true
            }
        );
    }

    #[test]
    fn odd_sizes_are_invalid() {
        let mut three = [0u8; 3];
        assert!(matches!(
            decode(&VcpuExit::MmioRead(0x1000, &mut three)),
            Decoded::Read { valid: false, .. }
        ));
        assert!(matches!(
            decode(&VcpuExit::IoOut(0x60, &[0; 8])),
            Decoded::Write { valid: false, .. }
        ));
        assert!(matches!(
            decode(&VcpuExit::MmioWrite(0x1000, &[])),
            Decoded::Write { valid: false, .. }
        ));
    }

    #[test]
    fn lifecycle_and_unknown_exits() {
        assert_eq!(
            decode(&VcpuExit::Shutdown),
            Decoded::Stop(StopReason::Reset)
        );
        assert_eq!(
            decode(&VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Decoded::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            decode(&VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[0])),
            Decoded::Stop(StopReason::Reset)
        );
        assert_eq!(decode(&VcpuExit::Intr), Decoded::Resume);
        assert_eq!(decode(&VcpuExit::Hlt), Decoded::Resume);
        for exit in [
            VcpuExit::InternalError,
            VcpuExit::Unknown,
            VcpuExit::Exception,
            VcpuExit::Unsupported(999),
            VcpuExit::FailEntry(0x80, 1),
            VcpuExit::SystemEvent(77, &[]),
        ] {
            assert!(
                matches!(decode(&exit), Decoded::Stop(StopReason::Fatal(_))),
                "{exit:?}"
            );
        }
    }

    struct Port(Vec<u8>);
    impl BusDevice for Port {
        fn read(&mut self, _o: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _o: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn dispatch_fills_reads_and_delivers_writes() {
        let pio = Bus::new();
        let mmio = Bus::new();
        let port = Arc::new(Mutex::new(Port(Vec::new())));
        pio.insert(port.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(dispatch(VcpuExit::IoIn(0x3f9, &mut b), &pio, &mmio), None);
        assert_eq!(b, [0x42]);
        dispatch(VcpuExit::IoOut(0x3f8, b"z"), &pio, &mmio);
        assert_eq!(port.lock().unwrap().0, b"z");
        let mut odd = [0u8; 3];
        dispatch(VcpuExit::IoIn(0x3f8, &mut odd), &pio, &mmio);
        assert_eq!(odd, [0xff; 3]);
        let mut m = [0u8; 4];
        dispatch(VcpuExit::MmioRead(0x1234, &mut m), &pio, &mmio);
        assert_eq!(m, [0xff; 4], "nothing mapped there");
        assert_eq!(
            dispatch(VcpuExit::Shutdown, &pio, &mmio),
            Some(StopReason::Reset)
        );
    }
}
