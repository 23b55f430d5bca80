//! Tessera's device models: the port I/O and MMIO buses that route vCPU exits, the COM1
//! 16550 UART, the CMOS RTC, the hardware-reduced ACPI power registers, the ACPI Generic
//! Event Device, the ACPI PCI hotplug controller, and PCI configuration space (host bridge,
//! 0xCF8/0xCFC, ECAM).
//!
//! The VMM builds one [`Bus`] per address space, shares it with its vCPU threads, and
//! inserts and removes devices (behind `Arc<Mutex<_>>`) on it for the VM's whole life.

pub mod bus;
pub mod cmos;
pub mod ged;
pub mod interrupt;
pub mod msi;
pub mod pci;
pub mod pci_hotplug;
pub mod power;
pub mod serial;
pub mod vfio;

pub use bus::{Bus, BusDevice, BusError, RelocateError};
pub use cmos::{CmosRtc, CMOS_PORT, CMOS_PORT_LEN};
pub use ged::{GedDevice, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, GED_MMIO_LEN};
pub use pci::{
    PciConfigIo, PciConfigMmio, PciConfiguration, PciDevice, PciError, PciHostBridge, PciSegment,
};
pub use pci_hotplug::{
    EjectHandler, HotplugSignal, PciHotplugController, PciHotplugError, PciSlot, PCI_HOTPLUG_EJECT,
    PCI_HOTPLUG_MMIO_LEN, PCI_HOTPLUG_SEGMENT, PCI_HOTPLUG_SLOTS_DOWN, PCI_HOTPLUG_SLOTS_UP,
};
pub use power::AcpiPowerDevice;
pub use serial::{EventFdTrigger, SerialDevice, SerialError, SERIAL_PORT_LEN};
