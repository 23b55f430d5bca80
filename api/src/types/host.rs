//! `GET /vmm.host-devices`'s answer: what the host offers for passthrough, read from its
//! sysfs: every PCI device with its IOMMU group, NUMA node, mdev types and NVIDIA vGPU
//! types, the mdev parents that are not PCI devices, and the host's NUMA nodes. What
//! an admin otherwise pieces together from `lspci`, `numactl -H` and sysfs before
//! writing a GI topology.
//!
//! Every field that comes from one sysfs file is `null` when that file is missing or
//! unreadable: a partial answer is more use than none, and sysfs differs by kernel.

use serde::{Deserialize, Serialize};

/// `GET /vmm.host-devices`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDevices {
    /// Every PCI device (`/sys/bus/pci/devices`), by BDF.
    pub pci_devices: Vec<HostPciDevice>,
    /// mdev parents that are not PCI devices (`/sys/class/mdev_bus`), such as the `mtty`
    /// sample driver; a PCI parent's types are in its [`HostPciDevice::mdev_types`].
    pub mdev_parents: Vec<HostMdevParent>,
    /// The host's NUMA nodes (`/sys/devices/system/node`), by id; empty on a kernel
    /// without NUMA.
    pub numa_nodes: Vec<HostNumaNode>,
}

/// One host PCI device in [`HostDevices::pci_devices`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPciDevice {
    /// Its address, `SSSS:BB:DD.F`.
    pub bdf: String,
    /// The sysfs path to give `--device path=`.
    pub path: String,
    /// The vendor id, 4 hex digits (`10de`).
    pub vendor: Option<String>,
    /// The device id, 4 hex digits.
    pub device: Option<String>,
    /// The class code, 6 hex digits (`030200`: base class, subclass, programming interface).
    pub class: Option<String>,
    /// The bound driver (`vfio-pci`), or `null` when none is.
    pub driver: Option<String>,
    /// The host NUMA node it is attached to; `null` when the firmware says none (-1).
    pub numa_node: Option<u32>,
    /// Its IOMMU group; `null` without an IOMMU (VFIO cannot use the device then).
    pub iommu_group: Option<HostIommuGroup>,
    /// Its mdev types when it is an mdev parent (has `mdev_supported_types/`), else `null`.
    pub mdev_types: Option<Vec<HostMdevType>>,
    /// Its NVIDIA vGPU types when it is an NVIDIA SR-IOV vGPU VF (has
    /// `nvidia/creatable_vgpu_types`), else `null`.
    pub nvidia_vgpu: Option<HostNvidiaVgpu>,
}

/// An IOMMU group in [`HostPciDevice::iommu_group`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIommuGroup {
    /// The group's number: `/dev/vfio/N`.
    pub id: u32,
    /// Whether VFIO can use the group as it is: every member has no driver, or is bound
    /// to a VFIO driver or `pci-stub`, or is a PCI bridge (the rule of the kernel's
    /// `vfio_dev_viable`).
    pub viable: bool,
    /// Every member, this device included.
    pub members: Vec<HostIommuGroupMember>,
    /// The members that make the group not viable (empty when it is viable).
    pub blocking: Vec<String>,
}

/// A device in [`HostIommuGroup::members`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIommuGroupMember {
    /// Its name on its bus: a PCI BDF, or an mdev's UUID.
    pub name: String,
    /// The bound driver, or `null`.
    pub driver: Option<String>,
}

/// An mdev type in [`HostPciDevice::mdev_types`] or [`HostMdevParent::types`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMdevType {
    /// The type's id, its directory name (`nvidia-35`, `mtty-2`): what `mdev_type=` takes.
    pub id: String,
    /// Its `name` file (optional in the mdev ABI).
    pub name: Option<String>,
    /// Its `description`.
    pub description: Option<String>,
    /// Its `device_api` (`vfio-pci`).
    pub device_api: Option<String>,
    /// How many more instances can be created now.
    pub available_instances: Option<u32>,
    /// The instances of this type that exist now (`devices/`), by UUID.
    pub instances: Vec<String>,
}

/// A non-PCI mdev parent in [`HostDevices::mdev_parents`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMdevParent {
    /// Its name in `/sys/class/mdev_bus` (`mtty`).
    pub name: String,
    /// Its types.
    pub types: Vec<HostMdevType>,
}

/// An NVIDIA SR-IOV vGPU VF's state, in [`HostPciDevice::nvidia_vgpu`]: its
/// `nvidia/creatable_vgpu_types` and `nvidia/current_vgpu_type` files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNvidiaVgpu {
    /// The types that can be created on the VF now, from the lines `ID : Name`.
    pub creatable_types: Vec<HostVgpuType>,
    /// The file as read, for lines in another format (a header line is skipped).
    pub creatable_raw: Option<String>,
    /// The type the VF has now (0: none).
    pub current_type: Option<u32>,
}

/// A vGPU type in [`HostNvidiaVgpu::creatable_types`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVgpuType {
    /// The numeric type id, what `current_vgpu_type` takes.
    pub id: u32,
    /// Its profile name (`NVIDIA H100-1-10C`).
    pub name: String,
}

/// A host NUMA node in [`HostDevices::numa_nodes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNumaNode {
    /// The node's id.
    pub id: u32,
    /// Its CPUs as the kernel lists them (`0-3,8`); `""` for a node without CPUs.
    pub cpus: Option<String>,
    /// Its memory (`MemTotal` of its `meminfo`), in bytes.
    pub memory_bytes: Option<u64>,
    /// Its distances to every node, in node order (`distance`).
    pub distances: Option<Vec<u32>>,
    /// What the firmware's HMAT says about reaching this node's memory
    /// (`nodeN/access0` and `access1`); empty when the host has no HMAT or the node no
    /// memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<HostNumaAccess>,
}

/// One access class of a memory node, from `nodeN/accessC/initiators`: the
/// best-performing initiators Linux found in the HMAT and their values. Class 0 takes
/// every initiator (CPU and Generic Initiator nodes), class 1 CPU nodes only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNumaAccess {
    /// The access class: 0 or 1.
    pub class: u32,
    /// The initiator nodes (the `nodeM` links of `initiators/`), ascending.
    pub initiators: Vec<u32>,
    /// Read latency, nanoseconds.
    pub read_latency_ns: Option<u64>,
    /// Write latency, nanoseconds.
    pub write_latency_ns: Option<u64>,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: Option<u64>,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: Option<u64>,
}

/// `PUT /vmm.topology-mirror`: the host devices to pass through, and how large a guest
/// to make; answered with a [`crate::config::VmConfig`] whose NUMA nodes mirror the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyMirror {
    /// The host PCI devices, by address (`0000:41:00.0`, or `41:00.0` for segment 0).
    pub devices: Vec<String>,
    /// Generic Initiator nodes per device. Default by PCI class: 8 for a display
    /// controller (class 0x03, a GPU: one per MIG instance it may be split into), 1 for
    /// any other device (its locality, one initiator). 0 gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gi_nodes: Option<u32>,
    /// Host nodes to mirror besides the devices' own. Default: every host node with CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_nodes: Option<Vec<u32>>,
    /// vCPUs for each mirrored node that has CPUs. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus_per_node: Option<u32>,
    /// Bytes of guest RAM for each mirrored node that has memory, bound to that host
    /// node. Default 512 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_per_node: Option<u64>,
    /// Give each device `managed: true` (Tessera binds it to vfio-pci for the VM). A
    /// device on another driver is then accepted; its group's other members still
    /// must not block VFIO.
    #[serde(default)]
    pub managed: bool,
    /// The configuration's `payload` (kernel, cmdline, initramfs), copied as given.
    #[serde(default)]
    pub payload: crate::config::PayloadConfig,
}

/// [`TopologyMirror::vcpus_per_node`]'s default.
pub const MIRROR_VCPUS_PER_NODE: u32 = 1;
/// [`TopologyMirror::memory_per_node`]'s default.
pub const MIRROR_MEMORY_PER_NODE: u64 = 512 << 20;
/// GI nodes for a display controller (a GPU) unless [`TopologyMirror::gi_nodes`] says.
pub const MIRROR_GPU_GI_NODES: u32 = 8;
/// GI nodes for any other device unless [`TopologyMirror::gi_nodes`] says.
pub const MIRROR_OTHER_GI_NODES: u32 = 1;
