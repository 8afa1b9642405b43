//! INTx of a passed-through function: the fallback for guests that use
//! neither MSI-X nor MSI (`pci=nomsi`, old drivers).
//!
//! The level-triggered line is carried by two eventfds. VFIO signals the
//! trigger eventfd when the device asserts INTx and masks the line in the
//! host; KVM's irqfd (registered with KVM_IRQFD_FLAG_RESAMPLE on the
//! function's IOAPIC GSI) asserts the guest's line until the guest EOIs,
//! then signals the resample eventfd, which VFIO uses to unmask
//! (ACTION_UNMASK by eventfd). Neither step wakes the VMM.
//!
//! VFIO allows one interrupt type at a time: INTx is switched off before
//! MSI or MSI-X is enabled and back on when both are off again.

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::interrupts::InterruptError;

/// How INTx is switched on and off in the device (VFIO in production).
pub trait IntxBackend: Send {
    fn enable(&self, trigger: &EventFd, resample: &EventFd) -> std::io::Result<()>;
    fn disable(&self) -> std::io::Result<()>;
}

/// The INTx line of one passed-through function.
pub struct IntxInterrupts {
    trigger: EventFd,
    resample: EventFd,
    gsi: u32,
    backend: Box<dyn IntxBackend>,
    enabled: bool,
}

impl std::fmt::Debug for IntxInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxInterrupts")
            .field("gsi", &self.gsi)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl IntxInterrupts {
    /// A line on `gsi` (not yet enabled in the device).
    pub fn new(gsi: u32, backend: Box<dyn IntxBackend>) -> std::io::Result<Self> {
        Ok(Self {
            trigger: EventFd::new(EFD_NONBLOCK)?,
            resample: EventFd::new(EFD_NONBLOCK)?,
            gsi,
            backend,
            enabled: false,
        })
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Signalled by VFIO when the device asserts the line (KVM's irqfd).
    pub fn trigger(&self) -> &EventFd {
        &self.trigger
    }

    /// Signalled by KVM when the guest EOIs (VFIO unmasks on it).
    pub fn resample(&self) -> &EventFd {
        &self.resample
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Hands the line to the device (`on`) or takes it away.
    pub fn set(&mut self, on: bool) -> Result<(), InterruptError> {
        if on == self.enabled {
            return Ok(());
        }
        if on {
            self.backend
                .enable(&self.trigger, &self.resample)
                .map_err(|e| InterruptError::Enable(1, e))?;
        } else {
            self.backend.disable().map_err(InterruptError::Disable)?;
        }
        self.enabled = on;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Device(Arc<Mutex<Vec<&'static str>>>, bool);
    impl IntxBackend for Device {
        fn enable(&self, _t: &EventFd, _r: &EventFd) -> std::io::Result<()> {
            if self.1 {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.0.lock().unwrap().push("on");
            Ok(())
        }
        fn disable(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push("off");
            Ok(())
        }
    }

    #[test]
    fn switching_is_idempotent_and_errors_keep_the_state() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut i = IntxInterrupts::new(17, Box::new(Device(log.clone(), false))).unwrap();
        assert_eq!(i.gsi(), 17);
        i.set(true).unwrap();
        i.set(true).unwrap();
        i.set(false).unwrap();
        i.set(false).unwrap();
        assert_eq!(*log.lock().unwrap(), ["on", "off"]);
        let mut bad = IntxInterrupts::new(18, Box::new(Device(log, true))).unwrap();
        assert!(bad.set(true).is_err());
        assert!(!bad.enabled());
    }
}
