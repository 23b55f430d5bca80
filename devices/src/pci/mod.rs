//! PCI: configuration space for bus 0 of each segment (host bridge, generic type 0
//! configuration space with BARs and capabilities), and the two ways a guest reaches it —
//! the legacy 0xCF8/0xCFC port pair (segment 0) and the ECAM MMIO window (every segment).
//!
//! Lock order when a guest access arrives: the bus device's `Mutex` (the [`PciConfigIo`] or
//! [`PciConfigMmio`]), then the segment's, then the device's.

mod config_io;
mod config_mmio;
mod configuration;
mod host_bridge;
mod segment;

pub use config_io::{PciConfigIo, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN};
pub use config_mmio::{PciConfigMmio, PCI_ECAM_BUS_SIZE};
pub use configuration::{
    PciBar, PciBarType, PciConfiguration, PciIds, PCI_CONFIG_REGISTER_COUNT, PCI_FIRST_CAPABILITY,
    PCI_NUM_BARS,
};
pub(crate) use configuration::{
    REG_BAR0, REG_CAPABILITIES, REG_COMMAND_STATUS, REG_HEADER_TYPE, REG_INTERRUPT,
};
pub use host_bridge::{
    PciHostBridge, PCI_CLASS_BRIDGE_HOST, PCI_DEVICE_ID_REDHAT_PCIE_HOST, PCI_VENDOR_ID_REDHAT,
};
pub use segment::PciSegment;

/// A function on a PCI bus, seen through its configuration space.
pub trait PciDevice: Send {
    /// Reads dword register `reg` (0..=1023 for ECAM's 4 KiB space; the legacy port pair
    /// reaches only 0..=63).
    fn read_config_register(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..=3) within dword `reg`.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]);
}

/// PCI configuration errors (all are VMM-side misconfiguration, not guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// The devfn already holds a device.
    #[error("PCI devfn {devfn:#04x} is already taken")]
    DevfnTaken {
        /// The requested device/function number.
        devfn: u8,
    },
    /// The BAR index is not 0..=5 (0..=4 for a 64-bit BAR, which also uses the next one).
    #[error("BAR index {index} is out of range for this BAR type")]
    BarIndex {
        /// The requested BAR index.
        index: usize,
    },
    /// The BAR register (or, for a 64-bit BAR, the next one) is already in use.
    #[error("BAR {index} is already in use")]
    BarInUse {
        /// The requested BAR index.
        index: usize,
    },
    /// The size is not a power of two within the BAR type's limits.
    #[error("BAR {index}: size {size:#x} is not a power of two in the allowed range")]
    BarSize {
        /// The requested BAR index.
        index: usize,
        /// The rejected size.
        size: u64,
    },
    /// The address is not aligned to the BAR's size.
    #[error("BAR {index}: address {address:#x} is not aligned to its size {size:#x}")]
    BarAlignment {
        /// The requested BAR index.
        index: usize,
        /// The rejected address.
        address: u64,
        /// The BAR's size.
        size: u64,
    },
    /// The BAR does not fit the address space its type can decode (4 GiB for I/O and
    /// 32-bit memory BARs).
    #[error("BAR {index}: {address:#x}+{size:#x} is outside what this BAR type decodes")]
    BarAddress {
        /// The requested BAR index.
        index: usize,
        /// The rejected address.
        address: u64,
        /// The BAR's size.
        size: u64,
    },
    /// A capability needs at least its ID and next-pointer bytes.
    #[error("a PCI capability needs at least 2 bytes, got {len}")]
    CapabilityTooShort {
        /// The length given.
        len: usize,
    },
    /// No room left for the capability in the 256-byte standard configuration space.
    #[error("no room for a {len}-byte capability in the standard configuration space")]
    CapabilitySpace {
        /// The length given.
        len: usize,
    },
    /// The register is in the type 0 header (whose writable bits are fixed) or past the
    /// end of configuration space.
    #[error("register {reg} cannot be given custom writable bits")]
    RegisterNotCustomizable {
        /// The dword register index.
        reg: usize,
    },
}

/// Value of configuration reads that reach no function (master abort).
pub(crate) const ALL_ONES: u32 = 0xffff_ffff;

/// Byte lanes of a 1-, 2- or 4-byte access at byte `offset` within a dword, as a mask;
/// `None` when the access has another size or crosses the dword.
pub(crate) fn dword_lanes(offset: u64, len: usize) -> Option<u32> {
    let offset = u32::try_from(offset).ok()?;
    let lanes: u32 = match len {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => return None,
    };
    let len = u32::try_from(len).ok()?;
    if offset.checked_add(len)? > 4 {
        return None;
    }
    Some(lanes << (offset * 8))
}

/// Copies the bytes of `dword` that an access at byte `offset` reads into `data`;
/// fills `data` with all ones when the access is not a valid dword access.
pub(crate) fn read_dword_bytes(dword: u32, offset: u64, data: &mut [u8]) {
    let bytes = dword.to_le_bytes();
    let src = dword_lanes(offset, data.len())
        .and_then(|_| usize::try_from(offset).ok())
        .and_then(|start| bytes.get(start..start.saturating_add(data.len())));
    match src {
        Some(src) => data.copy_from_slice(src),
        None => data.fill(0xff),
    }
}

/// The lanes mask and the value (shifted into place) of a write of `data` at byte
/// `offset` within a dword; `None` when the access is not a valid dword access.
pub(crate) fn write_dword_value(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let lanes = dword_lanes(offset, data.len())?;
    let start = usize::try_from(offset).ok()?;
    let mut bytes = [0u8; 4];
    bytes
        .get_mut(start..start.checked_add(data.len())?)?
        .copy_from_slice(data);
    Some((lanes, u32::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes() {
        assert_eq!(dword_lanes(0, 4), Some(0xffff_ffff));
        assert_eq!(dword_lanes(1, 1), Some(0x0000_ff00));
        assert_eq!(dword_lanes(2, 2), Some(0xffff_0000));
        assert_eq!(dword_lanes(1, 2), Some(0x00ff_ff00));
        assert_eq!(dword_lanes(3, 2), None);
        assert_eq!(dword_lanes(1, 4), None);
        assert_eq!(dword_lanes(0, 3), None);
        assert_eq!(dword_lanes(0, 8), None);
        assert_eq!(dword_lanes(4, 1), None);
        assert_eq!(dword_lanes(u64::MAX, 1), None);
    }

    #[test]
    fn byte_extraction_and_insertion() {
        let mut b = [0u8; 2];
        read_dword_bytes(0x1122_3344, 2, &mut b);
        assert_eq!(b, [0x22, 0x11]);
        read_dword_bytes(0x1122_3344, 3, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(write_dword_value(1, &[0xab]), Some((0xff00, 0xab00)));
        assert_eq!(
            write_dword_value(2, &[0x34, 0x12]),
            Some((0xffff_0000, 0x1234_0000))
        );
        assert_eq!(write_dword_value(3, &[0, 0]), None);
    }
}
