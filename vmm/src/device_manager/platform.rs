//! The platform devices, put on the buses once when the VM is made and kept for its life:
//! COM1 serial, CMOS RTC, the ACPI power port and the GED. Touches the VM fd only to
//! register their interrupt eventfds; ports, addresses and GSIs are defined with the
//! devices and in the layout, each once.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use tessera_arch::layout::GED_START;
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::ged::GedDevice;
use tessera_devices::power::AcpiPowerDevice;
use tessera_devices::serial::SerialDevice;

use crate::console::{SerialSink, SharedWriter};
use crate::guest_topology::{GED_GSI, SERIAL_GSI};
use crate::serial_input::AttachedUart;
use crate::vm::{event_fd, VmError, VmEvents};

/// The platform devices the VM keeps a hand on.
pub(crate) struct Platform {
    /// The GED, kept typed for power-button presses (and, later, hotplug events).
    pub(crate) ged: Arc<Mutex<GedDevice>>,
    /// The UART's hold on typed input, held for its drop: typed input then waits for the
    /// next boot's UART.
    _serial_input: Option<AttachedUart>,
}

/// Creates the platform devices on `pio` and `mmio`.
pub(crate) fn add_platform_devices(
    vm: &VmFd,
    serial: &SerialSink,
    events: &VmEvents,
    pio: &Bus,
    mmio: &Bus,
) -> Result<Platform, VmError> {
    let dev_err = |what: &str, e: &dyn std::fmt::Display| VmError::Devices(format!("{what}: {e}"));
    let os = |what| move |source| VmError::Os { what, source };

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

    Ok(Platform {
        ged,
        _serial_input: serial_input,
    })
}
