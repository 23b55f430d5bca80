//! Where PCI devices go and what they are called: every segment's slot table (device
//! number → the id holding it, whether or not a device fills it yet), the GI-ready slots
//! (`pci_slots`) reserved in it, and the ids generated for devices configured without
//! one.
//!
//! The one place that decides a device's BDF: a device whose id holds a slot (a GI-ready
//! slot, or its own placed at boot) goes there; any other takes its pinned slot or the
//! lowest free one. Pure: no KVM, no host. `guest_topology` places a configuration with
//! it, so the ACPI tables name the BDFs the devices get; the device manager keeps the
//! table it made for the VM's life, to place the devices that come later.

use tessera_acpi::Bdf;
use tessera_api::config::{ConfigError, DeviceConfig, PciSlotConfig, VmConfig, HOST_BRIDGE_ID};

/// Device numbers on a bus.
pub const SLOTS_PER_BUS: u8 = 32;

/// Generated ids are this followed by a number.
const GENERATED_ID_PREFIX: &str = "_vfio";

/// A device at its guest address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedDevice {
    /// The device's id (given, or generated: see [`device_ids`]).
    pub id: String,
    /// Index in `VmConfig::devices`.
    pub config_index: usize,
    /// Guest address.
    pub bdf: Bdf,
}

/// A GI-ready slot at its guest address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedSlot {
    /// The slot's id, which the device filling it has too.
    pub id: String,
    /// Index in `VmConfig::pci_slots`.
    pub config_index: usize,
    /// Guest address.
    pub bdf: Bdf,
}

/// Why a device or slot cannot have the slot it asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The segment does not exist.
    #[error("segment {segment} does not exist")]
    NoSegment {
        /// The segment asked for.
        segment: u16,
    },
    /// The pinned slot is not free (or is not a device number).
    #[error("slot {slot} on segment {segment} is already taken")]
    Taken {
        /// The segment.
        segment: u16,
        /// The device number asked for.
        slot: u8,
    },
    /// Every slot of the segment is taken.
    #[error("segment {segment} has no free slot left")]
    Full {
        /// The segment.
        segment: u16,
    },
    /// The slot is not one the guest was offered for hotplug at boot.
    #[error(
        "slot {slot} on segment {segment} takes no hotplug: a segment with GI-ready slots \
         offers only those (and the slots its boot devices hold); reserve one with \
         --pci-slot, or use a segment without reserved slots"
    )]
    NotHotplug {
        /// The segment.
        segment: u16,
        /// The device number asked for.
        slot: u8,
    },
    /// No slot the guest was offered for hotplug is free on the segment.
    #[error(
        "segment {segment} has no free hotplug slot: a segment with GI-ready slots offers \
         only those (and the slots its boot devices hold); give a free slot's id, or use a \
         segment without reserved slots"
    )]
    NoHotplugSlot {
        /// The segment.
        segment: u16,
    },
    /// The id already holds a slot.
    #[error("a device with id `{0}` already exists")]
    IdTaken(String),
    /// The device's `pci_segment` is not that of the slot its id holds.
    #[error("`{id}` has slot {slot} reserved: give pci_segment {} or leave it at 0", slot.segment)]
    OtherSegment {
        /// The device's id.
        id: String,
        /// The slot its id holds.
        slot: Bdf,
    },
    /// The device's `pci_device_id` is not that of the slot its id holds.
    #[error("`{id}` has slot {slot} reserved: give pci_device_id {} or none", slot.device)]
    OtherDevice {
        /// The device's id.
        id: String,
        /// The slot its id holds.
        slot: Bdf,
    },
}

impl PlacementError {
    /// The field of the device's (or slot's) configuration at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PlacementError::Taken { .. }
            | PlacementError::OtherDevice { .. }
            | PlacementError::NotHotplug { .. } => "pci_device_id",
            PlacementError::NoSegment { .. }
            | PlacementError::Full { .. }
            | PlacementError::NoHotplugSlot { .. }
            | PlacementError::OtherSegment { .. } => "pci_segment",
            PlacementError::IdTaken(_) => "id",
        }
    }

    fn at(self, field: &str) -> ConfigError {
        ConfigError {
            field: format!("{field}.{}", self.field()),
            message: self.to_string(),
        }
    }
}

/// Who holds a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    id: String,
    /// A GI-ready slot (`pci_slots`): reserved for the VM's life, whichever device
    /// fills it, because the SRAT names it from boot.
    kept: bool,
}

/// The slot tables of all segments' bus 0. Segment 0's slot 0 is the host bridge; on the
/// other segments slot 0 is free, for GPUs whose driver wants devfn 0.
///
/// Which slots take hotplug is fixed at boot ([`Self::offer_hotplug_slots`]), because the
/// guest's AML declares them: all of segment 0's but the host bridge's; on another segment
/// all 32, unless it holds GI-ready slots: then only those and its boot devices' slots.
/// A segment made to hold a GPU's slot so costs the guest one slot device, not 32 (each
/// is a namespace device, an acpiphp slot and a config-space probe at boot: 32 such
/// segments doubled L2's time to /init in the nested host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciSlots {
    /// Per segment, per device number: who holds it.
    segments: Vec<Vec<Option<Holder>>>,
    /// Per segment, the slots hotplug may use (bit n = slot n).
    offered: Vec<u32>,
}

impl PciSlots {
    /// Empty tables for `num_segments` segments, the host bridge in its slot.
    pub fn new(num_segments: u16) -> Self {
        let mut segments = vec![vec![None; usize::from(SLOTS_PER_BUS)]; usize::from(num_segments)];
        if let Some(bridge) = segments.first_mut().and_then(|s| s.first_mut()) {
            *bridge = Some(Holder {
                id: HOST_BRIDGE_ID.to_string(),
                kept: true,
            });
        }
        let offered = (0..num_segments)
            .map(|s| if s == 0 { !1 } else { u32::MAX })
            .collect();
        PciSlots { segments, offered }
    }

    /// Fixes which slots take hotplug from what boot placed: a segment other than 0 that
    /// holds GI-ready slots offers only the slots held now.
    pub fn offer_hotplug_slots(&mut self) {
        for (segment, slots) in self.segments.iter().enumerate().skip(1) {
            if !slots.iter().flatten().any(|h| h.kept) {
                continue;
            }
            let held = slots.iter().enumerate().fold(0u32, |mask, (n, e)| {
                if e.is_some() {
                    mask | 1u32.checked_shl(n as u32).unwrap_or(0)
                } else {
                    mask
                }
            });
            if let Some(o) = self.offered.get_mut(segment) {
                *o = held;
            }
        }
    }

    /// The slots of `segment` hotplug may use, as a bitmap (bit n = slot n); 0 for a
    /// segment that does not exist.
    pub fn hotplug_mask(&self, segment: u16) -> u32 {
        self.offered.get(usize::from(segment)).copied().unwrap_or(0)
    }

    /// [`Self::hotplug_mask`] as slot numbers, ascending.
    pub fn hotplug_slots(&self, segment: u16) -> Vec<u8> {
        let mask = self.hotplug_mask(segment);
        (0..SLOTS_PER_BUS)
            .filter(|n| mask & 1u32.checked_shl(u32::from(*n)).unwrap_or(0) != 0)
            .collect()
    }

    /// Gives `id` slot `slot` of `segment` (a pinned device).
    pub fn reserve(&mut self, segment: u16, slot: u8, id: &str) -> Result<Bdf, PlacementError> {
        self.take(segment, Some(slot), id, false)
    }

    /// Gives `id` the lowest free slot of `segment`.
    pub fn allocate(&mut self, segment: u16, id: &str) -> Result<Bdf, PlacementError> {
        self.take(segment, None, id, false)
    }

    /// Reserves a GI-ready slot: its pinned device number or the lowest free one. It
    /// stays reserved when a device that filled it is released.
    pub fn reserve_slot(&mut self, slot: &PciSlotConfig) -> Result<Bdf, PlacementError> {
        self.take(slot.pci_segment, slot.pci_device_id, &slot.id, true)
    }

    /// Places `device` under `id`: in the slot `id` holds (a GI-ready slot, or its own
    /// placed at boot) if its own `pci_segment` and `pci_device_id` agree, else at its
    /// pinned slot, else the lowest free one. Also says whether the slot was taken now
    /// (for the caller to [`Self::release`] if the device then fails to come in).
    pub fn place(
        &mut self,
        device: &DeviceConfig,
        id: &str,
    ) -> Result<(Bdf, bool), PlacementError> {
        if let Some(slot) = self.bdf_of(id) {
            // pci_segment is not optional in CH's DeviceConfig: its default, 0, reads as
            // "unsaid", so `{"id": "gpu0", "path": ...}` is enough to fill gpu0's slot.
            if device.pci_segment != slot.segment && device.pci_segment != 0 {
                return Err(PlacementError::OtherSegment {
                    id: id.to_string(),
                    slot,
                });
            }
            if device.pci_device_id.is_some_and(|d| d != slot.device) {
                return Err(PlacementError::OtherDevice {
                    id: id.to_string(),
                    slot,
                });
            }
            return Ok((slot, false));
        }
        let bdf = self.take(device.pci_segment, device.pci_device_id, id, false)?;
        Ok((bdf, true))
    }

    /// Frees the slot at `bdf`, returning the id that held it; a GI-ready slot stays
    /// reserved (`None`).
    pub fn release(&mut self, bdf: Bdf) -> Option<String> {
        let entry = self
            .segments
            .get_mut(usize::from(bdf.segment))?
            .get_mut(usize::from(bdf.device))?;
        if entry.as_ref().is_some_and(|h| h.kept) {
            return None;
        }
        entry.take().map(|h| h.id)
    }

    /// The slot `id` holds.
    pub fn bdf_of(&self, id: &str) -> Option<Bdf> {
        self.segments
            .iter()
            .enumerate()
            .find_map(|(segment, slots)| {
                let slot = slots
                    .iter()
                    .position(|e| e.as_ref().is_some_and(|h| h.id == id))?;
                Some(bdf(segment as u16, slot as u8))
            })
    }

    /// A generated id no slot holds: `_vfioN`, the lowest such N.
    pub fn unused_id(&self) -> String {
        (0..)
            .map(|n| format!("{GENERATED_ID_PREFIX}{n}"))
            .find(|id| self.bdf_of(id).is_none())
            .unwrap_or_default()
    }

    fn take(
        &mut self,
        segment: u16,
        slot: Option<u8>,
        id: &str,
        kept: bool,
    ) -> Result<Bdf, PlacementError> {
        if self.bdf_of(id).is_some() {
            return Err(PlacementError::IdTaken(id.to_string()));
        }
        let offered = self.hotplug_mask(segment);
        let restricted = segment != 0 && offered != u32::MAX;
        let is_offered = |slot: u8| offered & 1u32.checked_shl(u32::from(slot)).unwrap_or(0) != 0;
        let slots = self
            .segments
            .get_mut(usize::from(segment))
            .ok_or(PlacementError::NoSegment { segment })?;
        let (slot, entry) = match slot {
            Some(slot)
                if restricted
                    && !is_offered(slot)
                    && slots.get(usize::from(slot)).is_some_and(Option::is_none) =>
            {
                return Err(PlacementError::NotHotplug { segment, slot });
            }
            Some(slot) => (
                slot,
                slots
                    .get_mut(usize::from(slot))
                    .filter(|e| e.is_none())
                    .ok_or(PlacementError::Taken { segment, slot })?,
            ),
            None => slots
                .iter_mut()
                .enumerate()
                .find(|(slot, e)| e.is_none() && (!restricted || is_offered(*slot as u8)))
                .map(|(slot, e)| (slot as u8, e))
                .ok_or(if restricted {
                    PlacementError::NoHotplugSlot { segment }
                } else {
                    PlacementError::Full { segment }
                })?,
        };
        *entry = Some(Holder {
            id: id.to_string(),
            kept,
        });
        Ok(bdf(segment, slot))
    }
}

fn bdf(segment: u16, slot: u8) -> Bdf {
    Bdf {
        segment,
        bus: 0,
        device: slot,
        function: 0,
    }
}

/// The id of each configured device: its own, or `_vfioN` with N its place in the
/// configuration (N counting on past ids other devices and slots already have, so a
/// generated id never fills a slot). Written back into the configuration
/// ([`name_devices`]) when a VM is created, so a device keeps its name when others are
/// removed, and across reboots.
pub fn device_ids(config: &VmConfig) -> Vec<String> {
    let mut taken: std::collections::BTreeSet<String> = config
        .devices
        .iter()
        .filter_map(|d| d.id.clone())
        .chain(config.pci_slots.iter().map(|s| s.id.clone()))
        .collect();
    config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.id {
            Some(id) => id.clone(),
            None => {
                let id = (i..)
                    .map(|n| format!("{GENERATED_ID_PREFIX}{n}"))
                    .find(|id| !taken.contains(id))
                    .unwrap_or_default();
                taken.insert(id.clone());
                id
            }
        })
        .collect()
}

/// Gives every configured device without an id its generated one ([`device_ids`]).
pub fn name_devices(config: &mut VmConfig) {
    let ids = device_ids(config);
    for (d, id) in config.devices.iter_mut().zip(ids) {
        d.id.get_or_insert(id);
    }
}

/// A configuration's placement: the slot tables, each device's BDF and each GI-ready
/// slot's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The slot tables, for the device manager to keep.
    pub slots: PciSlots,
    /// The devices, in configuration order.
    pub devices: Vec<PlacedDevice>,
    /// The GI-ready slots, in configuration order.
    pub pci_slots: Vec<PlacedSlot>,
}

/// Places the configuration's GI-ready slots and devices: pinned slots, pinned devices,
/// then the rest (slots, then devices) in configuration order at the lowest free slot of
/// their segment; a device whose id is a slot's goes into that slot. Slots go before
/// unpinned devices so that their BDFs do not move as devices come and go. The same
/// configuration always gives the same BDFs.
pub fn place_devices(config: &VmConfig) -> Result<Placement, ConfigError> {
    let ids = device_ids(config);
    let mut slots = PciSlots::new(config.platform.num_pci_segments);
    let is_slot = |id: &str| config.pci_slots.iter().any(|s| s.id == id);
    let mut slot_bdfs: Vec<Option<Bdf>> = vec![None; config.pci_slots.len()];
    let mut bdfs: Vec<Option<Bdf>> = vec![None; config.devices.len()];
    for pinned in [true, false] {
        for (i, s) in config.pci_slots.iter().enumerate() {
            if s.pci_device_id.is_some() == pinned {
                let bdf = slots
                    .reserve_slot(s)
                    .map_err(|e| e.at(&format!("pci_slots[{i}]")))?;
                if let Some(b) = slot_bdfs.get_mut(i) {
                    *b = Some(bdf);
                }
            }
        }
        for (i, (d, id)) in config.devices.iter().zip(&ids).enumerate() {
            if d.pci_device_id.is_some() == pinned && !is_slot(id) {
                let (bdf, _) = slots
                    .place(d, id)
                    .map_err(|e| e.at(&format!("devices[{i}]")))?;
                if let Some(b) = bdfs.get_mut(i) {
                    *b = Some(bdf);
                }
            }
        }
    }
    for (i, (d, id)) in config.devices.iter().zip(&ids).enumerate() {
        if is_slot(id) {
            let (bdf, _) = slots
                .place(d, id)
                .map_err(|e| e.at(&format!("devices[{i}]")))?;
            if let Some(b) = bdfs.get_mut(i) {
                *b = Some(bdf);
            }
        }
    }
    let devices = ids
        .into_iter()
        .zip(bdfs)
        .enumerate()
        .filter_map(|(config_index, (id, bdf))| {
            Some(PlacedDevice {
                id,
                config_index,
                bdf: bdf?,
            })
        })
        .collect();
    slots.offer_hotplug_slots();
    let pci_slots = config
        .pci_slots
        .iter()
        .zip(slot_bdfs)
        .enumerate()
        .filter_map(|(config_index, (s, bdf))| {
            Some(PlacedSlot {
                id: s.id.clone(),
                config_index,
                bdf: bdf?,
            })
        })
        .collect();
    Ok(Placement {
        slots,
        devices,
        pci_slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: Option<&str>, segment: u16, slot: Option<u8>) -> DeviceConfig {
        DeviceConfig {
            id: id.map(String::from),
            pci_segment: segment,
            pci_device_id: slot,
            ..DeviceConfig::new("/x")
        }
    }

    #[test]
    fn slots_are_reserved_allocated_and_given_back() {
        let mut s = PciSlots::new(2);
        assert_eq!(
            s.bdf_of(HOST_BRIDGE_ID).map(|b| b.to_string()).as_deref(),
            Some("0000:00:00.0")
        );
        assert_eq!(s.allocate(0, "a").unwrap().to_string(), "0000:00:01.0");
        assert_eq!(s.allocate(1, "b").unwrap().to_string(), "0001:00:00.0");
        assert_eq!(s.reserve(0, 3, "c").unwrap().to_string(), "0000:00:03.0");
        assert_eq!(
            s.reserve(0, 3, "d"),
            Err(PlacementError::Taken {
                segment: 0,
                slot: 3
            })
        );
        assert_eq!(
            s.reserve(0, 32, "d"),
            Err(PlacementError::Taken {
                segment: 0,
                slot: 32
            })
        );
        assert_eq!(
            s.allocate(2, "d"),
            Err(PlacementError::NoSegment { segment: 2 })
        );
        assert_eq!(s.allocate(0, "a"), Err(PlacementError::IdTaken("a".into())));
        assert_eq!(s.allocate(0, "d").unwrap().to_string(), "0000:00:02.0");
        assert_eq!(s.allocate(0, "e").unwrap().to_string(), "0000:00:04.0");
        // A freed slot is the lowest free again; the id is free for reuse.
        assert_eq!(s.release(bdf(0, 1)).as_deref(), Some("a"));
        assert_eq!(s.release(bdf(0, 1)), None);
        assert_eq!(s.bdf_of("a"), None);
        assert_eq!(s.allocate(0, "a2").unwrap().to_string(), "0000:00:01.0");
        for n in 5..32 {
            s.allocate(0, &format!("f{n}")).unwrap();
        }
        assert_eq!(s.allocate(0, "g"), Err(PlacementError::Full { segment: 0 }));
    }

    #[test]
    fn generated_ids_keep_the_position_scheme_and_avoid_given_ones() {
        let mut c = VmConfig {
            devices: vec![
                device(None, 0, None),
                device(Some("_vfio2"), 0, None),
                device(None, 0, None),
                device(Some("gpu"), 0, None),
                device(None, 0, None),
            ],
            ..VmConfig::default()
        };
        assert_eq!(
            device_ids(&c),
            ["_vfio0", "_vfio2", "_vfio3", "gpu", "_vfio4"]
        );
        name_devices(&mut c);
        let named: Vec<_> = c.devices.iter().map(|d| d.id.clone().unwrap()).collect();
        assert_eq!(named, ["_vfio0", "_vfio2", "_vfio3", "gpu", "_vfio4"]);
        // Once written back, removing a device renames no other.
        c.devices.remove(0);
        assert_eq!(device_ids(&c), ["_vfio2", "_vfio3", "gpu", "_vfio4"]);
        let mut s = PciSlots::new(1);
        s.allocate(0, "_vfio0").unwrap();
        s.allocate(0, "_vfio1").unwrap();
        assert_eq!(s.unused_id(), "_vfio2");
    }

    #[test]
    fn pinned_devices_are_placed_first() {
        let mut c = VmConfig::default();
        c.platform.num_pci_segments = 2;
        c.devices = vec![
            device(None, 0, None),
            device(Some("p"), 0, Some(1)),
            device(None, 1, None),
        ];
        let Placement {
            slots,
            devices: placed,
            ..
        } = place_devices(&c).unwrap();
        let got: Vec<_> = placed
            .iter()
            .map(|p| (p.id.as_str(), p.config_index, p.bdf.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("_vfio0", 0, "0000:00:02.0".to_string()),
                ("p", 1, "0000:00:01.0".to_string()),
                ("_vfio2", 2, "0001:00:00.0".to_string()),
            ]
        );
        assert_eq!(slots.bdf_of("p"), Some(bdf(0, 1)));
        c.devices.push(device(Some("q"), 0, Some(1)));
        let e = place_devices(&c).unwrap_err();
        assert_eq!(e.field, "devices[3].pci_device_id");
    }

    fn slot(id: &str, segment: u16, device: Option<u8>) -> PciSlotConfig {
        PciSlotConfig {
            id: id.into(),
            pci_segment: segment,
            pci_device_id: device,
        }
    }

    #[test]
    fn gi_ready_slots_are_placed_before_unpinned_devices_and_filled_by_their_id() {
        let mut c = VmConfig::default();
        c.platform.num_pci_segments = 2;
        c.devices = vec![
            device(None, 0, None),
            device(Some("gpu0"), 0, None),
            device(Some("p"), 0, Some(2)),
        ];
        c.pci_slots = vec![
            slot("free", 0, None),
            slot("gpu0", 1, Some(0)),
            slot("_vfio0", 0, None),
        ];
        let p = place_devices(&c).unwrap();
        let got = |v: Vec<(String, Bdf)>| {
            v.into_iter()
                .map(|(id, b)| format!("{id}@{b}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got(p.pci_slots.iter().map(|s| (s.id.clone(), s.bdf)).collect()),
            [
                "free@0000:00:01.0",
                "gpu0@0001:00:00.0",
                "_vfio0@0000:00:03.0"
            ]
        );
        // A generated id avoids slot ids; the device named gpu0 fills gpu0's slot, its
        // pci_segment 0 read as unsaid.
        assert_eq!(
            got(p.devices.iter().map(|d| (d.id.clone(), d.bdf)).collect()),
            ["_vfio1@0000:00:04.0", "gpu0@0001:00:00.0", "p@0000:00:02.0"]
        );
        // Released, a device's slot is free again; a GI-ready slot stays reserved.
        let mut slots = p.slots.clone();
        assert_eq!(slots.release(bdf(0, 4)).as_deref(), Some("_vfio1"));
        assert_eq!(slots.release(bdf(1, 0)), None);
        assert_eq!(slots.bdf_of("gpu0"), Some(bdf(1, 0)));
        assert_eq!(slots.place(&c.devices[1], "gpu0"), Ok((bdf(1, 0), false)));
        // Segment 1 holds a GI-ready slot, so it offers hotplug only there.
        assert_eq!(
            slots.allocate(1, "x"),
            Err(PlacementError::NoHotplugSlot { segment: 1 })
        );
        assert_eq!(slots.allocate(0, "x"), Ok(bdf(0, 4)));
        // The same configuration, the same BDFs.
        assert_eq!(place_devices(&c).unwrap(), p);
    }

    #[test]
    fn a_device_in_a_slot_must_agree_with_it() {
        let mut c = VmConfig::default();
        c.platform.num_pci_segments = 3;
        c.pci_slots = vec![slot("gpu0", 1, Some(0))];
        c.devices = vec![device(Some("gpu0"), 2, None)];
        let e = place_devices(&c).unwrap_err();
        assert_eq!(e.field, "devices[0].pci_segment");
        assert_eq!(
            e.message,
            "`gpu0` has slot 0001:00:00.0 reserved: give pci_segment 1 or leave it at 0"
        );
        c.devices = vec![device(Some("gpu0"), 1, Some(3))];
        assert_eq!(
            place_devices(&c).unwrap_err().field,
            "devices[0].pci_device_id"
        );
        c.devices = vec![device(Some("gpu0"), 1, Some(0))];
        place_devices(&c).unwrap();
        // A slot's pinned device number taken by a pinned device or another slot.
        c.devices = vec![device(Some("d"), 1, Some(0))];
        assert_eq!(
            place_devices(&c).unwrap_err().field,
            "devices[0].pci_device_id"
        );
        c.devices.clear();
        c.pci_slots.push(slot("gpu1", 1, Some(0)));
        let e = place_devices(&c).unwrap_err();
        assert_eq!(e.field, "pci_slots[1].pci_device_id");
        assert_eq!(e.message, "slot 0 on segment 1 is already taken");
    }
}
