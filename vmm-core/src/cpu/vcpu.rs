//! One vCPU and its thread: configuration (CPUID, FPU, LAPIC, boot
//! registers for the BSP) and the run loop, a small state machine
//! (Running → Exiting) driven by decoded exits and the VM's stop flag.

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

use crate::boot::BootEntry;
use crate::cpu::exit_stats::ExitCounters;
use crate::cpu::pause::PauseControl;
use crate::cpu::{cpuid, exit, regs};
use crate::devices::bus::Bus;
use crate::lifecycle::{Lifecycle, StopReason};

/// Why a vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_SET_CPUID2 failed on vCPU {0}")]
    SetCpuid(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    #[error("cannot spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// Where a vCPU's run loop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    Exiting(StopReason),
}

/// The next state after one KVM_RUN (pure).
pub fn next_state(stop_requested: bool, exit_stop: Option<StopReason>) -> VcpuState {
    match exit_stop {
        Some(reason) => VcpuState::Exiting(reason),
        // Another vCPU or a device stopped the VM: its reason is already recorded.
        None if stop_requested => VcpuState::Exiting(StopReason::PowerOff),
        None => VcpuState::Running,
    }
}

/// What every vCPU thread shares with the rest of the VMM.
#[derive(Clone, Debug)]
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub lifecycle: Arc<Lifecycle>,
    pub exits: Arc<ExitCounters>,
    pub pause: Arc<PauseControl>,
}

/// A configured vCPU, ready to run.
pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
    shared: VcpuShared,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// Configures vCPU `id` of `count`; the BSP (id 0) also gets the boot entry.
    pub fn new(
        id: u8,
        count: u8,
        fd: VcpuFd,
        supported_cpuid: &CpuId,
        boot: Option<BootEntry>,
        shared: VcpuShared,
    ) -> Result<Self, VcpuError> {
        let mut cpuid = supported_cpuid.clone();
        cpuid::patch(cpuid.as_mut_slice(), id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(id, e))?;
        regs::setup_fpu(&fd).map_err(|e| VcpuError::Regs(id, e))?;
        regs::setup_lapic(&fd).map_err(|e| VcpuError::Regs(id, e))?;
        if let Some(entry) = boot {
            regs::setup_boot_vcpu(&fd, entry).map_err(|e| VcpuError::Regs(id, e))?;
        }
        Ok(Self { id, fd, shared })
    }

    /// Runs until the VM stops; returns this vCPU's view of why.
    pub fn run(&mut self) -> StopReason {
        let s = self.shared.clone();
        loop {
            // Paused through the API: wait here, outside KVM_RUN.
            s.pause.park_point();
            let stop = match self.fd.run() {
                Ok(e) => {
                    s.exits.record(&e);
                    exit::dispatch(e, &s.pio, &s.mmio)
                }
                // Kicked by a signal (a pause request) or asked to retry.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(StopReason::Fatal(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.id
                ))),
            };
            if let VcpuState::Exiting(reason) = next_state(s.lifecycle.is_stopping(), stop) {
                s.lifecycle.request_stop(reason.clone());
                return reason;
            }
        }
    }

    /// Runs the vCPU on its own thread.
    pub fn spawn(mut self) -> Result<std::thread::JoinHandle<StopReason>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(id, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        assert_eq!(next_state(false, None), VcpuState::Running);
        assert_eq!(
            next_state(false, Some(StopReason::Reset)),
            VcpuState::Exiting(StopReason::Reset)
        );
        assert!(matches!(next_state(true, None), VcpuState::Exiting(_)));
        assert_eq!(
            next_state(true, Some(StopReason::Panic)),
            VcpuState::Exiting(StopReason::Panic)
        );
    }
}
