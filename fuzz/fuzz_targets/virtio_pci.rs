//! The VMM's virtio-pci transport as the guest drives it: PCI config
//! space and the BAR (common config, ISR, device config, doorbells, MSI-X
//! table and PBA) read and written at any offset, of any size (0-8 bytes,
//! aligned or not, in range or past it), interleaved with status changes
//! that activate and reset the device. Nothing may panic; a reset must
//! leave the status at 0, and routes are only asked for vectors that exist.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pci::{MsiMessage, MsiRoutes, PciDevice};
use virtio_devices::transport::virtio_pci::VirtioPciDevice;
use virtio_devices::transport::{ActivateError, QueueConfig, VirtioDevice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const QUEUES: u16 = 3;

struct Dev;
impl VirtioDevice for Dev {
    fn device_type(&self) -> u32 {
        2
    }
    fn num_queues(&self) -> u16 {
        QUEUES
    }
    fn queue_max_size(&self) -> u16 {
        256
    }
    fn features(&self) -> u64 {
        1 << 9 | 1 << 28
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _f: u64, queues: &[QueueConfig]) -> Result<(), ActivateError> {
        assert!(queues.len() <= usize::from(QUEUES));
        if queues.iter().any(|q| q.desc == 0xdead_0000) {
            return Err(ActivateError::BadQueueAddress(0));
        }
        Ok(())
    }
    fn reset(&mut self) {}
}

struct Routes(Vec<EventFd>);
impl MsiRoutes for Routes {
    fn update(&mut self, vector: u16, _m: MsiMessage, _masked: bool) -> std::io::Result<()> {
        assert!(usize::from(vector) < self.0.len(), "route for vector {vector}");
        Ok(())
    }
    fn notifier(&self, vector: u16) -> Option<&EventFd> {
        self.0.get(usize::from(vector))
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    ConfigRead { offset: u16, len: u8 },
    ConfigWrite { offset: u16, data: Vec<u8> },
    BarRead { bar: u8, offset: u16, len: u8 },
    BarWrite { bar: u8, offset: u16, data: Vec<u8> },
    /// A common-config register write, as a driver makes it.
    Common { offset: u8, value: u32, width: u8 },
    Status(u8),
    NeedsReset,
    SetBar(u64),
}

fuzz_target!(|ops: Vec<Op>| {
    let evts = (0..=QUEUES)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let Ok(mut d) = VirtioPciDevice::new(Box::new(Dev), Box::new(Routes(evts))) else {
        return;
    };
    let mut buf = [0u8; 8];
    for op in ops.into_iter().take(256) {
        match op {
            Op::ConfigRead { offset, len } => {
                let n = usize::from(len % 9);
                d.config_read(usize::from(offset % 0x200), &mut buf[..n]);
            }
            Op::ConfigWrite { offset, data } => {
                let n = data.len().min(8);
                d.config_write(usize::from(offset % 0x200), &data[..n]);
            }
            Op::BarRead { bar, offset, len } => {
                let n = usize::from(len % 9);
                d.bar_read(usize::from(bar % 7), u64::from(offset), &mut buf[..n]);
            }
            Op::BarWrite { bar, offset, data } => {
                let n = data.len().min(8);
                d.bar_write(usize::from(bar % 7), u64::from(offset), &data[..n]);
            }
            Op::Common {
                offset,
                value,
                width,
            } => {
                let n = [1usize, 2, 4][usize::from(width % 3)];
                d.bar_write(0, u64::from(offset % 0x40), &value.to_le_bytes()[..n]);
            }
            Op::Status(s) => {
                d.bar_write(0, 0x14, &[s]);
                if s == 0 {
                    assert_eq!(d.driver_status(), 0, "reset leaves status 0");
                }
            }
            Op::NeedsReset => {
                d.signal_needs_reset();
            }
            Op::SetBar(addr) => d.set_bar_addr(0, addr & !0xfff),
        }
    }
});
