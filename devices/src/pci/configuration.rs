//! A function's 4 KiB PCI configuration space with a type 0 header: the register values,
//! which bits the guest may write (and which it clears by writing ones), BAR registration
//! with BAR sizing semantics, and the standard capability list.
//!
//! Every write goes through the writable-bits mask, so BAR sizing needs no special case:
//! a BAR's address bits below its size are read-only zeros and its type bits are read-only,
//! so writing all ones reads back the size mask with the type bits.

use std::fmt;

use tracing::debug;

use super::{write_dword_value, PciDevice, PciError, ALL_ONES};

/// Dword registers in a PCIe function's configuration space (4 KiB).
pub const PCI_CONFIG_REGISTER_COUNT: usize = 1024;
/// BARs in a type 0 header.
pub const PCI_NUM_BARS: usize = 6;
/// Byte offset of the first capability: right after the 64-byte type 0 header.
pub const PCI_FIRST_CAPABILITY: usize = 0x40;

/// Dword registers in the type 0 header.
const HEADER_REGISTERS: usize = 16;
/// Bytes of standard (non-extended) configuration space, where capabilities live.
const STANDARD_CONFIG_BYTES: usize = 0x100;

/// Register 0: vendor ID (15:0), device ID (31:16).
const REG_ID: usize = 0;
/// Register 1: command (15:0), status (31:16).
pub(crate) const REG_COMMAND_STATUS: usize = 1;
/// Register 2: revision (7:0), class code (31:8).
const REG_CLASS_REVISION: usize = 2;
/// Register 3: cache line size (7:0), latency timer, header type (23:16), BIST.
pub(crate) const REG_HEADER_TYPE: usize = 3;
/// Register 4: BAR 0; BARs 1..=5 follow.
pub(crate) const REG_BAR0: usize = 4;
/// Register 11: subsystem vendor ID (15:0), subsystem ID (31:16).
const REG_SUBSYSTEM: usize = 11;
/// Register 13: capabilities pointer (7:0).
pub(crate) const REG_CAPABILITIES: usize = 13;
/// Register 15: interrupt line (7:0), interrupt pin (15:8).
pub(crate) const REG_INTERRUPT: usize = 15;

/// Command register bits a type 0 function implements: I/O space (0), memory space (1),
/// bus master (2), parity error response (6), SERR# enable (8), INTx disable (10). The
/// others are hardwired to 0 on PCIe.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register bits that are write-1-to-clear: master data parity error (8),
/// signaled/received target abort (11, 12), received master abort (13), signaled system
/// error (14), detected parity error (15).
const STATUS_W1C: u32 = 0xf900;
/// Status bit 4: the function has a capability list.
const STATUS_CAPABILITIES_LIST: u32 = 1 << 4;
/// Header type register bit 7: the device has more than one function.
const HEADER_TYPE_MULTIFUNCTION: u32 = 0x80;

/// BAR bit 0: the BAR decodes I/O space.
const BAR_IO: u32 = 0b01;
/// Memory BAR bits 2:1 = 0b10: 64-bit memory BAR.
const BAR_MEM64: u32 = 0b100;
/// Memory BAR bit 3: prefetchable.
const BAR_PREFETCHABLE: u32 = 0b1000;
/// Address bits of an I/O BAR.
const BAR_IO_ADDRESS_MASK: u32 = !0b11;
/// Address bits of (the low dword of) a memory BAR.
const BAR_MEM_ADDRESS_MASK: u32 = !0b1111;
/// Smallest I/O BAR.
const MIN_IO_BAR: u64 = 4;
/// Smallest memory BAR.
const MIN_MEM_BAR: u64 = 16;
/// Largest I/O or 32-bit memory BAR whose size the guest can read back.
const MAX_32BIT_BAR: u64 = 1 << 31;
/// Largest 64-bit memory BAR whose size the guest can read back.
const MAX_64BIT_BAR: u64 = 1 << 63;

/// What a function is: the read-only identification registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code as `0xCCSSPP`: base class, subclass, programming interface (24 bits;
    /// higher bits are ignored). A host bridge is `0x060000`.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// What address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciBarType {
    /// Port I/O (32-bit BAR; x86 decodes only the low 64 KiB).
    Io,
    /// Memory below 4 GiB (one BAR register).
    Memory32,
    /// Memory anywhere (two BAR registers: `index` holds the low dword, `index + 1` the high).
    Memory64,
}

/// A BAR to register with [`PciConfiguration::add_bar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    /// BAR register index, 0..=5 (0..=4 for [`PciBarType::Memory64`]).
    pub index: usize,
    /// Address space decoded.
    pub bar_type: PciBarType,
    /// Initial guest address; must be aligned to `size`.
    pub address: u64,
    /// Size in bytes: a power of two, at least 4 (I/O) or 16 (memory), at most 2 GiB for
    /// I/O and 32-bit memory BARs.
    pub size: u64,
    /// Prefetchable memory; ignored for I/O BARs.
    pub prefetchable: bool,
}

/// A function's configuration space with a type 0 header.
#[derive(Clone)]
pub struct PciConfiguration {
    /// Register values, [`PCI_CONFIG_REGISTER_COUNT`] dwords.
    registers: Vec<u32>,
    /// Per register, the bits a guest write may change.
    writable: Vec<u32>,
    /// Per register, the bits a guest clears by writing 1 (write-1-to-clear).
    write_one_to_clear: Vec<u32>,
    /// Registered BARs by index (a 64-bit BAR occupies `index` only; `index + 1` is in
    /// `upper_half`).
    bars: [Option<PciBar>; PCI_NUM_BARS],
    /// BAR registers that hold the high dword of a 64-bit BAR.
    upper_half: [bool; PCI_NUM_BARS],
    /// Byte offset of the last capability in the list.
    last_capability: Option<usize>,
    /// Byte offset where the next capability goes.
    next_capability: usize,
}

impl fmt::Debug for PciConfiguration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciConfiguration")
            .field("id", &format_args!("{:#010x}", self.read_register(REG_ID)))
            .field(
                "class_revision",
                &format_args!("{:#010x}", self.read_register(REG_CLASS_REVISION)),
            )
            .field("bars", &self.bars)
            .field("last_capability", &self.last_capability)
            .finish()
    }
}

impl PciConfiguration {
    /// A configuration space with a type 0 header identifying as `ids`, no BARs, no
    /// capabilities, interrupt pin 0 (none), everything else zero.
    pub fn new(ids: PciIds) -> Self {
        let mut c = PciConfiguration {
            registers: vec![0; PCI_CONFIG_REGISTER_COUNT],
            writable: vec![0; PCI_CONFIG_REGISTER_COUNT],
            write_one_to_clear: vec![0; PCI_CONFIG_REGISTER_COUNT],
            bars: [None; PCI_NUM_BARS],
            upper_half: [false; PCI_NUM_BARS],
            last_capability: None,
            next_capability: PCI_FIRST_CAPABILITY,
        };
        c.set(
            REG_ID,
            u32::from(ids.device_id) << 16 | u32::from(ids.vendor_id),
        );
        c.set(
            REG_CLASS_REVISION,
            (ids.class_code & 0x00ff_ffff) << 8 | u32::from(ids.revision_id),
        );
        c.set(
            REG_SUBSYSTEM,
            u32::from(ids.subsystem_id) << 16 | u32::from(ids.subsystem_vendor_id),
        );
        c.set_masks(REG_COMMAND_STATUS, COMMAND_WRITABLE, STATUS_W1C << 16);
        // Cache line size: read/write, no effect. Header type 0, latency timer and BIST
        // read-only zero.
        c.set_masks(REG_HEADER_TYPE, 0xff, 0);
        // Interrupt line: read/write scratch for the OS; pin read-only.
        c.set_masks(REG_INTERRUPT, 0xff, 0);
        c
    }

    /// Sets a register's value, ignoring the masks (device side).
    fn set(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.registers.get_mut(reg) {
            *r = value;
        }
    }

    /// Sets a register's writable and write-1-to-clear masks.
    fn set_masks(&mut self, reg: usize, writable: u32, w1c: u32) {
        if let Some(w) = self.writable.get_mut(reg) {
            *w = writable;
        }
        if let Some(c) = self.write_one_to_clear.get_mut(reg) {
            *c = w1c;
        }
    }

    /// Sets one byte of configuration space, ignoring the masks (device side).
    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        if let Some(r) = self.registers.get_mut(offset / 4) {
            *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
        }
    }

    /// Reads dword register `reg`; past the end of configuration space, all ones.
    pub fn read_register(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(ALL_ONES)
    }

    /// A guest write of `data` (1, 2 or 4 bytes) at byte `offset` (0..=3) within dword
    /// `reg`: only writable bits change, write-1-to-clear bits clear where `data` has ones.
    /// Other sizes, dword-crossing accesses and registers past the end are dropped.
    pub fn write_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((lanes, value)) = write_dword_value(offset, data) else {
            debug!(
                reg,
                offset,
                len = data.len(),
                "PCI config write of bad shape dropped"
            );
            return;
        };
        let writable = self.writable.get(reg).copied().unwrap_or(0) & lanes;
        let w1c = self.write_one_to_clear.get(reg).copied().unwrap_or(0) & lanes;
        if let Some(r) = self.registers.get_mut(reg) {
            *r = (*r & !writable) | (value & writable);
            *r &= !(value & w1c);
        }
    }

    /// Marks the function as part of a multi-function device (header type bit 7), which
    /// the guest needs on function 0 to scan functions 1..=7.
    pub fn set_multifunction(&mut self, multifunction: bool) {
        let reg = self.read_register(REG_HEADER_TYPE);
        let bit = HEADER_TYPE_MULTIFUNCTION << 16;
        self.set(
            REG_HEADER_TYPE,
            if multifunction { reg | bit } else { reg & !bit },
        );
    }

    /// Sets the legacy interrupt pin (0 = none, 1..=4 = INTA#..INTD#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        let reg = self.read_register(REG_INTERRUPT);
        self.set(REG_INTERRUPT, (reg & !0xff00) | u32::from(pin) << 8);
    }

    /// Registers a BAR: its address bits below `size` and its type bits become read-only,
    /// so a guest that writes all ones reads back the size mask.
    pub fn add_bar(&mut self, bar: &PciBar) -> Result<(), PciError> {
        let index = bar.index;
        let (min, max, space_end) = match bar.bar_type {
            PciBarType::Io => (MIN_IO_BAR, MAX_32BIT_BAR, Some(1u64 << 32)),
            PciBarType::Memory32 => (MIN_MEM_BAR, MAX_32BIT_BAR, Some(1u64 << 32)),
            PciBarType::Memory64 => (MIN_MEM_BAR, MAX_64BIT_BAR, None),
        };
        let last_index = match bar.bar_type {
            PciBarType::Memory64 => index.checked_add(1),
            _ => Some(index),
        }
        .filter(|&i| i < PCI_NUM_BARS)
        .ok_or(PciError::BarIndex { index })?;
        for i in index..=last_index {
            let taken = self.bars.get(i).is_some_and(Option::is_some)
                || self.upper_half.get(i).copied().unwrap_or(true);
            if taken {
                return Err(PciError::BarInUse { index });
            }
        }
        let size = bar.size;
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BarSize { index, size });
        }
        let address = bar.address;
        if address & (size - 1) != 0 {
            return Err(PciError::BarAlignment {
                index,
                address,
                size,
            });
        }
        let fits = match (address.checked_add(size), space_end) {
            (None, _) => false,
            (Some(end), Some(space_end)) => end <= space_end,
            (Some(_), None) => true,
        };
        if !fits {
            return Err(PciError::BarAddress {
                index,
                address,
                size,
            });
        }

        let size_mask = !(size - 1);
        let reg = REG_BAR0 + index;
        let prefetch = if bar.prefetchable {
            BAR_PREFETCHABLE
        } else {
            0
        };
        // `size_mask as u32` keeps the low dword's address bits; for a 64-bit BAR the
        // high dword gets the rest.
        let (type_bits, address_mask) = match bar.bar_type {
            PciBarType::Io => (BAR_IO, BAR_IO_ADDRESS_MASK),
            PciBarType::Memory32 => (prefetch, BAR_MEM_ADDRESS_MASK),
            PciBarType::Memory64 => (BAR_MEM64 | prefetch, BAR_MEM_ADDRESS_MASK),
        };
        let low_writable = (size_mask as u32) & address_mask;
        self.set(reg, (address as u32 & low_writable) | type_bits);
        self.set_masks(reg, low_writable, 0);
        if bar.bar_type == PciBarType::Memory64 {
            self.set(reg + 1, (address >> 32) as u32);
            self.set_masks(reg + 1, (size_mask >> 32) as u32, 0);
            if let Some(u) = self.upper_half.get_mut(index + 1) {
                *u = true;
            }
        }
        if let Some(b) = self.bars.get_mut(index) {
            *b = Some(*bar);
        }
        Ok(())
    }

    /// The BAR registered at `index` (as registered; see [`Self::bar_address`] for where
    /// the guest has put it since).
    pub fn bar(&self, index: usize) -> Option<&PciBar> {
        self.bars.get(index).and_then(Option::as_ref)
    }

    /// The address BAR `index` currently holds, decoded from its register(s); `None` when
    /// no BAR was registered at `index` (including the high half of a 64-bit BAR).
    ///
    /// While the guest is sizing a BAR this is the size mask, not an address.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let low = self.read_register(REG_BAR0 + index);
        Some(match bar.bar_type {
            PciBarType::Io => u64::from(low & BAR_IO_ADDRESS_MASK),
            PciBarType::Memory32 => u64::from(low & BAR_MEM_ADDRESS_MASK),
            PciBarType::Memory64 => {
                let high = self.read_register(REG_BAR0 + index + 1);
                u64::from(high) << 32 | u64::from(low & BAR_MEM_ADDRESS_MASK)
            }
        })
    }

    /// Appends a capability to the standard capability list and returns its byte offset.
    ///
    /// `bytes[0]` is the capability ID, `bytes[1]` the next pointer (overwritten: the list
    /// is linked here), the rest the capability's body. Capabilities are placed one after
    /// another from [`PCI_FIRST_CAPABILITY`], dword aligned, within the first 256 bytes;
    /// they are read-only to the guest unless [`Self::set_writable_bits`] says otherwise.
    pub fn add_capability(&mut self, bytes: &[u8]) -> Result<usize, PciError> {
        let len = bytes.len();
        if len < 2 {
            return Err(PciError::CapabilityTooShort { len });
        }
        let offset = self.next_capability;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= STANDARD_CONFIG_BYTES)
            .ok_or(PciError::CapabilitySpace { len })?;
        for (i, &b) in bytes.iter().enumerate() {
            self.set_byte(offset + i, b);
        }
        // End of list until another capability is appended.
        self.set_byte(offset + 1, 0);
        let offset_byte = offset as u8;
        match self.last_capability {
            Some(last) => self.set_byte(last + 1, offset_byte),
            None => {
                self.set_byte(REG_CAPABILITIES * 4, offset_byte);
                let status = self.read_register(REG_COMMAND_STATUS);
                self.set(REG_COMMAND_STATUS, status | STATUS_CAPABILITIES_LIST << 16);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4);
        Ok(offset)
    }

    /// Lets the guest write `mask` bits of dword register `reg`, for capability and
    /// device-specific registers. The type 0 header (registers 0..=15) is refused: its
    /// writable bits follow the PCI rules and [`Self::add_bar`].
    pub fn set_writable_bits(&mut self, reg: usize, mask: u32) -> Result<(), PciError> {
        if !(HEADER_REGISTERS..PCI_CONFIG_REGISTER_COUNT).contains(&reg) {
            return Err(PciError::RegisterNotCustomizable { reg });
        }
        self.set_masks(reg, mask, 0);
        Ok(())
    }
}

impl PciDevice for PciConfiguration {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.write_register(reg, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::read_dword_bytes;

    fn read_bytes(c: &PciConfiguration, reg: usize, offset: u64, data: &mut [u8]) {
        read_dword_bytes(c.read_register(reg), offset, data);
    }

    const IDS: PciIds = PciIds {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision_id: 0x9a,
        class_code: 0x02_00_00,
        subsystem_vendor_id: 0xabcd,
        subsystem_id: 0xef01,
    };

    fn write32(c: &mut PciConfiguration, reg: usize, v: u32) {
        c.write_register(reg, 0, &v.to_le_bytes());
    }

    #[test]
    fn header_identifies_the_function() {
        let c = PciConfiguration::new(IDS);
        assert_eq!(c.read_register(0), 0x5678_1234);
        assert_eq!(c.read_register(2), 0x0200_009a);
        assert_eq!(c.read_register(3), 0, "header type 0, single function");
        assert_eq!(c.read_register(11), 0xef01_abcd);
        assert_eq!(c.read_register(13), 0, "no capabilities");
        assert_eq!(c.read_register(1), 0, "status: no capability list");
        assert_eq!(c.read_register(PCI_CONFIG_REGISTER_COUNT - 1), 0);
        assert_eq!(c.read_register(PCI_CONFIG_REGISTER_COUNT), ALL_ONES);
        let mut b = [0u8; 2];
        read_bytes(&c, 0, 2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x5678);
    }

    #[test]
    fn read_only_registers_stay_read_only() {
        let mut c = PciConfiguration::new(IDS);
        for reg in [0usize, 2, 11, 13, 16, 100, 1023] {
            let before = c.read_register(reg);
            write32(&mut c, reg, 0xffff_ffff);
            write32(&mut c, reg, 0);
            c.write_register(reg, 1, &[0x55]);
            assert_eq!(c.read_register(reg), before, "register {reg}");
        }
        // Header type and BIST stay 0; the cache line size byte is writable.
        write32(&mut c, 3, 0xffff_ffff);
        assert_eq!(c.read_register(3), 0x0000_00ff);
        // Interrupt line writable, pin read-only.
        c.set_interrupt_pin(1);
        write32(&mut c, 15, 0xffff_ffff);
        assert_eq!(c.read_register(15), 0x0000_01ff);
        // Writes past the end and of bad shape are dropped without harm.
        c.write_register(PCI_CONFIG_REGISTER_COUNT, 0, &[1, 2, 3, 4]);
        c.write_register(3, 2, &[1, 2, 3, 4]);
        c.write_register(3, 0, &[1, 2, 3]);
        assert_eq!(c.read_register(3), 0x0000_00ff);
    }

    #[test]
    fn command_writable_bits_and_status_w1c() {
        let mut c = PciConfiguration::new(IDS);
        write32(&mut c, 1, 0x0000_ffff);
        assert_eq!(c.read_register(1), COMMAND_WRITABLE);
        // A byte write to the high command byte touches only SERR#/INTx disable.
        c.write_register(1, 1, &[0x00]);
        assert_eq!(c.read_register(1), 0x0047);
        c.write_register(1, 0, &[0x02, 0x04]);
        assert_eq!(c.read_register(1), 0x0402);
        // Status error bits are write-1-to-clear; set one from the device side.
        c.set(1, c.read_register(1) | 0x2000 << 16);
        write32(&mut c, 1, 0x0402);
        assert_eq!(c.read_register(1), 0x2000_0402, "writing 0 keeps it");
        write32(&mut c, 1, 0x2000_0402);
        assert_eq!(c.read_register(1), 0x0000_0402, "writing 1 clears it");
    }

    #[test]
    fn bar_sizing_32bit_memory() {
        let mut c = PciConfiguration::new(IDS);
        c.add_bar(&PciBar {
            index: 0,
            bar_type: PciBarType::Memory32,
            address: 0xc000_0000,
            size: 0x1000,
            prefetchable: false,
        })
        .unwrap();
        assert_eq!(c.read_register(4), 0xc000_0000);
        write32(&mut c, 4, 0xffff_ffff);
        assert_eq!(c.read_register(4), 0xffff_f000);
        write32(&mut c, 4, 0xd000_0123);
        assert_eq!(c.read_register(4), 0xd000_0000);
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        // Unregistered BARs read 0 (unimplemented) whatever is written.
        write32(&mut c, 5, 0xffff_ffff);
        assert_eq!(c.read_register(5), 0);
        assert_eq!(c.bar_address(1), None);
    }

    #[test]
    fn bar_sizing_64bit_prefetchable_memory() {
        let mut c = PciConfiguration::new(IDS);
        c.add_bar(&PciBar {
            index: 2,
            bar_type: PciBarType::Memory64,
            address: 0x40_0000_0000,
            size: 0x2_0000_0000, // 8 GiB: the low dword has no address bits
            prefetchable: true,
        })
        .unwrap();
        assert_eq!(c.read_register(6), 0x0000_000c);
        assert_eq!(c.read_register(7), 0x0000_0040);
        write32(&mut c, 6, 0xffff_ffff);
        write32(&mut c, 7, 0xffff_ffff);
        assert_eq!(c.read_register(6), 0x0000_000c);
        assert_eq!(c.read_register(7), 0xffff_fffe);
        write32(&mut c, 6, 0);
        write32(&mut c, 7, 0x80);
        assert_eq!(c.bar_address(2), Some(0x80_0000_0000));
        assert_eq!(c.bar_address(3), None, "high half is not a BAR of its own");
    }

    #[test]
    fn bar_sizing_io() {
        let mut c = PciConfiguration::new(IDS);
        c.add_bar(&PciBar {
            index: 5,
            bar_type: PciBarType::Io,
            address: 0xc040,
            size: 0x20,
            prefetchable: true, // ignored
        })
        .unwrap();
        assert_eq!(c.read_register(9), 0xc041);
        write32(&mut c, 9, 0xffff_ffff);
        assert_eq!(c.read_register(9), 0xffff_ffe1);
        write32(&mut c, 9, 0xd000);
        assert_eq!(c.bar_address(5), Some(0xd000));
        // The smallest I/O BAR (4 ports) has address bits down to bit 2.
        c.add_bar(&PciBar {
            index: 0,
            bar_type: PciBarType::Io,
            address: 0xc004,
            size: 4,
            prefetchable: false,
        })
        .unwrap();
        assert_eq!(c.read_register(4), 0xc005);
        write32(&mut c, 4, 0xffff_ffff);
        assert_eq!(c.read_register(4), 0xffff_fffd);
    }

    #[test]
    fn bar_registration_is_validated() {
        let bar = |index, bar_type, address, size| PciBar {
            index,
            bar_type,
            address,
            size,
            prefetchable: false,
        };
        let mut c = PciConfiguration::new(IDS);
        use PciBarType::*;
        assert_eq!(
            c.add_bar(&bar(6, Memory32, 0, 0x1000)),
            Err(PciError::BarIndex { index: 6 })
        );
        assert_eq!(
            c.add_bar(&bar(5, Memory64, 0, 0x1000)),
            Err(PciError::BarIndex { index: 5 })
        );
        assert_eq!(
            c.add_bar(&bar(0, Memory32, 0, 0x1800)),
            Err(PciError::BarSize {
                index: 0,
                size: 0x1800
            })
        );
        assert_eq!(
            c.add_bar(&bar(0, Memory32, 0, 8)),
            Err(PciError::BarSize { index: 0, size: 8 })
        );
        assert_eq!(
            c.add_bar(&bar(0, Io, 0, 2)),
            Err(PciError::BarSize { index: 0, size: 2 })
        );
        assert_eq!(
            c.add_bar(&bar(0, Memory32, 0, 1 << 32)),
            Err(PciError::BarSize {
                index: 0,
                size: 1 << 32
            })
        );
        assert_eq!(
            c.add_bar(&bar(0, Memory32, 0x800, 0x1000)),
            Err(PciError::BarAlignment {
                index: 0,
                address: 0x800,
                size: 0x1000
            })
        );
        assert_eq!(
            c.add_bar(&bar(0, Memory32, 0x1_0000_0000, 0x1000)),
            Err(PciError::BarAddress {
                index: 0,
                address: 0x1_0000_0000,
                size: 0x1000
            })
        );
        c.add_bar(&bar(0, Memory64, 0x1_0000_0000, 0x1000)).unwrap();
        assert_eq!(
            c.add_bar(&bar(1, Memory32, 0, 0x1000)),
            Err(PciError::BarInUse { index: 1 }),
            "BAR 1 is BAR 0's high half"
        );
        assert_eq!(
            c.add_bar(&bar(0, Io, 0, 4)),
            Err(PciError::BarInUse { index: 0 })
        );
        c.add_bar(&bar(3, Memory32, 0, 0x1000)).unwrap();
        assert_eq!(
            c.add_bar(&bar(2, Memory64, 0, 0x1000)),
            Err(PciError::BarInUse { index: 2 }),
            "BAR 3 would be the high half"
        );
    }

    #[test]
    fn capabilities_form_a_list() {
        let mut c = PciConfiguration::new(IDS);
        // An MSI-like capability (id 5, 10 bytes) and a vendor one (id 9, 4 bytes).
        let first = c
            .add_capability(&[0x05, 0xee, 1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let second = c.add_capability(&[0x09, 0xee, 4, 0]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x4c, "dword aligned after a 10-byte capability");
        assert_eq!(
            c.read_register(1) >> 16 & 0x10,
            0x10,
            "status: capability list"
        );
        assert_eq!(c.read_register(13), 0x40);
        assert_eq!(c.read_register(0x40 / 4), 0x0201_4c05);
        assert_eq!(c.read_register(0x44 / 4), 0x0605_0403);
        assert_eq!(c.read_register(0x48 / 4), 0x0000_0807);
        assert_eq!(c.read_register(0x4c / 4), 0x0004_0009, "last: next = 0");
        // Read-only by default; set_writable_bits opens a body dword, not the header.
        write32(&mut c, 0x44 / 4, 0);
        assert_eq!(c.read_register(0x44 / 4), 0x0605_0403);
        c.set_writable_bits(0x44 / 4, 0xffff_0000).unwrap();
        write32(&mut c, 0x44 / 4, 0);
        assert_eq!(c.read_register(0x44 / 4), 0x0000_0403);
        assert_eq!(
            c.set_writable_bits(0, 0xffff_ffff),
            Err(PciError::RegisterNotCustomizable { reg: 0 })
        );
        assert_eq!(
            c.set_writable_bits(1024, 1),
            Err(PciError::RegisterNotCustomizable { reg: 1024 })
        );
        assert_eq!(
            c.add_capability(&[1]),
            Err(PciError::CapabilityTooShort { len: 1 })
        );
        assert_eq!(
            c.add_capability(&[0u8; 0xb1]),
            Err(PciError::CapabilitySpace { len: 0xb1 })
        );
        assert_eq!(c.add_capability(&[0u8; 0xb0]), Ok(0x50), "fills up to 0xff");
        assert_eq!(
            c.add_capability(&[0u8; 2]),
            Err(PciError::CapabilitySpace { len: 2 })
        );
    }

    #[test]
    fn multifunction_bit() {
        let mut c = PciConfiguration::new(IDS);
        c.set_multifunction(true);
        assert_eq!(c.read_register(3), 0x0080_0000);
        c.set_multifunction(false);
        assert_eq!(c.read_register(3), 0);
    }
}
