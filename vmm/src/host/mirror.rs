//! `vmm.topology-mirror`: from what host discovery found ([`HostDevices`]) and a
//! [`TopologyMirror`] request, the [`VmConfig`] of a guest whose NUMA topology mirrors
//! the host's around the devices passed through.
//!
//! - One guest node per host node used (the devices' nodes, and the CPU nodes or
//!   `host_nodes`), in host node order, with the host's SLIT distances.
//! - Each such node with CPUs gets `vcpus_per_node` vCPUs pinned to all of that host
//!   node's CPUs (`cpus.affinity`); with memory, a zone of `memory_per_node` bound to it
//!   (`host_numa_node`).
//! - Each device gets its Generic Initiator nodes after those, placed where the device
//!   is: a GI node's distance to any other node is the host distance between their host
//!   nodes (the device's, the other node's), raised to 11 where that is 10 (the same
//!   host node: one hop, and the SLIT keeps 10 for a node to itself).
//!
//! - Where the host has an HMAT, its values from each mirrored memory node's best CPU
//!   initiators become the guest's (`hmat`).
//!
//! Everything is checked before anything is answered: first the request alone (sizes,
//! addresses, duplicates), then against the host: unknown devices and nodes, devices
//! without an IOMMU group or in a group VFIO cannot use, host nodes without distances;
//! the configuration made is then held to `VmConfig::validate`. Each failure says which
//! of these it is ([`MirrorFault`]), so the API can answer 400, 404 or 409.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tessera_api::config::{
    parse_node_set, CpuAffinity, CpusConfig, DeviceConfig, GenericInitiatorConfig, HmatDataType,
    HmatHierarchy, HmatLbConfig, MemoryConfig, MemoryZoneConfig, NodeSet, NumaConfig, NumaDistance,
    VmConfig, HMAT_BANDWIDTH_UNIT, MAX_VCPUS,
};
use tessera_api::types::{
    HostDevices, HostNumaNode, HostPciDevice, TopologyMirror, MIRROR_GPU_GI_NODES,
    MIRROR_MEMORY_PER_NODE, MIRROR_OTHER_GI_NODES, MIRROR_VCPUS_PER_NODE,
};

use super::pci::blockers;

/// Whose fault a [`MirrorError`] is: the request's, or the host's as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorFault {
    /// The request is wrong on any host: a size out of range, not a PCI address, a
    /// device named twice, more GI nodes than a SLIT holds (the API's 400).
    Invalid,
    /// A host PCI device or NUMA node the request names does not exist (404).
    Missing,
    /// What the request names exists, but the host cannot pass it through or mirror it
    /// as it is now: no IOMMU group, a group VFIO cannot use, another driver, a node
    /// without CPUs, memory or distances (409).
    Unusable,
}

/// Why no configuration could be made; `field` is a JSON path into the request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MirrorError {
    /// Whose fault it is.
    pub fault: MirrorFault,
    /// The request field at fault (`devices[1]`, `host_nodes[0]`, `memory_per_node`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl MirrorError {
    fn new(fault: MirrorFault, field: impl Into<String>, message: impl Into<String>) -> Self {
        MirrorError {
            fault,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The request is wrong whatever the host.
fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, MirrorError> {
    Err(MirrorError::new(MirrorFault::Invalid, field, message))
}

/// The host has no such device or node.
fn missing<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, MirrorError> {
    Err(MirrorError::new(MirrorFault::Missing, field, message))
}

/// The host has it, but cannot give it to a guest as it is.
fn unusable<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, MirrorError> {
    Err(MirrorError::new(MirrorFault::Unusable, field, message))
}

/// The largest GI node count per device: the SLIT has 256 domains at most.
const MAX_GI_NODES: u32 = 64;

/// The id a mirrored device gets: `dev0`, `dev1`... in request order.
fn device_id(index: usize) -> String {
    format!("dev{index}")
}

/// A device of the request, found on the host.
struct Wanted<'a> {
    field: String,
    host: &'a HostPciDevice,
    node: u32,
    gi_nodes: u32,
}

/// The configuration mirroring `host` for `req` (see the module's description).
pub fn mirror(host: &HostDevices, req: &TopologyMirror) -> Result<VmConfig, MirrorError> {
    let vcpus_per_node = req.vcpus_per_node.unwrap_or(MIRROR_VCPUS_PER_NODE);
    if vcpus_per_node == 0 {
        return invalid("vcpus_per_node", "must be at least 1");
    }
    if vcpus_per_node > MAX_VCPUS {
        return invalid(
            "vcpus_per_node",
            format!("{vcpus_per_node} is more than the {MAX_VCPUS} vCPUs a VM may have"),
        );
    }
    let memory_per_node = req.memory_per_node.unwrap_or(MIRROR_MEMORY_PER_NODE);
    if memory_per_node == 0 || !memory_per_node.is_multiple_of(2 << 20) {
        return invalid(
            "memory_per_node",
            format!("{memory_per_node} bytes is not a positive multiple of 2 MiB"),
        );
    }
    if let Some(n) = req.gi_nodes.filter(|&n| n > MAX_GI_NODES) {
        return invalid(
            "gi_nodes",
            format!("{n} GI nodes per device is more than {MAX_GI_NODES}"),
        );
    }
    if req.devices.is_empty() {
        return invalid(
            "devices",
            "name at least one host PCI device to mirror around",
        );
    }
    let addresses = addresses(req)?;
    let wanted = devices(host, req, &addresses)?;

    // The host nodes used, ascending; guest node i mirrors the i-th.
    let mut used: BTreeSet<u32> = wanted.iter().map(|w| w.node).collect();
    match &req.host_nodes {
        Some(list) => {
            for (i, &n) in list.iter().enumerate() {
                if !host.numa_nodes.iter().any(|h| h.id == n) {
                    return missing(
                        format!("host_nodes[{i}]"),
                        format!("the host has no NUMA node {n}"),
                    );
                }
                used.insert(n);
            }
        }
        None => used.extend(
            host.numa_nodes
                .iter()
                .filter(|n| !cpus_of(n).unwrap_or_default().is_empty())
                .map(|n| n.id),
        ),
    }
    let used: Vec<&HostNumaNode> = used
        .iter()
        .filter_map(|id| host.numa_nodes.iter().find(|n| n.id == *id))
        .collect();
    let distance = Distances { host };

    // Bounded before anything is sized by it: a VM has MAX_VCPUS at most.
    let cpu_nodes = used
        .iter()
        .filter(|n| !cpus_of(n).unwrap_or_default().is_empty())
        .count() as u64;
    if u64::from(vcpus_per_node) * cpu_nodes > u64::from(MAX_VCPUS) {
        return invalid(
            "vcpus_per_node",
            format!(
                "{vcpus_per_node} vCPUs on each of the {cpu_nodes} mirrored nodes with CPUs is \
                 more than the {MAX_VCPUS} vCPUs a VM may have"
            ),
        );
    }

    let mut config = VmConfig {
        cpus: CpusConfig::default(),
        memory: MemoryConfig {
            size: 0,
            ..MemoryConfig::default()
        },
        payload: req.payload.clone(),
        ..VmConfig::default()
    };
    let mut affinity = Vec::new();
    // Guest node ids with the host node each stands for.
    let mut placed: Vec<(u32, u32)> = Vec::new();
    let mut vcpu = 0u32;
    for (guest, h) in used.iter().enumerate() {
        let guest = guest as u32;
        let host_cpus = cpus_of(h).map_err(|m| {
            MirrorError::new(
                MirrorFault::Unusable,
                "devices",
                format!("host node {}: {m}", h.id),
            )
        })?;
        let mut node = NumaConfig {
            guest_numa_id: guest,
            ..NumaConfig::default()
        };
        if !host_cpus.is_empty() {
            for _ in 0..vcpus_per_node {
                node.cpus.push(vcpu);
                affinity.push(CpuAffinity {
                    vcpu,
                    host_cpus: host_cpus.clone(),
                });
                vcpu += 1;
            }
        }
        if h.memory_bytes.unwrap_or(0) > 0 {
            let id = format!("node{}", h.id);
            config.memory.zones.push(MemoryZoneConfig {
                id: id.clone(),
                size: memory_per_node,
                host_numa_node: Some(h.id),
                ..MemoryZoneConfig::default()
            });
            node.memory_zones.push(id);
        }
        config.numa.push(node);
        placed.push((guest, h.id));
    }
    if vcpu == 0 {
        return unusable(
            "host_nodes",
            "none of the host nodes mirrored has CPUs: name one that has with host_nodes",
        );
    }
    if config.memory.zones.is_empty() {
        return unusable(
            "host_nodes",
            "none of the host nodes mirrored has memory: name one that has with host_nodes",
        );
    }
    config.cpus.boot_vcpus = vcpu;
    config.cpus.max_vcpus = vcpu;
    config.cpus.affinity = Some(affinity);

    for (i, w) in wanted.iter().enumerate() {
        let id = device_id(i);
        config.devices.push(DeviceConfig {
            id: Some(id.clone()),
            managed: req.managed,
            ..DeviceConfig::new(PathBuf::from(format!(
                "/sys/bus/pci/devices/{}",
                w.host.bdf
            )))
        });
        if w.gi_nodes == 0 {
            continue;
        }
        let first = config.numa.len() as u32;
        for k in 0..w.gi_nodes {
            config.numa.push(NumaConfig {
                guest_numa_id: first + k,
                ..NumaConfig::default()
            });
            placed.push((first + k, w.node));
        }
        config.generic_initiators.push(GenericInitiatorConfig {
            id: None,
            device: id,
            node: None,
            nodes: Some((first..first + w.gi_nodes).collect::<NodeSet>()),
        });
    }

    // Every pair, both ways (a host's SLIT need not be symmetric).
    let mirrored = used.len();
    for (a, host_a) in &placed {
        let mut row = Vec::new();
        for (b, host_b) in &placed {
            if a == b {
                continue;
            }
            let d = distance.between(*host_a, *host_b)?;
            // Two mirrored nodes are two host nodes; anything else shares a host node
            // with its peer at most, one hop away.
            let both_mirrored = (*a as usize) < mirrored && (*b as usize) < mirrored;
            row.push(NumaDistance {
                destination: *b,
                distance: if both_mirrored { d } else { d.max(11) },
            });
        }
        if let Some(node) = config.numa.get_mut(*a as usize) {
            node.distances = row;
        }
    }

    config.hmat = hmat(&used, &config.numa);

    check(&config)?;
    Ok(config)
}

/// The host's HMAT values, where it has them, between mirrored nodes: for each mirrored
/// node with memory, from each of its best initiators (`access0`, else `access1`) that
/// is a mirrored node with vCPUs, the four values Linux shows (read and write latency
/// and bandwidth). Linux shows the best initiators only, so that is all that can be
/// mirrored; GI nodes get none (the host's own GI values are not the device's).
fn hmat(used: &[&HostNumaNode], numa: &[NumaConfig]) -> Vec<HmatLbConfig> {
    let guest_of = |host: u32| used.iter().position(|n| n.id == host);
    let mut out = Vec::new();
    for (target, h) in used.iter().enumerate() {
        if numa.get(target).is_none_or(|n| n.memory_zones.is_empty()) {
            continue;
        }
        let Some(access) = h
            .access
            .iter()
            .find(|a| a.class == 0)
            .or_else(|| h.access.iter().find(|a| a.class == 1))
        else {
            continue;
        };
        for initiator in access.initiators.iter().filter_map(|&i| guest_of(i)) {
            if numa.get(initiator).is_none_or(|n| n.cpus.is_empty()) {
                continue;
            }
            let values = [
                (HmatDataType::ReadLatency, access.read_latency_ns, None),
                (HmatDataType::WriteLatency, access.write_latency_ns, None),
                (
                    HmatDataType::ReadBandwidth,
                    None,
                    access.read_bandwidth_mbps,
                ),
                (
                    HmatDataType::WriteBandwidth,
                    None,
                    access.write_bandwidth_mbps,
                ),
            ];
            for (data_type, latency, bandwidth) in values {
                if latency.is_none() && bandwidth.is_none() {
                    continue;
                }
                out.push(HmatLbConfig {
                    initiator: initiator as u32,
                    target: target as u32,
                    hierarchy: HmatHierarchy::Memory,
                    data_type,
                    latency,
                    // Linux's MB/s are the HMAT's, MiB/s; the configuration takes bytes/s.
                    bandwidth: bandwidth.and_then(|b| b.checked_mul(HMAT_BANDWIDTH_UNIT)),
                });
            }
        }
    }
    out
}

/// The request's device addresses in full (`0000:41:00.0`), in request order: each a
/// PCI address, none twice. Checked before the host is looked at, so a malformed list is
/// refused as such whatever the host has.
fn addresses(req: &TopologyMirror) -> Result<Vec<String>, MirrorError> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, given) in req.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let Some(bdf) = full_bdf(given) else {
            return invalid(
                field,
                format!("`{given}` is not a PCI address (SSSS:BB:DD.F or BB:DD.F)"),
            );
        };
        if let Some(first) = seen.insert(bdf.clone(), i) {
            return invalid(field, format!("{bdf} is already devices[{first}]"));
        }
        out.push(bdf);
    }
    Ok(out)
}

/// The request's devices (`addresses`, from [`addresses`]), found on the host and
/// checked, in request order.
fn devices<'a>(
    host: &'a HostDevices,
    req: &TopologyMirror,
    addresses: &[String],
) -> Result<Vec<Wanted<'a>>, MirrorError> {
    let mut out = Vec::new();
    for (i, bdf) in addresses.iter().enumerate() {
        let field = format!("devices[{i}]");
        let Some(dev) = host.pci_devices.iter().find(|d| &d.bdf == bdf) else {
            return missing(field, format!("the host has no PCI device {bdf}"));
        };
        let Some(group) = &dev.iommu_group else {
            return unusable(
                field,
                format!("{bdf} has no IOMMU group: is the IOMMU on (intel_iommu=on)?"),
            );
        };
        let others = blockers(group, bdf);
        if !others.is_empty() {
            let list: Vec<String> = others
                .iter()
                .map(|(name, driver)| format!("{name} ({driver})"))
                .collect();
            return unusable(
                field,
                format!(
                    "IOMMU group {} of {bdf} is not viable: {} must be unbound or bound to \
                     vfio-pci first",
                    group.id,
                    list.join(", ")
                ),
            );
        }
        if !req.managed && group.blocking.contains(bdf) {
            return unusable(
                field,
                format!(
                    "{bdf} is bound to {}: bind it to vfio-pci, or ask for managed devices",
                    dev.driver.as_deref().unwrap_or("a driver")
                ),
            );
        }
        let node = match dev.numa_node {
            _ if host.numa_nodes.is_empty() => {
                return unusable(
                    field,
                    "the host reports no NUMA nodes (/sys/devices/system/node): nothing to \
                     mirror",
                )
            }
            Some(n) => n,
            // A single-node host gives its devices no node (numa_node -1): they are
            // all on the only one.
            None if host.numa_nodes.len() == 1 => host.numa_nodes.first().map_or(0, |n| n.id),
            None => {
                return unusable(
                    field,
                    format!(
                        "the host's firmware puts {bdf} on no NUMA node (numa_node is -1) on \
                         a host with {} nodes",
                        host.numa_nodes.len()
                    ),
                )
            }
        };
        if !host.numa_nodes.iter().any(|n| n.id == node) {
            return unusable(
                field,
                format!("{bdf} is on host node {node}, which the host does not list"),
            );
        }
        let display = dev.class.as_deref().is_some_and(|c| c.starts_with("03"));
        out.push(Wanted {
            field,
            host: dev,
            node,
            gi_nodes: req.gi_nodes.unwrap_or(if display {
                MIRROR_GPU_GI_NODES
            } else {
                MIRROR_OTHER_GI_NODES
            }),
        });
    }
    let total: u32 = out.iter().map(|w| w.gi_nodes).sum();
    if total + host.numa_nodes.len() as u32 > 255 {
        let last = out
            .last()
            .map_or_else(|| "devices".into(), |w| w.field.clone());
        return invalid(
            last,
            format!(
                "{total} GI nodes and the host's {} nodes do not fit the SLIT's 256 nodes: \
                 ask for fewer gi_nodes or devices",
                host.numa_nodes.len()
            ),
        );
    }
    Ok(out)
}

/// `41:00.0` or `0000:41:00.0` (any case) as `0000:41:00.0`; `None` if not an address.
fn full_bdf(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    let full = if text.len() == 7 {
        format!("0000:{text}")
    } else {
        text
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|s| s.iter().all(u8::is_ascii_hexdigit))
    };
    let ok = b.len() == 12
        && hex(0..4)
        && b.get(4) == Some(&b':')
        && hex(5..7)
        && b.get(7) == Some(&b':')
        && hex(8..10)
        && b.get(10) == Some(&b'.')
        && b.get(11).is_some_and(|f| (b'0'..=b'7').contains(f));
    ok.then_some(full)
}

/// A host node's CPUs, from its `cpulist` (none when it has none or it is unreadable).
fn cpus_of(node: &HostNumaNode) -> Result<Vec<u32>, String> {
    match node.cpus.as_deref().map(str::trim) {
        None | Some("") => Ok(Vec::new()),
        Some(list) => parse_node_set(list),
    }
}

/// The host's SLIT as its `distance` files give it: row of node a, column of node b's
/// position among the host's nodes.
struct Distances<'a> {
    host: &'a HostDevices,
}

impl Distances<'_> {
    fn between(&self, a: u32, b: u32) -> Result<u32, MirrorError> {
        let nodes = &self.host.numa_nodes;
        let row = nodes
            .iter()
            .find(|n| n.id == a)
            .and_then(|n| n.distances.as_ref())
            .ok_or_else(|| {
                MirrorError::new(
                    MirrorFault::Unusable,
                    "devices",
                    format!("host node {a} reports no distances"),
                )
            })?;
        let column = nodes.iter().position(|n| n.id == b);
        let d = column.and_then(|c| row.get(c)).copied().ok_or_else(|| {
            MirrorError::new(
                MirrorFault::Unusable,
                "devices",
                format!("host node {a}'s distances name no node {b}"),
            )
        })?;
        if a != b && !(11..=254).contains(&d) {
            return unusable(
                "devices",
                format!(
                    "the host's distance from node {a} to node {b} is {d}, which a guest's \
                     SLIT cannot hold (11..=254)"
                ),
            );
        }
        Ok(d)
    }
}

/// Holds the configuration made to `VmConfig::validate` and to the guest topology a boot
/// builds (with a stand-in kernel when the request gave none, since the caller adds
/// it): a failure here is this module's.
fn check(config: &VmConfig) -> Result<(), MirrorError> {
    let mut probe = config.clone();
    if probe.payload.kernel.is_none() {
        probe.payload.kernel = Some(PathBuf::from("/kernel"));
    }
    // The request's sizes made it (the host's facts were checked above): its fault.
    probe.validate().map_err(|e| {
        MirrorError::new(
            MirrorFault::Invalid,
            "devices",
            format!(
                "the mirrored configuration does not hold: {}: {}",
                e.field, e.message
            ),
        )
    })?;
    // And to what a boot checks before touching the host: the tables can be built.
    crate::guest_topology::guest_topology(&probe, tessera_arch::vcpu::host_phys_bits())
        .map(drop)
        .map_err(|e| {
            MirrorError::new(
                MirrorFault::Invalid,
                "devices",
                format!(
                    "the mirrored configuration does not hold: {}: {e}",
                    e.field()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::host::discover;
    use crate::host::fake::Fake;

    /// Two CPU nodes (distance 21), a GPU on node 1, an NVMe on node 0 on vfio-pci.
    fn host() -> Fake {
        let f = Fake::new();
        f.numa_node(0, "0-3", 4 << 20, "10 21");
        f.numa_node(1, "4-7", 4 << 20, "21 10");
        f.pci(
            "0000:41:00.0",
            "10de",
            "2335",
            "030200",
            Some("vfio-pci"),
            1,
            Some(40),
        );
        f.pci(
            "0000:03:00.0",
            "1b36",
            "0010",
            "010802",
            Some("vfio-pci"),
            0,
            Some(9),
        );
        f.pci(
            "0000:05:00.0",
            "8086",
            "1521",
            "020000",
            Some("igb"),
            1,
            Some(11),
        );
        f
    }

    fn req(devices: &[&str]) -> TopologyMirror {
        TopologyMirror {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            ..TopologyMirror::default()
        }
    }

    fn distances(c: &VmConfig, node: u32) -> Vec<(u32, u32)> {
        c.numa[node as usize]
            .distances
            .iter()
            .map(|d| (d.destination, d.distance))
            .collect()
    }

    #[test]
    fn a_gpu_gets_eight_gi_nodes_at_its_host_nodes_distances() {
        let f = host();
        let c = mirror(&discover(f.root()), &req(&["41:00.0"])).unwrap();
        // Both CPU nodes, then the GPU's eight GI nodes.
        assert_eq!(c.numa.len(), 10);
        assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (2, 2));
        assert_eq!(c.numa[0].cpus, [0]);
        assert_eq!(c.numa[1].cpus, [1]);
        let a = c.cpus.affinity.clone().unwrap();
        assert_eq!(
            a[0],
            CpuAffinity {
                vcpu: 0,
                host_cpus: vec![0, 1, 2, 3]
            }
        );
        assert_eq!(
            a[1],
            CpuAffinity {
                vcpu: 1,
                host_cpus: vec![4, 5, 6, 7]
            }
        );
        assert_eq!(c.memory.size, 0);
        let zones: Vec<(&str, u64, Option<u32>)> = c
            .memory
            .zones
            .iter()
            .map(|z| (z.id.as_str(), z.size, z.host_numa_node))
            .collect();
        assert_eq!(
            zones,
            [("node0", 512 << 20, Some(0)), ("node1", 512 << 20, Some(1))]
        );
        assert_eq!(c.numa[1].memory_zones, ["node1"]);
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].id.as_deref(), Some("dev0"));
        assert_eq!(
            c.devices[0].path,
            PathBuf::from("/sys/bus/pci/devices/0000:41:00.0")
        );
        assert!(!c.devices[0].managed);
        assert_eq!(c.generic_initiators.len(), 1);
        assert_eq!(
            c.generic_initiators[0].nodes.as_ref().unwrap().to_string(),
            "2-9"
        );
        // Host distance 21 between the CPU nodes, both ways.
        assert_eq!(distances(&c, 0)[0], (1, 21));
        assert_eq!(distances(&c, 1)[0], (0, 21));
        // A GI node: 21 to node 0, 11 to its own host node and to its siblings.
        let gi = distances(&c, 2);
        assert_eq!(gi[0], (0, 21));
        assert_eq!(gi[1], (1, 11));
        assert!(gi[2..].iter().all(|&(_, d)| d == 11), "{gi:?}");
        c.validate().unwrap_err(); // no kernel: the caller's to add
    }

    #[test]
    fn other_classes_get_one_gi_node_and_gi_nodes_overrides() {
        let f = host();
        let h = discover(f.root());
        let c = mirror(&h, &req(&["0000:03:00.0"])).unwrap();
        assert_eq!(c.numa.len(), 3);
        assert_eq!(
            c.generic_initiators[0].nodes.as_ref().unwrap().to_string(),
            "2"
        );
        // The NVMe is on host node 0.
        assert_eq!(distances(&c, 2), [(0, 11), (1, 21)]);
        let mut r = req(&["0000:03:00.0", "41:00.0"]);
        r.gi_nodes = Some(2);
        r.vcpus_per_node = Some(2);
        r.memory_per_node = Some(1 << 30);
        let c = mirror(&h, &r).unwrap();
        assert_eq!(c.numa.len(), 6);
        assert_eq!(c.cpus.boot_vcpus, 4);
        assert_eq!(c.numa[1].cpus, [2, 3]);
        assert_eq!(c.memory.zones[0].size, 1 << 30);
        assert_eq!(
            c.generic_initiators[1].nodes.as_ref().unwrap().to_string(),
            "4-5"
        );
        // The NVMe's GI node (host node 0) to its sibling: 11; to the GPU's (host node
        // 1): 21.
        assert_eq!(distances(&c, 2)[2..], [(3, 11), (4, 21), (5, 21)]);
        r.gi_nodes = Some(0);
        assert!(mirror(&h, &r).unwrap().generic_initiators.is_empty());
    }

    #[test]
    fn the_hosts_hmat_values_from_mirrored_cpu_nodes_are_the_guests() {
        let f = host();
        f.hmat_access(0, 0, &[0], [10, 12, 20480, 10240]);
        // Node 1's best initiators: node 1 and node 0 (equal), one value missing.
        f.hmat_access(1, 0, &[0, 1], [30, 0, 10240, 5120]);
        let mut r = req(&["41:00.0"]);
        r.gi_nodes = Some(1);
        let c = mirror(&discover(f.root()), &r).unwrap();
        type Value = (u32, u32, HmatDataType, Option<u64>, Option<u64>);
        let got: Vec<Value> = c
            .hmat
            .iter()
            .map(|h| (h.initiator, h.target, h.data_type, h.latency, h.bandwidth))
            .collect();
        use HmatDataType::*;
        assert_eq!(
            got,
            [
                (0, 0, ReadLatency, Some(10), None),
                (0, 0, WriteLatency, Some(12), None),
                (0, 0, ReadBandwidth, None, Some(20480 << 20)),
                (0, 0, WriteBandwidth, None, Some(10240 << 20)),
                (0, 1, ReadLatency, Some(30), None),
                (0, 1, ReadBandwidth, None, Some(10240 << 20)),
                (0, 1, WriteBandwidth, None, Some(5120 << 20)),
                (1, 1, ReadLatency, Some(30), None),
                (1, 1, ReadBandwidth, None, Some(10240 << 20)),
                (1, 1, WriteBandwidth, None, Some(5120 << 20)),
            ]
        );
        // A host without an HMAT gives none.
        assert!(mirror(&discover(host().root()), &r)
            .unwrap()
            .hmat
            .is_empty());
    }

    #[test]
    fn host_nodes_narrows_the_mirror() {
        let f = host();
        let mut r = req(&["41:00.0"]);
        r.host_nodes = Some(vec![]);
        r.gi_nodes = Some(1);
        let c = mirror(&discover(f.root()), &r).unwrap();
        assert_eq!(c.numa.len(), 2);
        assert_eq!(c.memory.zones[0].host_numa_node, Some(1));
        assert_eq!(c.cpus.affinity.unwrap()[0].host_cpus, [4, 5, 6, 7]);
        r.host_nodes = Some(vec![0, 3]);
        let e = mirror(&discover(f.root()), &r).unwrap_err();
        assert_eq!(e.field, "host_nodes[1]");
        assert_eq!(e.message, "the host has no NUMA node 3");
        assert_eq!(e.fault, MirrorFault::Missing);
    }

    #[test]
    fn bad_requests_name_the_field_and_whose_fault_it_is() {
        use MirrorFault::*;
        let f = host();
        let h = discover(f.root());
        let cases: Vec<(TopologyMirror, MirrorFault, &str, &str)> = vec![
            (
                req(&[]),
                Invalid,
                "devices",
                "name at least one host PCI device to mirror around",
            ),
            (
                req(&["0000:42:00.0"]),
                Missing,
                "devices[0]",
                "the host has no PCI device 0000:42:00.0",
            ),
            (
                req(&["41:00"]),
                Invalid,
                "devices[0]",
                "`41:00` is not a PCI address (SSSS:BB:DD.F or BB:DD.F)",
            ),
            (
                req(&["41:00.0", "0000:41:00.0"]),
                Invalid,
                "devices[1]",
                "0000:41:00.0 is already devices[0]",
            ),
            // The list is checked before the host: a device the host lacks does not
            // hide a malformed one after it.
            (
                req(&["42:00.0", "42:00.0"]),
                Invalid,
                "devices[1]",
                "0000:42:00.0 is already devices[0]",
            ),
            (
                req(&["42:00.0", "nvme0"]),
                Invalid,
                "devices[1]",
                "`nvme0` is not a PCI address (SSSS:BB:DD.F or BB:DD.F)",
            ),
            (
                req(&["05:00.0"]),
                Unusable,
                "devices[0]",
                "0000:05:00.0 is bound to igb: bind it to vfio-pci, or ask for managed devices",
            ),
            (
                TopologyMirror {
                    memory_per_node: Some(3 << 20),
                    ..req(&["41:00.0"])
                },
                Invalid,
                "memory_per_node",
                "3145728 bytes is not a positive multiple of 2 MiB",
            ),
            (
                TopologyMirror {
                    vcpus_per_node: Some(0),
                    ..req(&["41:00.0"])
                },
                Invalid,
                "vcpus_per_node",
                "must be at least 1",
            ),
            (
                TopologyMirror {
                    vcpus_per_node: Some(u32::MAX),
                    ..req(&["41:00.0"])
                },
                Invalid,
                "vcpus_per_node",
                "4294967295 is more than the 4096 vCPUs a VM may have",
            ),
            // Two CPU nodes: 2 x 2049 is too many, though each count alone is not.
            (
                TopologyMirror {
                    vcpus_per_node: Some(2049),
                    ..req(&["41:00.0"])
                },
                Invalid,
                "vcpus_per_node",
                "2049 vCPUs on each of the 2 mirrored nodes with CPUs is more than the 4096 \
                 vCPUs a VM may have",
            ),
        ];
        for (r, fault, field, message) in cases {
            let e = mirror(&h, &r).unwrap_err();
            assert_eq!(
                (e.fault, e.field.as_str(), e.message.as_str()),
                (fault, field, message),
                "{r:?}"
            );
        }
        // Managed: the device's own driver is fine.
        let c = mirror(
            &h,
            &TopologyMirror {
                managed: true,
                ..req(&["05:00.0"])
            },
        )
        .unwrap();
        assert!(c.devices[0].managed);
    }

    #[test]
    fn a_group_blocked_by_another_member_and_no_group_are_refused() {
        let f = host();
        f.pci(
            "0000:41:00.1",
            "10de",
            "22e8",
            "040300",
            Some("snd_hda_intel"),
            1,
            Some(40),
        );
        f.pci("0000:06:00.0", "1b36", "0010", "010802", None, 0, None);
        let h = discover(f.root());
        let e = mirror(
            &h,
            &TopologyMirror {
                managed: true,
                ..req(&["41:00.0"])
            },
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "IOMMU group 40 of 0000:41:00.0 is not viable: 0000:41:00.1 (snd_hda_intel) must \
             be unbound or bound to vfio-pci first"
        );
        assert_eq!(e.fault, MirrorFault::Unusable);
        let e = mirror(&h, &req(&["06:00.0"])).unwrap_err();
        assert_eq!(
            e.message,
            "0000:06:00.0 has no IOMMU group: is the IOMMU on (intel_iommu=on)?"
        );
        assert_eq!(e.fault, MirrorFault::Unusable);
    }

    #[test]
    fn host_distances_a_guest_cannot_hold_and_nodeless_devices() {
        let f = Fake::new();
        f.numa_node(0, "0-1", 4 << 20, "10 255");
        f.numa_node(1, "2-3", 4 << 20, "255 10");
        f.pci("0000:03:00.0", "1b36", "0010", "010802", None, -1, Some(9));
        let h = discover(f.root());
        let e = mirror(&h, &req(&["03:00.0"])).unwrap_err();
        assert_eq!(e.field, "devices[0]");
        assert!(e.message.contains("numa_node is -1"), "{}", e.message);
        assert_eq!(e.fault, MirrorFault::Unusable);
        f.file(&format!("{}/numa_node", Fake::pci_dir("0000:03:00.0")), "1");
        let e = mirror(&discover(f.root()), &req(&["03:00.0"])).unwrap_err();
        assert_eq!(
            e.message,
            "the host's distance from node 0 to node 1 is 255, which a guest's SLIT cannot \
             hold (11..=254)"
        );
        assert_eq!(e.fault, MirrorFault::Unusable);
    }

    #[test]
    fn a_single_node_host_puts_nodeless_devices_on_its_node() {
        let f = Fake::new();
        f.numa_node(0, "0-1", 4 << 20, "10");
        f.pci("0000:03:00.0", "1b36", "0010", "010802", None, -1, Some(9));
        let c = mirror(&discover(f.root()), &req(&["03:00.0"])).unwrap();
        assert_eq!(c.numa.len(), 2);
        assert_eq!(distances(&c, 1), [(0, 11)]);
    }
}
