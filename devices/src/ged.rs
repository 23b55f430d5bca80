//! The ACPI Generic Event Device (`ACPI0013`): a 32-bit MMIO event register and an edge
//! interrupt. The VMM sets event bits and raises the interrupt; the DSDT's `_EVT` method
//! reads the register (which clears it) and notifies the devices whose bits are set.
//!
//! The event bits are defined here, once: the VMM passes them into the acpi crate's
//! `Ged`, whose `_EVT` tests them.

use std::io;

use tracing::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 0;
/// Event bit: a PCI hotplug slot changed.
pub const GED_EVENT_PCI_HOTPLUG: u32 = 1 << 1;
/// The device's MMIO range length: the 4-byte event register.
pub const GED_MMIO_LEN: u64 = 4;

/// The Generic Event Device.
#[derive(Debug)]
pub struct GedDevice {
    /// The GED interrupt (edge; an irqfd on the VMM side).
    interrupt: EventFd,
    /// Events raised and not yet read by the guest.
    pending: u32,
}

impl GedDevice {
    /// A GED that raises `interrupt` when events are notified.
    pub fn new(interrupt: EventFd) -> Self {
        GedDevice {
            interrupt,
            pending: 0,
        }
    }

    /// Sets event bits (bit 0 = power button, bit 1 = PCI hotplug) and raises the interrupt.
    ///
    /// The bits stay pending until the guest reads the register, so events that arrive
    /// before the guest handles the interrupt are merged. `events == 0` does nothing.
    pub fn notify(&mut self, events: u32) -> io::Result<()> {
        if events == 0 {
            return Ok(());
        }
        self.pending |= events;
        self.interrupt.write(1)
    }

    /// Events raised and not yet read by the guest.
    pub fn pending_events(&self) -> u32 {
        self.pending
    }
}

impl BusDevice for GedDevice {
    /// A 32-bit read at offset 0 returns the pending event bits and clears them. Narrower
    /// reads see the matching bytes of the register without clearing it.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.pending.to_le_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        match bytes.get(start..end) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
        if offset == 0 && data.len() == bytes.len() {
            self.pending = 0;
        }
    }

    /// The register is read-only; writes are dropped.
    fn write(&mut self, offset: u64, data: &[u8]) {
        debug!(offset, len = data.len(), "GED: write ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn read32(dev: &mut GedDevice) -> u32 {
        let mut b = [0u8; 4];
        dev.read(0, &mut b);
        u32::from_le_bytes(b)
    }

    fn fired(evt: &EventFd) -> bool {
        match evt.read() {
            Ok(n) => n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    fn setup() -> (GedDevice, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (GedDevice::new(irq.try_clone().unwrap()), irq)
    }

    #[test]
    fn notify_raises_interrupt_and_read_clears() {
        let (mut dev, irq) = setup();
        assert!(!fired(&irq));
        assert_eq!(read32(&mut dev), 0);
        dev.notify(GED_EVENT_POWER_BUTTON).unwrap();
        assert!(fired(&irq));
        assert_eq!(read32(&mut dev), GED_EVENT_POWER_BUTTON);
        assert_eq!(read32(&mut dev), 0, "the first read cleared the bits");
        assert!(!fired(&irq));
    }

    #[test]
    fn events_accumulate_until_read() {
        let (mut dev, irq) = setup();
        dev.notify(GED_EVENT_POWER_BUTTON).unwrap();
        dev.notify(GED_EVENT_PCI_HOTPLUG).unwrap();
        assert_eq!(irq.read().unwrap(), 2, "one interrupt per notify");
        assert_eq!(dev.pending_events(), 0b11);
        // A byte read peeks without clearing.
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [0b11]);
        assert_eq!(read32(&mut dev), 0b11);
        assert_eq!(read32(&mut dev), 0);
    }

    #[test]
    fn writes_are_ignored_and_empty_notify_is_silent() {
        let (mut dev, irq) = setup();
        dev.write(0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read32(&mut dev), 0);
        dev.notify(0).unwrap();
        assert!(!fired(&irq));
        dev.notify(GED_EVENT_PCI_HOTPLUG).unwrap();
        dev.write(0, &[0, 0, 0, 0]);
        assert_eq!(read32(&mut dev), GED_EVENT_PCI_HOTPLUG);
    }
}
