//! The VM configuration: Cloud Hypervisor's `VmConfig` (API 54.0.0), every field of it,
//! plus `generic_initiators`, `hmat`, `hmat_caches` and `device_memory`; and
//! [`VmConfig::validate`], the checks that need no host.
//!
//! Every CH field is accepted at CH's default and serialized as CH serializes it (fields
//! with a value always, `Option`s only when set), so CH's `vm.info` loads here and
//! Tessera's loads in CH's tools. What Tessera cannot honour is refused at any other
//! value by name ([`ch_fields`]). Unknown fields are refused by name, never ignored.

mod ch_fields;
mod device_memory;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use ch_fields::{is_false, null_is_empty, yes};
pub use ch_fields::{
    CoreScheduling, CpuAffinity, CpuFeatures, CpuProfile, CpuTopology, DebugConsoleConfig,
    HotplugMethod, LandlockConfig, OpaqueConfig, PciSegmentConfig, RngConfig, VirtioConsoleConfig,
    DEBUG_CONSOLE_PORT, DEFAULT_RNG_SOURCE,
};
pub use device_memory::{DeviceMemoryConfig, DEFAULT_DEVICE_MEMORY_DISTANCE};

/// A whole VM. The fields are in CH's order; Tessera's `generic_initiators` and `hmat`
/// follow `numa`.
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
    /// CH's I/O rate-limit groups; Tessera has no device to limit: none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-block disks; Tessera has none yet: an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-net devices; Tessera has none yet: an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-rng; accepted at CH's default only.
    #[serde(default)]
    pub rng: RngConfig,
    /// CH's virtio-balloon; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<OpaqueConfig>,
    /// CH's vhost-user devices; an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_vhost_user: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-fs devices; an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-pmem devices; an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Vec<OpaqueConfig>>,
    /// The COM1 16550 UART.
    #[serde(default)]
    pub serial: ConsoleConfig,
    /// CH's virtio console. Tessera has none yet: `Off`, `Null` and `Tty` (CH's default)
    /// are accepted and create no device; the serial port carries the guest's console.
    #[serde(default)]
    pub console: VirtioConsoleConfig,
    /// CH's debug console port; `Off` (CH's default) only.
    #[serde(default)]
    pub debug_console: DebugConsoleConfig,
    /// PCI devices passed through with VFIO.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub devices: Vec<DeviceConfig>,
    /// GI-ready PCI slots reserved at boot (Tessera extension): a device whose `id` is a
    /// slot's lands at its BDF, at boot or when added later.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pci_slots: Vec<PciSlotConfig>,
    /// CH's vfio-user devices; an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_devices: Option<Vec<OpaqueConfig>>,
    /// CH's vDPA devices; an empty list only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<Vec<OpaqueConfig>>,
    /// CH's virtio-vsock device; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<OpaqueConfig>,
    /// CH's pvmemcontrol device (a build option of CH); none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvmemcontrol: Option<OpaqueConfig>,
    /// CH's pvpanic device; `false` only.
    #[serde(default)]
    pub pvpanic: bool,
    /// Put every virtio device behind a virtio-iommu (CH); `false` only.
    #[serde(default)]
    pub iommu: bool,
    /// Guest NUMA nodes.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub numa: Vec<NumaConfig>,
    /// Generic Initiator links from a device or a PCI slot to NUMA nodes (Tessera
    /// extension).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub generic_initiators: Vec<GenericInitiatorConfig>,
    /// HMAT memory latency and bandwidth from initiator nodes to memory nodes (Tessera
    /// extension; QEMU's `-numa hmat-lb`).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hmat: Vec<HmatLbConfig>,
    /// HMAT memory-side caches in front of memory nodes (Tessera extension; QEMU's
    /// `-numa hmat-cache`).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hmat_caches: Vec<HmatCacheConfig>,
    /// Memory BARs of passed-through devices given to the guest as the RAM of
    /// memory-only NUMA nodes (Tessera extension).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub device_memory: Vec<DeviceMemoryConfig>,
    /// CH's watchdog device; `false` only.
    #[serde(default)]
    pub watchdog: bool,
    /// CH's virtio-rtc device; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<OpaqueConfig>,
    /// CH's gdb stub (a build option of CH); `false` only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gdb: bool,
    /// Per-segment MMIO weights; accepted when they split the areas evenly, as Tessera does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<PciSegmentConfig>>,
    /// Platform options.
    #[serde(default)]
    pub platform: PlatformConfig,
    /// CH's TPM; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<OpaqueConfig>,
    /// Descriptors CH was handed over its socket; CH never writes them out, nor does
    /// Tessera. None accepted (`[]` is read as none).
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "ch_fields::preserved_fds"
    )]
    pub preserved_fds: Option<Vec<i32>>,
    /// CH's Landlock sandbox; `false` only.
    #[serde(default)]
    pub landlock_enable: bool,
    /// CH's extra Landlock rules; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_rules: Option<Vec<LandlockConfig>>,
    /// CH's ivshmem device (a build option of CH); none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivshmem: Option<OpaqueConfig>,
}

/// Host CPUs a `cpus.affinity` entry may name: 0 to 1023, what Linux's `cpu_set_t`
/// (`CPU_SETSIZE`) holds.
pub const MAX_HOST_CPUS: u32 = 1024;

/// CH's default guest physical address width: what a PVH-booted guest can address.
pub const DEFAULT_MAX_PHYS_BITS: u8 = 46;

fn default_max_phys_bits() -> u8 {
    DEFAULT_MAX_PHYS_BITS
}

/// vCPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs running at boot.
    pub boot_vcpus: u32,
    /// vCPUs the guest may ever have.
    pub max_vcpus: u32,
    /// The topology; only Tessera's own (1 thread per core, 1 die, 1 package) is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    /// Hyper-V enlightenments; `false` only.
    #[serde(default)]
    pub kvm_hyperv: bool,
    /// The guest's physical address width (CPUID 0x8000_0008), at most the host's:
    /// the guest gets the smaller of this and the host's, and its memory map fits it.
    #[serde(default = "default_max_phys_bits")]
    pub max_phys_bits: u8,
    /// vCPU pinning (CH's): each listed vCPU's thread runs only on its host CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<CpuAffinity>>,
    /// Optional CPU features; none accepted.
    #[serde(default)]
    pub features: CpuFeatures,
    /// Whether the guest may run its own VMs: `false` hides VMX and SVM from it.
    #[serde(default = "yes")]
    pub nested: bool,
    /// Core scheduling; `Vm` (accepted, not enforced) and `Off`.
    #[serde(default)]
    pub core_scheduling: CoreScheduling,
    /// CPU profile; `Host` is the only one.
    #[serde(default)]
    pub profile: CpuProfile,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
            topology: None,
            kvm_hyperv: false,
            max_phys_bits: DEFAULT_MAX_PHYS_BITS,
            affinity: None,
            features: CpuFeatures::default(),
            nested: true,
            core_scheduling: CoreScheduling::default(),
            profile: CpuProfile::default(),
        }
    }
}

/// Guest RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes of RAM outside zones; must be 0 when `zones` are given (as in CH).
    pub size: u64,
    /// Offer the RAM to KSM for merging (MADV_MERGEABLE). With zones, each zone's own
    /// `mergeable` counts, as in CH.
    #[serde(default)]
    pub mergeable: bool,
    /// How RAM would be hot-plugged; `Acpi` (CH's default) only, and no hotplug.
    #[serde(default)]
    pub hotplug_method: HotplugMethod,
    /// Hot-pluggable bytes; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Bytes already hot-plugged; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
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
    /// Reserve swap space for the RAM at map time (no MAP_NORESERVE). With zones, each
    /// zone's own `reserve` counts.
    #[serde(default)]
    pub reserve: bool,
    /// RAM zones, each given to at most one NUMA node.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub zones: Vec<MemoryZoneConfig>,
    /// Transparent huge pages for all RAM that is not hugetlbfs: `true` keeps the host's
    /// THP policy (RAM is 2 MiB aligned, so THP `always` backs it with huge pages;
    /// Tessera does not MADV_HUGEPAGE, since that stalls faults on compaction),
    /// `false` forbids them (MADV_NOHUGEPAGE).
    #[serde(default = "yes")]
    pub thp: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: 512 << 20,
            mergeable: false,
            hotplug_method: HotplugMethod::Acpi,
            hotplug_size: None,
            hotplugged_size: None,
            shared: false,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            reserve: false,
            zones: Vec::new(),
            thp: true,
        }
    }
}

/// A RAM zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryZoneConfig {
    /// Name NUMA nodes refer to it by.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// A file to back the zone; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
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
    /// Hot-pluggable bytes; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Bytes already hot-plugged; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    /// Touch the zone's memory before boot.
    #[serde(default)]
    pub prefault: bool,
    /// Reserve swap space at map time (no MAP_NORESERVE).
    #[serde(default)]
    pub reserve: bool,
    /// Offer the zone to KSM (MADV_MERGEABLE).
    #[serde(default)]
    pub mergeable: bool,
}

/// What to boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// A firmware image; none accepted (Tessera boots a kernel directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// A bzImage (Linux 64-bit boot protocol) or an ELF vmlinux with a PVH note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Initramfs image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// An IGVM file (a build option of CH); none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<PathBuf>,
    /// SEV-SNP host data (a build option of CH); none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
    /// fw_cfg items (a build option of CH); none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_cfg_config: Option<OpaqueConfig>,
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

/// A VFIO device: one given by `path` (prepared by someone else, or with `managed`
/// bound to vfio-pci by Tessera, or with `vgpu_type` an NVIDIA vGPU VF Tessera gives a
/// type), or an mdev Tessera creates (`mdev_parent` + `mdev_type`) or starts from its
/// mdevctl definition (`uuid` alone). Tessera undoes what it did when the device goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Name GI links and NUMA nodes refer to it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Behind the virtio-iommu (CH writes it only when true); `false` only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// PCI segment to place the device on.
    #[serde(default)]
    pub pci_segment: u16,
    /// Device number on the segment's root bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// `/sys/bus/pci/devices/BDF` or `/sys/bus/mdev/devices/UUID`; empty (or absent)
    /// for an mdev Tessera creates or starts (`mdev_parent`, or `uuid` alone).
    #[serde(default)]
    pub path: PathBuf,
    /// A VFIO cdev descriptor handed over CH's socket; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// NVIDIA GPUDirect clique id; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nv_gpudirect_clique: Option<u8>,
    /// BARs (0..=5) whose memory is not mmapped into the guest: every guest access to
    /// them is trapped and forwarded to the device.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub x_exclude_mmap_bars: Vec<u64>,
    /// Tessera extension: the parent of an mdev Tessera creates at boot (or hot-add) and
    /// removes when the device goes: a PCI address (`0000:00:02.0`), a sysfs device path
    /// (`/sys/devices/virtual/mtty/mtty`) or a name under `/sys/class/mdev_bus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdev_parent: Option<String>,
    /// Tessera extension: the mdev type to create (`mtty-2`, `nvidia-63`), one of the
    /// parent's `mdev_supported_types`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdev_type: Option<String>,
    /// Tessera extension: the UUID of the mdev. With `mdev_parent`, the one to create it
    /// under (generated and written back when absent); alone, an mdev defined with
    /// mdevctl (`/etc/mdevctl.d/PARENT/UUID`) but not started, which Tessera starts and
    /// stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Tessera extension (libvirt's `managed='yes'`): bind the PCI device at `path` to
    /// vfio-pci through `driver_override` for the VM, and give it back to the driver it
    /// had (or none) afterwards.
    #[serde(default, skip_serializing_if = "is_false")]
    pub managed: bool,
    /// Tessera extension: the NVIDIA vGPU type to give the SR-IOV VF at `path`
    /// (written to `nvidia/current_vgpu_type` before the device is opened, 0 after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgpu_type: Option<u32>,
}

impl DeviceConfig {
    /// A device at `path`, every other field at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeviceConfig {
            path: path.into(),
            ..DeviceConfig::default()
        }
    }

    /// Whether Tessera changes the host for this device (creates or starts an mdev,
    /// binds it to vfio-pci, writes a vGPU type), and so undoes the change afterwards.
    pub fn is_managed(&self) -> bool {
        self.mdev_parent.is_some()
            || self.mdev_type.is_some()
            || self.uuid.is_some()
            || self.managed
            || self.vgpu_type.is_some()
    }

    /// Which way the device is given, checked for fields that do not go together:
    /// errors name `{at}.FIELD`.
    pub fn check_source(&self, at: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{at}.{name}");
        let has_path = !self.path.as_os_str().is_empty();
        if let Some(uuid) = &self.uuid {
            if !is_uuid(uuid) {
                return Err(ConfigError::new(
                    f("uuid"),
                    format!("`{uuid}` is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
                ));
            }
        }
        match (&self.mdev_parent, &self.mdev_type) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    f("mdev_type"),
                    "`mdev_parent` needs `mdev_type`, the type of mdev to create",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    f("mdev_parent"),
                    "`mdev_type` needs `mdev_parent`, the device to create the mdev on",
                ))
            }
            _ => {}
        }
        let is_mdev = self.mdev_parent.is_some() || (self.uuid.is_some() && !has_path);
        if is_mdev {
            if has_path {
                return Err(ConfigError::new(
                    f("path"),
                    "give `path` or `mdev_parent`, not both: Tessera makes the mdev's path",
                ));
            }
            if self.managed {
                return Err(ConfigError::new(
                    f("managed"),
                    "`managed` is for a PCI device given by `path`; an mdev Tessera creates is \
                     managed already",
                ));
            }
            if self.vgpu_type.is_some() {
                return Err(ConfigError::new(
                    f("vgpu_type"),
                    "`vgpu_type` is for an NVIDIA SR-IOV VF given by `path`",
                ));
            }
            return Ok(());
        }
        if !has_path {
            return Err(ConfigError::new(
                f("path"),
                "give `path`, or `mdev_parent` and `mdev_type` (or the `uuid` of an mdevctl-defined mdev)",
            ));
        }
        if self.uuid.is_some() {
            return Err(ConfigError::new(
                f("uuid"),
                "`uuid` names an mdev to create or start; with `path` it has no meaning",
            ));
        }
        if self.managed && self.vgpu_type.is_some() {
            return Err(ConfigError::new(
                f("managed"),
                "an NVIDIA vGPU VF stays bound to the nvidia driver: give `vgpu_type` without \
                 `managed`",
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a UUID in its usual text form (`8-4-4-4-12` hex digits).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A GI-ready PCI slot: a BDF reserved at boot under an id, which GI links and
/// `numa[].device_id` may name like a device's. The SRAT names the slot's BDF from boot,
/// whether or not a device fills it, because Linux reads the SRAT only at boot; a device
/// whose `id` is the slot's fills it, and the slot stays reserved when the device goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSlotConfig {
    /// The slot's id, in the namespace of device ids: the device with this id fills it.
    pub id: String,
    /// PCI segment of the slot.
    #[serde(default)]
    pub pci_segment: u16,
    /// Device number on the segment's root bus; without it, the lowest free one, placed
    /// as devices are (pinned first, then in configuration order).
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
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cpus: Vec<u32>,
    /// Distances to other nodes.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub distances: Vec<NumaDistance>,
    /// Memory zones in the node.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub memory_zones: Vec<String>,
    /// PCI segments whose host bridges belong to the node.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pci_segments: Vec<u16>,
    /// A device (or PCI slot) whose Generic Initiator this node is (CH's form of one GI
    /// link).
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
    /// The id of a device or of a PCI slot (`pci_slots`).
    pub device: String,
    /// One node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// A node set such as `2-9` or `2,4,6-7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeSet>,
}

/// One HMAT System Locality Latency and Bandwidth value, as QEMU's
/// `-numa hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=10`:
/// from an initiator node (one with vCPUs or a Generic Initiator) to a node with memory.
/// A latency type takes `latency`, a bandwidth type `bandwidth`, never both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmatLbConfig {
    /// The initiator node: one with vCPUs or one a Generic Initiator links to.
    pub initiator: u32,
    /// The target node: one with memory.
    pub target: u32,
    /// What the value describes: memory itself (QEMU's caches are not supported).
    pub hierarchy: HmatHierarchy,
    /// What the value measures.
    pub data_type: HmatDataType,
    /// Nanoseconds, for the latency types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<u64>,
    /// Bytes per second, a multiple of 1 MiB/s, for the bandwidth types (QEMU's unit; the
    /// HMAT and Linux's sysfs give MB/s, which here as in QEMU means MiB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// QEMU's `hierarchy` of an `hmat-lb` value. Only `memory` is supported: the others
/// describe memory-side caches, which Tessera's HMAT does not declare yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatHierarchy {
    /// The memory of the target node.
    Memory,
    /// A first-level memory-side cache (refused).
    FirstLevel,
    /// A second-level memory-side cache (refused).
    SecondLevel,
    /// A third-level memory-side cache (refused).
    ThirdLevel,
}

/// What an `hmat-lb` value measures (QEMU's `data-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatDataType {
    /// Access latency, nanoseconds.
    AccessLatency,
    /// Read latency, nanoseconds.
    ReadLatency,
    /// Write latency, nanoseconds.
    WriteLatency,
    /// Access bandwidth, bytes per second.
    AccessBandwidth,
    /// Read bandwidth, bytes per second.
    ReadBandwidth,
    /// Write bandwidth, bytes per second.
    WriteBandwidth,
}

impl HmatDataType {
    /// Every data type, in table order.
    pub const ALL: [HmatDataType; 6] = [
        HmatDataType::AccessLatency,
        HmatDataType::ReadLatency,
        HmatDataType::WriteLatency,
        HmatDataType::AccessBandwidth,
        HmatDataType::ReadBandwidth,
        HmatDataType::WriteBandwidth,
    ];

    /// Whether the type is a latency (nanoseconds) rather than a bandwidth.
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            HmatDataType::AccessLatency | HmatDataType::ReadLatency | HmatDataType::WriteLatency
        )
    }

    /// QEMU's name of the type (`access-latency`), as the command line takes it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            HmatDataType::AccessLatency => "access-latency",
            HmatDataType::ReadLatency => "read-latency",
            HmatDataType::WriteLatency => "write-latency",
            HmatDataType::AccessBandwidth => "access-bandwidth",
            HmatDataType::ReadBandwidth => "read-bandwidth",
            HmatDataType::WriteBandwidth => "write-bandwidth",
        }
    }
}

/// One MiB: bandwidths are given in bytes per second and the HMAT holds "MB/s", which
/// QEMU (and Linux's sysfs, which prints the table's number) read as MiB/s.
pub const HMAT_BANDWIDTH_UNIT: u64 = 1 << 20;

impl HmatLbConfig {
    /// The value in the HMAT's units: nanoseconds for latencies, MiB/s for bandwidths.
    /// `None` when the field the data type needs is absent (validation refuses that).
    pub fn table_value(&self) -> Option<u64> {
        if self.data_type.is_latency() {
            self.latency
        } else {
            self.bandwidth.map(|b| b / HMAT_BANDWIDTH_UNIT)
        }
    }

    /// The checks one value needs on its own, at `field` (`hmat[N]`). Which nodes may be
    /// initiators and targets, and duplicates, are checked with the whole topology.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.hierarchy != HmatHierarchy::Memory {
            return Err(ConfigError::new(
                format!("{field}.hierarchy"),
                "only `memory` is supported: latency and bandwidth of memory-side caches \
                 (QEMU's first-level, second-level and third-level) are not; the caches \
                 themselves are declared with `hmat_caches`",
            ));
        }
        let ty = self.data_type.qemu_name();
        let (given, other) = if self.data_type.is_latency() {
            (("latency", self.latency), ("bandwidth", self.bandwidth))
        } else {
            (("bandwidth", self.bandwidth), ("latency", self.latency))
        };
        if other.1.is_some() {
            return Err(ConfigError::new(
                format!("{field}.{}", other.0),
                format!("{ty} takes `{}`, not `{}`", given.0, other.0),
            ));
        }
        match given.1 {
            None => Err(ConfigError::new(
                format!("{field}.{}", given.0),
                format!("{ty} needs `{}`", given.0),
            )),
            // 0 means "not provided" in the HMAT: leave the entry out instead.
            Some(0) => Err(ConfigError::new(
                format!("{field}.{}", given.0),
                "must not be 0 (leave the entry out when the value is unknown)",
            )),
            Some(b) if !self.data_type.is_latency() && b % HMAT_BANDWIDTH_UNIT != 0 => {
                Err(ConfigError::new(
                    format!("{field}.bandwidth"),
                    format!("{b} bytes/s is not a multiple of 1 MiB/s (1048576), the HMAT's unit"),
                ))
            }
            Some(_) => Ok(()),
        }
    }
}

/// One memory-side cache level in front of a memory node, as QEMU's
/// `-numa hmat-cache,node-id=N,size=SIZE,level=L,associativity=A,policy=P,line=N`. The
/// node needs `hmat` values as a target; its levels run from 1 without gaps, each larger
/// than the one below (QEMU's rules, checked with the whole topology).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmatCacheConfig {
    /// The memory node.
    pub node: u32,
    /// Size in bytes.
    pub size: u64,
    /// Level, 1..=3.
    pub level: u8,
    /// How the cache is indexed.
    #[serde(default)]
    pub associativity: HmatCacheAssociativity,
    /// Write policy.
    #[serde(default)]
    pub policy: HmatCachePolicy,
    /// Line size in bytes.
    #[serde(default)]
    pub line: u16,
}

/// A memory-side cache's associativity (QEMU's `associativity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatCacheAssociativity {
    /// None given.
    #[default]
    None,
    /// Direct mapped.
    Direct,
    /// Complex cache indexing.
    Complex,
}

/// A memory-side cache's write policy (QEMU's `policy`; `write-back` on its command line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmatCachePolicy {
    /// None given.
    #[default]
    None,
    /// Write-back.
    WriteBack,
    /// Write-through.
    WriteThrough,
}

/// Platform options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// PCI segments, each with its own host bridge and ECAM window.
    #[serde(default = "one_segment")]
    pub num_pci_segments: u16,
    /// Segments behind the virtio-iommu; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_segments: Option<Vec<u16>>,
    /// The virtio-iommu's address width; 64 (CH's default) only.
    #[serde(default = "iommu_width")]
    pub iommu_address_width_bits: u8,
    /// SMBIOS system serial number (`serial_number` is CH's older name); none accepted.
    #[serde(
        default,
        alias = "serial_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_serial_number: Option<String>,
    /// The VM's UUID (`uuid` is CH's older name): NVIDIA's vGPU manager asks for it (give
    /// it to tessera as `-uuid UUID` too, see docs/passthrough.md). Tessera gives the guest
    /// no SMBIOS tables, so the guest does not see it.
    #[serde(default, alias = "uuid", skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    /// SMBIOS OEM strings; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oem_strings: Option<Vec<String>>,
    /// SMBIOS system manufacturer; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_manufacturer: Option<String>,
    /// SMBIOS product name; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_product_name: Option<String>,
    /// SMBIOS system version; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_version: Option<String>,
    /// SMBIOS system family; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_family: Option<String>,
    /// SMBIOS SKU number; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_sku_number: Option<String>,
    /// SMBIOS chassis asset tag; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
    /// An Intel TDX guest (a build option of CH); `false` only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tdx: bool,
    /// An AMD SEV-SNP guest (a build option of CH); `false` only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sev_snp: bool,
    /// Pass devices through with iommufd; `false` only.
    #[serde(default)]
    pub iommufd: bool,
    /// An iommufd descriptor handed over CH's socket; none accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommufd_fd: Option<i32>,
    /// Map passed-through BARs into the IOMMU so devices can DMA to each other; Tessera
    /// always does (best effort), so `true` (CH's default) only.
    #[serde(default = "yes")]
    pub vfio_p2p_dma: bool,
}

fn one_segment() -> u16 {
    1
}

fn iommu_width() -> u8 {
    64
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            num_pci_segments: 1,
            iommu_segments: None,
            iommu_address_width_bits: 64,
            system_serial_number: None,
            system_uuid: None,
            oem_strings: None,
            system_manufacturer: None,
            system_product_name: None,
            system_version: None,
            system_family: None,
            system_sku_number: None,
            chassis_asset_tag: None,
            tdx: false,
            sev_snp: false,
            iommufd: false,
            iommufd_fd: None,
            vfio_p2p_dma: true,
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

impl CpusConfig {
    /// Refuses the CH fields Tessera cannot honour when they are not at CH's default,
    /// naming them as `cpus.X` (as [`VmConfig::validate`] does).
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        ch_fields::check_cpus(self)
    }
}

impl MemoryConfig {
    /// As [`CpusConfig::check_supported`], for `memory.X` and its zones.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        ch_fields::check_memory(self)
    }
}

impl MemoryZoneConfig {
    /// As [`CpusConfig::check_supported`], naming fields `{at}.X`.
    pub fn check_supported(&self, at: &str) -> Result<(), ConfigError> {
        ch_fields::check_zone(at, self)
    }
}

impl DeviceConfig {
    /// As [`CpusConfig::check_supported`], naming fields `{at}.X`.
    pub fn check_supported(&self, at: &str) -> Result<(), ConfigError> {
        ch_fields::check_device(at, self)
    }
}

impl PlatformConfig {
    /// As [`CpusConfig::check_supported`], for `platform.X`.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        ch_fields::check_platform(self)
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

/// A set of NUMA node ids, written as libvirt's nodeset (`2-9`, `2,4,6-7`). Parsed once,
/// where it enters (JSON, an option string); written back in its shortest form, ranges
/// ascending (`2,3,4` is written `2-4`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeSet(BTreeSet<u32>);

impl NodeSet {
    /// The nodes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Whether `node` is in the set.
    pub fn contains(&self, node: u32) -> bool {
        self.0.contains(&node)
    }
}

impl FromIterator<u32> for NodeSet {
    fn from_iter<I: IntoIterator<Item = u32>>(nodes: I) -> Self {
        NodeSet(nodes.into_iter().collect())
    }
}

impl std::str::FromStr for NodeSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_node_set(s).map(|nodes| nodes.into_iter().collect())
    }
}

impl std::fmt::Display for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut nodes = self.iter().peekable();
        let mut first = true;
        while let Some(start) = nodes.next() {
            let mut end = start;
            while nodes.peek() == Some(&(end.saturating_add(1))) {
                end = nodes.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for NodeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl GenericInitiatorConfig {
    /// The nodes this entry links its device to, whichever form it uses.
    pub fn node_list(&self, field: &str) -> Result<Vec<u32>, ConfigError> {
        match (self.node, &self.nodes) {
            (Some(n), None) => Ok(vec![n]),
            (None, Some(set)) => Ok(set.iter().collect()),
            (Some(_), Some(_)) => Err(ConfigError::new(field, "give `node` or `nodes`, not both")),
            (None, None) => Err(ConfigError::new(field, "needs `node` or `nodes`")),
        }
    }
}

/// The most vCPUs a VM may have: the largest `KVM_MAX_VCPUS` a Linux kernel can be built
/// with. Counts are checked against it before anything is sized by them, so a count a
/// client sends cannot make the VMM allocate without bound (one of u32::MAX aborted it).
pub const MAX_VCPUS: u32 = 4096;

impl VmConfig {
    /// The checks that need no host: counts, references between sections, and
    /// uniqueness. Host checks (files, memory, devices) are the VMM's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cpus;
        if c.boot_vcpus == 0 {
            return Err(ConfigError::new("cpus.boot_vcpus", "must be at least 1"));
        }
        if c.max_vcpus > MAX_VCPUS {
            return Err(ConfigError::new(
                "cpus.max_vcpus",
                format!(
                    "{} is more than the {MAX_VCPUS} vCPUs a VM may have",
                    c.max_vcpus
                ),
            ));
        }
        if c.max_vcpus < c.boot_vcpus {
            return Err(ConfigError::new(
                "cpus.max_vcpus",
                format!("{} is below boot_vcpus {}", c.max_vcpus, c.boot_vcpus),
            ));
        }
        // Before the kernel: a CH configuration with a firmware and no kernel is refused
        // for the firmware, which is what Tessera cannot do.
        ch_fields::check(self)?;
        self.validate_affinity()?;
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
            self.check_pci_address(&format!("devices[{i}]"), d.pci_segment, d.pci_device_id)?;
            d.check_source(&format!("devices[{i}]"))?;
            if let Some(uuid) = &d.uuid {
                if let Some(j) = self.devices.iter().take(i).position(|o| {
                    o.uuid
                        .as_ref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
                }) {
                    return Err(ConfigError::new(
                        format!("devices[{i}].uuid"),
                        format!("`{uuid}` is already devices[{j}]'s"),
                    ));
                }
            }
        }
        // Slot ids share the namespace of device ids: a device with a slot's id is the
        // one that fills it, so only slots among themselves must differ.
        let mut slots = BTreeMap::new();
        for (i, s) in self.pci_slots.iter().enumerate() {
            let field = format!("pci_slots[{i}]");
            if s.id.is_empty() {
                return Err(ConfigError::new(format!("{field}.id"), "must not be empty"));
            }
            if s.id == HOST_BRIDGE_ID {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    format!("`{HOST_BRIDGE_ID}` is reserved for the PCI host bridge"),
                ));
            }
            if let Some(first) = slots.insert(s.id.as_str(), i) {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    format!("`{}` is already pci_slots[{first}]", s.id),
                ));
            }
            self.check_pci_address(&field, s.pci_segment, s.pci_device_id)?;
            devices.entry(s.id.as_str()).or_insert(i);
        }
        if self.platform.num_pci_segments == 0 {
            return Err(ConfigError::new(
                "platform.num_pci_segments",
                "must be at least 1",
            ));
        }
        self.validate_numa(&zones, &devices)?;
        self.validate_device_memory()?;
        // Each HMAT value alone; which nodes may be initiators and targets is known once
        // the topology is (the acpi crate checks it, naming the same `hmat[N]` fields).
        for (i, h) in self.hmat.iter().enumerate() {
            h.validate(&format!("hmat[{i}]"))?;
        }
        Ok(())
    }

    /// A device's or slot's `pci_segment` and `pci_device_id`, at `field`: the segment
    /// exists, the device number is one a device may have. Whether it is free is
    /// placement's to say.
    fn check_pci_address(
        &self,
        field: &str,
        segment: u16,
        device_id: Option<u8>,
    ) -> Result<(), ConfigError> {
        if segment >= self.platform.num_pci_segments {
            return Err(ConfigError::new(
                format!("{field}.pci_segment"),
                format!(
                    "segment {segment} does not exist (platform.num_pci_segments is {})",
                    self.platform.num_pci_segments
                ),
            ));
        }
        if let Some(slot) = device_id {
            if (slot == 0 && segment == 0) || slot > 31 {
                return Err(ConfigError::new(
                    format!("{field}.pci_device_id"),
                    format!(
                        "{slot} is not a free device number (1..=31 on segment 0, whose 0 \
                         is the host bridge; 0..=31 elsewhere)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `cpus.affinity` as Cloud Hypervisor checks it: each vCPU exists and is pinned
    /// once, to at least one host CPU that a CPU set can hold. Whether the host has those
    /// CPUs online is the VMM's check.
    fn validate_affinity(&self) -> Result<(), ConfigError> {
        let mut pinned: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, a) in self.cpus.affinity.iter().flatten().enumerate() {
            let field = format!("cpus.affinity[{i}]");
            if a.vcpu >= self.cpus.max_vcpus {
                return Err(ConfigError::new(
                    format!("{field}.vcpu"),
                    format!(
                        "vCPU {} does not exist (max_vcpus is {})",
                        a.vcpu, self.cpus.max_vcpus
                    ),
                ));
            }
            if let Some(first) = pinned.insert(a.vcpu, i) {
                return Err(ConfigError::new(
                    format!("{field}.vcpu"),
                    format!(
                        "vCPU {} is already pinned by cpus.affinity[{first}]",
                        a.vcpu
                    ),
                ));
            }
            if a.host_cpus.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.host_cpus"),
                    "must name at least one host CPU",
                ));
            }
            if let Some(cpu) = a.host_cpus.iter().find(|&&c| c >= MAX_HOST_CPUS) {
                return Err(ConfigError::new(
                    format!("{field}.host_cpus"),
                    format!("host CPU {cpu} is beyond the {MAX_HOST_CPUS} a CPU set holds"),
                ));
            }
        }
        Ok(())
    }

    fn validate_console(&self) -> Result<(), ConfigError> {
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
                        format!("no device or PCI slot has id `{dev}`"),
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
                    format!("no device or PCI slot has id `{}`", gi.device),
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
