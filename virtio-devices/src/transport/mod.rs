//! Virtio transports: how a device's queues, features, status and config
//! space are exposed to the guest. Only virtio-pci (modern) exists. A
//! transport drives a [`VirtioDevice`], which knows nothing about PCI.

pub mod common_cfg;
pub mod virtio_pci;

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
