//! One PCI segment's bus 0: the functions on it by devfn (device << 3 | function), and
//! routing of configuration accesses to them. Unpopulated devfns master-abort: reads
//! return all ones, writes are dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::{PciDevice, PciError, ALL_ONES};

/// The functions on bus 0 of one segment.
pub struct PciSegment {
    /// Segment group number (`_SEG`, MCFG).
    id: u16,
    /// Functions by devfn.
    devices: BTreeMap<u8, Arc<Mutex<dyn PciDevice>>>,
}

impl fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciSegment")
            .field("id", &self.id)
            .field("devfns", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PciSegment {
    /// An empty segment `id` (add the host bridge at devfn 0 yourself).
    pub fn new(id: u16) -> Self {
        PciSegment {
            id,
            devices: BTreeMap::new(),
        }
    }

    /// The segment group number.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Puts `device` at `devfn` (device << 3 | function) on bus 0.
    pub fn add_device(
        &mut self,
        devfn: u8,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        if self.devices.contains_key(&devfn) {
            return Err(PciError::DevfnTaken { devfn });
        }
        self.devices.insert(devfn, device);
        Ok(())
    }

    /// Takes the device at `devfn` off the bus (hot-unplug), returning it.
    pub fn remove_device(&mut self, devfn: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.devices.remove(&devfn)
    }

    /// Whether `devfn` holds a device.
    pub fn has_device(&self, devfn: u8) -> bool {
        self.devices.contains_key(&devfn)
    }

    /// Reads dword register `reg` of the function at `devfn`; all ones when none is there.
    pub fn read_config_register(&self, devfn: u8, reg: usize) -> u32 {
        match self.devices.get(&devfn) {
            Some(d) => d
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read_config_register(reg),
            None => ALL_ONES,
        }
    }

    /// Writes `data` at byte `offset` of dword register `reg` of the function at `devfn`;
    /// dropped when none is there.
    pub fn write_config_register(&self, devfn: u8, reg: usize, offset: u64, data: &[u8]) {
        if let Some(d) = self.devices.get(&devfn) {
            d.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_config_register(reg, offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::PciHostBridge;

    #[test]
    fn devfn_routing_and_master_abort() {
        let mut s = PciSegment::new(3);
        assert_eq!(s.id(), 3);
        s.add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
            .unwrap();
        assert_eq!(
            s.add_device(0, Arc::new(Mutex::new(PciHostBridge::new()))),
            Err(PciError::DevfnTaken { devfn: 0 })
        );
        s.add_device(0x08, Arc::new(Mutex::new(PciHostBridge::new())))
            .unwrap();
        assert_eq!(s.read_config_register(0, 0), 0x0008_1b36);
        assert_eq!(s.read_config_register(0x08, 0), 0x0008_1b36);
        assert_eq!(s.read_config_register(0x01, 0), ALL_ONES);
        assert_eq!(s.read_config_register(0xff, 0), ALL_ONES);
        s.write_config_register(0x10, 1, 0, &[0xff; 4]);
        s.write_config_register(0x08, 1, 0, &[0x06, 0, 0, 0]);
        assert_eq!(s.read_config_register(0x08, 1), 0x6);
        assert_eq!(s.read_config_register(0, 1), 0, "only devfn 8 was written");
        assert!(s.remove_device(0x08).is_some());
        assert!(!s.has_device(0x08));
        assert_eq!(s.read_config_register(0x08, 0), ALL_ONES);
    }
}
