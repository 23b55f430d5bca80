//! The PCI host bridge at devfn 0 of each segment's bus 0: a type 0 function with
//! QEMU's "PCIe host bridge" identity (what Linux expects on a gpex-like root), no BARs.

use super::{PciConfiguration, PciDevice, PciIds};

/// Red Hat, Inc. (QEMU's PCI vendor ID for its own devices).
pub const PCI_VENDOR_ID_REDHAT: u16 = 0x1b36;
/// QEMU's "PCIe host bridge" device ID (the gpex host bridge).
pub const PCI_DEVICE_ID_REDHAT_PCIE_HOST: u16 = 0x0008;
/// Class code of a host bridge: base class 0x06 (bridge), subclass 0x00 (host), prog-if 0.
pub const PCI_CLASS_BRIDGE_HOST: u32 = 0x06_00_00;

/// The host bridge function.
#[derive(Clone, Debug)]
pub struct PciHostBridge {
    /// Its configuration space.
    config: PciConfiguration,
}

impl PciHostBridge {
    /// A host bridge: vendor 0x1b36, device 0x0008, revision 0, class 0x060000, header
    /// type 0, subsystem IDs 0.
    pub fn new() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(PciIds {
                vendor_id: PCI_VENDOR_ID_REDHAT,
                device_id: PCI_DEVICE_ID_REDHAT_PCIE_HOST,
                revision_id: 0,
                class_code: PCI_CLASS_BRIDGE_HOST,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }

    /// Its configuration space.
    pub fn config(&self) -> &PciConfiguration {
        &self.config
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity() {
        let mut hb = PciHostBridge::new();
        assert_eq!(hb.read_config_register(0), 0x0008_1b36);
        assert_eq!(hb.read_config_register(2), 0x0600_0000);
        assert_eq!(hb.read_config_register(3) >> 16 & 0xff, 0, "header type 0");
        for bar in 4..=9 {
            hb.write_config_register(bar, 0, &[0xff; 4]);
            assert_eq!(hb.read_config_register(bar), 0, "BAR {bar}: none");
        }
    }
}
