//! MSI (not MSI-X) of a passed-through function: the guest programs the
//! emulated capability ([`pci::msi_cap::MsiRegs`]); here each enabled
//! vector gets the VMM's eventfd, handed both to VFIO
//! (VFIO_PCI_MSI_IRQ_INDEX) and to KVM (an irqfd on the vector's GSI
//! route), as for MSI-X. Address, data or mask changes only rewrite
//! routes; a change in the number of vectors re-enables MSI in the device
//! with the new count (VFIO cannot resize a live MSI set).

use pci::MsiRoutes;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupts::{InterruptError, notifiers};
use pci::msi_cap::MsiRegs;

/// How MSI is switched on and off in the device (VFIO in production).
pub trait MsiBackend: Send {
    fn enable_msi(&self, fds: Vec<&EventFd>) -> std::io::Result<()>;
    fn disable_msi(&self) -> std::io::Result<()>;
}

/// The MSI state of one passed-through function.
pub struct MsiInterrupts {
    routes: Box<dyn MsiRoutes>,
    backend: Box<dyn MsiBackend>,
    /// Vectors VFIO has our eventfds for (0: MSI off in the device).
    device_vectors: u16,
}

impl std::fmt::Debug for MsiInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiInterrupts")
            .field("device_vectors", &self.device_vectors)
            .finish_non_exhaustive()
    }
}

impl MsiInterrupts {
    /// `routes` must cover the capability's maximum number of vectors.
    pub fn new(routes: Box<dyn MsiRoutes>, backend: Box<dyn MsiBackend>) -> Self {
        Self {
            routes,
            backend,
            device_vectors: 0,
        }
    }

    /// Vectors the device signals through us now.
    pub fn device_vectors(&self) -> u16 {
        self.device_vectors
    }

    /// Brings routes and the device in line with the guest's registers.
    pub fn apply(&mut self, regs: &MsiRegs) -> Result<(), InterruptError> {
        let want = if regs.enabled() { regs.vectors() } else { 0 };
        // Routes first: a vector that fires at once finds its GSI. Vectors
        // beyond the enabled ones are masked.
        for v in 0..regs.vectors().max(self.device_vectors) {
            let masked = v >= want || regs.masked(v);
            self.routes
                .update(v, regs.message(v), masked)
                .map_err(|e| InterruptError::Route(v, e))?;
        }
        if want == self.device_vectors {
            return Ok(());
        }
        if self.device_vectors > 0 {
            self.backend
                .disable_msi()
                .map_err(InterruptError::Disable)?;
            self.device_vectors = 0;
        }
        if want > 0 {
            let fds = notifiers(&*self.routes, want)?;
            self.backend
                .enable_msi(fds)
                .map_err(|e| InterruptError::Enable(want, e))?;
            self.device_vectors = want;
        }
        Ok(())
    }

    /// Takes MSI away from the device (VM shutdown).
    pub fn shutdown(&mut self) -> Result<(), InterruptError> {
        if self.device_vectors > 0 {
            self.device_vectors = 0;
            self.backend
                .disable_msi()
                .map_err(InterruptError::Disable)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use pci::MsiMessage;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use pci::msi_cap::MsiCap;

    #[derive(Default)]
    struct Log {
        routes: Vec<(u16, MsiMessage, bool)>,
        device: Vec<String>,
    }

    struct Routes(Arc<Mutex<Log>>, Vec<EventFd>);
    impl MsiRoutes for Routes {
        fn update(&mut self, v: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().routes.push((v, msg, masked));
            Ok(())
        }
        fn notifier(&self, v: u16) -> Option<&EventFd> {
            self.1.get(usize::from(v))
        }
    }

    struct Device(Arc<Mutex<Log>>);
    impl MsiBackend for Device {
        fn enable_msi(&self, fds: Vec<&EventFd>) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .device
                .push(format!("on:{}", fds.len()));
            Ok(())
        }
        fn disable_msi(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().device.push("off".into());
            Ok(())
        }
    }

    fn regs(mmc: u8) -> MsiRegs {
        let mut raw = vec![0u8; 256];
        raw[0x50] = 0x05;
        let ctrl = 0x0180u16 | u16::from(mmc) << 1;
        raw[0x52..0x54].copy_from_slice(&ctrl.to_le_bytes());
        MsiRegs::new(MsiCap::parse(&raw, 0x50).unwrap())
    }

    fn setup(n: usize) -> (MsiInterrupts, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let fds = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let m = MsiInterrupts::new(
            Box::new(Routes(log.clone(), fds)),
            Box::new(Device(log.clone())),
        );
        (m, log)
    }

    #[test]
    fn enable_resize_mask_and_disable() {
        let (mut m, log) = setup(4);
        let mut r = regs(2);
        for (i, b) in 0xfee0_0000u32.to_le_bytes().into_iter().enumerate() {
            r.write_byte(0x54 + i as u64, b);
        }
        r.write_byte(0x5c, 0x40);
        // Programming address/data while disabled: routes only, all masked.
        m.apply(&r).unwrap();
        assert!(log.lock().unwrap().device.is_empty());
        assert!(
            log.lock()
                .unwrap()
                .routes
                .iter()
                .all(|(_, _, masked)| *masked)
        );
        // Enable one vector.
        r.write_byte(0x52, 1);
        m.apply(&r).unwrap();
        assert_eq!(log.lock().unwrap().device, ["on:1"]);
        let last = *log.lock().unwrap().routes.last().unwrap();
        assert_eq!(
            last,
            (
                0,
                MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x40
                },
                false
            )
        );
        // Four vectors: the device is re-enabled with four eventfds.
        r.write_byte(0x52, 1 | 2 << 4);
        m.apply(&r).unwrap();
        assert_eq!(log.lock().unwrap().device, ["on:1", "off", "on:4"]);
        assert_eq!(m.device_vectors(), 4);
        // Mask vector 2: only its route changes, the device stays on.
        log.lock().unwrap().routes.clear();
        r.write_byte(0x60, 0b100);
        m.apply(&r).unwrap();
        let routes = log.lock().unwrap().routes.clone();
        assert_eq!(routes.len(), 4);
        assert!(routes[2].2 && !routes[3].2);
        assert_eq!(routes[3].1.data, 0x43);
        assert_eq!(log.lock().unwrap().device.len(), 3);
        // Disable, then shutdown has nothing left to do.
        r.write_byte(0x52, 0);
        m.apply(&r).unwrap();
        assert_eq!(log.lock().unwrap().device.last().unwrap(), "off");
        m.shutdown().unwrap();
        assert_eq!(log.lock().unwrap().device.len(), 4);
    }

    #[test]
    fn missing_eventfd_is_an_error_not_a_panic() {
        let (mut m, _log) = setup(1);
        let mut r = regs(1);
        r.write_byte(0x52, 1 | 1 << 4);
        assert!(matches!(m.apply(&r), Err(InterruptError::NoNotifier(1))));
        assert_eq!(m.device_vectors(), 0);
    }
}
