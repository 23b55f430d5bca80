//! Typed errors for topology validation and table building.
//!
//! Every variant names the offending entry so an API can point at the field.

use crate::topology::Bdf;

/// Why a topology cannot be turned into tables.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two nodes share an id.
    #[error("nodes[{index}]: node {id} is declared twice")]
    DuplicateNode {
        /// Index of the second declaration.
        index: usize,
        /// The repeated id.
        id: u32,
    },
    /// Node ids are not contiguous from 0.
    #[error("nodes: ids must be contiguous from 0 (the SLIT is indexed by them); node {missing} is missing")]
    NodeIdGap {
        /// The first id absent from 0..len.
        missing: u32,
    },
    /// More nodes than the SRAT/SLIT/HMAT can carry.
    #[error("nodes: {count} nodes, but the tables can carry at most {max}")]
    TooManyNodes {
        /// Declared nodes.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An entry names a node that is not declared.
    #[error("{field}: node {node} does not exist")]
    UnknownNode {
        /// Where the reference is, e.g. `cpus[3].node`.
        field: String,
        /// The missing node.
        node: u32,
    },
    /// A NUMA topology needs every CPU and memory range to say its node.
    #[error("{field}: the topology has NUMA nodes, so this entry must name its node")]
    MissingNode {
        /// Where the node is missing, e.g. `memory[0].node`.
        field: String,
    },
    /// No CPUs at all.
    #[error("cpus: a guest needs at least one CPU")]
    NoCpus,
    /// Two CPUs share an APIC id.
    #[error("cpus[{index}]: APIC id {apic_id} is already used by cpus[{first}]")]
    DuplicateApicId {
        /// Index of the second CPU.
        index: usize,
        /// Index of the first CPU with that id.
        first: usize,
        /// The repeated APIC id.
        apic_id: u32,
    },
    /// APIC id 0xffffffff is the x2APIC broadcast id.
    #[error("cpus[{index}]: APIC id 0xffffffff is the x2APIC broadcast id")]
    BroadcastApicId {
        /// Index of the CPU.
        index: usize,
    },
    /// A memory range is empty or wraps around the address space.
    #[error("memory[{index}]: range base {base:#x} size {size:#x} is empty or overflows")]
    BadMemoryRange {
        /// Index of the range.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// Two memory ranges overlap.
    #[error("memory[{index}]: {base:#x}..{end:#x} overlaps memory[{other}]")]
    OverlappingMemory {
        /// Index of one range.
        index: usize,
        /// Index of the range it overlaps.
        other: usize,
        /// Base of `index`.
        base: u64,
        /// End (exclusive) of `index`.
        end: u64,
    },
    /// Two segments share a number.
    #[error("pci_segments[{index}]: segment {id} is declared twice")]
    DuplicateSegment {
        /// Index of the second declaration.
        index: usize,
        /// The repeated segment.
        id: u16,
    },
    /// More PCI segments than the DSDT names can carry.
    #[error("pci_segments: {count} segments, at most {max} are supported")]
    TooManySegments {
        /// Declared segments.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A segment's bus range, ECAM window or MMIO window is invalid.
    #[error("pci_segments[{index}].{what}")]
    BadSegment {
        /// Index of the segment.
        index: usize,
        /// What is wrong, starting with the field name.
        what: String,
    },
    /// Two devices share an id.
    #[error(
        "pci_devices[{index}]: device `{id}` is already at {first_bdf}; a device has one address"
    )]
    DeviceAtTwoBdfs {
        /// Index of the second declaration.
        index: usize,
        /// The device id.
        id: String,
        /// Where it was first placed.
        first_bdf: Bdf,
    },
    /// Two devices share a BDF.
    #[error("pci_devices[{index}]: {bdf} is already taken by `{other}`")]
    BdfTaken {
        /// Index of the second device.
        index: usize,
        /// The address.
        bdf: Bdf,
        /// The device already there.
        other: String,
    },
    /// A device sits on a segment or bus no host bridge decodes.
    #[error("pci_devices[{index}]: {bdf} is outside every declared PCI segment's bus range")]
    DeviceOutsideSegments {
        /// Index of the device.
        index: usize,
        /// Its address.
        bdf: Bdf,
    },
    /// A device id is empty.
    #[error("pci_devices[{index}].id: must not be empty")]
    EmptyDeviceId {
        /// Index of the device.
        index: usize,
    },
    /// A GI link names a device that is not declared.
    #[error("generic_initiators[{index}].device: `{device}` is not among pci_devices")]
    UnknownDevice {
        /// Index of the link.
        index: usize,
        /// The missing device.
        device: String,
    },
    /// The same device:node link appears twice.
    #[error("generic_initiators[{index}]: `{device}` is already linked to node {node} by generic_initiators[{first}]")]
    DuplicateLink {
        /// Index of the second link.
        index: usize,
        /// Index of the first.
        first: usize,
        /// The device.
        device: String,
        /// The node.
        node: u32,
    },
    /// The distance matrix is not N×N for N nodes.
    #[error("distances: expected a {expected}×{expected} matrix, {what}")]
    DistanceShape {
        /// Number of nodes.
        expected: usize,
        /// What was found instead.
        what: String,
    },
    /// A node's distance to itself is not 10.
    #[error("distances[{node}][{node}]: distance to itself must be 10, not {value}")]
    DistanceDiagonal {
        /// The node.
        node: usize,
        /// The value given.
        value: u8,
    },
    /// A distance between two nodes is out of range.
    #[error("distances[{from}][{to}]: {value} is outside 11..=254")]
    DistanceRange {
        /// Row.
        from: usize,
        /// Column.
        to: usize,
        /// The value given.
        value: u8,
    },
    /// Distances given without nodes.
    #[error("distances: given, but the topology has no NUMA nodes")]
    DistancesWithoutNodes,
    /// An HMAT entry is invalid.
    #[error("hmat[{index}].{what}")]
    BadHmatEntry {
        /// Index of the entry.
        index: usize,
        /// What is wrong, starting with the field name.
        what: String,
    },
    /// An HMAT memory-side cache is invalid.
    #[error("hmat_caches[{index}].{what}")]
    BadHmatCache {
        /// Index of the cache.
        index: usize,
        /// What is wrong, starting with the field name.
        what: String,
    },
    /// HMAT values of one kind cannot share a base unit with 16-bit entries.
    #[error("hmat: {data_type} values {min}..{max} cannot be encoded with one base unit and 16-bit entries")]
    HmatRange {
        /// The data type, snake_case.
        data_type: String,
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
    },
    /// Platform fields are invalid.
    #[error("platform.{what}")]
    BadPlatform {
        /// What is wrong, starting with the field name.
        what: String,
    },
    /// Two guest physical address claims overlap (RAM, ECAM, MMIO windows, platform MMIO).
    #[error("{field}: {base:#x}..{end:#x} overlaps {other}")]
    AddressOverlap {
        /// The later claim, as a field path.
        field: String,
        /// The claim it overlaps, as a field path.
        other: String,
        /// Base of `field`.
        base: u64,
        /// End (exclusive) of `field`.
        end: u64,
    },
    /// A table grew past the 4 GiB its 32-bit length field can describe.
    #[error(
        "{signature}: the table would be {len} bytes, more than its 32-bit length can describe"
    )]
    TableTooLarge {
        /// Table signature.
        signature: String,
        /// Its length.
        len: u64,
    },
}

impl Error {
    /// The topology field the error is about, as a JSON-path-like string
    /// (`cpus[2].node`, `distances[1][0]`), for API error bodies.
    pub fn field(&self) -> String {
        match self {
            Error::DuplicateNode { index, .. } => format!("nodes[{index}].id"),
            Error::NodeIdGap { .. } | Error::TooManyNodes { .. } => "nodes".into(),
            Error::UnknownNode { field, .. } | Error::MissingNode { field } => field.clone(),
            Error::NoCpus => "cpus".into(),
            Error::DuplicateApicId { index, .. } | Error::BroadcastApicId { index } => {
                format!("cpus[{index}].apic_id")
            }
            Error::BadMemoryRange { index, .. } | Error::OverlappingMemory { index, .. } => {
                format!("memory[{index}]")
            }
            Error::DuplicateSegment { index, .. } => format!("pci_segments[{index}].id"),
            Error::TooManySegments { .. } => "pci_segments".into(),
            Error::BadSegment { index, what } => {
                let name = what.split(':').next().unwrap_or_default();
                format!("pci_segments[{index}].{name}")
            }
            Error::DeviceAtTwoBdfs { index, .. } | Error::EmptyDeviceId { index } => {
                format!("pci_devices[{index}].id")
            }
            Error::BdfTaken { index, .. } | Error::DeviceOutsideSegments { index, .. } => {
                format!("pci_devices[{index}].bdf")
            }
            Error::UnknownDevice { index, .. } => format!("generic_initiators[{index}].device"),
            Error::DuplicateLink { index, .. } => format!("generic_initiators[{index}]"),
            Error::DistanceShape { .. } | Error::DistancesWithoutNodes => "distances".into(),
            Error::DistanceDiagonal { node, .. } => format!("distances[{node}][{node}]"),
            Error::DistanceRange { from, to, .. } => format!("distances[{from}][{to}]"),
            Error::BadHmatEntry { index, what } => {
                let name = what.split(':').next().unwrap_or_default();
                format!("hmat[{index}].{name}")
            }
            Error::BadHmatCache { index, what } => {
                let name = what.split(':').next().unwrap_or_default();
                format!("hmat_caches[{index}].{name}")
            }
            Error::HmatRange { .. } => "hmat".into(),
            Error::BadPlatform { what } => {
                let name = what.split(':').next().unwrap_or_default();
                format!("platform.{name}")
            }
            Error::AddressOverlap { field, .. } => field.clone(),
            Error::TableTooLarge { .. } => "".into(),
        }
    }
}
