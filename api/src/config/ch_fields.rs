//! The parts of Cloud Hypervisor's `VmConfig` (API 54.0.0) that Tessera accepts so that
//! CH's configurations load, but whose non-default values it cannot honour: their types,
//! CH's defaults, and [`check`], which refuses every value other than the default with
//! the field's JSON path and what Tessera does instead. Empty lists and `null` count as
//! the default. The fields Tessera does honour (`memory.thp`, `cpus.max_phys_bits`, ...)
//! are checked with the rest of the configuration in [`super::VmConfig::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::{
    ConfigError, ConsoleConfig, ConsoleMode, CpusConfig, DeviceConfig, MemoryConfig,
    MemoryZoneConfig, PlatformConfig, VmConfig,
};

/// A CH configuration object for a device or feature Tessera does not have (a disk, a
/// net device, a TPM, ...). Tessera never reads inside it: any such object is refused,
/// so typing its fields would only duplicate CH's schema. It is kept as given, so that a
/// configuration round-trips and a refusal can name the list it is in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpaqueConfig(pub serde_json::Map<String, serde_json::Value>);

/// The guest's CPU topology as CH describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    /// Threads per core.
    pub threads_per_core: u16,
    /// Cores per die.
    pub cores_per_die: u16,
    /// Dies per package.
    pub dies_per_package: u16,
    /// Packages (sockets).
    pub packages: u16,
}

/// One vCPU pinned to host CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuAffinity {
    /// The vCPU's index.
    pub vcpu: u32,
    /// Host CPUs it may run on.
    pub host_cpus: Vec<u32>,
}

/// Optional CPU features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// Intel AMX (needs the VMM to ask the host kernel for the guest's AMX state).
    #[serde(default)]
    pub amx: bool,
}

/// Which vCPUs may share a physical core (Linux core scheduling cookies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreScheduling {
    /// One cookie for the VM's vCPUs (CH's default).
    #[default]
    Vm,
    /// One cookie per vCPU.
    Vcpu,
    /// No cookie.
    Off,
}

/// CH's CPU profile for migration compatibility; `Host` (the host's CPUID, as KVM
/// offers it) is the only one CH 54 has, and what Tessera gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuProfile {
    /// The host CPU as KVM offers it.
    #[default]
    Host,
}

/// How memory would be hot-plugged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugMethod {
    /// ACPI memory hotplug (CH's default).
    #[default]
    Acpi,
    /// virtio-mem.
    VirtioMem,
}

/// CH's `ConsoleConfig`: the virtio console, with the PCI placement every CH virtio
/// device has. Tessera has no virtio console: `Off`, `Null` and `Tty` (CH's default)
/// are accepted and create no device (the serial port carries the guest's console).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioConsoleConfig {
    /// The file for `File` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Where the bytes would go.
    pub mode: ConsoleMode,
    /// The socket for `Socket` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Behind the virtio-iommu (CH writes it only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// Device number on the segment's root bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

impl Default for VirtioConsoleConfig {
    fn default() -> Self {
        VirtioConsoleConfig::from(ConsoleConfig::default())
    }
}

/// A console setting as the serial port takes it, placed where CH puts a virtio
/// console by default (segment 0, next free slot).
impl From<ConsoleConfig> for VirtioConsoleConfig {
    fn from(c: ConsoleConfig) -> Self {
        VirtioConsoleConfig {
            file: c.file,
            mode: c.mode,
            socket: c.socket,
            id: None,
            iommu: false,
            pci_segment: 0,
            pci_device_id: None,
        }
    }
}

/// The x86 debug console port CH's debug console sits at by default.
pub const DEBUG_CONSOLE_PORT: u16 = 0xe9;

/// CH's `DebugConsoleConfig`: a write-only I/O port for early guest output. Tessera has
/// none; only `Off` (CH's default) is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConsoleConfig {
    /// The file for `File` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Where the bytes would go.
    pub mode: ConsoleMode,
    /// The port (default [`DEBUG_CONSOLE_PORT`]). Without a device it places nothing, so
    /// any value is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobase: Option<u16>,
}

impl Default for DebugConsoleConfig {
    fn default() -> Self {
        DebugConsoleConfig {
            file: None,
            mode: ConsoleMode::Off,
            iobase: Some(DEBUG_CONSOLE_PORT),
        }
    }
}

/// The entropy source CH's virtio-rng reads by default.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

/// CH's `RngConfig`. CH always has a virtio-rng; Tessera has none, and accepts only CH's
/// default (which every CH configuration carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Behind the virtio-iommu (CH writes it only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// Device number on the segment's root bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// The host file the entropy would come from.
    pub src: PathBuf,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            id: None,
            iommu: false,
            pci_segment: 0,
            pci_device_id: None,
            src: PathBuf::from(DEFAULT_RNG_SOURCE),
        }
    }
}

/// CH's `PciSegmentConfig`: how a segment's share of the 32-bit and 64-bit MMIO areas is
/// weighted. Tessera gives every segment an equal share, so it accepts weights that
/// give that (all segments' weights equal) and refuses others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSegmentConfig {
    /// The segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// Relative share of the 32-bit MMIO area.
    #[serde(default = "one")]
    pub mmio32_aperture_weight: u32,
    /// Relative share of the 64-bit MMIO area.
    #[serde(default = "one")]
    pub mmio64_aperture_weight: u32,
}

/// A Landlock rule: `path` may be accessed as `access` says (`r`, `w`, `rw`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockConfig {
    /// The path.
    pub path: PathBuf,
    /// Its access.
    pub access: String,
}

/// A list that may be given as `null`, which means none, as in CH (where these lists
/// are `Option`s).
pub(super) fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

pub(super) fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// `preserved_fds`: CH keeps the descriptors it was handed over its socket here and never
/// writes them out. An empty list is no list, so that a configuration with `[]`
/// round-trips to an equal one.
pub(super) fn preserved_fds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    Ok(Option::<Vec<i32>>::deserialize(d)?.filter(|v| !v.is_empty()))
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::new(field, message))
}

/// Refuses a non-empty list at `field` (a null one is none), where Tessera has no such
/// device: `what` says what Tessera lacks and what to use instead.
fn absent<T>(field: &str, list: Option<&[T]>, what: &str) -> Result<(), ConfigError> {
    match list {
        Some(l) if !l.is_empty() => refuse(field, what),
        _ => Ok(()),
    }
}

fn absent_object(field: &str, o: Option<&OpaqueConfig>, what: &str) -> Result<(), ConfigError> {
    match o {
        Some(_) => refuse(field, what),
        None => Ok(()),
    }
}

fn not_true(field: &str, value: bool, what: &str) -> Result<(), ConfigError> {
    if value {
        refuse(field, what)
    } else {
        Ok(())
    }
}

fn none<T>(field: &str, value: &Option<T>, what: &str) -> Result<(), ConfigError> {
    match value {
        Some(_) => refuse(field, what),
        None => Ok(()),
    }
}

const NO_VIRTIO_IOMMU: &str =
    "Tessera has no virtio-iommu: devices sit behind no IOMMU the guest can see";
const NO_HOTPLUG: &str =
    "Tessera has no memory hotplug: the guest's RAM is what `size` and the zones give at boot";

/// The placement fields a CH virtio device has, at `field`, for a device Tessera does
/// not create: any value but the default is refused, since it would place nothing.
fn no_pci_placement(
    field: &str,
    id: &Option<String>,
    iommu: bool,
    pci_segment: u16,
    pci_device_id: Option<u8>,
    what: &str,
) -> Result<(), ConfigError> {
    none(&format!("{field}.id"), id, what)?;
    not_true(&format!("{field}.iommu"), iommu, what)?;
    if pci_segment != 0 {
        refuse(format!("{field}.pci_segment"), what)?;
    }
    none(&format!("{field}.pci_device_id"), &pci_device_id, what)
}

/// Refuses every CH field of `c` that is not at CH's default and that Tessera cannot
/// honour, naming it and saying what Tessera does instead.
pub(super) fn check(c: &VmConfig) -> Result<(), ConfigError> {
    check_cpus(&c.cpus)?;
    check_memory(&c.memory)?;
    check_payload(c)?;
    for (i, d) in c.devices.iter().enumerate() {
        check_device(&format!("devices[{i}]"), d)?;
    }
    check_consoles(c)?;
    check_platform(&c.platform)?;
    check_pci_segments(c)?;

    absent(
        "rate_limit_groups",
        c.rate_limit_groups.as_deref(),
        "Tessera has no rate-limited devices (no virtio-block or virtio-net) for a group to limit",
    )?;
    absent(
        "disks",
        c.disks.as_deref(),
        "Tessera has no virtio-block devices yet; pass an NVMe drive through in `devices`, \
         or boot from an initramfs",
    )?;
    absent(
        "net",
        c.net.as_deref(),
        "Tessera has no virtio-net devices yet; pass a NIC or one of its VFs through in `devices`",
    )?;
    absent_object(
        "balloon",
        c.balloon.as_ref(),
        "Tessera has no virtio-balloon device: guest RAM stays as configured",
    )?;
    absent(
        "generic_vhost_user",
        c.generic_vhost_user.as_deref(),
        "Tessera has no vhost-user devices",
    )?;
    absent(
        "fs",
        c.fs.as_deref(),
        "Tessera has no virtio-fs devices yet; put the guest's files in its initramfs",
    )?;
    absent(
        "pmem",
        c.pmem.as_deref(),
        "Tessera has no virtio-pmem devices",
    )?;
    absent(
        "user_devices",
        c.user_devices.as_deref(),
        "Tessera has no vfio-user devices; pass host devices through with VFIO in `devices`",
    )?;
    absent("vdpa", c.vdpa.as_deref(), "Tessera has no vDPA devices")?;
    absent_object(
        "vsock",
        c.vsock.as_ref(),
        "Tessera has no virtio-vsock device yet",
    )?;
    absent_object(
        "pvmemcontrol",
        c.pvmemcontrol.as_ref(),
        "Tessera has no pvmemcontrol device",
    )?;
    not_true(
        "pvpanic",
        c.pvpanic,
        "Tessera has no pvpanic device: a guest panic is not reported to the VMM \
         (`panic=-1` on the command line makes the guest reboot instead)",
    )?;
    not_true("iommu", c.iommu, NO_VIRTIO_IOMMU)?;
    not_true(
        "watchdog",
        c.watchdog,
        "Tessera has no watchdog device (CH's i6300esb)",
    )?;
    absent_object(
        "rtc",
        c.rtc.as_ref(),
        "Tessera has no virtio-rtc device; the guest keeps time with the CMOS RTC and kvm-clock",
    )?;
    not_true("gdb", c.gdb, "Tessera has no gdb stub")?;
    absent_object("tpm", c.tpm.as_ref(), "Tessera has no TPM device")?;
    absent(
        "preserved_fds",
        c.preserved_fds.as_deref(),
        "Tessera takes no file descriptors over its socket",
    )?;
    not_true(
        "landlock_enable",
        c.landlock_enable,
        "Tessera does not confine itself with Landlock; confine the process from outside \
         (systemd, a container or an LSM profile)",
    )?;
    absent(
        "landlock_rules",
        c.landlock_rules.as_deref(),
        "Tessera does not confine itself with Landlock, so it has no rules to add",
    )?;
    absent_object(
        "ivshmem",
        c.ivshmem.as_ref(),
        "Tessera has no ivshmem device",
    )
}

/// `cpus`, with fields named `cpus.X`.
pub(super) fn check_cpus(cpus: &CpusConfig) -> Result<(), ConfigError> {
    if let Some(t) = cpus.topology {
        let ours = CpuTopology {
            threads_per_core: 1,
            cores_per_die: u16::try_from(cpus.max_vcpus).unwrap_or(u16::MAX),
            dies_per_package: 1,
            packages: 1,
        };
        if t != ours || u32::from(ours.cores_per_die) != cpus.max_vcpus {
            return refuse(
                "cpus.topology",
                format!(
                    "Tessera gives the guest one thread per core and all {} vCPUs as cores of \
                     one die in one package: only threads_per_core 1, cores_per_die {}, \
                     dies_per_package 1, packages 1 is accepted",
                    cpus.max_vcpus, cpus.max_vcpus
                ),
            );
        }
    }
    not_true(
        "cpus.kvm_hyperv",
        cpus.kvm_hyperv,
        "Tessera has no Hyper-V enlightenments: the guest sees KVM's paravirtual interface",
    )?;
    not_true(
        "cpus.features.amx",
        cpus.features.amx,
        "Tessera does not enable AMX for guests",
    )?;
    if cpus.core_scheduling == CoreScheduling::Vcpu {
        return refuse(
            "cpus.core_scheduling",
            "Tessera sets no core-scheduling cookies, so vCPUs cannot be kept off each \
             other's cores; `Vm` (Cloud Hypervisor's default) and `Off` are accepted",
        );
    }
    Ok(())
}

/// `memory` and its zones, with fields named `memory.X`.
pub(super) fn check_memory(m: &MemoryConfig) -> Result<(), ConfigError> {
    if m.hotplug_method == HotplugMethod::VirtioMem {
        return refuse(
            "memory.hotplug_method",
            "Tessera has no virtio-mem device; only `Acpi` (Cloud Hypervisor's default) is \
             accepted, and Tessera has no memory hotplug",
        );
    }
    no_hotplug("memory", m.hotplug_size, m.hotplugged_size)?;
    for (i, z) in m.zones.iter().enumerate() {
        check_zone(&format!("memory.zones[{i}]"), z)?;
    }
    Ok(())
}

fn no_hotplug(at: &str, size: Option<u64>, plugged: Option<u64>) -> Result<(), ConfigError> {
    for (name, size) in [("hotplug_size", size), ("hotplugged_size", plugged)] {
        if size.unwrap_or(0) != 0 {
            return refuse(format!("{at}.{name}"), NO_HOTPLUG);
        }
    }
    Ok(())
}

/// A memory zone, with fields named `{at}.X`.
pub(super) fn check_zone(at: &str, z: &MemoryZoneConfig) -> Result<(), ConfigError> {
    none(
        &format!("{at}.file"),
        &z.file,
        "Tessera backs zones with anonymous memory (or hugetlbfs pages with \
         `hugepages`), not with a file",
    )?;
    no_hotplug(at, z.hotplug_size, z.hotplugged_size)
}

fn check_payload(c: &VmConfig) -> Result<(), ConfigError> {
    let p = &c.payload;
    none(
        "payload.firmware",
        &p.firmware,
        "Tessera boots a Linux kernel directly (`payload.kernel`); firmware payloads are \
         not supported",
    )?;
    none(
        "payload.igvm",
        &p.igvm,
        "Tessera boots a Linux kernel directly (`payload.kernel`); IGVM files are not supported",
    )?;
    none(
        "payload.host_data",
        &p.host_data,
        "Tessera runs no SEV-SNP guests, so it has no host data to give one",
    )?;
    none(
        "payload.fw_cfg_config",
        &p.fw_cfg_config,
        "Tessera has no fw_cfg device: the kernel, command line and initramfs are loaded \
         into guest memory directly",
    )
}

/// A VFIO device, with fields named `{at}.X`.
pub(super) fn check_device(at: &str, d: &DeviceConfig) -> Result<(), ConfigError> {
    let at = |name: &str| format!("{at}.{name}");
    not_true(&at("iommu"), d.iommu, NO_VIRTIO_IOMMU)?;
    none(
        &at("fd"),
        &d.fd,
        "Tessera opens VFIO devices by `path`; a descriptor handed over the socket is \
         not supported",
    )?;
    none(
        &at("x_nv_gpudirect_clique"),
        &d.x_nv_gpudirect_clique,
        "Tessera does not add NVIDIA's GPUDirect clique capability to devices",
    )?;
    for (j, bar) in d.x_exclude_mmap_bars.iter().enumerate() {
        if *bar > 5 {
            return refuse(
                at(&format!("x_exclude_mmap_bars[{j}]")),
                format!("BAR {bar} does not exist: a PCI function has BARs 0 to 5"),
            );
        }
    }
    Ok(())
}

fn check_consoles(c: &VmConfig) -> Result<(), ConfigError> {
    const NO_VIRTIO_CONSOLE: &str = "Tessera has no virtio console yet (the serial port, \
        `serial`, carries the guest's console)";
    let v = &c.console;
    match v.mode {
        ConsoleMode::Off | ConsoleMode::Null | ConsoleMode::Tty => {}
        mode => {
            return refuse(
                "console.mode",
                format!(
                    "{mode:?}: {NO_VIRTIO_CONSOLE}; `Off`, `Null` and `Tty` (Cloud \
                     Hypervisor's default) are accepted and create no device"
                ),
            )
        }
    }
    none("console.file", &v.file, NO_VIRTIO_CONSOLE)?;
    none("console.socket", &v.socket, NO_VIRTIO_CONSOLE)?;
    no_pci_placement(
        "console",
        &v.id,
        v.iommu,
        v.pci_segment,
        v.pci_device_id,
        NO_VIRTIO_CONSOLE,
    )?;

    let d = &c.debug_console;
    if d.mode != ConsoleMode::Off {
        return refuse(
            "debug_console.mode",
            format!(
                "{:?}: Tessera has no debug console port; only `Off` (Cloud Hypervisor's \
                 default) is accepted (the serial port carries the guest's output)",
                d.mode
            ),
        );
    }
    none(
        "debug_console.file",
        &d.file,
        "Tessera has no debug console port, so it writes no file",
    )?;

    let r = &c.rng;
    const NO_RNG: &str = "Tessera has no virtio-rng device; only Cloud Hypervisor's default \
        (`src` /dev/urandom, no placement) is accepted, and the guest seeds its own RNG \
        (RDRAND, interrupt timing)";
    if r.src != std::path::Path::new(DEFAULT_RNG_SOURCE) {
        return refuse("rng.src", NO_RNG);
    }
    no_pci_placement(
        "rng",
        &r.id,
        r.iommu,
        r.pci_segment,
        r.pci_device_id,
        NO_RNG,
    )
}

/// `platform`, with fields named `platform.X`.
pub(super) fn check_platform(p: &PlatformConfig) -> Result<(), ConfigError> {
    absent(
        "platform.iommu_segments",
        p.iommu_segments.as_deref(),
        NO_VIRTIO_IOMMU,
    )?;
    if p.iommu_address_width_bits != 64 {
        refuse(
            "platform.iommu_address_width_bits",
            format!("{NO_VIRTIO_IOMMU}, so it has no address width to set (64 is accepted)"),
        )?;
    }
    const NO_SMBIOS: &str = "Tessera gives the guest no SMBIOS tables";
    // The VM's UUID is taken (NVIDIA's vGPU manager needs it), though no SMBIOS table
    // carries it to the guest.
    if let Some(u) = &p.system_uuid {
        if !super::is_uuid(u) {
            refuse(
                "platform.system_uuid",
                format!(
                    "`{u}` is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx); Tessera takes \
                     the VM's UUID for NVIDIA vGPU, but {}",
                    NO_SMBIOS.to_lowercase()
                ),
            )?;
        }
    }
    for (name, value) in [
        ("system_serial_number", &p.system_serial_number),
        ("system_manufacturer", &p.system_manufacturer),
        ("system_product_name", &p.system_product_name),
        ("system_version", &p.system_version),
        ("system_family", &p.system_family),
        ("system_sku_number", &p.system_sku_number),
        ("chassis_asset_tag", &p.chassis_asset_tag),
    ] {
        none(&format!("platform.{name}"), value, NO_SMBIOS)?;
    }
    absent("platform.oem_strings", p.oem_strings.as_deref(), NO_SMBIOS)?;
    not_true(
        "platform.tdx",
        p.tdx,
        "Tessera runs ordinary KVM guests, not TDX trust domains",
    )?;
    not_true(
        "platform.sev_snp",
        p.sev_snp,
        "Tessera runs ordinary KVM guests, not SEV-SNP guests",
    )?;
    not_true(
        "platform.iommufd",
        p.iommufd,
        "Tessera passes devices through with the VFIO container (type1) interface, not iommufd",
    )?;
    none(
        "platform.iommufd_fd",
        &p.iommufd_fd,
        "Tessera opens no iommufd, and takes no descriptors over its socket",
    )?;
    if !p.vfio_p2p_dma {
        refuse(
            "platform.vfio_p2p_dma",
            "Tessera always maps passed-through BARs into the IOMMU for peer-to-peer DMA \
             (best effort: a host IOMMU that refuses leaves devices DMA-ing to guest RAM \
             only); `true` (Cloud Hypervisor's default) is accepted",
        )?;
    }
    Ok(())
}

fn check_pci_segments(c: &VmConfig) -> Result<(), ConfigError> {
    let Some(list) = &c.pci_segments else {
        return Ok(());
    };
    let count = c.platform.num_pci_segments;
    let mut weights: BTreeMap<u16, (u32, u32)> = (0..count).map(|s| (s, (1, 1))).collect();
    let mut seen = BTreeMap::new();
    for (i, s) in list.iter().enumerate() {
        let at = format!("pci_segments[{i}]");
        if s.pci_segment >= count {
            return refuse(
                format!("{at}.pci_segment"),
                format!(
                    "segment {} does not exist (platform.num_pci_segments is {count})",
                    s.pci_segment
                ),
            );
        }
        if let Some(first) = seen.insert(s.pci_segment, i) {
            return refuse(
                format!("{at}.pci_segment"),
                format!("segment {} is already pci_segments[{first}]", s.pci_segment),
            );
        }
        for (name, w) in [
            ("mmio32_aperture_weight", s.mmio32_aperture_weight),
            ("mmio64_aperture_weight", s.mmio64_aperture_weight),
        ] {
            if w == 0 {
                return refuse(format!("{at}.{name}"), "must be at least 1");
            }
        }
        weights.insert(
            s.pci_segment,
            (s.mmio32_aperture_weight, s.mmio64_aperture_weight),
        );
    }
    for (i, s) in list.iter().enumerate() {
        for (name, w, all) in [
            (
                "mmio32_aperture_weight",
                s.mmio32_aperture_weight,
                weights.values().map(|w| w.0).collect::<Vec<_>>(),
            ),
            (
                "mmio64_aperture_weight",
                s.mmio64_aperture_weight,
                weights.values().map(|w| w.1).collect::<Vec<_>>(),
            ),
        ] {
            if all.iter().any(|other| *other != w) {
                return refuse(
                    format!("pci_segments[{i}].{name}"),
                    "Tessera splits the MMIO areas evenly between PCI segments: every \
                     segment's weight must be the same (a segment not listed weighs 1)",
                );
            }
        }
    }
    Ok(())
}
