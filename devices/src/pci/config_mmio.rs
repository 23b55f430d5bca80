//! PCI Express ECAM (memory-mapped configuration) for one segment: bus number in
//! offset bits 27:20, devfn in 19:12, register byte offset in 11:0. Only bus 0 has
//! functions.

use std::sync::{Arc, Mutex, PoisonError};

use super::{dword_lanes, read_dword_bytes, PciSegment};
use crate::bus::BusDevice;

/// ECAM space of one bus (and the window for a segment that has only bus 0): 1 MiB.
pub const PCI_ECAM_BUS_SIZE: u64 = 1 << 20;

/// One segment's ECAM window.
#[derive(Debug)]
pub struct PciConfigMmio {
    /// The segment the window belongs to.
    segment: Arc<Mutex<PciSegment>>,
}

/// Where an ECAM access lands: devfn, dword register, byte offset within it; `None` for
/// buses other than 0 and accesses that are not 1, 2 or 4 bytes within one dword.
fn decode(offset: u64, len: usize) -> Option<(u8, usize, u64)> {
    if offset >= PCI_ECAM_BUS_SIZE {
        return None;
    }
    let byte = offset & 3;
    dword_lanes(byte, len)?;
    let devfn = ((offset >> 12) & 0xff) as u8;
    let reg = ((offset & 0xfff) >> 2) as usize;
    Some((devfn, reg, byte))
}

impl PciConfigMmio {
    /// The window for `segment`; insert it on the MMIO bus at the segment's ECAM base with
    /// length [`PCI_ECAM_BUS_SIZE`]. A longer window (more buses in the MCFG) also works:
    /// buses above 0 read all ones.
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        PciConfigMmio { segment }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match decode(offset, data.len()) {
            Some((devfn, reg, byte)) => {
                let dword = self
                    .segment
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read_config_register(devfn, reg);
                read_dword_bytes(dword, byte, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((devfn, reg, byte)) = decode(offset, data.len()) {
            self.segment
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_config_register(devfn, reg, byte, data);
        }
    }
}
