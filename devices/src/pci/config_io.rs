//! PCI configuration mechanism #1: CONFIG_ADDRESS at port 0xCF8 and CONFIG_DATA at
//! 0xCFC..=0xCFF, reaching bus 0 of segment 0 (the legacy mechanism has no segments).

use std::sync::{Arc, Mutex, PoisonError};

use tracing::trace;

use super::{dword_lanes, read_dword_bytes, PciSegment};
use crate::bus::BusDevice;

/// First port of the pair: CONFIG_ADDRESS.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
/// Ports decoded: CONFIG_ADDRESS (0xCF8..=0xCFB) and CONFIG_DATA (0xCFC..=0xCFF).
pub const PCI_CONFIG_IO_PORT_LEN: u64 = 8;

/// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration access.
const ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits kept on write: enable (31), bus (23:16), devfn (15:8), register
/// (7:2). Reserved bits 30:24 and the type bits 1:0 read back as 0.
const ADDRESS_MASK: u32 = 0x80ff_fffc;
/// Offset of CONFIG_DATA within the port range.
const DATA_OFFSET: u64 = 4;

/// The 0xCF8/0xCFC configuration port pair.
#[derive(Debug)]
pub struct PciConfigIo {
    /// Segment 0.
    segment: Arc<Mutex<PciSegment>>,
    /// The last value written to CONFIG_ADDRESS (masked).
    config_address: u32,
}

impl PciConfigIo {
    /// The port pair for `segment` (segment 0); insert it on the PIO bus at
    /// [`PCI_CONFIG_IO_PORT`] with length [`PCI_CONFIG_IO_PORT_LEN`].
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        PciConfigIo {
            segment,
            config_address: 0,
        }
    }

    /// The function and register CONFIG_ADDRESS selects, or `None` when configuration
    /// accesses are disabled or target a bus other than 0.
    fn target(&self) -> Option<(u8, usize)> {
        let a = self.config_address;
        let bus = (a >> 16) & 0xff;
        if a & ENABLE == 0 || bus != 0 {
            return None;
        }
        let devfn = ((a >> 8) & 0xff) as u8;
        let reg = ((a & 0xfc) >> 2) as usize;
        Some((devfn, reg))
    }
}

impl BusDevice for PciConfigIo {
    /// A dword read at offset 0 returns CONFIG_ADDRESS; reads at 4..=7 return the
    /// selected register's bytes (all ones when nothing is selected or present). Other
    /// reads of 0xCF8..=0xCFB are not configuration accesses and return all ones.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.config_address.to_le_bytes());
            return;
        }
        let Some(byte) = offset.checked_sub(DATA_OFFSET) else {
            data.fill(0xff);
            return;
        };
        let dword = match self.target() {
            Some((devfn, reg)) => self
                .segment
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read_config_register(devfn, reg),
            None => u32::MAX,
        };
        read_dword_bytes(dword, byte, data);
    }

    /// A dword write at offset 0 sets CONFIG_ADDRESS; 1, 2 or 4-byte writes inside
    /// 0xCFC..=0xCFF go to the selected register. Other writes are dropped, as ECAM drops
    /// them: devices are only ever given the accesses [`crate::pci::PciDevice`] promises.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.config_address = u32::from_le_bytes(bytes) & ADDRESS_MASK;
            } else {
                trace!(len = data.len(), "non-dword CONFIG_ADDRESS write dropped");
            }
            return;
        }
        let Some(byte) = offset.checked_sub(DATA_OFFSET) else {
            trace!(
                offset,
                len = data.len(),
                "CONFIG_ADDRESS partial write dropped"
            );
            return;
        };
        if dword_lanes(byte, data.len()).is_none() {
            trace!(
                byte,
                len = data.len(),
                "CONFIG_DATA write of another width dropped"
            );
            return;
        }
        if let Some((devfn, reg)) = self.target() {
            self.segment
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_config_register(devfn, reg, byte, data);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pci::PciDevice;

    /// Records the writes that reach it.
    #[derive(Default)]
    struct Writes(Vec<(usize, u64, usize)>);

    impl PciDevice for Writes {
        fn read_config_register(&mut self, _reg: usize) -> u32 {
            0
        }
        fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.0.push((reg, offset, data.len()));
        }
    }

    /// Regression (fuzz target pci_config_access): a 3-byte write at 0xCFD reached the
    /// device as 3 bytes at byte 1, which `PciDevice` promises never happens.
    #[test]
    fn only_whole_lanes_inside_the_dword_reach_the_device() {
        let device = Arc::new(Mutex::new(Writes::default()));
        let mut segment = PciSegment::new(0);
        segment.add_device(8, device.clone()).unwrap();
        let mut io = PciConfigIo::new(Arc::new(Mutex::new(segment)));
        io.write(0, &0x8000_0810u32.to_le_bytes());
        io.write(5, &[1, 2, 3]);
        io.write(7, &[1, 2]);
        io.write(4, &[0; 8]);
        assert!(device.lock().unwrap().0.is_empty());
        io.write(6, &[1, 2]);
        io.write(7, &[1]);
        io.write(4, &[0; 4]);
        assert_eq!(
            device.lock().unwrap().0,
            vec![(4, 2, 2), (4, 3, 1), (4, 0, 4)]
        );
    }
}
