//! The platform devices as the guest reaches them, each on a bus at its real address
//! with accesses of any width at and around its range: the 16550 UART (and host input
//! fed to it), the CMOS RTC (with a fuzzed clock), the GED, the ACPI power port, and the
//! PCI hotplug controller's registers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arbitrary::{Arbitrary, Unstructured};
use tessera_devices::bus::{Bus, BusDevice};
use tessera_devices::pci_hotplug::{EjectHandler, HotplugSignal, PciHotplugController, PciSlot};
use tessera_devices::power::{RESET_VALUE, S5_SLEEP_CONTROL_VALUE};
use tessera_devices::{AcpiPowerDevice, CmosRtc, GedDevice, SerialDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
struct Access {
    /// Offset from two bytes below the device's range.
    at: u8,
    len: u8,
    /// `None` reads.
    write: Option<u64>,
}

/// Runs `accesses` on `bus` against a device at `base` of `len` bytes; returns the bytes
/// of reads that reached it.
fn accesses(bus: &Bus, base: u64, len: u64, accesses: &[Access]) {
    for a in accesses.iter().take(256) {
        let addr = base.wrapping_sub(2) + u64::from(a.at) % (len + 4);
        let size = usize::from(a.len % 9);
        match a.write {
            Some(v) => {
                bus.write(addr, &v.to_le_bytes()[..size]);
            }
            None => {
                bus.read(addr, &mut vec![0; size]);
            }
        }
    }
}

fn eventfd() -> Option<EventFd> {
    EventFd::new(EFD_NONBLOCK).ok()
}

#[derive(Arbitrary, Debug)]
enum SerialOp {
    Guest(Access),
    /// Host input (the console) queued for the guest.
    Input(Vec<u8>),
}

/// The 16550 UART at COM1.
pub fn run_serial(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ops: Vec<SerialOp> = super::rest(&mut u, 256);
    let Some(evt) = eventfd() else { return };
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        evt,
        Box::new(std::io::sink()),
    )));
    let bus = Bus::new();
    let _ = bus.insert(0x3f8, 8, serial.clone());
    for op in ops.iter().take(256) {
        match op {
            SerialOp::Guest(a) => accesses(&bus, 0x3f8, 8, std::slice::from_ref(a)),
            SerialOp::Input(bytes) => {
                let mut s = serial.lock().unwrap_or_else(PoisonError::into_inner);
                let capacity = s.fifo_capacity();
                if let Ok(n) = s.enqueue_input(bytes) {
                    assert!(
                        n <= bytes.len() && n <= capacity,
                        "queued {n} of {}",
                        bytes.len()
                    );
                }
            }
        }
    }
}

/// The clock the fuzzed CMOS reads.
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// The CMOS RTC at 0x70, with the host's clock at any value.
pub fn run_cmos(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(now) = u64::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<Access> = super::rest(&mut u, 256);
    CLOCK.store(now, Ordering::Relaxed);
    let bus = Bus::new();
    let cmos = CmosRtc::with_clock(|| CLOCK.load(Ordering::Relaxed));
    let _ = bus.insert(0x70, 2, Arc::new(Mutex::new(cmos)));
    accesses(&bus, 0x70, 2, &ops);
}

/// The GED register, with events raised by the VMM between guest accesses.
pub fn run_ged(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ops: Vec<(Access, u32)> = super::rest(&mut u, 256);
    let Some(evt) = eventfd() else { return };
    let ged = Arc::new(Mutex::new(GedDevice::new(evt)));
    let bus = Bus::new();
    let _ = bus.insert(0xfed0_1000, 4, ged.clone());
    for (a, events) in ops.iter().take(256) {
        let before = {
            let mut g = ged.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = g.notify(*events);
            g.pending_events()
        };
        accesses(&bus, 0xfed0_1000, 4, std::slice::from_ref(a));
        let after = ged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending_events();
        // Reads clear bits, writes are dropped: nothing is ever raised by the guest.
        assert_eq!(after & !before, 0, "the guest raised GED events");
    }
}

/// The ACPI power port: only S5 exits and only the reset value resets.
pub fn run_power(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ops: Vec<Access> = super::rest(&mut u, 256);
    let (Some(exit), Some(reset)) = (eventfd(), eventfd()) else {
        return;
    };
    let (Ok(exit_seen), Ok(reset_seen)) = (exit.try_clone(), reset.try_clone()) else {
        return;
    };
    let bus = Bus::new();
    let _ = bus.insert(
        0x3c0,
        1,
        Arc::new(Mutex::new(AcpiPowerDevice::new(exit, reset))),
    );
    for a in ops.iter().take(256) {
        accesses(&bus, 0x3c0, 1, std::slice::from_ref(a));
        let addr = 0x3c0u64.wrapping_sub(2) + u64::from(a.at) % 5;
        let size = usize::from(a.len % 9);
        let value = a.write.map(|v| v as u8);
        let exited = exit_seen.read().is_ok();
        let reset = reset_seen.read().is_ok();
        let single = a.write.is_some() && addr == 0x3c0 && size == 1;
        // SLP_EN with SLP_TYP 5, whatever the other bits: S5.
        let s5 = value.is_some_and(|v| v != RESET_VALUE && v & 0x3c == S5_SLEEP_CONTROL_VALUE);
        assert_eq!(exited, single && s5, "exit on {a:?}");
        assert_eq!(
            reset,
            single && value == Some(RESET_VALUE),
            "reset on {a:?}"
        );
    }
}

/// Counts hotplug signals.
struct Signals;

impl HotplugSignal for Signals {
    fn signal(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records ejects.
struct Ejects(Arc<Mutex<Vec<PciSlot>>>);

impl EjectHandler for Ejects {
    fn eject(&mut self, slot: PciSlot) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }
}

#[derive(Arbitrary, Debug)]
enum HotplugOp {
    Guest(Access),
    /// The VMM adds a device to (segment, slot).
    Added(u16, u8),
    /// The VMM asks for a device back.
    RemovalRequested(u16, u8),
}

/// The PCI hotplug registers: the guest can eject only hotplug slots of existing segments.
pub fn run_pci_hotplug(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(slots) = super::Many::<u32>::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<HotplugOp> = super::rest(&mut u, 256);
    let slots: Vec<u32> = slots.0.into_iter().take(8).collect();
    let ejected = Arc::new(Mutex::new(Vec::new()));
    let controller = PciHotplugController::new(
        slots.clone(),
        Box::new(Signals),
        Box::new(Ejects(ejected.clone())),
    );
    let base = 0xfed0_2000;
    let bus = Bus::new();
    let controller = Arc::new(Mutex::new(controller));
    let _ = bus.insert(base, 0x10, controller.clone());
    for op in ops.iter().take(256) {
        match op {
            HotplugOp::Guest(a) => accesses(&bus, base, 0x10, std::slice::from_ref(a)),
            HotplugOp::Added(segment, slot) => {
                let slot = PciSlot {
                    segment: segment % 10,
                    slot: *slot,
                };
                let _ = controller
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .slot_added(slot);
            }
            HotplugOp::RemovalRequested(segment, slot) => {
                let slot = PciSlot {
                    segment: segment % 10,
                    slot: *slot,
                };
                let _ = controller
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .slot_removal_requested(slot);
            }
        }
        for slot in ejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let hotpluggable = slots.get(usize::from(slot.segment)).copied().unwrap_or(0);
            assert!(
                slot.slot < 32 && hotpluggable & (1 << slot.slot) != 0,
                "eject of {slot:?}, not a hotplug slot"
            );
        }
    }
    let _ = controller
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .read_back();
}

/// Reads every register once more, as a guest's scan does.
trait ReadBack {
    fn read_back(&mut self) -> [u8; 16];
}

impl ReadBack for PciHotplugController {
    fn read_back(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, chunk) in out.chunks_mut(4).enumerate() {
            BusDevice::read(self, i as u64 * 4, chunk);
        }
        out
    }
}
