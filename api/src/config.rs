//! The VM configuration: Cloud Hypervisor's `VmConfig` for the fields Tessera supports,
//! plus `generic_initiators`, and [`VmConfig::validate`], the checks that need no host.
//!
//! Unknown fields are refused by name, never ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A whole VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM, possibly split into zones for NUMA nodes.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// The COM1 16550 UART.
    #[serde(default)]
    pub serial: ConsoleConfig,
    /// Cloud Hypervisor's virtio console. Tessera has none yet: only `Off`, `Null` and
    /// `Tty` (CH's default, kept so CH's configurations load) are accepted, and all three
    /// mean no device; the serial port carries the guest's console.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// PCI devices passed through with VFIO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    /// Guest NUMA nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa: Vec<NumaConfig>,
    /// Generic Initiator links from a device to NUMA nodes (Tessera extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generic_initiators: Vec<GenericInitiatorConfig>,
    /// Platform options.
    #[serde(default)]
    pub platform: PlatformConfig,
}

/// vCPU counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs running at boot.
    pub boot_vcpus: u32,
    /// vCPUs the guest may ever have.
    pub max_vcpus: u32,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        }
    }
}

/// Guest RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes of RAM outside zones; must be 0 when `zones` are given (as in CH).
    pub size: u64,
    /// Map guest RAM shared (MAP_SHARED).
    #[serde(default)]
    pub shared: bool,
    /// Back guest RAM with hugepages.
    #[serde(default)]
    pub hugepages: bool,
    /// Hugepage size in bytes (default: the host's default hugepage size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Touch all of guest RAM before boot.
    #[serde(default)]
    pub prefault: bool,
    /// RAM zones, each given to at most one NUMA node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<MemoryZoneConfig>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: 512 << 20,
            shared: false,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            zones: Vec::new(),
        }
    }
}

/// A RAM zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryZoneConfig {
    /// Name NUMA nodes refer to it by.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// Map shared (MAP_SHARED).
    #[serde(default)]
    pub shared: bool,
    /// Back with hugepages.
    #[serde(default)]
    pub hugepages: bool,
    /// Hugepage size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Bind the zone's memory to this host NUMA node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
    /// Touch the zone's memory before boot.
    #[serde(default)]
    pub prefault: bool,
}

/// What to boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// A bzImage (Linux 64-bit boot protocol) or an ELF vmlinux with a PVH note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Initramfs image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// Where a console's bytes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device at all.
    Off,
    /// A new pseudo-terminal.
    Pty,
    /// The VMM's standard input and output.
    #[default]
    Tty,
    /// Append to `file`.
    File,
    /// A Unix socket at `socket`.
    Socket,
    /// The device exists; its output is discarded.
    Null,
}

/// A console (the serial port).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the bytes go.
    pub mode: ConsoleMode,
    /// The file for `File` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The socket for `Socket` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// A VFIO device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `/sys/bus/pci/devices/BDF` or `/sys/bus/mdev/devices/UUID`.
    pub path: PathBuf,
    /// Name GI links and NUMA nodes refer to it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// PCI segment to place the device on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segment: Option<u16>,
    /// Device number on the segment's root bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

/// A guest NUMA node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaConfig {
    /// The node id (ACPI proximity domain).
    pub guest_numa_id: u32,
    /// vCPU indexes in the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u32>,
    /// Distances to other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distances: Vec<NumaDistance>,
    /// Memory zones in the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_zones: Vec<String>,
    /// PCI segments whose host bridges belong to the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_segments: Vec<u16>,
    /// A device whose Generic Initiator this node is (CH's form of one GI link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// Distance from a node to `destination`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaDistance {
    /// The other node.
    pub destination: u32,
    /// SLIT distance, 11..=254.
    pub distance: u32,
}

/// Generic Initiator links from one device: `{device, node}` as QEMU's
/// `acpi-generic-initiator` object, or `{device, nodes: "2-9"}` as libvirt's
/// `<acpi nodeset='2-9'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericInitiatorConfig {
    /// Optional name of this link (QEMU's object id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The device's id.
    pub device: String,
    /// One node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// A node set such as `2-9` or `2,4,6-7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
}

/// Platform options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// PCI segments, each with its own host bridge and ECAM window.
    pub num_pci_segments: u16,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            num_pci_segments: 1,
        }
    }
}

/// The id of segment 0's PCI host bridge (guest `0000:00:00.0`), a device every VM has:
/// Generic Initiator links and `numa[].device_id` may name it like a configured device.
pub const HOST_BRIDGE_ID: &str = "_host_bridge";

/// What is wrong with a configuration, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, as a JSON path (`numa[1].memory_zones[0]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a node set: comma-separated ids and inclusive ranges, `2-9,12`.
pub fn parse_node_set(s: &str) -> Result<Vec<u32>, String> {
    let mut nodes = BTreeSet::new();
    for part in s.split(',') {
        let part = part.trim();
        let parse = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{x}` in `{s}` is not a node number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("range `{part}` in `{s}` runs backwards"));
                }
                if b - a >= 65536 {
                    return Err(format!("range `{part}` in `{s}` is too large"));
                }
                nodes.extend(a..=b);
            }
            None => {
                nodes.insert(parse(part)?);
            }
        }
    }
    Ok(nodes.into_iter().collect())
}

impl GenericInitiatorConfig {
    /// The nodes this entry links its device to, whichever form it uses.
    pub fn node_list(&self, field: &str) -> Result<Vec<u32>, ConfigError> {
        match (self.node, &self.nodes) {
            (Some(n), None) => Ok(vec![n]),
            (None, Some(set)) => {
                parse_node_set(set).map_err(|m| ConfigError::new(format!("{field}.nodes"), m))
            }
            (Some(_), Some(_)) => Err(ConfigError::new(field, "give `node` or `nodes`, not both")),
            (None, None) => Err(ConfigError::new(field, "needs `node` or `nodes`")),
        }
    }
}

impl VmConfig {
    /// The checks that need no host: counts, references between sections, and
    /// uniqueness. Host checks (files, memory, devices) are the VMM's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cpus;
        if c.boot_vcpus == 0 {
            return Err(ConfigError::new("cpus.boot_vcpus", "must be at least 1"));
        }
        if c.max_vcpus < c.boot_vcpus {
            return Err(ConfigError::new(
                "cpus.max_vcpus",
                format!("{} is below boot_vcpus {}", c.max_vcpus, c.boot_vcpus),
            ));
        }
        if self.payload.kernel.is_none() {
            return Err(ConfigError::new("payload.kernel", "a kernel is required"));
        }
        self.validate_console()?;

        let m = &self.memory;
        if !m.zones.is_empty() && m.size != 0 {
            return Err(ConfigError::new(
                "memory.size",
                "must be 0 when memory zones are given (all RAM then comes from zones)",
            ));
        }
        let mut zones = BTreeMap::new();
        for (i, z) in m.zones.iter().enumerate() {
            if z.id.is_empty() {
                return Err(ConfigError::new(
                    format!("memory.zones[{i}].id"),
                    "must not be empty",
                ));
            }
            if z.size == 0 {
                return Err(ConfigError::new(
                    format!("memory.zones[{i}].size"),
                    "must not be 0",
                ));
            }
            if let Some(first) = zones.insert(z.id.as_str(), i) {
                return Err(ConfigError::new(
                    format!("memory.zones[{i}].id"),
                    format!("`{}` is already memory.zones[{first}]", z.id),
                ));
            }
        }
        let total: u64 = m.size.saturating_add(
            m.zones
                .iter()
                .map(|z| z.size)
                .fold(0u64, u64::saturating_add),
        );
        if total == 0 {
            return Err(ConfigError::new("memory.size", "the guest needs some RAM"));
        }

        let mut devices = BTreeMap::new();
        devices.insert(HOST_BRIDGE_ID, usize::MAX);
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(id) = &d.id {
                if id == HOST_BRIDGE_ID {
                    return Err(ConfigError::new(
                        format!("devices[{i}].id"),
                        format!("`{HOST_BRIDGE_ID}` is reserved for the PCI host bridge"),
                    ));
                }
                if let Some(first) = devices.insert(id.as_str(), i) {
                    return Err(ConfigError::new(
                        format!("devices[{i}].id"),
                        format!("`{id}` is already devices[{first}]"),
                    ));
                }
            }
            if let Some(seg) = d.pci_segment {
                if seg >= self.platform.num_pci_segments {
                    return Err(ConfigError::new(
                        format!("devices[{i}].pci_segment"),
                        format!(
                            "segment {seg} does not exist (platform.num_pci_segments is {})",
                            self.platform.num_pci_segments
                        ),
                    ));
                }
            }
            if let Some(slot) = d.pci_device_id {
                if (slot == 0 && d.pci_segment.unwrap_or(0) == 0) || slot > 31 {
                    return Err(ConfigError::new(
                        format!("devices[{i}].pci_device_id"),
                        format!("{slot} is not a free device number (1..=31 on segment 0, 0..=31 elsewhere)"),
                    ));
                }
            }
        }
        if self.platform.num_pci_segments == 0 {
            return Err(ConfigError::new(
                "platform.num_pci_segments",
                "must be at least 1",
            ));
        }
        self.validate_numa(&zones, &devices)
    }

    fn validate_console(&self) -> Result<(), ConfigError> {
        match self.console.mode {
            ConsoleMode::Off | ConsoleMode::Null | ConsoleMode::Tty => {}
            mode => {
                return Err(ConfigError::new(
                    "console.mode",
                    format!(
                        "{mode:?}: Tessera has no virtio console yet (the serial port carries \
                         the guest's console); give Off or Null"
                    ),
                ))
            }
        }
        let s = &self.serial;
        match s.mode {
            ConsoleMode::File if s.file.is_none() => {
                Err(ConfigError::new("serial.file", "File mode needs a file"))
            }
            ConsoleMode::Socket if s.socket.is_none() => Err(ConfigError::new(
                "serial.socket",
                "Socket mode needs a socket path",
            )),
            _ => Ok(()),
        }
    }

    fn validate_numa(
        &self,
        zones: &BTreeMap<&str, usize>,
        devices: &BTreeMap<&str, usize>,
    ) -> Result<(), ConfigError> {
        let ids: BTreeSet<u32> = self.numa.iter().map(|n| n.guest_numa_id).collect();
        if ids.len() != self.numa.len() {
            let mut seen = BTreeSet::new();
            for (i, n) in self.numa.iter().enumerate() {
                if !seen.insert(n.guest_numa_id) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].guest_numa_id"),
                        format!("node {} is declared twice", n.guest_numa_id),
                    ));
                }
            }
        }
        if let Some(missing) = (0..self.numa.len() as u32).find(|id| !ids.contains(id)) {
            return Err(ConfigError::new(
                "numa",
                format!(
                    "guest_numa_id values must run from 0 without gaps; node {missing} is missing"
                ),
            ));
        }
        let mut cpu_owner: BTreeMap<u32, usize> = BTreeMap::new();
        let mut zone_owner: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, n) in self.numa.iter().enumerate() {
            for (j, &cpu) in n.cpus.iter().enumerate() {
                if cpu >= self.cpus.max_vcpus {
                    return Err(ConfigError::new(
                        format!("numa[{i}].cpus[{j}]"),
                        format!(
                            "vCPU {cpu} does not exist (max_vcpus is {})",
                            self.cpus.max_vcpus
                        ),
                    ));
                }
                if let Some(other) = cpu_owner.insert(cpu, i) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].cpus[{j}]"),
                        format!("vCPU {cpu} is already in numa[{other}]"),
                    ));
                }
            }
            for (j, zone) in n.memory_zones.iter().enumerate() {
                if !zones.contains_key(zone.as_str()) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].memory_zones[{j}]"),
                        format!("no memory zone is called `{zone}`"),
                    ));
                }
                if let Some(other) = zone_owner.insert(zone.as_str(), i) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].memory_zones[{j}]"),
                        format!("zone `{zone}` is already in numa[{other}]"),
                    ));
                }
            }
            for (j, d) in n.distances.iter().enumerate() {
                let field = format!("numa[{i}].distances[{j}]");
                if !ids.contains(&d.destination) {
                    return Err(ConfigError::new(
                        field,
                        format!("node {} does not exist", d.destination),
                    ));
                }
                if d.destination == n.guest_numa_id {
                    return Err(ConfigError::new(
                        field,
                        "a node's distance to itself is always 10",
                    ));
                }
                if !(11..=254).contains(&d.distance) {
                    return Err(ConfigError::new(
                        field,
                        format!("distance {} is outside 11..=254", d.distance),
                    ));
                }
            }
            for (j, seg) in n.pci_segments.iter().enumerate() {
                if *seg >= self.platform.num_pci_segments {
                    return Err(ConfigError::new(
                        format!("numa[{i}].pci_segments[{j}]"),
                        format!("segment {seg} does not exist"),
                    ));
                }
            }
            if let Some(dev) = &n.device_id {
                if !devices.contains_key(dev.as_str()) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].device_id"),
                        format!("no device has id `{dev}`"),
                    ));
                }
            }
        }
        if !self.numa.is_empty() {
            if let Some(cpu) = (0..self.cpus.max_vcpus).find(|c| !cpu_owner.contains_key(c)) {
                return Err(ConfigError::new(
                    "numa",
                    format!("vCPU {cpu} is in no node; with NUMA nodes every vCPU needs one"),
                ));
            }
            if let Some(zone) = zones.keys().find(|z| !zone_owner.contains_key(*z)) {
                return Err(ConfigError::new(
                    "numa",
                    format!("memory zone `{zone}` is in no node"),
                ));
            }
            if self.memory.size != 0 {
                return Err(ConfigError::new(
                    "memory.size",
                    "with NUMA nodes, RAM must come from memory zones (set size to 0)",
                ));
            }
        }
        let mut links = BTreeSet::new();
        for (i, gi) in self.generic_initiators.iter().enumerate() {
            let field = format!("generic_initiators[{i}]");
            if !devices.contains_key(gi.device.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.device"),
                    format!("no device has id `{}`", gi.device),
                ));
            }
            let node_field = format!(
                "{field}.{}",
                if gi.nodes.is_some() { "nodes" } else { "node" }
            );
            for node in gi.node_list(&field)? {
                if !ids.contains(&node) {
                    return Err(ConfigError::new(
                        node_field.clone(),
                        format!("node {node} does not exist"),
                    ));
                }
                if !links.insert((gi.device.as_str(), node)) {
                    return Err(ConfigError::new(
                        node_field.clone(),
                        format!("`{}` is already linked to node {node}", gi.device),
                    ));
                }
            }
        }
        for (i, n) in self.numa.iter().enumerate() {
            if let Some(dev) = &n.device_id {
                if !links.insert((dev.as_str(), n.guest_numa_id)) {
                    return Err(ConfigError::new(
                        format!("numa[{i}].device_id"),
                        format!("`{dev}` is already linked to node {}", n.guest_numa_id),
                    ));
                }
            }
        }
        Ok(())
    }
}
