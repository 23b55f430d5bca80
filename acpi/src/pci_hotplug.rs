//! AML for ACPI PCI hotplug, the way Linux's acpiphp drives it: the controller
//! `\_SB.PHPR` (its registers, a lock, `PCEJ` to eject and `PSCN` to scan), and one slot
//! device per hotplug slot under its segment's host bridge.
//!
//! The GED's `_EVT` calls `PSCN` on the hotplug event. `PSCN` selects each segment with
//! slots (`PSEG`), reads its `PCIU` and `PCID` once each (the device clears them on read)
//! and notifies each slot whose bit is set: 1 (device check: acpiphp scans the slot and
//! finds the device in config space, so slots need no `_STA`) or 3 (eject request:
//! acpiphp releases the device and calls the slot's `_EJ0`, which writes `PSEG` and the
//! slot's bit to `B0EJ`).

use acpi_tables::aml::{
    Acquire, AddressSpace, AddressSpaceCacheable, And, Arg, Device, EISAName, Field,
    FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Local, Method, MethodCall,
    Mutex, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Path, Release, ResourceTemplate,
    ShiftLeft, Store, ONE, ZERO,
};
use acpi_tables::Aml;

use crate::dsdt::{indexed_name, OwnedAml};
use crate::topology::{PciHotplug, PciSegment};

/// The controller device.
const CONTROLLER: &str = "\\_SB_.PHPR";
/// `PSCN`, which the GED's `_EVT` calls.
pub(crate) const SCAN_METHOD: &str = "\\_SB_.PHPR.PSCN";
/// `PCEJ(slot, segment)`, which each slot's `_EJ0` calls.
const EJECT_METHOD: &str = "\\_SB_.PHPR.PCEJ";
/// Notify values (ACPI 6.5 §5.6.6).
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;

/// The slot's `_SUN`: unique across segments (`segment × 32 + slot`), so every slot gets
/// its own `/sys/bus/pci/slots/<_SUN>` (Linux renames a repeated name to `N-1`, `N-2`).
pub(crate) fn slot_number(segment: u16, slot: u8) -> u32 {
    u32::from(segment) * 32 + u32::from(slot)
}

/// The slot device's path under the host bridge at `index`.
fn slot_path(index: usize, slot: u8) -> String {
    format!("{}.SL{slot:02X}", indexed_name("PC", index))
}

/// The segment's slots, ascending (validation made them unique and 0..=31).
fn sorted_slots(s: &PciSegment) -> Vec<u8> {
    let mut slots = s.hotplug_slots.clone();
    slots.sort_unstable();
    slots
}

/// `\_SB.PHPR`: a motherboard-resources device (`PNP0C02`), so the guest reserves the
/// register block, with the registers, the lock and the methods.
pub(crate) fn controller(hp: &PciHotplug, segments: &[PciSegment]) -> OwnedAml {
    let last = hp.mmio_base.saturating_add(hp.mmio_len.saturating_sub(1));
    let window = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        hp.mmio_base,
        last,
        None,
    );
    let crs = ResourceTemplate::new(vec![&window]);

    // Field entries in offset order, reserved bits between registers.
    let mut registers = hp.registers.named();
    registers.sort_unstable_by_key(|r| r.2);
    let mut fields = Vec::new();
    let mut at = 0u64;
    for (name, _, offset) in registers {
        if offset > at {
            fields.push(FieldEntry::Reserved(((offset - at) * 8) as usize));
        }
        fields.push(FieldEntry::Named(name, 32));
        at = offset + 4;
    }

    let (pseg, b0ej) = (Path::new("PSEG"), Path::new("B0EJ"));
    let eject = [
        &Acquire::new(Path::new("BLCK"), 0xffff) as &dyn Aml,
        &Store::new(&pseg, &Arg(1)),
        &ShiftLeft::new(&b0ej, &ONE, &Arg(0)),
        &Release::new(Path::new("BLCK")),
    ];
    let mut scan_segments = OwnedAml::default();
    for (index, s) in segments.iter().enumerate() {
        if !s.hotplug_slots.is_empty() {
            scan_segments.push(&scan_segment(index, s));
        }
    }
    let scan = [
        &Acquire::new(Path::new("BLCK"), 0xffff) as &dyn Aml,
        &scan_segments,
        &Release::new(Path::new("BLCK")),
    ];
    OwnedAml::of(&Device::new(
        Path::new(CONTROLLER),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &"PHPR"),
            &Name::new(Path::new("_CRS"), &crs),
            &OpRegion::new(
                Path::new("PCST"),
                OpRegionSpace::SystemMemory,
                &hp.mmio_base,
                &hp.mmio_len,
            ),
            &Field::new(
                Path::new("PCST"),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                fields,
            ),
            &Mutex::new(Path::new("BLCK"), 0),
            &Method::new(Path::new("PCEJ"), 2, true, eject.to_vec()),
            &Method::new(Path::new("PSCN"), 0, true, scan.to_vec()),
        ],
    ))
}

/// One segment's part of `PSCN`: select it, read both bitmaps once, notify the slots.
fn scan_segment(index: usize, s: &PciSegment) -> OwnedAml {
    let segment = u32::from(s.id);
    let mut body = OwnedAml::default();
    body.push(&Store::new(&Path::new("PSEG"), &segment));
    body.push(&Store::new(&Local(0), &Path::new("PCIU")));
    body.push(&Store::new(&Local(1), &Path::new("PCID")));
    for slot in sorted_slots(s) {
        let bit = 1u32 << slot;
        let path = Path::new(&slot_path(index, slot));
        for (bitmap, value) in [(Local(0), DEVICE_CHECK), (Local(1), EJECT_REQUEST)] {
            let set = And::new(&ZERO, &bitmap, &bit);
            body.push(&If::new(
                &NotEqual::new(&set, &ZERO),
                vec![&Notify::new(&path, &value)],
            ));
        }
    }
    body
}

/// The segment's slot devices, to go inside its host bridge: `_ADR` (slot, any function),
/// `_SUN`, and `_EJ0` asking the controller to eject.
pub(crate) fn slots(s: &PciSegment) -> OwnedAml {
    let segment = u32::from(s.id);
    let mut out = OwnedAml::default();
    for slot in sorted_slots(s) {
        let adr = u32::from(slot) << 16;
        let sun = slot_number(s.id, slot);
        let eject = MethodCall::new(Path::new(EJECT_METHOD), vec![&slot, &segment]);
        out.push(&Device::new(
            Path::new(&format!("SL{slot:02X}")),
            vec![
                &Name::new(Path::new("_ADR"), &adr),
                &Name::new(Path::new("_SUN"), &sun),
                &Method::new(Path::new("_EJ0"), 1, false, vec![&eject]),
            ],
        ));
    }
    out
}

/// What the GED's `_EVT` does when `Local0` (the event register) has `bit` set.
pub(crate) fn on_event(bit: u32) -> OwnedAml {
    let set = And::new(&ZERO, &Local(0), &bit);
    let scan = MethodCall::new(Path::new(SCAN_METHOD), vec![]);
    OwnedAml::of(&If::new(&NotEqual::new(&set, &ZERO), vec![&scan]))
}
