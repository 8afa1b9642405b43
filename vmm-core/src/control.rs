//! What the control API acts on: the running VM's vCPUs (pause/resume,
//! with the guest's kvmclock held still while paused), its lifecycle
//! (shutdown) and a description of its devices and exit counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use serde_json::{Value, json};
use virtio_devices::transport::virtio_pci::VirtioPciDevice;
use virtio_devices::vhost_user::{DeviceKind, VhostUserDevice};

use crate::api::routes::{ControlError, VmControl};
use crate::cpu::exit_stats::ExitCounters;
use crate::cpu::pause::PauseControl;
use crate::lifecycle::{Lifecycle, StopReason};

/// How long a pause may take to park every vCPU.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A virtio device as the VMM set it up.
pub struct DeviceEntry {
    /// `disk0`, `net0`, ...
    pub id: String,
    /// PCI address, `00:01.0`.
    pub pci: String,
    pub backend: Arc<Mutex<VhostUserDevice>>,
    pub transport: Arc<Mutex<VirtioPciDevice>>,
    pub notify_exits: Arc<AtomicU64>,
}

impl std::fmt::Debug for DeviceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEntry")
            .field("id", &self.id)
            .field("pci", &self.pci)
            .field("notify_exits", &self.notify_exits)
            .finish_non_exhaustive()
    }
}

impl DeviceEntry {
    fn describe(&self) -> Value {
        let status = self
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .driver_status();
        let b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        let info = b.info();
        let (kind, queues) = match b.kind() {
            DeviceKind::Block { num_queues } => ("block", *num_queues),
            DeviceKind::Net { queue_pairs, .. } => ("net", queue_pairs.saturating_mul(2)),
        };
        json!({
            "id": self.id,
            "type": kind,
            "pci": self.pci,
            "socket": info.socket.display().to_string(),
            "connected": info.connected,
            "driver_ok": status & 4 != 0,
            "queues": queues,
            "started_queues": info.started_queues,
            "offered_features": format!("{:#x}", info.offered_features),
            "acked_features": info.acked_features.map(|f| format!("{f:#x}")),
            "reconnects": info.reconnects,
            "notify_exits": self.notify_exits.load(Ordering::Relaxed),
        })
    }
}

/// The running VM, as the API sees it.
pub struct VmController {
    pub vm_fd: Arc<VmFd>,
    pub pause: Arc<PauseControl>,
    pub exits: Arc<ExitCounters>,
    pub lifecycle: Arc<Lifecycle>,
    pub devices: Vec<DeviceEntry>,
    pub passthrough: Vec<String>,
    pub cpus: u8,
    pub memory_bytes: u64,
    pub started: Instant,
    clock: Mutex<Option<kvm_clock_data>>,
}

impl std::fmt::Debug for VmController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmController")
            .field("cpus", &self.cpus)
            .field("memory_bytes", &self.memory_bytes)
            .field("devices", &self.devices)
            .field("passthrough", &self.passthrough)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl VmController {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm_fd: Arc<VmFd>,
        pause: Arc<PauseControl>,
        exits: Arc<ExitCounters>,
        lifecycle: Arc<Lifecycle>,
        devices: Vec<DeviceEntry>,
        passthrough: Vec<String>,
        cpus: u8,
        memory_bytes: u64,
    ) -> Self {
        Self {
            vm_fd,
            pause,
            exits,
            lifecycle,
            devices,
            passthrough,
            cpus,
            memory_bytes,
            started: Instant::now(),
            clock: Mutex::new(None),
        }
    }

    /// One line for the log at exit: exits by kind and doorbell exits per device.
    pub fn exit_report(&self) -> String {
        let e = self.exits.snapshot();
        let mut line = format!(
            "event=exit_counts total={} pio={} mmio={} other={}",
            e.total, e.pio, e.mmio, e.other
        );
        for d in &self.devices {
            line.push_str(&format!(
                " notify_exits.{}={}",
                d.id,
                d.notify_exits.load(Ordering::Relaxed)
            ));
        }
        line
    }
}

impl VmControl for VmController {
    fn info(&self) -> Value {
        let state = if self.lifecycle.is_stopping() {
            "shutting-down"
        } else if self.pause.is_paused() {
            "paused"
        } else {
            "running"
        };
        json!({
            "state": state,
            "vcpus": self.cpus,
            "memory_mib": self.memory_bytes >> 20,
            "uptime_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "exits": self.exits.snapshot(),
            "devices": self.devices.iter().map(DeviceEntry::describe).collect::<Vec<_>>(),
            "passthrough": self.passthrough,
        })
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.pause.pause(PAUSE_TIMEOUT)?;
        // Hold the guest's clock: it must not see the paused time pass.
        match self.vm_fd.get_clock() {
            Ok(c) => *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
            Err(e) => {
                let _ = self.pause.resume();
                return Err(ControlError::Kvm("GET_CLOCK", e));
            }
        }
        log::info!("event=vm_paused vcpus={}", self.cpus);
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        if !self.pause.is_paused() {
            return Err(crate::cpu::pause::PauseError::NotPaused.into());
        }
        if let Some(mut c) = self.clock.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Flags from GET_CLOCK describe the host; SET_CLOCK takes none of them.
            c.flags = 0;
            self.vm_fd
                .set_clock(&c)
                .map_err(|e| ControlError::Kvm("SET_CLOCK", e))?;
        }
        self.pause.resume()?;
        log::info!("event=vm_resumed");
        Ok(())
    }

    fn shutdown(&self) {
        log::info!("event=vm_shutdown_requested source=api");
        // Paused vCPUs need not run again: the process ends.
        self.lifecycle.request_stop(StopReason::Shutdown);
    }
}
