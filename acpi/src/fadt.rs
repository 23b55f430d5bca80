//! FADT for a hardware-reduced ACPI platform, and the MCFG that lists ECAM windows.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;

use crate::error::Error;
use crate::topology::Topology;
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// FADT major revision written by `acpi_tables` (6, minor 5).
const FADT_REVISION: u8 = 6;

/// IA-PC boot architecture flag: no VGA hardware to probe.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Builds the FADT pointing at the DSDT placed at `dsdt_address`.
pub(crate) fn build(t: &Topology, dsdt_address: u64) -> Result<Vec<u8>, Error> {
    let power = t.platform.power;
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(crate::oem_id(t), OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .flag(Flags::HwReducedAcpi)
        // The power button is a control-method device behind the GED, not a fixed one.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_byte(power.reset_port);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = io_byte(power.sleep_control_port);
    fadt.sleep_status_reg = io_byte(power.sleep_status_port);
    let mut out = Vec::new();
    fadt.finalize().to_aml_bytes(&mut out);
    finish_table(out, FADT_REVISION)
}

/// Builds the MCFG, or `None` without PCI segments.
pub(crate) fn build_mcfg(t: &Topology) -> Result<Option<Vec<u8>>, Error> {
    if t.pci_segments.is_empty() {
        return Ok(None);
    }
    let mut mcfg = MCFG::new(crate::oem_id(t), OEM_TABLE_ID, OEM_REVISION);
    for s in &t.pci_segments {
        mcfg.add_ecam(s.ecam_base, s.id, s.start_bus, s.end_bus);
    }
    let mut out = Vec::new();
    mcfg.to_aml_bytes(&mut out);
    finish_table(out, 1).map(Some)
}
