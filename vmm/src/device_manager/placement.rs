//! Where PCI devices go and what they are called: every segment's slot table (device
//! number → the id holding it, whether or not a device fills it yet) and the ids
//! generated for devices configured without one.
//!
//! Pure: no KVM, no host. `guest_topology` places a configuration's devices with it, so
//! the ACPI tables name the BDFs the devices get; the device manager keeps the table it
//! made for the VM's life, to place the devices that come later.

use tessera_acpi::Bdf;
use tessera_api::config::{ConfigError, DeviceConfig, VmConfig, HOST_BRIDGE_ID};

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

/// Why a device cannot have the slot it asks for.
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
    /// The id already holds a slot.
    #[error("a device with id `{0}` already exists")]
    IdTaken(String),
}

/// The slot tables of all segments' bus 0. Segment 0's slot 0 is the host bridge; on the
/// other segments slot 0 is free, for GPUs whose driver wants devfn 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciSlots {
    /// Per segment, per device number: the id holding it.
    segments: Vec<Vec<Option<String>>>,
}

impl PciSlots {
    /// Empty tables for `num_segments` segments, the host bridge in its slot.
    pub fn new(num_segments: u16) -> Self {
        let mut segments = vec![vec![None; usize::from(SLOTS_PER_BUS)]; usize::from(num_segments)];
        if let Some(bridge) = segments.first_mut().and_then(|s| s.first_mut()) {
            *bridge = Some(HOST_BRIDGE_ID.to_string());
        }
        PciSlots { segments }
    }

    /// Gives `id` slot `slot` of `segment` (a pinned device).
    pub fn reserve(&mut self, segment: u16, slot: u8, id: &str) -> Result<Bdf, PlacementError> {
        self.check_id(id)?;
        let entry = self
            .segments
            .get_mut(usize::from(segment))
            .ok_or(PlacementError::NoSegment { segment })?
            .get_mut(usize::from(slot))
            .filter(|e| e.is_none())
            .ok_or(PlacementError::Taken { segment, slot })?;
        *entry = Some(id.to_string());
        Ok(bdf(segment, slot))
    }

    /// Gives `id` the lowest free slot of `segment`.
    pub fn allocate(&mut self, segment: u16, id: &str) -> Result<Bdf, PlacementError> {
        self.check_id(id)?;
        let slots = self
            .segments
            .get_mut(usize::from(segment))
            .ok_or(PlacementError::NoSegment { segment })?;
        let (slot, entry) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, e)| e.is_none())
            .ok_or(PlacementError::Full { segment })?;
        *entry = Some(id.to_string());
        Ok(bdf(segment, slot as u8))
    }

    /// Places `device` under `id`: at its pinned slot, or the lowest free one.
    pub fn place(&mut self, device: &DeviceConfig, id: &str) -> Result<Bdf, PlacementError> {
        match device.pci_device_id {
            Some(slot) => self.reserve(device.pci_segment, slot, id),
            None => self.allocate(device.pci_segment, id),
        }
    }

    /// Frees the slot at `bdf`, returning the id that held it.
    pub fn release(&mut self, bdf: Bdf) -> Option<String> {
        self.segments
            .get_mut(usize::from(bdf.segment))?
            .get_mut(usize::from(bdf.device))?
            .take()
    }

    /// The slot `id` holds.
    pub fn bdf_of(&self, id: &str) -> Option<Bdf> {
        self.segments
            .iter()
            .enumerate()
            .find_map(|(segment, slots)| {
                let slot = slots.iter().position(|e| e.as_deref() == Some(id))?;
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

    fn check_id(&self, id: &str) -> Result<(), PlacementError> {
        match self.bdf_of(id) {
            Some(_) => Err(PlacementError::IdTaken(id.to_string())),
            None => Ok(()),
        }
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
/// configuration (N counting on past ids other devices already have). Written back into
/// the configuration ([`name_devices`]) when a VM is created, so a device keeps its name
/// when others are removed, and across reboots.
pub fn device_ids(config: &VmConfig) -> Vec<String> {
    let mut taken: std::collections::BTreeSet<String> =
        config.devices.iter().filter_map(|d| d.id.clone()).collect();
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

/// Places the configuration's devices: pinned slots first, then the rest in configuration
/// order at the lowest free slot of their segment. The same configuration always gives
/// the same BDFs.
pub fn place_devices(config: &VmConfig) -> Result<(PciSlots, Vec<PlacedDevice>), ConfigError> {
    let ids = device_ids(config);
    let mut slots = PciSlots::new(config.platform.num_pci_segments);
    let mut bdfs: Vec<Option<Bdf>> = vec![None; config.devices.len()];
    let pinned_first = config
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.pci_device_id.is_some())
        .chain(
            config
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.pci_device_id.is_none()),
        );
    for ((i, d), id) in pinned_first.filter_map(|(i, d)| Some(((i, d), ids.get(i)?))) {
        let bdf = slots.place(d, id).map_err(|e| {
            let field = match e {
                PlacementError::Taken { .. } => format!("devices[{i}].pci_device_id"),
                PlacementError::NoSegment { .. } => format!("devices[{i}].pci_segment"),
                PlacementError::IdTaken(_) => format!("devices[{i}].id"),
                PlacementError::Full { .. } => format!("devices[{i}]"),
            };
            ConfigError {
                field,
                message: e.to_string(),
            }
        })?;
        if let Some(b) = bdfs.get_mut(i) {
            *b = Some(bdf);
        }
    }
    let placed = ids
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
    Ok((slots, placed))
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
        let (slots, placed) = place_devices(&c).unwrap();
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
}
