//! The legacy platform devices wired on buses the way the VMM wires them: COM1 and the
//! ACPI power port on the port I/O bus, the GED on the MMIO bus, each also kept as a typed
//! handle (stdin input, power button) next to its `dyn BusDevice` entry.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tessera_devices::power::{ACPI_POWER_PORT, ACPI_POWER_PORT_LEN, S5_SLEEP_CONTROL_VALUE};
use tessera_devices::serial::COM1_PORT_BASE;
use tessera_devices::{
    AcpiPowerDevice, Bus, BusDevice, GedDevice, SerialDevice, GED_EVENT_POWER_BUTTON, GED_MMIO_LEN,
    SERIAL_PORT_LEN,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GED_BASE: u64 = 0xfed0_1000;

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);
impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn count(evt: &EventFd) -> u64 {
    match evt.read() {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

#[test]
fn platform_devices_on_buses() {
    let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
    let (serial_irq, exit, reset, ged_irq) = (evt(), evt(), evt(), evt());
    let console = Console::default();

    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq.try_clone().unwrap(),
        Box::new(console.clone()),
    )));
    let power = Arc::new(Mutex::new(AcpiPowerDevice::new(
        exit.try_clone().unwrap(),
        reset.try_clone().unwrap(),
    )));
    let ged = Arc::new(Mutex::new(GedDevice::new(ged_irq.try_clone().unwrap())));

    let pio = Bus::new();
    let com1 = u64::from(COM1_PORT_BASE);
    let serial_dyn: Arc<Mutex<dyn BusDevice>> = serial.clone();
    pio.insert(com1, SERIAL_PORT_LEN, serial_dyn).unwrap();
    pio.insert(u64::from(ACPI_POWER_PORT), ACPI_POWER_PORT_LEN, power)
        .unwrap();
    let mmio = Bus::new();
    mmio.insert(GED_BASE, GED_MMIO_LEN, ged.clone()).unwrap();
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    // Guest console output, from another "vCPU" thread.
    let t = {
        let pio = pio.clone();
        std::thread::spawn(move || {
            for &b in b"login: " {
                assert!(pio.write(com1, &[b]));
            }
        })
    };
    t.join().unwrap();
    assert_eq!(*console.0.lock().unwrap(), b"login: ");

    // Host input through the typed handle, read by the guest through the bus.
    assert!(pio.write(com1 + 1, &[0x01])); // IER: received data available
    assert_eq!(serial.lock().unwrap().enqueue_input(b"r").unwrap(), 1);
    assert_eq!(count(&serial_irq), 1);
    let mut b = [0u8];
    assert!(pio.read(com1 + 5, &mut b));
    assert_eq!(b[0] & 1, 1, "LSR data ready");
    assert!(pio.read(com1, &mut b));
    assert_eq!(b, [b'r']);
    // Port 0x3f8 + 8 is not the UART.
    assert!(!pio.read(com1 + 8, &mut b));

    // Power button: the VMM notifies, the guest's _EVT reads the register.
    ged.lock().unwrap().notify(GED_EVENT_POWER_BUTTON).unwrap();
    assert_eq!(count(&ged_irq), 1);
    let mut reg = [0u8; 4];
    assert!(mmio.read(GED_BASE, &mut reg));
    assert_eq!(u32::from_le_bytes(reg), GED_EVENT_POWER_BUTTON);
    assert!(mmio.read(GED_BASE, &mut reg));
    assert_eq!(u32::from_le_bytes(reg), 0);

    // The guest powers off: WAK_STS clear first (as Linux does), then SLP_TYP 5 | SLP_EN.
    let port = u64::from(ACPI_POWER_PORT);
    assert!(pio.write(port, &[0x80]));
    assert_eq!(count(&exit), 0);
    assert!(pio.write(port, &[S5_SLEEP_CONTROL_VALUE]));
    assert_eq!(count(&exit), 1);
    assert_eq!(count(&reset), 0);
    // A word access at 0x3c0 covers 0x3c1 too: not the power device's.
    assert!(!pio.write(port, &[1, 0]));
    assert_eq!(count(&reset), 0);
}
