//! Just enough of the i8042 keyboard controller for `reboot=k`: the
//! "pulse reset line" command (0xFE to port 0x64) asks the VM to stop.
//! There is no keyboard. Status reads say "output full, input empty" and
//! data reads 0xFF: Linux's i8042 probe sees a buffer that never drains and
//! gives up at once ("No controller found") instead of timing out command
//! by command, and the reboot path's wait for "input empty" never spins.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::lifecycle::{Lifecycle, StopReason};

/// Port of the data register (0x60) and of the command/status register (0x64).
pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;
/// Status: output buffer full (bit 0); input buffer empty (bit 1 clear).
const STATUS_OUTPUT_FULL: u8 = 0x01;

/// The controller; register it at both ports (1 byte each).
#[derive(Debug)]
pub struct I8042 {
    lifecycle: Arc<Lifecycle>,
    port: u64,
}

impl I8042 {
    /// The half of the controller at `port` (DATA_PORT or COMMAND_PORT).
    pub fn new(lifecycle: Arc<Lifecycle>, port: u64) -> Self {
        Self { lifecycle, port }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let value = if self.port == COMMAND_PORT {
            STATUS_OUTPUT_FULL
        } else {
            0xff
        };
        data.fill(value);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if self.port == COMMAND_PORT && data == [CMD_RESET_CPU] {
            self.lifecycle.request_stop(StopReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_stop() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let mut data = I8042::new(lc.clone(), DATA_PORT);
        let mut cmd = I8042::new(lc.clone(), COMMAND_PORT);
        data.write(0, &[CMD_RESET_CPU]);
        cmd.write(0, &[0xfe, 0]);
        assert_eq!(lc.stop_reason(), None);
        let mut status = [0u8];
        cmd.read(0, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer never busy");
        assert_eq!(status[0] & 0x01, 1, "output never drains: no controller");
        let mut byte = [0u8];
        data.read(0, &mut byte);
        assert_eq!(byte, [0xff]);
        cmd.write(0, &[CMD_RESET_CPU]);
        assert_eq!(lc.stop_reason(), Some(StopReason::Reset));
    }
}
