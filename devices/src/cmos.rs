//! The PC's CMOS real-time clock (MC146818) at ports 0x70 (index) and 0x71 (data): the
//! time of day from the host clock in BCD, 24-hour mode, and its status registers.
//!
//! Without it Linux's rtc_cmos driver waits seconds for an update-in-progress bit that
//! an absent device (reads of all ones) never clears, and the guest has no wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// The index port; the data port follows it.
pub const CMOS_PORT: u64 = 0x70;
/// Ports the device answers: index and data.
pub const CMOS_PORT_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set, since reads
/// are computed whole from the host clock.
const STATUS_A_VALUE: u8 = 0x26;
/// Status B: 24-hour mode (bit 1), BCD (bit 2 clear), no interrupts enabled.
const STATUS_B_VALUE: u8 = 0x02;
/// Status D: valid RAM and time (bit 7).
const STATUS_D_VALUE: u8 = 0x80;

/// The CMOS RTC and its 128 bytes of NVRAM.
pub struct CmosRtc {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::new()
    }
}

impl CmosRtc {
    /// An RTC that reads the host's clock.
    pub fn new() -> Self {
        Self::with_clock(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    /// An RTC reading seconds since the Unix epoch from `now` (tests use a fixed clock).
    pub fn with_clock(now: fn() -> u64) -> Self {
        CmosRtc {
            index: 0,
            nvram: [0; 128],
            now,
        }
    }

    fn register(&self, index: u8) -> u8 {
        let secs = (self.now)();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = secs % 86_400;
        let bcd = |v: u64| -> u8 { (((v / 10) % 10) << 4 | (v % 10)) as u8 };
        match index {
            SECONDS => bcd(of_day % 60),
            MINUTES => bcd(of_day / 60 % 60),
            HOURS => bcd(of_day / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            WEEKDAY => bcd((secs / 86_400 + 4) % 7 + 1),
            DAY_OF_MONTH => bcd(day),
            MONTH => bcd(month),
            YEAR => bcd(year % 100),
            CENTURY => bcd(year / 100),
            STATUS_A => STATUS_A_VALUE,
            STATUS_B => STATUS_B_VALUE,
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALUE,
            i => self.nvram.get(usize::from(i)).copied().unwrap_or(0),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(days: i64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year.max(0) as u64, month as u64, day as u64)
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            // Bit 7 of the index port is the NMI mask; the register is the low 7 bits.
            0 => self.index = value & 0x7f,
            // The clock follows the host; only NVRAM bytes are writable.
            _ if self.index > STATUS_D && self.index != CENTURY => {
                if let Some(b) = self.nvram.get_mut(usize::from(self.index)) {
                    *b = value;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut CmosRtc, index: u8) -> u8 {
        rtc.write(0, &[index | 0x80]);
        let mut b = [0xff];
        rtc.read(1, &mut b);
        b[0]
    }

    #[test]
    fn time_of_day_in_bcd() {
        // 2026-11-21 13:45:59 UTC, a Saturday.
        let mut rtc = CmosRtc::with_clock(|| 1_795_268_759);
        assert_eq!(read(&mut rtc, SECONDS), 0x59);
        assert_eq!(read(&mut rtc, MINUTES), 0x45);
        assert_eq!(read(&mut rtc, HOURS), 0x13);
        assert_eq!(read(&mut rtc, DAY_OF_MONTH), 0x21);
        assert_eq!(read(&mut rtc, MONTH), 0x11);
        assert_eq!(read(&mut rtc, YEAR), 0x26);
        assert_eq!(read(&mut rtc, CENTURY), 0x20);
        assert_eq!(read(&mut rtc, WEEKDAY), 0x07);
    }

    #[test]
    fn never_busy_and_valid() {
        let mut rtc = CmosRtc::new();
        assert_eq!(read(&mut rtc, STATUS_A) & 0x80, 0, "update in progress");
        assert_eq!(read(&mut rtc, STATUS_B), STATUS_B_VALUE);
        assert_eq!(read(&mut rtc, STATUS_D) & 0x80, 0x80);
    }

    #[test]
    fn nvram_is_writable_and_the_clock_is_not() {
        let mut rtc = CmosRtc::with_clock(|| 0);
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0xab]);
        assert_eq!(read(&mut rtc, 0x40), 0xab);
        rtc.write(0, &[SECONDS]);
        rtc.write(1, &[0x33]);
        assert_eq!(read(&mut rtc, SECONDS), 0x00);
        assert_eq!(read(&mut rtc, YEAR), 0x70);
    }

    #[test]
    fn dates_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }
}
