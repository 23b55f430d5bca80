//! Hardware-reduced ACPI power control: the FADT's sleep control, sleep status and reset
//! registers, all on one 1-byte I/O port, turned into "exit" and "reset" events for the VMM.
//!
//! The values must match the tables the acpi crate builds: `\_S5` declares sleep type
//! [`S5_SLEEP_TYPE`] (`tessera_acpi::S5_SLEEP_TYPE`) and the FADT's RESET_VALUE is
//! [`RESET_VALUE`] (`tessera_acpi::PowerRegisters::default().reset_value`); the default
//! port for all three FADT registers is [`ACPI_POWER_PORT`].

use tracing::{debug, error, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The I/O port the FADT names for SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG.
pub const ACPI_POWER_PORT: u16 = 0x3c0;
/// The device's bus range length: one byte.
pub const ACPI_POWER_PORT_LEN: u64 = 1;

/// The sleep type `\_S5` (soft off) declares.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The FADT RESET_VALUE: writing it to the port resets the VM. Bit 0 is reserved in the
/// sleep control register, so it cannot be mistaken for a sleep request.
pub const RESET_VALUE: u8 = 1;

/// SLEEP_CONTROL_REG bit 5, SLP_EN: enter the sleep state in SLP_TYP.
const SLP_EN: u8 = 1 << 5;
/// SLEEP_CONTROL_REG bits 4:2, SLP_TYP.
const SLP_TYP_SHIFT: u8 = 2;
/// Mask of SLP_TYP after shifting.
const SLP_TYP_MASK: u8 = 0b111;

/// The byte the guest writes to power off: `(5 << 2) | SLP_EN` = `0x34`.
pub const S5_SLEEP_CONTROL_VALUE: u8 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;

/// The ACPI sleep control/status and reset register.
#[derive(Debug)]
pub struct AcpiPowerDevice {
    /// Written when the guest enters S5.
    exit_evt: EventFd,
    /// Written when the guest writes the reset value.
    reset_evt: EventFd,
}

impl AcpiPowerDevice {
    /// A power device that signals `exit_evt` when the guest enters S5 (it writes
    /// [`S5_SLEEP_CONTROL_VALUE`], `0x34`) and `reset_evt` when it writes [`RESET_VALUE`].
    pub fn new(exit_evt: EventFd, reset_evt: EventFd) -> Self {
        AcpiPowerDevice {
            exit_evt,
            reset_evt,
        }
    }

    /// Handles one byte written to the port.
    fn write_value(&mut self, value: u8) {
        if value == RESET_VALUE {
            info!("guest requested a reset");
            if let Err(e) = self.reset_evt.write(1) {
                error!(error = %e, "could not signal the reset event");
            }
            return;
        }
        if value & SLP_EN == 0 {
            // Writes to the sleep status register (e.g. WAK_STS clear, 0x80) and
            // SLP_TYP without SLP_EN change nothing we model.
            debug!(value, "ACPI sleep register write ignored");
            return;
        }
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if sleep_type == S5_SLEEP_TYPE {
            info!("guest entered S5 (power off)");
            if let Err(e) = self.exit_evt.write(1) {
                error!(error = %e, "could not signal the exit event");
            }
        } else {
            // Only \_S5 is declared, so a well-behaved guest never asks for another.
            warn!(sleep_type, "guest requested an unsupported sleep state");
        }
    }
}

impl BusDevice for AcpiPowerDevice {
    /// Sleep status reads as 0: WAK_STS clear (the guest never sleeps and wakes).
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A byte write at offset 0 is a sleep control, sleep status or reset register write;
    /// anything else is dropped.
    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[value]) => self.write_value(value),
            _ => debug!(
                offset,
                len = data.len(),
                "ACPI power register: unexpected access dropped"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn fired(evt: &EventFd) -> bool {
        match evt.read() {
            Ok(n) => n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    fn setup() -> (AcpiPowerDevice, EventFd, EventFd) {
        let exit = EventFd::new(EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = AcpiPowerDevice::new(exit.try_clone().unwrap(), reset.try_clone().unwrap());
        (dev, exit, reset)
    }

    #[test]
    fn constants_match_the_acpi_tables() {
        assert_eq!(S5_SLEEP_CONTROL_VALUE, 0x34);
        assert_eq!(S5_SLEEP_TYPE, tessera_acpi::S5_SLEEP_TYPE);
        let regs = tessera_acpi::PowerRegisters::default();
        assert_eq!(RESET_VALUE, regs.reset_value);
        assert_eq!(ACPI_POWER_PORT, regs.sleep_control_port);
        assert_eq!(ACPI_POWER_PORT, regs.sleep_status_port);
        assert_eq!(ACPI_POWER_PORT, regs.reset_port);
    }

    #[test]
    fn s5_fires_exit_only() {
        let (mut dev, exit, reset) = setup();
        dev.write(0, &[0x34]);
        assert!(fired(&exit));
        assert!(!fired(&reset));
    }

    #[test]
    fn reset_value_fires_reset_only() {
        let (mut dev, exit, reset) = setup();
        dev.write(0, &[1]);
        assert!(fired(&reset));
        assert!(!fired(&exit));
    }

    #[test]
    fn other_values_fire_nothing() {
        let (mut dev, exit, reset) = setup();
        // 0x14: S5 without SLP_EN; 0x20: SLP_EN with S0; 0x2c: SLP_EN with S3;
        // 0x80: WAK_STS clear (Linux writes it before sleeping); 0x02, 0xff: junk.
        for v in [0x00u8, 0x02, 0x14, 0x20, 0x2c, 0x30, 0x38, 0x80, 0xff] {
            dev.write(0, &[v]);
            assert!(!fired(&exit), "{v:#x} fired exit");
            assert!(!fired(&reset), "{v:#x} fired reset");
        }
        // The right value in the wrong shape fires nothing either.
        dev.write(0, &[0x34, 0x00]);
        dev.write(1, &[0x34]);
        dev.write(0, &[]);
        assert!(!fired(&exit));
        assert!(!fired(&reset));
    }

    #[test]
    fn reads_return_zero() {
        let (mut dev, exit, reset) = setup();
        let mut b = [0xffu8];
        dev.read(0, &mut b);
        assert_eq!(b, [0]);
        assert!(!fired(&exit));
        assert!(!fired(&reset));
    }
}
