//! ACPI PCI hotplug in the DSDT: nothing without a controller (the bytes are those of the
//! tree before hotplug existed), and with one the controller, its scan and per-slot
//! devices, in the shape Linux's acpiphp expects.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use tessera_acpi::{build, PciHotplug, PciHotplugRegisters, Placement, Topology};

/// Two segments, GPU at 0001:00:00.0 (as `tests/data/two_segments.json`).
fn topology() -> Topology {
    serde_json::from_str(include_str!("data/two_segments.json")).unwrap()
}

fn controller() -> PciHotplug {
    PciHotplug {
        mmio_base: 0xfed0_2000,
        mmio_len: 0x10,
        registers: PciHotplugRegisters {
            slots_up: 0,
            slots_down: 4,
            eject: 8,
            segment: 12,
        },
    }
}

/// Segment 0: slots 1..=31 (slot 0 is the host bridge); segment 1: all 32.
fn with_hotplug() -> Topology {
    let mut t = topology();
    t.platform.pci_hotplug = Some(controller());
    t.pci_segments[0].hotplug_slots = (1..32).collect();
    t.pci_segments[1].hotplug_slots = (0..32).rev().collect();
    t
}

fn dsdt(t: &Topology) -> Vec<u8> {
    build(t, Placement::default())
        .unwrap()
        .get("DSDT")
        .unwrap()
        .bytes
        .clone()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// `DefDevice` headers (`ExtOp DeviceOp PkgLength(1 byte) name`) named `name`.
fn devices_named(dsdt: &[u8], name: &[u8; 4]) -> usize {
    dsdt.windows(7)
        .filter(|w| w[0] == 0x5b && w[1] == 0x82 && &w[3..7] == name)
        .count()
}

#[test]
fn without_a_controller_the_dsdt_is_unchanged() {
    // two_segments.DSDT.dat was made by the tree before hotplug existed.
    assert_eq!(
        dsdt(&topology()),
        include_bytes!("data/two_segments.DSDT.dat")
    );
    for name in [b"PHPR", b"PSCN", b"_SUN", b"_EJ0"] {
        assert_eq!(count(&dsdt(&topology()), name), 0);
    }
}

#[test]
fn slots_have_adr_sun_and_ej0_calling_the_controller() {
    let d = dsdt(&with_hotplug());
    // Segment 1, slot 31: Device (SL1F) { Name (_ADR, 0x001F0000) Name (_SUN, 63)
    // Method (_EJ0, 1) { \_SB.PHPR.PCEJ (0x1F, One) } }
    let mut slot = vec![0x5b, 0x82, 0x2f];
    slot.extend(b"SL1F");
    slot.extend(b"\x08_ADR\x0c\x00\x00\x1f\x00");
    slot.extend(b"\x08_SUN\x0a\x3f");
    slot.extend(b"\x14\x18_EJ0\x01\x5c\x2f\x03_SB_PHPRPCEJ\x0a\x1f\x01");
    assert_eq!(count(&d, &slot), 1, "segment 1 slot 31");
    // Segment 0 has no slot 0; both have the others; _SUN is segment × 32 + slot.
    assert_eq!(devices_named(&d, b"SL00"), 1);
    for slot in 1..32u8 {
        assert_eq!(
            devices_named(&d, format!("SL{slot:02X}").as_bytes().try_into().unwrap()),
            2
        );
    }
    assert_eq!(count(&d, b"_SUN"), 63);
    assert_eq!(count(&d, b"_SUN\x0a\x21"), 1, "segment 1 slot 1 is 33");
    assert_eq!(count(&d, b"_SUN\x01"), 1, "segment 0 slot 1 is 1");
}

#[test]
fn the_controller_has_its_registers_lock_and_methods() {
    let d = dsdt(&with_hotplug());
    assert_eq!(
        devices_named(&d, b"PHPR"),
        0,
        "PHPR's package is longer than 63 bytes"
    );
    assert_eq!(
        count(&d, b"\\/\x03_SB_PHPR"),
        63 + 1,
        "63 _EJ0s and _EVT call into it"
    );
    // Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32, PSEG, 32 }
    assert_eq!(count(&d, b"PCST\x43PCIU\x20PCID\x20B0EJ\x20PSEG\x20"), 1);
    // OperationRegion (PCST, SystemMemory, 0xFED02000, 0x10)
    assert_eq!(
        count(&d, b"\x5b\x80PCST\x00\x0c\x00\x20\xd0\xfe\x0a\x10"),
        1
    );
    assert_eq!(count(&d, b"\x5b\x01BLCK\x00"), 1, "Mutex (BLCK, 0)");
    // PSCN selects segment 0, then 1, reading both bitmaps once per segment.
    // Store (Zero/One, PSEG); Store (PCIU, Local0); Store (PCID, Local1)
    let select = |seg: u8| [&[0x70, seg][..], b"PSEG\x70PCIU\x60\x70PCID\x61"].concat();
    let at = |seg| d.windows(18).position(|w| w == select(seg)).unwrap();
    assert!(at(0) < at(1));
    assert_eq!(count(&d, b"PCIU"), 3, "the field and one read per segment");
    // Each slot is notified from both bitmaps: If ((Local0 & bit) != Zero) Notify (.., 1).
    assert_eq!(
        count(&d, b"\x86\x5c\x2f\x03_SB_PC01SL00\x01"),
        1,
        "device check"
    );
    assert_eq!(
        count(&d, b"\x86\x5c\x2f\x03_SB_PC01SL00\x0a\x03"),
        1,
        "eject request"
    );
    assert_eq!(count(&d, b"\x86\x5c\x2f\x03_SB_PC00SL00"), 0);
    assert_eq!(count(&d, b"\x86\x5c\x2f\x03_SB_PC00SL1F\x0a\x03"), 1);
    // The GED's _EVT calls PSCN when the hotplug bit (1 << 1) is set.
    assert_eq!(
        count(
            &d,
            b"\xa0\x18\x92\x93\x7b\x60\x0a\x02\x00\x00\x5c\x2f\x03_SB_PHPRPSCN"
        ),
        1
    );
}

#[test]
fn the_field_follows_the_register_offsets() {
    let mut t = with_hotplug();
    let mut hp = controller();
    hp.mmio_len = 0x20;
    hp.registers = PciHotplugRegisters {
        slots_up: 0x8,
        slots_down: 0x0,
        eject: 0x4,
        segment: 0x10,
    };
    t.platform.pci_hotplug = Some(hp);
    // PCID at 0, B0EJ at 4, PCIU at 8, 32 reserved bits, PSEG at 0x10.
    assert_eq!(
        count(
            &dsdt(&t),
            b"PCST\x43PCID\x20B0EJ\x20PCIU\x20\x00\x20PSEG\x20"
        ),
        1
    );
}

#[test]
fn a_controller_without_slots_scans_nothing() {
    let mut t = topology();
    t.platform.pci_hotplug = Some(controller());
    let d = dsdt(&t);
    assert_eq!(count(&d, b"PSCN"), 2, "declared and called by _EVT");
    assert_eq!(
        count(&d, b"PSEG"),
        2,
        "the field and PCEJ, no segment selected in PSCN"
    );
    assert_eq!(count(&d, b"_SUN"), 0);
}

#[test]
fn hotplug_json_round_trips() {
    let t = with_hotplug();
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""pci_hotplug":{"mmio_base":4275052544,"mmio_len":16,"registers":{"slots_up":0,"slots_down":4,"eject":8,"segment":12}}"#), "{json}");
    assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
}
