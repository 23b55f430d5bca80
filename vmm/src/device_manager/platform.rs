//! The platform devices, put on the buses once when the VM is made and kept for its life:
//! COM1 serial, CMOS RTC, the ACPI power port, the GED and the ACPI PCI hotplug
//! controller. Touches the VM fd only to
//! register their interrupt eventfds; ports, addresses and GSIs are defined with the
//! devices and in the layout, each once.

use std::sync::{mpsc, Arc, Mutex};

use kvm_ioctls::VmFd;
use tessera_arch::layout::{GED_START, PCI_HOTPLUG_START};
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::ged::GedDevice;
use tessera_devices::pci_hotplug::{
    EjectHandler, PciHotplugController, PciSlot, PCI_HOTPLUG_MMIO_LEN,
};
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
    /// The PCI hotplug registers, through which the guest hears of slot changes.
    pub(crate) hotplug: Arc<Mutex<PciHotplugController>>,
    /// The UART's hold on typed input, held for its drop: typed input then waits for the
    /// next boot's UART.
    _serial_input: Option<AttachedUart>,
}

/// Hands the guest's ejects to the control loop: the slot on the channel, then the
/// eventfd its epoll watches. Runs on a vCPU thread with the controller locked, so it only
/// hands off.
struct EjectToControl {
    slots: mpsc::Sender<PciSlot>,
    wake: vmm_sys_util::eventfd::EventFd,
}

impl EjectHandler for EjectToControl {
    fn eject(&mut self, slot: PciSlot) {
        if self.slots.send(slot).is_err() {
            tracing::debug!(
                ?slot,
                "PCI hotplug: eject dropped, the control loop is gone"
            );
            return;
        }
        if let Err(e) = self.wake.write(1) {
            tracing::warn!(?slot, "PCI hotplug: cannot wake the control loop: {e}");
        }
    }
}

/// Creates the platform devices on `pio` and `mmio`, the hotplug controller with each
/// segment's hotplug slots (`hotplug_masks[s]`: bit n = slot n).
pub(crate) fn add_platform_devices(
    vm: &VmFd,
    serial: &SerialSink,
    events: &VmEvents,
    hotplug_masks: Vec<u32>,
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

    let ejects = EjectToControl {
        slots: events.eject_tx.clone(),
        wake: events
            .eject
            .try_clone()
            .map_err(os("cloning the eject event"))?,
    };
    let hotplug = Arc::new(Mutex::new(PciHotplugController::new(
        hotplug_masks,
        Box::new(ged.clone()),
        Box::new(ejects),
    )));
    let hotplug_dev: Arc<Mutex<dyn BusDevice>> = hotplug.clone();
    mmio.insert(PCI_HOTPLUG_START, PCI_HOTPLUG_MMIO_LEN, hotplug_dev)
        .map_err(|e| dev_err("PCI hotplug", &e))?;

    Ok(Platform {
        ged,
        hotplug,
        _serial_input: serial_input,
    })
}
