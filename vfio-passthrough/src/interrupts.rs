//! MSI-X of a passed-through function, emulated in the VMM: the guest's
//! table and PBA live in a [`Msix`] here, never in the device. Each vector
//! has one eventfd (the VMM's [`MsiRoutes`] notifier) that is handed both
//! to VFIO (VFIO_DEVICE_SET_IRQS, when the guest enables MSI-X) and to KVM
//! (KVM_IRQFD with the vector's GSI route). A guest write to the table then
//! only rewrites the GSI route; a masked vector has its irqfd detached, so
//! the device's signals wait in the eventfd and show in the PBA.

use std::os::fd::AsRawFd;

use pci::msix::MsixChange;
use pci::{MsiRoutes, Msix};
use vmm_sys_util::eventfd::EventFd;

/// How MSI-X is switched on and off in the device (VFIO in production).
pub trait MsixBackend: Send {
    fn enable_msix(&self, fds: Vec<&EventFd>) -> std::io::Result<()>;
    fn disable_msix(&self) -> std::io::Result<()>;
}

/// Why an interrupt change failed.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("vector {0} has no eventfd")]
    NoNotifier(u16),
    #[error("cannot enable MSI-X with {0} vectors in the device")]
    Enable(u16, #[source] std::io::Error),
    #[error("cannot disable MSI-X in the device")]
    Disable(#[source] std::io::Error),
    #[error("cannot route vector {0}")]
    Route(u16, #[source] std::io::Error),
}

/// The eventfds of vectors `0..n`, for VFIO_DEVICE_SET_IRQS.
pub(crate) fn notifiers(routes: &dyn MsiRoutes, n: u16) -> Result<Vec<&EventFd>, InterruptError> {
    (0..n)
        .map(|v| routes.notifier(v).ok_or(InterruptError::NoNotifier(v)))
        .collect()
}

/// The emulated MSI-X state of one passed-through function.
pub struct MsixInterrupts {
    msix: Msix,
    routes: Box<dyn MsiRoutes>,
    backend: Box<dyn MsixBackend>,
    /// Whether VFIO has our eventfds now.
    device_enabled: bool,
}

impl std::fmt::Debug for MsixInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The table itself (up to 2048 entries) is left out.
        f.debug_struct("MsixInterrupts")
            .field("vectors", &self.msix.vectors())
            .field("device_enabled", &self.device_enabled)
            .finish_non_exhaustive()
    }
}

/// Whether an eventfd has a count waiting (without consuming it).
fn signalled(evt: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call; a zero
    // timeout makes this a non-blocking readiness check.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

impl MsixInterrupts {
    pub fn new(vectors: u16, routes: Box<dyn MsiRoutes>, backend: Box<dyn MsixBackend>) -> Self {
        Self {
            msix: Msix::new(vectors),
            routes,
            backend,
            device_enabled: false,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.msix.vectors()
    }

    fn route(&mut self, vector: u16) -> Result<(), InterruptError> {
        let Some(msg) = self.msix.message(vector) else {
            return Ok(());
        };
        let masked = self.msix.masked(vector);
        self.routes
            .update(vector, msg, masked)
            .map_err(|e| InterruptError::Route(vector, e))
    }

    fn route_all(&mut self) -> Result<(), InterruptError> {
        for v in 0..self.msix.vectors() {
            self.route(v)?;
        }
        Ok(())
    }

    /// The guest wrote the message control word (`control` as the guest
    /// now sees it). Enabling hands every vector's eventfd to the device.
    pub fn set_control(&mut self, control: u16) -> Result<(), InterruptError> {
        if self.msix.set_control(control) == MsixChange::None {
            return Ok(());
        }
        let want = self.msix.enabled();
        if want && !self.device_enabled {
            // Routes first: a vector that fires at once finds its GSI.
            self.route_all()?;
            let n = self.msix.vectors();
            let fds = notifiers(&*self.routes, n)?;
            self.backend
                .enable_msix(fds)
                .map_err(|e| InterruptError::Enable(n, e))?;
            self.device_enabled = true;
        } else if !want && self.device_enabled {
            self.backend
                .disable_msix()
                .map_err(InterruptError::Disable)?;
            self.device_enabled = false;
            self.route_all()?;
        } else {
            self.route_all()?;
        }
        Ok(())
    }

    /// A guest read of the MSI-X table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        self.msix.table_read(offset, data);
    }

    /// A guest write to the MSI-X table: re-routes the vector it touched.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Result<(), InterruptError> {
        match self.msix.table_write(offset, data) {
            MsixChange::Vector(v) => self.route(v),
            MsixChange::All => self.route_all(),
            MsixChange::None => Ok(()),
        }
    }

    /// A guest read of the PBA: a masked vector whose eventfd holds a
    /// signal is pending.
    pub fn pba_read(&mut self, offset: u64, data: &mut [u8]) {
        let first = (offset / 8).saturating_mul(64);
        let last = first.saturating_add(64).min(u64::from(self.msix.vectors()));
        for v in first..last {
            // `last` is at most `vectors()`, a u16.
            let Ok(v) = u16::try_from(v) else {
                break;
            };
            let pending = self.msix.masked(v) && self.routes.notifier(v).is_some_and(signalled);
            self.msix.set_pending(v, pending);
        }
        self.msix.pba_read(offset, data);
    }

    /// Takes MSI-X away from the device (VM shutdown).
    pub fn shutdown(&mut self) -> Result<(), InterruptError> {
        if self.device_enabled {
            self.device_enabled = false;
            self.backend
                .disable_msix()
                .map_err(InterruptError::Disable)?;
        }
        Ok(())
    }

    pub fn device_enabled(&self) -> bool {
        self.device_enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::MsiMessage;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    type Log = Arc<Mutex<Vec<String>>>;

    struct Routes {
        evts: Vec<EventFd>,
        log: Log,
    }
    impl MsiRoutes for Routes {
        fn update(&mut self, v: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
            self.log.lock().unwrap().push(format!(
                "route {v} {:#x}/{:#x} masked={masked}",
                msg.addr, msg.data
            ));
            Ok(())
        }
        fn notifier(&self, v: u16) -> Option<&EventFd> {
            self.evts.get(usize::from(v))
        }
    }

    struct Backend(Log);
    impl MsixBackend for Backend {
        fn enable_msix(&self, fds: Vec<&EventFd>) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("enable {}", fds.len()));
            Ok(())
        }
        fn disable_msix(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push("disable".into());
            Ok(())
        }
    }

    fn setup(n: u16) -> (MsixInterrupts, Log) {
        let log: Log = Arc::default();
        let evts = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let routes = Routes {
            evts,
            log: log.clone(),
        };
        (
            MsixInterrupts::new(n, Box::new(routes), Box::new(Backend(log.clone()))),
            log,
        )
    }

    fn entry(m: &mut MsixInterrupts, v: u64, data: u32, masked: bool) {
        m.table_write(v * 16, &0xfee0_0000u32.to_le_bytes())
            .unwrap();
        m.table_write(v * 16 + 8, &data.to_le_bytes()).unwrap();
        m.table_write(v * 16 + 12, &u32::from(masked).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn enable_hands_every_eventfd_to_the_device_once() {
        let (mut m, log) = setup(3);
        m.set_control(0xc000 | 2).unwrap(); // enable + function mask
        assert!(m.device_enabled());
        entry(&mut m, 1, 0x41, false);
        log.lock().unwrap().clear();
        m.set_control(0x8000 | 2).unwrap(); // function mask off
        let l = log.lock().unwrap().clone();
        assert!(!l.iter().any(|s| s.starts_with("enable")), "{l:?}");
        assert!(
            l.contains(&"route 1 0xfee00000/0x41 masked=false".to_string()),
            "{l:?}"
        );
        assert!(
            l.contains(&"route 0 0x0/0x0 masked=true".to_string()),
            "{l:?}"
        );
        m.set_control(0).unwrap();
        assert!(!m.device_enabled());
        assert!(log.lock().unwrap().contains(&"disable".to_string()));
    }

    #[test]
    fn table_writes_only_reroute() {
        let (mut m, log) = setup(2);
        m.set_control(0x8000 | 1).unwrap();
        log.lock().unwrap().clear();
        entry(&mut m, 0, 0x30, false);
        let l = log.lock().unwrap().clone();
        assert_eq!(l.last().unwrap(), "route 0 0xfee00000/0x30 masked=false");
        assert!(l.iter().all(|s| s.starts_with("route 0")), "{l:?}");
        let mut b = [0u8; 4];
        m.table_read(8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x30);
        // Odd accesses change nothing.
        log.lock().unwrap().clear();
        m.table_write(3, &[1, 2, 3, 4]).unwrap();
        m.table_write(32, &[0; 4]).unwrap();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn pba_shows_signals_of_masked_vectors() {
        let (mut m, _log) = setup(2);
        m.set_control(0x8000 | 1).unwrap();
        entry(&mut m, 0, 0x30, true);
        entry(&mut m, 1, 0x31, false);
        m.routes.notifier(0).unwrap().write(1).unwrap();
        m.routes.notifier(1).unwrap().write(1).unwrap();
        let mut p = [0u8; 8];
        m.pba_read(0, &mut p);
        assert_eq!(
            u64::from_le_bytes(p),
            1,
            "only the masked vector is pending"
        );
        entry(&mut m, 0, 0x30, false);
        m.pba_read(0, &mut p);
        assert_eq!(u64::from_le_bytes(p), 0);
        let mut odd = [0u8; 3];
        m.pba_read(0, &mut odd);
        assert_eq!(odd, [0xff; 3]);
    }

    #[test]
    fn shutdown_disables_only_when_enabled() {
        let (mut m, log) = setup(1);
        m.shutdown().unwrap();
        assert!(log.lock().unwrap().is_empty());
        m.set_control(0x8000).unwrap();
        m.shutdown().unwrap();
        assert_eq!(log.lock().unwrap().last().unwrap(), "disable");
    }
}
