//! Virtio transports: how a device's queues, features, status and config
//! space are exposed to the guest. Only virtio-pci (modern) exists. A
//! transport drives a [`VirtioDevice`], which knows nothing about PCI.

pub mod common_cfg;
pub mod virtio_pci;

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why a device could not start (or restart) its queues.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device activation failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("queue {0} has an address outside guest memory")]
    BadQueueAddress(u16),
}

/// One queue as the driver configured it, with its notification fds.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig<'a> {
    pub index: u16,
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, avail and used rings.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Written by the guest's notify (through a KVM ioeventfd).
    pub kick: &'a EventFd,
    /// Written by the device to interrupt (a KVM irqfd on the queue's MSI-X route).
    pub call: &'a EventFd,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device type (2 = block, 1 = net).
    fn device_type(&self) -> u32;
    /// Number of virtqueues the driver may use.
    fn num_queues(&self) -> u16;
    /// Largest queue size offered.
    fn queue_max_size(&self) -> u16;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads device config space.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes device config space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the queues the driver enabled, with the features it acked.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), ActivateError>;
    /// The driver reset the device: stop the queues.
    fn reset(&mut self);
}

/// A device the VMM also reaches outside the transport (its event loop
/// reconnects backends, its API reports them): the transport locks it
/// for each call.
impl<T: VirtioDevice> VirtioDevice for Arc<Mutex<T>> {
    fn device_type(&self) -> u32 {
        lock(self).device_type()
    }
    fn num_queues(&self) -> u16 {
        lock(self).num_queues()
    }
    fn queue_max_size(&self) -> u16 {
        lock(self).queue_max_size()
    }
    fn features(&self) -> u64 {
        lock(self).features()
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        lock(self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        lock(self).write_config(offset, data)
    }
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), ActivateError> {
        lock(self).activate(features, queues)
    }
    fn reset(&mut self) {
        lock(self).reset()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
