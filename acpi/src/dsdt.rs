//! DSDT: PCI host bridges per segment, COM1, the power button behind the Generic Event
//! Device, the S5 sleep state for power-off, and, with a hotplug controller, ACPI PCI
//! hotplug (its AML is in `pci_hotplug`).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Field, FieldAccessType, FieldEntry,
    FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Method, Name, NotEqual, Notify, OpRegion,
    OpRegionSpace, Package, Path, ResourceTemplate, Store, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use crate::error::Error;
use crate::pci_hotplug;
use crate::topology::{PciSegment, Topology};
use crate::{finish_table, OEM_REVISION, OEM_TABLE_ID};

/// DSDT revision 2: 64-bit integers in AML.
const DSDT_REVISION: u8 = 2;

/// `_S5` sleep type value; the guest writes `(5 << 2) | SLP_EN` to the sleep control
/// register to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Builds the DSDT.
pub(crate) fn build(t: &Topology) -> Result<Vec<u8>, Error> {
    let mut body: Vec<u8> = Vec::new();
    let hotplug = t.platform.pci_hotplug;
    if let Some(hp) = &hotplug {
        pci_hotplug::controller(hp, &t.pci_segments).to_aml_bytes(&mut body);
    }
    for (index, segment) in t.pci_segments.iter().enumerate() {
        // Validation allows slots only with a controller.
        let slots = pci_hotplug::slots(segment);
        host_bridge(index, segment, &slots).to_aml_bytes(&mut body);
        ecam_reservation(index, segment).to_aml_bytes(&mut body);
    }
    if let Some(serial) = t.platform.serial {
        let irq = Interrupt::new(true, true, false, false, serial.gsi);
        let ports = IO::new(serial.port, serial.port, 1, 8);
        let crs = ResourceTemplate::new(vec![&irq, &ports]);
        Device::new(
            Path::new("\\_SB_.COM1"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
                &Name::new(Path::new("_UID"), &ZERO),
                &Name::new(Path::new("_CRS"), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    // The power button exists only where the GED can signal it.
    if let Some(ged) = t.platform.ged {
        Device::new(
            Path::new("\\_SB_.PWRB"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0C0C")),
                &Name::new(Path::new("_UID"), &ZERO),
            ],
        )
        .to_aml_bytes(&mut body);
        let irq = Interrupt::new(true, true, false, false, ged.gsi);
        let crs = ResourceTemplate::new(vec![&irq]);
        let gdat = Path::new("GDAT");
        let read_events = Store::new(&Local(0), &gdat);
        let power_bit = And::new(&ZERO, &Local(0), &ged.power_button_event);
        let is_power = NotEqual::new(&power_bit, &ZERO);
        let pwrb = Path::new("\\_SB_.PWRB");
        let notify_power = Notify::new(&pwrb, &0x80u8);
        let on_power = If::new(&is_power, vec![&notify_power]);
        let on_hotplug = hotplug.map(|_| pci_hotplug::on_event(ged.pci_hotplug_event));
        let mut evt: Vec<&dyn Aml> = vec![&read_events, &on_power];
        if let Some(scan) = &on_hotplug {
            evt.push(scan);
        }
        Device::new(
            Path::new("\\_SB_.GED_"),
            vec![
                &Name::new(Path::new("_HID"), &"ACPI0013"),
                &Name::new(Path::new("_UID"), &ZERO),
                &Name::new(Path::new("_CRS"), &crs),
                &OpRegion::new(
                    Path::new("GDST"),
                    OpRegionSpace::SystemMemory,
                    &ged.mmio_base,
                    &4u32,
                ),
                &Field::new(
                    Path::new("GDST"),
                    FieldAccessType::DWord,
                    FieldLockRule::NoLock,
                    FieldUpdateRule::WriteAsZeroes,
                    vec![FieldEntry::Named(*b"GDAT", 32)],
                ),
                &Method::new(Path::new("_EVT"), 1, true, evt),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &ZERO, &ZERO]),
    )
    .to_aml_bytes(&mut body);

    // Sdt keeps its length in step with what is appended; finish_table sets the checksum.
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        crate::oem_id(t),
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    finish_table(dsdt.as_slice().to_vec(), DSDT_REVISION)
}

/// A 4-character ACPI name with a two-hex-digit suffix: `PC` + `0A` → `PC0A`.
pub(crate) fn indexed_name(prefix: &str, index: usize) -> String {
    format!("\\_SB_.{prefix}{:02X}", index & 0xff)
}

/// A PCI Express host bridge for one segment: `_SEG`, `_BBN`, `_PXM`, windows, `_PRT`,
/// then `slots` (its hotplug slot devices, possibly none).
fn host_bridge(index: usize, s: &PciSegment, slots: &OwnedAml) -> OwnedAml {
    let bus = AddressSpace::new_bus_number(u16::from(s.start_bus), u16::from(s.end_bus));
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        s.mmio32.base as u32,
        s.mmio32.last().unwrap_or_default() as u32,
        None,
    );
    let mmio64 = s.mmio64.map(|w| {
        AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            w.base,
            w.last().unwrap_or_default(),
            None,
        )
    });
    let io = s
        .io
        .map(|w| AddressSpace::new_io(w.base as u16, w.last().unwrap_or_default() as u16, None));
    // Segment 0's host bridge also claims the legacy config ports.
    let cfg_ports = (s.id == 0).then(|| IO::new(0xcf8, 0xcf8, 1, 8));
    let mut resources: Vec<&dyn Aml> = vec![&bus];
    if let Some(p) = &cfg_ports {
        resources.push(p);
    }
    if let Some(w) = &io {
        resources.push(w);
    }
    resources.push(&mmio32);
    if let Some(w) = &mmio64 {
        resources.push(w);
    }
    let crs = ResourceTemplate::new(resources);

    let routes: Vec<(u32, u8, u32)> = s
        .intx_routes
        .iter()
        .map(|r| ((u32::from(r.device) << 16) | 0xffff, r.pin.index(), r.gsi))
        .collect();
    let route_packages: Vec<Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &ZERO, gsi]))
        .collect();
    let prt = Package::new(route_packages.iter().map(|p| p as &dyn Aml).collect());

    let seg = u32::from(s.id);
    let bbn = u32::from(s.start_bus);
    let pxm = s.node;
    let mut children: Vec<&dyn Aml> = Vec::new();
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let seg_name = Name::new(Path::new("_SEG"), &seg);
    let uid = Name::new(Path::new("_UID"), &seg);
    let bbn_name = Name::new(Path::new("_BBN"), &bbn);
    let pxm_name = pxm.map(|n| Name::new(Path::new("_PXM"), &n));
    let crs_name = Name::new(Path::new("_CRS"), &crs);
    let prt_name = Name::new(Path::new("_PRT"), &prt);
    children.extend([&hid as &dyn Aml, &cid, &seg_name, &uid, &bbn_name]);
    if let Some(p) = &pxm_name {
        children.push(p);
    }
    children.push(&crs_name);
    if !routes.is_empty() {
        children.push(&prt_name);
    }
    if !slots.0.is_empty() {
        children.push(slots);
    }
    OwnedAml::from(&Device::new(
        Path::new(&indexed_name("PC", index)),
        children,
    ))
}

/// A motherboard resource device reserving the segment's ECAM window; Linux only trusts
/// an MCFG window that firmware also reserves.
fn ecam_reservation(index: usize, s: &PciSegment) -> OwnedAml {
    let len = (u64::from(s.end_bus) + 1) << 20;
    let start = s.ecam_base + (u64::from(s.start_bus) << 20);
    let window = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start,
        s.ecam_base + len - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&window]);
    let uid = u32::from(s.id);
    OwnedAml::from(&Device::new(
        Path::new(&indexed_name("MB", index)),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// AML already encoded, so builders can return it without borrowing their temporaries.
#[derive(Default)]
pub(crate) struct OwnedAml(Vec<u8>);

impl OwnedAml {
    /// `aml`, encoded.
    pub(crate) fn of(aml: &dyn Aml) -> Self {
        let mut bytes = Vec::new();
        aml.to_aml_bytes(&mut bytes);
        OwnedAml(bytes)
    }

    /// Appends `aml`, encoded.
    pub(crate) fn push(&mut self, aml: &dyn Aml) {
        aml.to_aml_bytes(&mut self.0);
    }
}

impl From<&Device<'_>> for OwnedAml {
    fn from(d: &Device<'_>) -> Self {
        OwnedAml::of(d)
    }
}

impl Aml for OwnedAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}
