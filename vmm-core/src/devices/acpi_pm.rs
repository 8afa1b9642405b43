//! The hardware-reduced ACPI power-management registers the FADT points
//! at: sleep control (SLP_EN with SLP_TYP = S5 powers off), sleep status,
//! and the reset register.

use std::sync::Arc;

use crate::boot::acpi::{
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use crate::devices::bus::BusDevice;
use crate::lifecycle::{Lifecycle, StopReason};

/// First port and number of ports.
pub const BASE: u64 = SLEEP_CONTROL_PORT as u64;
pub const LEN: u64 = 3;
const SLP_EN: u8 = 1 << 5;

/// What a sleep-control write asks for (pure).
pub fn sleep_request(value: u8) -> Option<StopReason> {
    let sleep_type = (value >> 2) & 0x7;
    (value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE).then_some(StopReason::PowerOff)
}

/// The registers.
#[derive(Debug)]
pub struct AcpiPm {
    lifecycle: Arc<Lifecycle>,
}

impl AcpiPm {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never woken; the others read zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            return;
        };
        let port = BASE + offset;
        if port == u64::from(SLEEP_CONTROL_PORT) {
            if let Some(reason) = sleep_request(*value) {
                self.lifecycle.request_stop(reason);
            }
        } else if port == u64::from(RESET_PORT) && *value == RESET_VALUE {
            self.lifecycle.request_stop(StopReason::Reset);
        } else if port == u64::from(SLEEP_STATUS_PORT) {
            // Write-one-to-clear of WAK_STS: nothing is ever set.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        assert_eq!(sleep_request(0x34), Some(StopReason::PowerOff));
        assert_eq!(sleep_request(0x14), None, "SLP_EN clear");
        assert_eq!(sleep_request(0x2c), None, "S3 is not supported");
    }

    #[test]
    fn ports_drive_the_lifecycle() {
        let lc = Arc::new(Lifecycle::new().unwrap());
        let mut pm = AcpiPm::new(lc.clone());
        pm.write(1, &[0x80]);
        pm.write(0, &[0x34, 0]);
        assert_eq!(lc.stop_reason(), None, "wide write ignored");
        pm.write(0, &[0x34]);
        assert_eq!(lc.stop_reason(), Some(StopReason::PowerOff));
        let lc = Arc::new(Lifecycle::new().unwrap());
        let mut pm = AcpiPm::new(lc.clone());
        pm.write(2, &[RESET_VALUE]);
        assert_eq!(lc.stop_reason(), Some(StopReason::Reset));
    }
}
