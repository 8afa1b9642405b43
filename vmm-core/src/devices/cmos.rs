//! A minimal MC146818 CMOS/RTC at ports 0x70/0x71: the current UTC time in
//! BCD, never "update in progress", so Linux reads the wall clock at boot
//! without waiting. Other registers read zero; writes only move the index.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::bus::BusDevice;

/// First port (index); the data port follows.
pub const PORT: u64 = 0x70;

/// The CMOS device.
#[derive(Debug, Default)]
pub struct Cmos {
    index: u8,
}

/// The last two decimal digits of `v` in BCD.
fn bcd(v: u64) -> u8 {
    let (tens, ones) = (((v / 10) % 10) as u8, (v % 10) as u8);
    tens << 4 | ones
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
// No sign is lost: day and month are 1-31 and 1-12 for every input
// (`doe` and everything derived from it are non-negative).
#[allow(clippy::cast_sign_loss)]
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The value of register `index` at `secs` since the epoch.
pub fn register(index: u8, secs: u64) -> u8 {
    // Cannot wrap: u64::MAX / 86 400 is below 2^48.
    #[allow(clippy::cast_possible_wrap)]
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let (year, month, day) = civil(days);
    match index {
        0x00 => bcd(tod % 60),
        0x02 => bcd(tod / 60 % 60),
        0x04 => bcd(tod / 3600),
        0x06 => bcd((days + 4).rem_euclid(7) as u64 + 1),
        0x07 => bcd(day),
        0x08 => bcd(month),
        0x09 => bcd(year.rem_euclid(100) as u64),
        0x0a => 0x26, // divider on, 1024 Hz, no update in progress
        0x0b => 0x02, // 24-hour mode, BCD
        0x0d => 0x80, // RAM and time valid
        0x32 => bcd(year.div_euclid(100).rem_euclid(100) as u64),
        _ => 0,
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset != 1 || data.len() != 1 {
            data.fill(0xff);
            return;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        data[0] = register(self.index, secs);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 1 {
            // Bit 7 is the NMI mask on a PC; not part of the index.
            self.index = data[0] & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_date_in_bcd() {
        // 2024-02-29 13:45:07 UTC (a Thursday).
        let t = 1_709_214_307;
        assert_eq!(register(0x00, t), 0x07);
        assert_eq!(register(0x02, t), 0x45);
        assert_eq!(register(0x04, t), 0x13);
        assert_eq!(register(0x07, t), 0x29);
        assert_eq!(register(0x08, t), 0x02);
        assert_eq!(register(0x09, t), 0x24);
        assert_eq!(register(0x32, t), 0x20);
        assert_eq!(register(0x06, t), 0x05);
        assert_eq!(register(0x0a, t) & 0x80, 0, "never update-in-progress");
    }

    #[test]
    fn index_then_data() {
        let mut c = Cmos::default();
        c.write(0, &[0x8b]);
        let mut b = [0u8];
        c.read(1, &mut b);
        assert_eq!(b, [0x02]);
        let mut wide = [0u8; 2];
        c.read(1, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
