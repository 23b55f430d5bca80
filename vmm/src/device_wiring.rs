//! Where a boot's devices are put on the buses the vCPUs dispatch to: the platform
//! devices (COM1 serial, CMOS RTC, ACPI power port, GED), the PCI segments with their
//! host bridge and config access (CF8/CFC ports on segment 0, ECAM on each), and the
//! passed-through devices. The device manager for runtime hotplug will grow from here.
//!
//! Touches the VM fd only to register interrupt eventfds; addresses and ports come from
//! the layout and the device crate, each defined there once.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use tessera_arch::layout::{GuestLayout, GED_START};
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::ged::GedDevice;
use tessera_devices::pci::{PciConfigIo, PciConfigMmio, PciHostBridge, PciSegment};
use tessera_devices::power::AcpiPowerDevice;
use tessera_devices::serial::SerialDevice;

use crate::console::{SerialSink, SharedWriter};
use crate::guest_topology::{GED_GSI, SERIAL_GSI};
use crate::serial_input::AttachedUart;
use crate::vfio::Passthrough;
use crate::vm::{event_fd, VmError, VmEvents};

/// The devices of one boot, on their buses.
pub(crate) struct Wired {
    /// The port I/O bus.
    pub(crate) pio: Arc<Bus>,
    /// The MMIO bus.
    pub(crate) mmio: Arc<Bus>,
    /// The GED, kept typed for power-button presses.
    pub(crate) ged: Arc<Mutex<GedDevice>>,
    /// The UART's hold on typed input, which ends with the boot.
    pub(crate) serial_input: Option<AttachedUart>,
}

/// Creates the devices and the two buses vCPUs dispatch to.
pub(crate) fn wire_devices(
    vm: &VmFd,
    layout: &GuestLayout,
    serial: &SerialSink,
    events: &VmEvents,
    passthrough: Option<&Passthrough>,
) -> Result<Wired, VmError> {
    let dev_err = |what: &str, e: &dyn std::fmt::Display| VmError::Devices(format!("{what}: {e}"));
    let os = |what| move |source| VmError::Os { what, source };
    let pio = Bus::new();
    let mmio = Bus::new();

    let mut serial_input = None;
    if let Some(out) = &serial.out {
        let irq = event_fd()?;
        vm.register_irqfd(&irq, SERIAL_GSI)
            .map_err(|source| VmError::Kvm {
                what: "register_irqfd (serial)",
                source,
            })?;
        let uart = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            Box::new(SharedWriter(out.clone())),
        )));
        serial_input = serial.attach_input(uart.clone());
        let device: Arc<Mutex<dyn BusDevice>> = uart;
        pio.insert(
            u64::from(tessera_devices::serial::COM1_PORT_BASE),
            tessera_devices::SERIAL_PORT_LEN,
            device,
        )
        .map_err(|e| dev_err("serial", &e))?;
    }

    let rtc: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(tessera_devices::CmosRtc::new()));
    pio.insert(
        tessera_devices::CMOS_PORT,
        tessera_devices::CMOS_PORT_LEN,
        rtc,
    )
    .map_err(|e| dev_err("CMOS RTC", &e))?;

    let power: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(AcpiPowerDevice::new(
        events
            .exit
            .try_clone()
            .map_err(os("cloning the exit event"))?,
        events
            .reset
            .try_clone()
            .map_err(os("cloning the reset event"))?,
    )));
    pio.insert(
        u64::from(tessera_devices::power::ACPI_POWER_PORT),
        tessera_devices::power::ACPI_POWER_PORT_LEN,
        power,
    )
    .map_err(|e| dev_err("power", &e))?;

    let ged_irq = event_fd()?;
    vm.register_irqfd(&ged_irq, GED_GSI)
        .map_err(|source| VmError::Kvm {
            what: "register_irqfd (GED)",
            source,
        })?;
    let ged = Arc::new(Mutex::new(GedDevice::new(ged_irq)));
    let ged_dev: Arc<Mutex<dyn BusDevice>> = ged.clone();
    mmio.insert(GED_START, tessera_devices::GED_MMIO_LEN, ged_dev)
        .map_err(|e| dev_err("GED", &e))?;

    let mut segments: Vec<PciSegment> = (0..layout.segments.len())
        .map(|id| PciSegment::new(id as u16))
        .collect();
    if let Some(seg0) = segments.first_mut() {
        seg0.add_device(0, Arc::new(Mutex::new(PciHostBridge::new())))
            .map_err(|e| dev_err("PCI host bridge", &e))?;
    }
    if let Some(p) = passthrough {
        p.attach(&mut segments, &pio, &mmio)
            .map_err(|e| dev_err("VFIO", &e))?;
    }
    for ((id, windows), segment) in layout.segments.iter().enumerate().zip(segments) {
        let segment = Arc::new(Mutex::new(segment));
        if id == 0 {
            let cfg: Arc<Mutex<dyn BusDevice>> =
                Arc::new(Mutex::new(PciConfigIo::new(segment.clone())));
            pio.insert(
                u64::from(tessera_devices::pci::PCI_CONFIG_IO_PORT),
                tessera_devices::pci::PCI_CONFIG_IO_PORT_LEN,
                cfg,
            )
            .map_err(|e| dev_err("PCI config ports", &e))?;
        }
        let ecam: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(PciConfigMmio::new(segment)));
        mmio.insert(windows.ecam.start, windows.ecam.len(), ecam)
            .map_err(|e| dev_err("ECAM", &e))?;
    }
    Ok(Wired {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        ged,
        serial_input,
    })
}
