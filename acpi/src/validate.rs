//! Whole-topology validation, run before any byte is encoded.
//!
//! Produces [`Facts`]: what each node turns out to hold, which the table builders use
//! instead of re-deriving it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::Error;
use crate::topology::{Bdf, HmatDataType, PciHotplug, Topology};

/// The most NUMA nodes the tables can carry: the SLIT has one byte per node pair and a
/// 32-bit length, so 65535² + 44 bytes is its limit.
pub const MAX_NODES: usize = 65535;

/// The most PCI segments: the DSDT names host bridges `PC00`..`PCFF`.
pub const MAX_SEGMENTS: usize = 256;

/// What a valid topology's nodes hold.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Nodes with at least one CPU.
    pub cpu_nodes: BTreeSet<u32>,
    /// Nodes named by at least one memory range, enabled or not (HMAT targets).
    pub memory_nodes: BTreeSet<u32>,
    /// Nodes with at least one Generic Initiator link.
    pub gi_nodes: BTreeSet<u32>,
    /// HMAT values grouped by data type, in table units.
    pub hmat: BTreeMap<HmatDataType, crate::hmat::Encoded>,
}

impl Facts {
    /// Nodes that can be HMAT initiators: those with CPUs or Generic Initiators.
    pub fn initiator_nodes(&self) -> BTreeSet<u32> {
        self.cpu_nodes.union(&self.gi_nodes).copied().collect()
    }
}

/// Checks the whole topology; the first problem found is returned.
pub fn validate(topology: &Topology) -> Result<(), Error> {
    check(topology).map(|_| ())
}

pub(crate) fn check(t: &Topology) -> Result<Facts, Error> {
    let mut facts = Facts::default();
    let node_count = check_nodes(t)?;
    let numa = node_count > 0;
    // The field path is only formatted when there is an error to report.
    let node_ref = |field: &dyn Fn() -> String, node: Option<u32>| match node {
        Some(n) if (n as usize) < node_count => Ok(Some(n)),
        Some(n) => Err(Error::UnknownNode {
            field: field(),
            node: n,
        }),
        None if numa => Err(Error::MissingNode { field: field() }),
        None => Ok(None),
    };

    if t.cpus.is_empty() {
        return Err(Error::NoCpus);
    }
    if let Some((first, index)) = first_duplicate(t.cpus.iter().map(|c| c.apic_id)) {
        return Err(Error::DuplicateApicId {
            index,
            first,
            apic_id: t.cpus.get(index).map_or(0, |c| c.apic_id),
        });
    }
    for (index, cpu) in t.cpus.iter().enumerate() {
        if cpu.apic_id == u32::MAX {
            return Err(Error::BroadcastApicId { index });
        }
        if let Some(n) = node_ref(&|| format!("cpus[{index}].node"), cpu.node)? {
            facts.cpu_nodes.insert(n);
        }
    }

    check_memory(t)?;
    for (index, range) in t.memory.iter().enumerate() {
        if let Some(n) = node_ref(&|| format!("memory[{index}].node"), range.node)? {
            facts.memory_nodes.insert(n);
        }
    }

    check_segments(t, node_count)?;
    let devices = check_devices(t)?;

    let mut link_keys = Vec::with_capacity(t.generic_initiators.len());
    for (index, link) in t.generic_initiators.iter().enumerate() {
        let Some(&device) = devices.get(link.device.as_str()) else {
            return Err(Error::UnknownDevice {
                index,
                device: link.device.clone(),
            });
        };
        if (link.node as usize) >= node_count {
            return Err(Error::UnknownNode {
                field: format!("generic_initiators[{index}].node"),
                node: link.node,
            });
        }
        link_keys.push((device, link.node));
        facts.gi_nodes.insert(link.node);
    }
    if let Some((first, index)) = first_duplicate(link_keys.into_iter()) {
        let link = t.generic_initiators.get(index);
        return Err(Error::DuplicateLink {
            index,
            first,
            device: link.map(|l| l.device.clone()).unwrap_or_default(),
            node: link.map_or(0, |l| l.node),
        });
    }

    check_address_map(t)?;
    check_distances(t, node_count)?;
    facts.hmat = check_hmat(t, &facts)?;
    check_hmat_caches(t, &facts)?;
    check_platform(t)?;
    Ok(facts)
}

fn check_nodes(t: &Topology) -> Result<usize, Error> {
    let count = t.nodes.len();
    if count > MAX_NODES {
        return Err(Error::TooManyNodes {
            count,
            max: MAX_NODES,
        });
    }
    let mut seen = BTreeSet::new();
    for (index, node) in t.nodes.iter().enumerate() {
        if !seen.insert(node.id) {
            return Err(Error::DuplicateNode { index, id: node.id });
        }
    }
    // With unique ids, contiguity from 0 means the largest id is count - 1.
    if let Some(missing) = (0..count as u32).find(|id| !seen.contains(id)) {
        return Err(Error::NodeIdGap { missing });
    }
    Ok(count)
}

fn check_memory(t: &Topology) -> Result<(), Error> {
    let mut spans = Vec::with_capacity(t.memory.len());
    for (index, r) in t.memory.iter().enumerate() {
        let end =
            r.base
                .checked_add(r.size)
                .filter(|_| r.size > 0)
                .ok_or(Error::BadMemoryRange {
                    index,
                    base: r.base,
                    size: r.size,
                })?;
        spans.push((r.base, end, index));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if let [(_, end_a, a), (base_b, end_b, b)] = pair {
            if base_b < end_a {
                return Err(Error::OverlappingMemory {
                    index: *b,
                    other: *a,
                    base: *base_b,
                    end: *end_b,
                });
            }
        }
    }
    Ok(())
}

fn check_segments(t: &Topology, node_count: usize) -> Result<(), Error> {
    if t.pci_segments.len() > MAX_SEGMENTS {
        return Err(Error::TooManySegments {
            count: t.pci_segments.len(),
            max: MAX_SEGMENTS,
        });
    }
    let mut ids = BTreeSet::new();
    for (index, s) in t.pci_segments.iter().enumerate() {
        let bad = |what: String| Error::BadSegment { index, what };
        if !ids.insert(s.id) {
            return Err(Error::DuplicateSegment { index, id: s.id });
        }
        if s.start_bus > s.end_bus {
            return Err(bad(format!(
                "end_bus: {} is below start_bus {}",
                s.end_bus, s.start_bus
            )));
        }
        if s.ecam_base % (1 << 20) != 0 {
            return Err(bad(format!(
                "ecam_base: {:#x} is not 1 MiB aligned",
                s.ecam_base
            )));
        }
        let ecam_end = (u64::from(s.end_bus) + 1) << 20;
        if s.ecam_base.checked_add(ecam_end).is_none() {
            return Err(bad(format!(
                "ecam_base: {:#x} leaves no room for buses up to {}",
                s.ecam_base, s.end_bus
            )));
        }
        match s.mmio32.last() {
            Some(last) if last <= u64::from(u32::MAX) => {}
            _ => {
                return Err(bad(format!(
                    "mmio32: window {:#x}+{:#x} must be non-empty and below 4 GiB",
                    s.mmio32.base, s.mmio32.size
                )))
            }
        }
        if let Some(w) = s.mmio64 {
            if w.last().is_none() {
                return Err(bad(format!(
                    "mmio64: window {:#x}+{:#x} is empty or overflows",
                    w.base, w.size
                )));
            }
        }
        if let Some(w) = s.io {
            match w.last() {
                Some(last) if last <= 0xffff => {}
                _ => {
                    return Err(bad(format!(
                        "io: window {:#x}+{:#x} must be non-empty and within 0..=0xffff",
                        w.base, w.size
                    )))
                }
            }
        }
        if let Some(n) = s.node {
            if n as usize >= node_count {
                return Err(Error::UnknownNode {
                    field: format!("pci_segments[{index}].node"),
                    node: n,
                });
            }
        }
        let mut slots = BTreeSet::new();
        for (i, &slot) in s.hotplug_slots.iter().enumerate() {
            if slot > 31 {
                return Err(bad(format!("hotplug_slots[{i}]: slot {slot} is above 31")));
            }
            if !slots.insert(slot) {
                return Err(bad(format!(
                    "hotplug_slots[{i}]: slot {slot} is listed twice"
                )));
            }
        }
        if !slots.is_empty() && t.platform.pci_hotplug.is_none() {
            return Err(bad(
                "hotplug_slots: hotplug slots need platform.pci_hotplug, the controller \
                 their AML drives"
                    .into(),
            ));
        }
        let mut routes = BTreeSet::new();
        for (r, route) in s.intx_routes.iter().enumerate() {
            if route.device > 31 {
                return Err(bad(format!(
                    "intx_routes[{r}].device: {} is above 31",
                    route.device
                )));
            }
            if !routes.insert((route.device, route.pin.index())) {
                return Err(bad(format!(
                    "intx_routes[{r}]: device {} pin {:?} is routed twice",
                    route.device, route.pin
                )));
            }
        }
    }
    Ok(())
}

/// Returns device id → index in `pci_devices`.
/// Memory ranges, ECAM and MMIO windows and platform MMIO must not overlap: the guest
/// would see RAM and devices at the same address. (Port I/O windows are a separate
/// space, and memory ranges were already checked against each other.)
fn check_address_map(t: &Topology) -> Result<(), Error> {
    let mut claims: Vec<(u64, u64, String)> = Vec::new();
    let mut claim = |base: u64, size: u64, field: &dyn Fn() -> String| {
        if let Some(end) = base.checked_add(size) {
            claims.push((base, end, field()));
        }
    };
    for (i, r) in t.memory.iter().enumerate() {
        claim(r.base, r.size, &|| format!("memory[{i}]"));
    }
    for (i, s) in t.pci_segments.iter().enumerate() {
        let first_bus = s.ecam_base + (u64::from(s.start_bus) << 20);
        let buses = u64::from(s.end_bus - s.start_bus) + 1;
        claim(first_bus, buses << 20, &|| {
            format!("pci_segments[{i}].ecam_base")
        });
        claim(s.mmio32.base, s.mmio32.size, &|| {
            format!("pci_segments[{i}].mmio32")
        });
        if let Some(w) = s.mmio64 {
            claim(w.base, w.size, &|| format!("pci_segments[{i}].mmio64"));
        }
    }
    let p = &t.platform;
    claim(u64::from(p.lapic_address), 0x1000, &|| {
        "platform.lapic_address".into()
    });
    for (i, io) in p.ioapics.iter().enumerate() {
        claim(u64::from(io.address), 0x1000, &|| {
            format!("platform.ioapics[{i}].address")
        });
    }
    if let Some(ged) = p.ged {
        claim(ged.mmio_base, 4, &|| "platform.ged.mmio_base".into());
    }
    if let Some(hp) = p.pci_hotplug {
        claim(hp.mmio_base, hp.mmio_len, &|| {
            "platform.pci_hotplug.mmio_base".into()
        });
    }
    claims.sort_unstable_by_key(|c| (c.0, c.1));
    for pair in claims.windows(2) {
        if let [(_, end_a, a), (base_b, end_b, b)] = pair {
            if base_b < end_a {
                return Err(Error::AddressOverlap {
                    field: b.clone(),
                    other: a.clone(),
                    base: *base_b,
                    end: *end_b,
                });
            }
        }
    }
    Ok(())
}

fn check_devices(t: &Topology) -> Result<HashMap<&str, usize>, Error> {
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(t.pci_devices.len());
    let mut by_bdf: BTreeMap<Bdf, &str> = BTreeMap::new();
    for (index, d) in t.pci_devices.iter().enumerate() {
        if d.id.is_empty() {
            return Err(Error::EmptyDeviceId { index });
        }
        if let Some(first) = by_id.get(d.id.as_str()) {
            return Err(Error::DeviceAtTwoBdfs {
                index,
                id: d.id.clone(),
                first_bdf: t.pci_devices.get(*first).map_or(d.bdf, |f| f.bdf),
            });
        }
        if let Some(other) = by_bdf.get(&d.bdf) {
            return Err(Error::BdfTaken {
                index,
                bdf: d.bdf,
                other: (*other).to_string(),
            });
        }
        // Without declared segments the caller describes someone else's PCI tree
        // (e.g. tables handed to another VMM), so only check what is declared.
        if !t.pci_segments.is_empty()
            && !t
                .pci_segments
                .iter()
                .any(|s| s.id == d.bdf.segment && (s.start_bus..=s.end_bus).contains(&d.bdf.bus))
        {
            return Err(Error::DeviceOutsideSegments { index, bdf: d.bdf });
        }
        by_id.insert(d.id.as_str(), index);
        by_bdf.insert(d.bdf, &d.id);
    }
    Ok(by_id)
}

fn check_distances(t: &Topology, node_count: usize) -> Result<(), Error> {
    let Some(matrix) = &t.distances else {
        return Ok(());
    };
    if node_count == 0 {
        return Err(Error::DistancesWithoutNodes);
    }
    if matrix.len() != node_count {
        return Err(Error::DistanceShape {
            expected: node_count,
            what: format!("got {} rows", matrix.len()),
        });
    }
    for (from, row) in matrix.iter().enumerate() {
        if row.len() != node_count {
            return Err(Error::DistanceShape {
                expected: node_count,
                what: format!("row {from} has {} entries", row.len()),
            });
        }
        for (to, &value) in row.iter().enumerate() {
            if from == to && value != 10 {
                return Err(Error::DistanceDiagonal { node: from, value });
            }
            if from != to && !(11..=254).contains(&value) {
                return Err(Error::DistanceRange { from, to, value });
            }
        }
    }
    Ok(())
}

fn check_hmat(
    t: &Topology,
    facts: &Facts,
) -> Result<BTreeMap<HmatDataType, crate::hmat::Encoded>, Error> {
    let initiators = facts.initiator_nodes();
    for (index, e) in t.hmat.iter().enumerate() {
        let bad = |what: String| Error::BadHmatEntry { index, what };
        if (e.initiator as usize) >= t.nodes.len() {
            return Err(Error::UnknownNode {
                field: format!("hmat[{index}].initiator"),
                node: e.initiator,
            });
        }
        if (e.target as usize) >= t.nodes.len() {
            return Err(Error::UnknownNode {
                field: format!("hmat[{index}].target"),
                node: e.target,
            });
        }
        if !initiators.contains(&e.initiator) {
            return Err(bad(format!(
                "initiator: node {} has neither CPUs nor Generic Initiators",
                e.initiator
            )));
        }
        if !facts.memory_nodes.contains(&e.target) {
            return Err(bad(format!("target: node {} has no memory", e.target)));
        }
        if e.value == 0 {
            return Err(bad("value: must be non-zero".into()));
        }
    }
    if let Some((first, index)) =
        first_duplicate(t.hmat.iter().map(|e| (e.initiator, e.target, e.data_type)))
    {
        let e = t.hmat.get(index);
        return Err(Error::BadHmatEntry {
            index,
            what: format!(
                "data_type: node {} → node {} {:?} is already given by hmat[{first}]",
                e.map_or(0, |e| e.initiator),
                e.map_or(0, |e| e.target),
                e.map(|e| e.data_type),
            ),
        });
    }
    // Each data type's values must share one base unit with 16-bit entries.
    crate::hmat::encoded_values(t)
}

/// QEMU's `hmat-cache` rules: the node has memory and latency/bandwidth values (as a
/// target), levels 1..=3 given once each and without gaps, each level larger than the
/// one below it.
fn check_hmat_caches(t: &Topology, facts: &Facts) -> Result<(), Error> {
    for (index, c) in t.hmat_caches.iter().enumerate() {
        let bad = |what: String| Error::BadHmatCache { index, what };
        if (c.node as usize) >= t.nodes.len() {
            return Err(Error::UnknownNode {
                field: format!("hmat_caches[{index}].node"),
                node: c.node,
            });
        }
        if !facts.memory_nodes.contains(&c.node) {
            return Err(bad(format!("node: node {} has no memory", c.node)));
        }
        // As QEMU: a cache is an attribute of a target the HMAT already describes.
        if !t.hmat.iter().any(|e| e.target == c.node) {
            return Err(bad(format!(
                "node: node {} has no hmat values as a target; give its latency or \
                 bandwidth first",
                c.node
            )));
        }
        if !(1..=3).contains(&c.level) {
            return Err(bad(format!("level: {} is not 1, 2 or 3", c.level)));
        }
        if c.size == 0 {
            return Err(bad("size: must be non-zero".into()));
        }
    }
    if let Some((first, index)) = first_duplicate(t.hmat_caches.iter().map(|c| (c.node, c.level))) {
        let c = t.hmat_caches.get(index);
        return Err(Error::BadHmatCache {
            index,
            what: format!(
                "level: node {} level {} is already given by hmat_caches[{first}]",
                c.map_or(0, |c| c.node),
                c.map_or(0, |c| c.level)
            ),
        });
    }
    for (index, c) in t.hmat_caches.iter().enumerate() {
        let level = |l: u8| {
            t.hmat_caches
                .iter()
                .find(|o| o.node == c.node && o.level == l)
        };
        if c.level > 1 {
            match level(c.level - 1) {
                None => {
                    return Err(Error::BadHmatCache {
                        index,
                        what: format!(
                            "level: node {} has level {} but no level {}",
                            c.node,
                            c.level,
                            c.level - 1
                        ),
                    })
                }
                Some(below) if below.size >= c.size => {
                    return Err(Error::BadHmatCache {
                        index,
                        what: format!(
                            "size: level {} ({} bytes) must be larger than level {} ({} bytes)",
                            c.level, c.size, below.level, below.size
                        ),
                    })
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// The earliest repeat in input order: `(first index, repeating index)`. Sorting instead
/// of hashing keeps validation of large topologies cheap.
fn first_duplicate<K: Ord>(keys: impl Iterator<Item = K>) -> Option<(usize, usize)> {
    let mut keyed: Vec<(K, usize)> = keys.enumerate().map(|(i, k)| (k, i)).collect();
    keyed.sort_unstable();
    keyed
        .windows(2)
        .filter_map(|w| match w {
            [(a, first), (b, second)] if a == b => Some((*first, *second)),
            _ => None,
        })
        .min_by_key(|&(_, second)| second)
}

fn check_platform(t: &Topology) -> Result<(), Error> {
    let p = &t.platform;
    if p.oem_id.is_empty() || p.oem_id.len() > 6 || !p.oem_id.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(Error::BadPlatform {
            what: format!(
                "oem_id: `{}` must be 1 to 6 printable ASCII characters",
                p.oem_id
            ),
        });
    }
    if let Some(ged) = p.ged {
        for (name, bit) in [
            ("power_button_event", ged.power_button_event),
            ("pci_hotplug_event", ged.pci_hotplug_event),
        ] {
            if !bit.is_power_of_two() {
                return Err(Error::BadPlatform {
                    what: format!("ged.{name}: {bit:#x} must be a single bit"),
                });
            }
        }
        if ged.power_button_event == ged.pci_hotplug_event {
            return Err(Error::BadPlatform {
                what: format!(
                    "ged.pci_hotplug_event: {:#x} is already the power button's bit",
                    ged.pci_hotplug_event
                ),
            });
        }
    }
    if let Some(hp) = p.pci_hotplug {
        check_pci_hotplug(&hp, p.ged.is_some())?;
    }
    let mut ids = BTreeSet::new();
    for (i, io) in p.ioapics.iter().enumerate() {
        if !ids.insert(io.id) {
            return Err(Error::BadPlatform {
                what: format!("ioapics[{i}].id: I/O APIC id {} is used twice", io.id),
            });
        }
    }
    Ok(())
}

fn check_pci_hotplug(hp: &PciHotplug, has_ged: bool) -> Result<(), Error> {
    let bad = |what: String| Error::BadPlatform {
        what: format!("pci_hotplug.{what}"),
    };
    if !has_ged {
        return Err(bad(
            "mmio_base: the hotplug controller needs platform.ged, whose interrupt \
             announces slot changes"
                .into(),
        ));
    }
    if hp.mmio_len == 0 || hp.mmio_base.checked_add(hp.mmio_len).is_none() {
        return Err(bad(format!(
            "mmio_len: the block {:#x}+{:#x} is empty or overflows",
            hp.mmio_base, hp.mmio_len
        )));
    }
    let registers = hp.registers.named();
    for (i, (_, name, offset)) in registers.iter().enumerate() {
        if offset % 4 != 0 || offset.checked_add(4).is_none_or(|end| end > hp.mmio_len) {
            return Err(bad(format!(
                "registers.{name}: offset {offset:#x} must be 4-byte aligned with the 32-bit \
                 register inside the {:#x}-byte block",
                hp.mmio_len
            )));
        }
        if let Some((_, other, _)) = registers.iter().take(i).find(|r| r.2 == *offset) {
            return Err(bad(format!(
                "registers.{name}: offset {offset:#x} is already {other}'s"
            )));
        }
    }
    Ok(())
}
