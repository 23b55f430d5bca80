//! The API's request bodies beyond the VM configuration, and its response payloads, in
//! Cloud Hypervisor's shapes where CH defines them (`VmmPingResponse`, `VmInfo`,
//! `DeviceNode`, `PciDeviceInfo`, `VmCounters`, `VmRemoveDevice`) and in the same style where Tessera
//! adds them. The VMM builds the responses; [`crate::server::ApiReply::json`] sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{NodeSet, VmConfig};
use crate::error::ApiError;

mod host;
pub use host::{
    HostDevices, HostIommuGroup, HostIommuGroupMember, HostMdevParent, HostMdevType,
    HostNumaAccess, HostNumaNode, HostNvidiaVgpu, HostPciDevice, HostVgpuType, TopologyMirror,
    MIRROR_GPU_GI_NODES, MIRROR_MEMORY_PER_NODE, MIRROR_OTHER_GI_NODES, MIRROR_VCPUS_PER_NODE,
};

/// `GET /vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// Build identification (e.g. a git description).
    pub build_version: String,
    /// The VMM's version.
    pub version: String,
    /// The VMM's process id.
    pub pid: i64,
    /// Optional features compiled in.
    pub features: Vec<String>,
}

/// The VM's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created, not yet booted.
    Created,
    /// vCPUs running.
    Running,
    /// Shut down (may be booted again).
    Shutdown,
    /// vCPUs paused.
    Paused,
}

/// `GET /vm.info`: CH's `VmInfo`, plus `devices` and `slots`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's configuration, with the edits made since `vm.create`: every CH field,
    /// defaults included, as CH reports it.
    pub config: VmConfig,
    /// The lifecycle state.
    pub state: VmState,
    /// Bytes of guest RAM actually in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_actual_size: Option<u64>,
    /// CH's device tree: the VM's PCI devices by id, with their guest addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_tree: Option<BTreeMap<String, DeviceNode>>,
    /// PCI devices with their guest BDFs and GI nodes (Tessera extension).
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
    /// GI-ready PCI slots (`pci_slots`) with their BDFs, GI nodes and the device filling
    /// each (Tessera extension).
    #[serde(default)]
    pub slots: Vec<SlotInfo>,
    /// Device memory BARs with the guest RAM each became (Tessera extension); left out
    /// when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_memory: Vec<DeviceMemoryInfo>,
}

/// A device's memory BAR as a node's RAM, in [`VmInfo::device_memory`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemoryInfo {
    /// The device's id.
    pub device: String,
    /// The BAR.
    pub bar: u8,
    /// The NUMA node whose RAM it is.
    pub node: u32,
    /// Its guest physical address.
    pub guest_address: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A GI-ready PCI slot in [`VmInfo::slots`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// The slot's id.
    pub id: String,
    /// Its guest address, `SSSS:BB:DD.F`.
    pub bdf: String,
    /// The NUMA nodes the SRAT names it a Generic Initiator of, filled or not.
    #[serde(default)]
    pub generic_initiator_nodes: Vec<u32>,
    /// The id of the device filling it (the slot's own id: a device fills the slot with
    /// its id), or `null` while it is empty.
    #[serde(default)]
    pub device: Option<String>,
}

/// A device in [`VmInfo::device_tree`], in CH's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// The device's id.
    pub id: String,
    /// CH lists a device's BARs, interrupts and memory slots here, each as a Rust enum
    /// value. Tessera lists none: the guest may move BARs at any time, and a snapshot
    /// taken at boot would mislead.
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
    /// Ids of the devices below this one (none: every device sits on a root bus).
    #[serde(default)]
    pub children: Vec<String>,
    /// Its guest address, `SSSS:BB:DD.F`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bdf: Option<String>,
}

/// A PCI device in [`VmInfo::devices`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device's id.
    pub id: String,
    /// Its guest address, `SSSS:BB:DD.F`.
    pub bdf: String,
    /// The NUMA nodes it is a Generic Initiator of.
    #[serde(default)]
    pub generic_initiator_nodes: Vec<u32>,
}

/// `PUT /vm.add-device`'s answer: where the device landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// The device's id (generated when the request gave none).
    pub id: String,
    /// Its guest address, `SSSS:BB:DD.F`.
    pub bdf: String,
}

/// `GET /vm.counters`: counter values by device, then by counter name.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// `PUT /vm.remove-device`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRemoveDevice {
    /// The device's id.
    pub id: String,
}

/// `PUT /vm.remove-numa-node`'s body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRemoveNumaNode {
    /// The node's id.
    pub guest_numa_id: u32,
}

/// `PUT /vm.remove-generic-initiator`'s body: `{"id": ...}` removes the links added
/// under that name; `{"device": ..., "node": N}` or `{"device": ..., "nodes": "2-9"}`
/// removes those links of the device. [`RemoveGenericInitiator::check`] says which
/// combinations are allowed; the API refuses the others with 400.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveGenericInitiator {
    /// The name given at `vm.add-generic-initiator` (or in `generic_initiators[].id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The device's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// One node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// A node set such as `2-9` or `2,4,6-7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeSet>,
}

impl RemoveGenericInitiator {
    /// `Ok` for `{id}` and for `{device, node}` / `{device, nodes}`; otherwise a 400
    /// naming the field that is wrong.
    pub fn check(&self) -> Result<(), ApiError> {
        let bad =
            |field: Option<&str>, m: &str| Err(ApiError::bad_request(m, field.map(str::to_owned)));
        match (&self.id, &self.device, self.node, &self.nodes) {
            (Some(_), None, None, None) | (None, Some(_), Some(_), None) => Ok(()),
            (Some(_), ..) => bad(None, "give `id` alone, or `device` with `node` or `nodes`"),
            (None, None, ..) => bad(
                Some("device"),
                "give `id`, or `device` with `node` or `nodes`",
            ),
            (None, Some(_), None, Some(_)) => Ok(()),
            (None, Some(_), Some(_), Some(_)) => bad(None, "give `node` or `nodes`, not both"),
            (None, Some(_), None, None) => bad(Some("node"), "needs `node` or `nodes`"),
        }
    }
}

/// `GET /vm.acpi`: the guest's ACPI tables, raw and decoded. The decoded tables are
/// objects the VMM chooses; the API passes them through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AcpiInfo {
    /// Every table the guest sees.
    pub tables: Vec<AcpiTable>,
    /// The SRAT, decoded (`null` if the guest has none).
    #[serde(default)]
    pub srat: serde_json::Value,
    /// The SLIT, decoded (`null` if the guest has none).
    #[serde(default)]
    pub slit: serde_json::Value,
    /// The HMAT, decoded (`null` if the guest has none).
    #[serde(default)]
    pub hmat: serde_json::Value,
}

/// One ACPI table in [`AcpiInfo::tables`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiTable {
    /// The four-letter signature (`SRAT`).
    pub signature: String,
    /// The guest physical address the table is placed at.
    pub address: u64,
    /// The header's length field, in bytes.
    pub length: u32,
    /// The header's checksum byte.
    pub checksum: u8,
    /// The whole table, base64 (standard alphabet, padded).
    pub base64: String,
}
