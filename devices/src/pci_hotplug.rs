//! The ACPI PCI hotplug controller: the MMIO register block behind the DSDT's `\_SB.PHPR`
//! (Cloud Hypervisor's register model), through which the guest's acpiphp learns which
//! root-bus slots gained a device or should give one up, and ejects them.
//!
//! The VMM reports changes with [`PciHotplugController::slot_added`] and
//! [`PciHotplugController::slot_removal_requested`], which set the slot's bit and raise the
//! GED's PCI hotplug event. The guest's `PSCN` then, per segment, writes the segment to
//! `PSEG` and reads `PCIU` and `PCID` (each read clears what it returned, so a change that
//! arrives after the read waits for the next event), and notifies the slots. A slot's
//! `_EJ0` writes `PSEG` and the slot's bit to `B0EJ`; the controller reports that eject to
//! the VMM through an [`EjectHandler`], so this crate never sees the VMM.
//!
//! Register offsets and the block length are defined here, once; the VMM passes them into
//! the acpi crate's `PciHotplug`, whose AML addresses the same registers.

use std::io;
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use tracing::debug;

use crate::bus::BusDevice;
use crate::ged::{GedDevice, GED_EVENT_PCI_HOTPLUG};

/// `PCIU` (read-only): slots of the selected segment that gained a device since the last
/// read, bit n = slot n. A 32-bit read clears it.
pub const PCI_HOTPLUG_SLOTS_UP: u64 = 0x0;
/// `PCID` (read-only): slots of the selected segment whose device the VMM asks the guest
/// to give up, bit n = slot n. A 32-bit read clears it.
pub const PCI_HOTPLUG_SLOTS_DOWN: u64 = 0x4;
/// `B0EJ` (write): the guest has released the devices in these slots of the selected
/// segment (bit n = slot n). Reads as 0: ejects are reported when written.
pub const PCI_HOTPLUG_EJECT: u64 = 0x8;
/// `PSEG` (read/write): the segment the other registers refer to.
pub const PCI_HOTPLUG_SEGMENT: u64 = 0xc;
/// The register block's length in bytes.
pub const PCI_HOTPLUG_MMIO_LEN: u64 = 0x10;

/// A root-bus slot: segment and device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciSlot {
    /// PCI segment (`_SEG`).
    pub segment: u16,
    /// Device number on the segment's root bus, 0..=31.
    pub slot: u8,
}

/// Tells the guest that slots changed (the GED's PCI hotplug event).
pub trait HotplugSignal: Send {
    /// Raises the hotplug event.
    fn signal(&mut self) -> io::Result<()>;
}

impl HotplugSignal for Arc<Mutex<GedDevice>> {
    fn signal(&mut self) -> io::Result<()> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .notify(GED_EVENT_PCI_HOTPLUG)
    }
}

/// Receives the guest's ejects.
///
/// Called on a vCPU thread in the middle of the guest's `B0EJ` write, with the controller
/// locked: it must hand the work to the VMM (e.g. over a channel), not do it there.
pub trait EjectHandler: Send {
    /// The guest has released the device in `slot`.
    fn eject(&mut self, slot: PciSlot);
}

impl EjectHandler for mpsc::Sender<PciSlot> {
    fn eject(&mut self, slot: PciSlot) {
        if self.send(slot).is_err() {
            debug!(?slot, "PCI hotplug: eject dropped, nobody listens any more");
        }
    }
}

/// Why the VMM's hotplug request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PciHotplugError {
    /// The slot has no hotplug AML behind it: the guest would never hear of the change.
    #[error("slot {} of PCI segment {} is not a hotplug slot", .0.slot, .0.segment)]
    NotHotpluggable(PciSlot),
    /// The GED interrupt could not be raised; the slot's bit is set and waits for the
    /// next event.
    #[error("cannot signal the guest: {0}")]
    Signal(#[source] io::Error),
}

/// One segment's slots.
#[derive(Clone, Copy, Debug, Default)]
struct SegmentSlots {
    /// Slots with hotplug AML (bit n = slot n); others are refused or ignored.
    hotpluggable: u32,
    /// `PCIU` of the segment.
    up: u32,
    /// `PCID` of the segment.
    down: u32,
}

/// The hotplug controller's registers, as a [`BusDevice`] on the MMIO bus.
pub struct PciHotplugController {
    /// By segment id.
    segments: Vec<SegmentSlots>,
    /// What `PSEG` selects; `None` after the guest wrote a segment that does not exist, so
    /// that no segment's bits are read, cleared or ejected by mistake.
    selected: Option<u16>,
    signal: Box<dyn HotplugSignal>,
    ejects: Box<dyn EjectHandler>,
}

impl std::fmt::Debug for PciHotplugController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHotplugController")
            .field("segments", &self.segments)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl PciHotplugController {
    /// A controller for segments `0..hotplug_slots.len()`: `hotplug_slots[s]` has bit n set
    /// when slot n of segment s has hotplug AML (the same slots the DSDT lists).
    pub fn new(
        hotplug_slots: Vec<u32>,
        signal: Box<dyn HotplugSignal>,
        ejects: Box<dyn EjectHandler>,
    ) -> Self {
        PciHotplugController {
            segments: hotplug_slots
                .into_iter()
                .map(|hotpluggable| SegmentSlots {
                    hotpluggable,
                    ..SegmentSlots::default()
                })
                .collect(),
            selected: Some(0),
            signal,
            ejects,
        }
    }

    /// A device was placed in `slot`: the guest is told to scan it (`Notify` 1, device check).
    pub fn slot_added(&mut self, slot: PciSlot) -> Result<(), PciHotplugError> {
        let (segment, bit) = self.hotplug_slot(slot)?;
        segment.up |= bit;
        self.signal.signal().map_err(PciHotplugError::Signal)
    }

    /// The VMM wants the device in `slot` back: the guest is asked to release it (`Notify`
    /// 3, eject request) and answers with an eject, reported to the [`EjectHandler`].
    pub fn slot_removal_requested(&mut self, slot: PciSlot) -> Result<(), PciHotplugError> {
        let (segment, bit) = self.hotplug_slot(slot)?;
        segment.down |= bit;
        self.signal.signal().map_err(PciHotplugError::Signal)
    }

    /// The slot's segment and bit, if the slot has hotplug AML.
    fn hotplug_slot(&mut self, slot: PciSlot) -> Result<(&mut SegmentSlots, u32), PciHotplugError> {
        let bit = 1u32
            .checked_shl(u32::from(slot.slot))
            .ok_or(PciHotplugError::NotHotpluggable(slot))?;
        self.segments
            .get_mut(usize::from(slot.segment))
            .filter(|s| s.hotpluggable & bit != 0)
            .map(|s| (s, bit))
            .ok_or(PciHotplugError::NotHotpluggable(slot))
    }

    fn selected_segment(&mut self) -> Option<&mut SegmentSlots> {
        self.selected
            .and_then(|s| self.segments.get_mut(usize::from(s)))
    }
}

impl BusDevice for PciHotplugController {
    /// 32-bit reads at a register's offset return it (and clear `PCIU`/`PCID`); other
    /// widths see the register's bytes without clearing; unknown offsets read 0. With no
    /// valid segment selected, `PCIU`/`PCID` read 0 and `PSEG` reads `0xffff_ffff`.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let register = offset & !3;
        let full = offset == register && data.len() == 4;
        let value = match register {
            PCI_HOTPLUG_SLOTS_UP | PCI_HOTPLUG_SLOTS_DOWN => {
                let Some(seg) = self.selected_segment() else {
                    data.fill(0);
                    return;
                };
                let bits = if register == PCI_HOTPLUG_SLOTS_UP {
                    &mut seg.up
                } else {
                    &mut seg.down
                };
                let value = *bits;
                if full {
                    *bits = 0;
                }
                value
            }
            PCI_HOTPLUG_SEGMENT => self.selected.map_or(u32::MAX, u32::from),
            // B0EJ reads 0: an eject is acted on when written.
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let start = usize::try_from(offset - register).unwrap_or(usize::MAX);
        match bytes.get(start..start.saturating_add(data.len())) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    /// 32-bit writes to `PSEG` select a segment, to `B0EJ` eject the selected segment's
    /// hotplug slots whose bits are set. Anything else is dropped.
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                offset,
                len = data.len(),
                "PCI hotplug: non-32-bit write ignored"
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            PCI_HOTPLUG_SEGMENT => {
                self.selected = u16::try_from(value)
                    .ok()
                    .filter(|&s| usize::from(s) < self.segments.len());
                if self.selected.is_none() {
                    debug!(
                        value,
                        "PCI hotplug: guest selected a segment that does not exist"
                    );
                }
            }
            PCI_HOTPLUG_EJECT => {
                let Some(segment) = self.selected else {
                    debug!(value, "PCI hotplug: eject without a valid segment ignored");
                    return;
                };
                let hotpluggable = self.selected_segment().map_or(0, |s| s.hotpluggable);
                if value & !hotpluggable != 0 {
                    debug!(
                        segment,
                        value, "PCI hotplug: eject of non-hotplug slots ignored"
                    );
                }
                let mut slots = value & hotpluggable;
                while slots != 0 {
                    let slot = slots.trailing_zeros() as u8;
                    slots &= slots - 1;
                    self.ejects.eject(PciSlot { segment, slot });
                }
            }
            _ => debug!(
                offset,
                value, "PCI hotplug: write to a read-only or unknown register ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts signals; fails them when asked to.
    #[derive(Clone, Default)]
    struct FakeSignal {
        raised: Arc<AtomicU32>,
        fail: bool,
    }

    impl HotplugSignal for FakeSignal {
        fn signal(&mut self) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("interrupt gone"));
            }
            self.raised.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Segment 0: slots 1..=31 (slot 0 is the host bridge); segment 1: all 32.
    fn setup() -> (PciHotplugController, FakeSignal, mpsc::Receiver<PciSlot>) {
        let signal = FakeSignal::default();
        let (tx, rx) = mpsc::channel();
        let dev =
            PciHotplugController::new(vec![!1, u32::MAX], Box::new(signal.clone()), Box::new(tx));
        (dev, signal, rx)
    }

    fn read32(dev: &mut PciHotplugController, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(dev: &mut PciHotplugController, offset: u64, value: u32) {
        dev.write(offset, &value.to_le_bytes());
    }

    fn slot(segment: u16, slot: u8) -> PciSlot {
        PciSlot { segment, slot }
    }

    #[test]
    fn added_slots_are_read_per_selected_segment_and_read_clears() {
        let (mut dev, signal, _rx) = setup();
        dev.slot_added(slot(0, 3)).unwrap();
        dev.slot_added(slot(1, 0)).unwrap();
        dev.slot_added(slot(1, 31)).unwrap();
        assert_eq!(signal.raised.load(Ordering::SeqCst), 3);

        write32(&mut dev, PCI_HOTPLUG_SEGMENT, 1);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SEGMENT), 1);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 1 | (1 << 31));
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 0, "read cleared");
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_DOWN), 0);

        write32(&mut dev, PCI_HOTPLUG_SEGMENT, 0);
        // A narrow read peeks without clearing.
        let mut b = [0u8; 1];
        dev.read(PCI_HOTPLUG_SLOTS_UP, &mut b);
        assert_eq!(b, [1 << 3]);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 1 << 3);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 0);
    }

    #[test]
    fn removal_requests_show_in_pcid_and_the_eject_is_reported() {
        let (mut dev, signal, rx) = setup();
        dev.slot_removal_requested(slot(1, 0)).unwrap();
        assert_eq!(signal.raised.load(Ordering::SeqCst), 1);
        write32(&mut dev, PCI_HOTPLUG_SEGMENT, 1);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 0);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_DOWN), 1);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_DOWN), 0);

        // _EJ0 of slot 0: PSEG = 1, B0EJ = 1 << 0.
        write32(&mut dev, PCI_HOTPLUG_EJECT, 1);
        assert_eq!(rx.try_recv().unwrap(), slot(1, 0));
        assert!(rx.try_recv().is_err());
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_EJECT), 0);

        // Several bits eject several slots, lowest first.
        write32(&mut dev, PCI_HOTPLUG_SEGMENT, 0);
        write32(&mut dev, PCI_HOTPLUG_EJECT, (1 << 5) | (1 << 2));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [slot(0, 2), slot(0, 5)]);
    }

    #[test]
    fn the_vmm_cannot_use_slots_without_hotplug_aml() {
        let (mut dev, signal, _rx) = setup();
        for bad in [slot(0, 0), slot(2, 1), slot(0, 32), slot(u16::MAX, 255)] {
            let e = dev.slot_added(bad).unwrap_err();
            assert!(
                matches!(e, PciHotplugError::NotHotpluggable(s) if s == bad),
                "{e}"
            );
            assert!(dev.slot_removal_requested(bad).is_err());
        }
        assert_eq!(signal.raised.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_signal_is_an_error_and_the_bit_waits() {
        let (tx, _rx) = mpsc::channel();
        let signal = FakeSignal {
            fail: true,
            ..FakeSignal::default()
        };
        let mut dev = PciHotplugController::new(vec![u32::MAX], Box::new(signal), Box::new(tx));
        let e = dev.slot_added(slot(0, 4)).unwrap_err();
        assert!(e.to_string().contains("interrupt gone"), "{e}");
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 1 << 4);
    }

    #[test]
    fn guest_input_out_of_range_is_dropped_safely() {
        let (mut dev, _signal, rx) = setup();
        dev.slot_added(slot(0, 1)).unwrap();

        // A segment that does not exist selects nothing: no bits read, cleared or ejected.
        for bad in [2, 0x1_0000, u32::MAX] {
            write32(&mut dev, PCI_HOTPLUG_SEGMENT, bad);
            assert_eq!(read32(&mut dev, PCI_HOTPLUG_SEGMENT), u32::MAX);
            assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 0);
            write32(&mut dev, PCI_HOTPLUG_EJECT, u32::MAX);
        }
        assert!(rx.try_recv().is_err());
        write32(&mut dev, PCI_HOTPLUG_SEGMENT, 0);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 1 << 1, "kept");

        // Ejecting slot 0 of segment 0 (the host bridge) is ignored; the rest go through.
        write32(&mut dev, PCI_HOTPLUG_EJECT, 0b11);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [slot(0, 1)]);

        // Read-only registers, unknown offsets and odd widths.
        dev.slot_added(slot(0, 7)).unwrap();
        write32(&mut dev, PCI_HOTPLUG_SLOTS_UP, 0);
        dev.write(PCI_HOTPLUG_SEGMENT, &[1]);
        dev.write(PCI_HOTPLUG_EJECT, &[0xff, 0xff]);
        dev.write(PCI_HOTPLUG_MMIO_LEN, &[0; 4]);
        assert!(rx.try_recv().is_err());
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SEGMENT), 0);
        for offset in [PCI_HOTPLUG_MMIO_LEN, 0x1000, u64::MAX - 3] {
            assert_eq!(read32(&mut dev, offset), 0);
        }
        let mut wide = [0xaau8; 8];
        dev.read(PCI_HOTPLUG_SLOTS_UP, &mut wide);
        assert_eq!(wide, [0; 8], "a read past the register sees zeros");
        let mut b = [0u8; 1];
        dev.read(PCI_HOTPLUG_SLOTS_UP + 3, &mut b);
        assert_eq!(b, [0]);
        dev.read(PCI_HOTPLUG_SLOTS_UP, &mut b);
        assert_eq!(b, [1 << 7], "odd reads did not clear");
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_SLOTS_UP), 1 << 7);
    }

    #[test]
    fn the_ged_is_a_hotplug_signal() {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Arc::new(Mutex::new(GedDevice::new(irq.try_clone().unwrap())));
        let (tx, _rx) = mpsc::channel();
        let mut dev =
            PciHotplugController::new(vec![u32::MAX], Box::new(ged.clone()), Box::new(tx));
        dev.slot_added(slot(0, 0)).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(ged.lock().unwrap().pending_events(), GED_EVENT_PCI_HOTPLUG);
    }
}
