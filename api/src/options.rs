//! Cloud Hypervisor-style option strings, as the `tessera` command line
//! (`--numa guest_numa_id=0,cpus=[0-1]`) and `tessera-ctl` (`add-device path=...,id=gpu0`)
//! take them, parsed into the configuration and request types: `key=value` pairs split on commas outside
//! `[...]`, unknown or repeated keys refused by name, lists as `[a,b]` or one bare item,
//! vCPU lists with ranges (`[0-3,6]`), distances as `NODE@DISTANCE`.
//!
//! Each parser also makes the checks the API would refuse the body for without asking
//! the VMM, so a bad string fails here, naming its key, before anything is sent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{
    parse_node_set, ConfigError, ConsoleConfig, ConsoleMode, CoreScheduling, CpuAffinity,
    CpuFeatures, CpuProfile, CpuTopology, CpusConfig, DeviceConfig, DeviceMemoryConfig,
    GenericInitiatorConfig, HmatCacheAssociativity, HmatCacheConfig, HmatCachePolicy, HmatDataType,
    HmatHierarchy, HmatLbConfig, HotplugMethod, MemoryConfig, MemoryZoneConfig, NodeSet,
    NumaConfig, NumaDistance, PciSlotConfig, PlatformConfig, VirtioConsoleConfig,
    DEFAULT_MAX_PHYS_BITS,
};
use crate::types::RemoveGenericInitiator;

/// An option string that could not be parsed. The message names the key at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// The key at fault, if the fault is one key's.
    pub key: Option<String>,
    /// What is wrong, naming the key.
    pub message: String,
}

impl OptionError {
    fn key(key: &str, message: impl std::fmt::Display) -> Self {
        OptionError {
            key: Some(key.to_owned()),
            message: format!("{key}: {message}"),
        }
    }
}

/// The `key=value` pairs of one option string.
struct Options {
    pairs: BTreeMap<String, String>,
}

impl Options {
    fn parse(s: &str, known: &[&str]) -> Result<Self, OptionError> {
        let mut pairs = BTreeMap::new();
        for item in split_top_level(s) {
            if item.is_empty() {
                continue;
            }
            let Some((k, v)) = item.split_once('=') else {
                return Err(OptionError {
                    key: None,
                    message: format!("`{item}` is not key=value"),
                });
            };
            if !known.contains(&k) {
                return Err(OptionError {
                    key: Some(k.to_owned()),
                    message: format!("unknown key `{k}` (known: {})", known.join(", ")),
                });
            }
            if pairs.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(OptionError {
                    key: Some(k.to_owned()),
                    message: format!("`{k}` is given twice"),
                });
            }
        }
        Ok(Options { pairs })
    }

    fn string(&self, key: &str) -> Option<String> {
        self.pairs.get(key).cloned()
    }

    fn required(&self, key: &str) -> Result<String, OptionError> {
        self.string(key).ok_or_else(|| OptionError {
            key: Some(key.to_owned()),
            message: format!("`{key}` is required"),
        })
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.pairs
            .get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| OptionError::key(key, format!("`{v}` is not a number")))
            })
            .transpose()
    }

    fn size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.pairs
            .get(key)
            .map(|v| parse_size(v).map_err(|m| OptionError::key(key, m)))
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, OptionError> {
        match self.pairs.get(key).map(String::as_str) {
            None | Some("off") | Some("false") => Ok(false),
            Some("on") | Some("true") => Ok(true),
            Some(v) => Err(OptionError::key(key, format!("`{v}` is not on or off"))),
        }
    }

    /// `[a,b]` or a bare single item.
    fn list(&self, key: &str) -> Vec<String> {
        self.pairs.get(key).map_or_else(Vec::new, |v| {
            unbracket(v)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }

    /// A node set, `2-9,12`; also `[2-9,12]`, the only way to give one with a comma.
    fn node_set(&self, key: &str) -> Result<Option<NodeSet>, OptionError> {
        self.pairs
            .get(key)
            .map(|v| unbracket(v).parse().map_err(|m| OptionError::key(key, m)))
            .transpose()
    }
}

fn unbracket(v: &str) -> &str {
    v.strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(v)
}

/// Splits on commas that are not inside brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// `512M`, `2G`, `4096`, `1T`: binary units, as Cloud Hypervisor reads them.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (s.get(..i), 10),
        Some((i, 'M' | 'm')) => (s.get(..i), 20),
        Some((i, 'G' | 'g')) => (s.get(..i), 30),
        Some((i, 'T' | 't')) => (s.get(..i), 40),
        _ => (Some(s), 0),
    };
    digits
        .and_then(|d| d.parse::<u64>().ok())
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("`{s}` is not a size (a number with an optional K, M, G or T)"))
}

/// A refusal of [`CpusConfig::check_supported`] and its kin, its field (`cpus.X`, or
/// `{prefix}.X`) turned into the option key that set it: the field's first component,
/// or its name on CH's command line where that differs (`renames`: field, key).
fn unsupported<'a>(
    prefix: &'a str,
    renames: &'a [(&'a str, &'a str)],
) -> impl Fn(ConfigError) -> OptionError + 'a {
    move |e| {
        let rest = e
            .field
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(&e.field);
        let name = rest.split(['.', '[']).next().unwrap_or(rest);
        let key = renames
            .iter()
            .find(|(field, _)| *field == name)
            .map_or(name, |(_, key)| key);
        OptionError::key(key, e.message)
    }
}

impl Options {
    /// `on`/`off` (or `true`/`false`), `default` when absent.
    fn flag_or(&self, key: &str, default: bool) -> Result<bool, OptionError> {
        if self.pairs.contains_key(key) {
            self.flag(key)
        } else {
            Ok(default)
        }
    }

    /// One of `names` (case-insensitive), as the value it maps to.
    fn choice<T: Copy>(&self, key: &str, names: &[(&str, T)]) -> Result<Option<T>, OptionError> {
        let Some(v) = self.pairs.get(key) else {
            return Ok(None);
        };
        names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(v))
            .map(|(_, t)| Some(*t))
            .ok_or_else(|| {
                let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                OptionError::key(key, format!("`{v}` is not one of {}", all.join(", ")))
            })
    }

    /// Numbers with ranges, `[0-3,6]` or `2`.
    fn numbers(&self, key: &str) -> Result<Option<Vec<u32>>, OptionError> {
        self.pairs
            .get(key)
            .map(|v| {
                let v = unbracket(v);
                if v.trim().is_empty() {
                    return Ok(Vec::new());
                }
                parse_node_set(v).map_err(|m| OptionError::key(key, m))
            })
            .transpose()
    }
}

/// `boot=N[,max=N,topology=T:C:D:P,kvm_hyperv=on,max_phys_bits=N,affinity=[V@[CPUS],..],
/// features=[amx],nested=on,core_scheduling=vm|vcpu|off,profile=host]`: the `cpus`
/// section (`max` defaults to `boot`), with CH's keys. What Tessera cannot honour is
/// refused as `vm.create` would refuse it.
pub fn parse_cpus(s: &str) -> Result<CpusConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "boot",
            "max",
            "topology",
            "kvm_hyperv",
            "max_phys_bits",
            "affinity",
            "features",
            "nested",
            "core_scheduling",
            "profile",
        ],
    )?;
    let boot = o.number("boot")?.unwrap_or(1);
    let topology = o
        .string("topology")
        .map(|t| {
            let parts: Vec<u16> = t
                .split(':')
                .map(|p| p.trim().parse::<u16>())
                .collect::<Result<_, _>>()
                .map_err(|_| OptionError::key("topology", format!("`{t}` is not T:C:D:P")))?;
            match parts[..] {
                [threads_per_core, cores_per_die, dies_per_package, packages] => Ok(CpuTopology {
                    threads_per_core,
                    cores_per_die,
                    dies_per_package,
                    packages,
                }),
                _ => Err(OptionError::key(
                    "topology",
                    format!("`{t}` is not THREADS:CORES:DIES:PACKAGES"),
                )),
            }
        })
        .transpose()?;
    let affinity = o
        .pairs
        .get("affinity")
        .map(|v| {
            split_top_level(unbracket(v))
                .into_iter()
                .filter(|item| !item.trim().is_empty())
                .map(|item| {
                    let bad = || {
                        OptionError::key("affinity", format!("`{item}` is not VCPU@[HOST_CPUS]"))
                    };
                    let (vcpu, cpus) = item.split_once('@').ok_or_else(bad)?;
                    Ok(CpuAffinity {
                        vcpu: vcpu.trim().parse().map_err(|_| bad())?,
                        host_cpus: parse_node_set(unbracket(cpus.trim()))
                            .map_err(|m| OptionError::key("affinity", m))?,
                    })
                })
                .collect::<Result<Vec<_>, OptionError>>()
        })
        .transpose()?;
    let mut features = CpuFeatures::default();
    for f in o.list("features") {
        match f.as_str() {
            "amx" => features.amx = true,
            _ => {
                return Err(OptionError::key(
                    "features",
                    format!("unknown CPU feature `{f}` (known: amx)"),
                ))
            }
        }
    }
    let cpus = CpusConfig {
        boot_vcpus: boot,
        max_vcpus: o.number("max")?.unwrap_or(boot),
        topology,
        kvm_hyperv: o.flag("kvm_hyperv")?,
        max_phys_bits: o.number("max_phys_bits")?.unwrap_or(DEFAULT_MAX_PHYS_BITS),
        affinity,
        features,
        nested: o.flag_or("nested", true)?,
        core_scheduling: o
            .choice(
                "core_scheduling",
                &[
                    ("vm", CoreScheduling::Vm),
                    ("vcpu", CoreScheduling::Vcpu),
                    ("off", CoreScheduling::Off),
                ],
            )?
            .unwrap_or_default(),
        profile: o
            .choice("profile", &[("host", CpuProfile::Host)])?
            .unwrap_or_default(),
    };
    cpus.check_supported().map_err(unsupported("cpus", &[]))?;
    Ok(cpus)
}

/// `size=SIZE[,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on,mergeable=on,
/// reserve=on,thp=off,hotplug_method=acpi,hotplug_size=SIZE,hotplugged_size=SIZE]`: the
/// `memory` section without its zones, with CH's keys.
pub fn parse_memory(s: &str) -> Result<MemoryConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "size",
            "mergeable",
            "hotplug_method",
            "hotplug_size",
            "hotplugged_size",
            "shared",
            "hugepages",
            "hugepage_size",
            "prefault",
            "reserve",
            "thp",
        ],
    )?;
    let memory = MemoryConfig {
        size: o.size("size")?.unwrap_or(MemoryConfig::default().size),
        mergeable: o.flag("mergeable")?,
        hotplug_method: o
            .choice(
                "hotplug_method",
                &[
                    ("acpi", HotplugMethod::Acpi),
                    ("virtio-mem", HotplugMethod::VirtioMem),
                ],
            )?
            .unwrap_or_default(),
        hotplug_size: o.size("hotplug_size")?,
        hotplugged_size: o.size("hotplugged_size")?,
        shared: o.flag("shared")?,
        hugepages: o.flag("hugepages")?,
        hugepage_size: o.size("hugepage_size")?,
        prefault: o.flag("prefault")?,
        reserve: o.flag("reserve")?,
        zones: Vec::new(),
        thp: o.flag_or("thp", true)?,
    };
    memory
        .check_supported()
        .map_err(unsupported("memory", &[]))?;
    Ok(memory)
}

/// `id=ID,size=SIZE[,host_numa_node=N,shared=on,hugepages=on,hugepage_size=SIZE,
/// prefault=on,reserve=on,mergeable=on,file=PATH,hotplug_size=SIZE,hotplugged_size=SIZE]`.
pub fn parse_memory_zone(s: &str) -> Result<MemoryZoneConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "id",
            "size",
            "file",
            "shared",
            "hugepages",
            "hugepage_size",
            "host_numa_node",
            "hotplug_size",
            "hotplugged_size",
            "prefault",
            "reserve",
            "mergeable",
        ],
    )?;
    let zone = MemoryZoneConfig {
        id: o.required("id")?,
        size: o
            .size("size")?
            .ok_or_else(|| OptionError::key("size", "is required"))?,
        file: o.string("file").map(PathBuf::from),
        shared: o.flag("shared")?,
        hugepages: o.flag("hugepages")?,
        hugepage_size: o.size("hugepage_size")?,
        host_numa_node: o.number("host_numa_node")?,
        hotplug_size: o.size("hotplug_size")?,
        hotplugged_size: o.size("hotplugged_size")?,
        prefault: o.flag("prefault")?,
        reserve: o.flag("reserve")?,
        mergeable: o.flag("mergeable")?,
    };
    zone.check_supported("zone")
        .map_err(unsupported("zone", &[]))?;
    Ok(zone)
}

/// `num_pci_segments=N`, with CH's other `--platform` keys (`iommu_segments`,
/// `iommu_address_width`, `iommufd`, `iommufd_fd`, `vfio_p2p_dma`, the SMBIOS strings,
/// `tdx`, `sev_snp`) accepted at CH's defaults.
pub fn parse_platform(s: &str) -> Result<PlatformConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "num_pci_segments",
            "iommu_segments",
            "iommu_address_width",
            "serial_number",
            "uuid",
            "oem_strings",
            "iommufd",
            "iommufd_fd",
            "vfio_p2p_dma",
            "system_manufacturer",
            "system_product_name",
            "system_version",
            "system_serial_number",
            "system_uuid",
            "system_sku_number",
            "system_family",
            "chassis_asset_tag",
            "tdx",
            "sev_snp",
        ],
    )?;
    let segments = o
        .numbers("iommu_segments")?
        .map(|list| {
            list.into_iter()
                .map(|n| {
                    u16::try_from(n).map_err(|_| {
                        OptionError::key("iommu_segments", format!("{n} is not a segment number"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let platform = PlatformConfig {
        num_pci_segments: o.number("num_pci_segments")?.unwrap_or(1),
        iommu_segments: segments,
        iommu_address_width_bits: o.number("iommu_address_width")?.unwrap_or(64),
        system_serial_number: o
            .string("system_serial_number")
            .or_else(|| o.string("serial_number")),
        system_uuid: o.string("system_uuid").or_else(|| o.string("uuid")),
        oem_strings: o
            .pairs
            .contains_key("oem_strings")
            .then(|| o.list("oem_strings")),
        system_manufacturer: o.string("system_manufacturer"),
        system_product_name: o.string("system_product_name"),
        system_version: o.string("system_version"),
        system_family: o.string("system_family"),
        system_sku_number: o.string("system_sku_number"),
        chassis_asset_tag: o.string("chassis_asset_tag"),
        tdx: o.flag("tdx")?,
        sev_snp: o.flag("sev_snp")?,
        iommufd: o.flag("iommufd")?,
        iommufd_fd: o.number("iommufd_fd")?,
        vfio_p2p_dma: o.flag_or("vfio_p2p_dma", true)?,
    };
    // The key given, where CH has two names for one field.
    let mut renames = vec![("iommu_address_width_bits", "iommu_address_width")];
    if !o.pairs.contains_key("system_serial_number") {
        renames.push(("system_serial_number", "serial_number"));
    }
    if !o.pairs.contains_key("system_uuid") {
        renames.push(("system_uuid", "uuid"));
    }
    platform
        .check_supported()
        .map_err(unsupported("platform", &renames))?;
    Ok(platform)
}

/// `off`, `null`, `tty`, `pty`, `file=PATH` or `socket=PATH`: the `serial` section.
pub fn parse_serial(s: &str) -> Result<ConsoleConfig, OptionError> {
    let console = |mode| ConsoleConfig {
        mode,
        file: None,
        socket: None,
    };
    Ok(match s {
        "off" => console(ConsoleMode::Off),
        "null" => console(ConsoleMode::Null),
        "tty" => console(ConsoleMode::Tty),
        "pty" => console(ConsoleMode::Pty),
        _ => match s.split_once('=') {
            Some(("file", path)) => ConsoleConfig {
                file: Some(path.into()),
                ..console(ConsoleMode::File)
            },
            Some(("socket", path)) => ConsoleConfig {
                socket: Some(path.into()),
                ..console(ConsoleMode::Socket)
            },
            _ => {
                return Err(OptionError {
                    key: None,
                    message: format!("`{s}` is not off, null, tty, pty, file=PATH or socket=PATH"),
                })
            }
        },
    })
}

/// `off` or `null`: the `console` section, Cloud Hypervisor's virtio console, which
/// Tessera does not have yet; both mean no device. CH's other modes (`tty`, `pty`,
/// `file=PATH`, `socket=PATH`) would need one and are refused, pointing at `--serial`.
pub fn parse_console(s: &str) -> Result<VirtioConsoleConfig, OptionError> {
    let console = parse_serial(s)?;
    match console.mode {
        ConsoleMode::Off | ConsoleMode::Null => Ok(console.into()),
        _ => Err(OptionError {
            key: None,
            message: format!(
                "`{s}`: Tessera has no virtio console yet; the serial port (--serial) \
                 carries the guest's console, so give off or null here"
            ),
        }),
    }
}

/// `path=PATH[,id=ID,pci_segment=N,pci_device_id=N,iommu=off,x_exclude_mmap_bars=[N,..],
/// fd=N,x_nv_gpudirect_clique=N]`: `PUT /vm.add-device`'s body, with CH's keys; and
/// Tessera's managed devices: `mdev_parent=PARENT,mdev_type=TYPE[,uuid=UUID]`, `uuid=UUID`
/// (an mdevctl-defined mdev), `path=..,managed=on`, `path=..,vgpu_type=N`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "path",
            "fd",
            "id",
            "iommu",
            "pci_segment",
            "pci_device_id",
            "x_nv_gpudirect_clique",
            "x_exclude_mmap_bars",
            "mdev_parent",
            "mdev_type",
            "uuid",
            "managed",
            "vgpu_type",
        ],
    )?;
    let device = DeviceConfig {
        id: o.string("id"),
        iommu: o.flag("iommu")?,
        pci_segment: o.number("pci_segment")?.unwrap_or(0),
        pci_device_id: o.number("pci_device_id")?,
        path: PathBuf::from(o.string("path").unwrap_or_default()),
        fd: o.number("fd")?,
        x_nv_gpudirect_clique: o.number("x_nv_gpudirect_clique")?,
        x_exclude_mmap_bars: o
            .numbers("x_exclude_mmap_bars")?
            .unwrap_or_default()
            .into_iter()
            .map(u64::from)
            .collect(),
        mdev_parent: o.string("mdev_parent"),
        mdev_type: o.string("mdev_type"),
        uuid: o.string("uuid"),
        managed: o.flag("managed")?,
        vgpu_type: o.number("vgpu_type")?,
    };
    // Before `path`: CH takes `fd=N` instead of a path, which Tessera refuses by name.
    device
        .check_supported("device")
        .map_err(unsupported("device", &[]))?;
    if device.mdev_parent.is_none() && device.mdev_type.is_none() && device.uuid.is_none() {
        o.required("path")?;
    }
    device.check_source("device").map_err(|e| {
        let key = e
            .field
            .strip_prefix("device.")
            .unwrap_or(&e.field)
            .to_string();
        OptionError {
            message: format!("{key}: {}", e.message),
            key: Some(key),
        }
    })?;
    Ok(device)
}

/// `id=ID[,pci_segment=N,pci_device_id=D]`: a GI-ready PCI slot (`pci_slots[]`).
pub fn parse_pci_slot(s: &str) -> Result<PciSlotConfig, OptionError> {
    let o = Options::parse(s, &["id", "pci_segment", "pci_device_id"])?;
    Ok(PciSlotConfig {
        id: o.required("id")?,
        pci_segment: o.number("pci_segment")?.unwrap_or(0),
        pci_device_id: o.number("pci_device_id")?,
    })
}

/// `guest_numa_id=N[,cpus=[..],memory_zones=[..],distances=[N@D,..],pci_segments=[..],device_id=ID]`:
/// `PUT /vm.add-numa-node`'s body.
pub fn parse_numa(s: &str) -> Result<NumaConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "guest_numa_id",
            "cpus",
            "memory_zones",
            "distances",
            "pci_segments",
            "device_id",
        ],
    )?;
    let cpus = o
        .list("cpus")
        .iter()
        .map(|c| parse_node_set(c).map_err(|m| OptionError::key("cpus", m)))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let distances = o
        .list("distances")
        .iter()
        .map(|d| {
            let bad = || OptionError::key("distances", format!("`{d}` is not NODE@DISTANCE"));
            let (dest, dist) = d.split_once('@').ok_or_else(bad)?;
            Ok(NumaDistance {
                destination: dest.trim().parse().map_err(|_| bad())?,
                distance: dist.trim().parse().map_err(|_| bad())?,
            })
        })
        .collect::<Result<Vec<_>, OptionError>>()?;
    let pci_segments = o
        .list("pci_segments")
        .iter()
        .map(|p| {
            p.parse::<u16>().map_err(|_| {
                OptionError::key("pci_segments", format!("`{p}` is not a segment number"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NumaConfig {
        guest_numa_id: o.number("guest_numa_id")?.ok_or_else(|| OptionError {
            key: Some("guest_numa_id".into()),
            message: "`guest_numa_id` is required".into(),
        })?,
        cpus,
        distances,
        memory_zones: o.list("memory_zones"),
        pci_segments,
        device_id: o.string("device_id"),
    })
}

/// `device=ID,node=N` or `device=ID,nodes=SET`, with an optional `id=NAME`:
/// `PUT /vm.add-generic-initiator`'s body. Exactly one of `node`/`nodes` must be given.
pub fn parse_generic_initiator(s: &str) -> Result<GenericInitiatorConfig, OptionError> {
    let o = Options::parse(s, &["id", "device", "node", "nodes"])?;
    let gi = GenericInitiatorConfig {
        id: o.string("id"),
        device: o.required("device")?,
        node: o.number("node")?,
        nodes: o.node_set("nodes")?,
    };
    one_of_node_nodes(gi.node.is_some(), gi.nodes.is_some())?;
    Ok(gi)
}

/// `device=ID,bar=N,node=N[,distance=N]`: a device's memory BAR as node N's RAM
/// (`device_memory`).
pub fn parse_device_memory(s: &str) -> Result<DeviceMemoryConfig, OptionError> {
    let o = Options::parse(s, &["device", "bar", "node", "distance"])?;
    let required = |key: &str| OptionError {
        key: Some(key.to_owned()),
        message: format!("`{key}` is required"),
    };
    Ok(DeviceMemoryConfig {
        device: o.required("device")?,
        bar: o.number("bar")?.ok_or_else(|| required("bar"))?,
        node: o.number("node")?.ok_or_else(|| required("node"))?,
        distance: o.number("distance")?,
    })
}

/// QEMU's `-numa hmat-lb` option string:
/// `initiator=N,target=N,hierarchy=memory,data-type=TYPE,latency=NS` or `...,bandwidth=SIZE`,
/// TYPE one of `access-latency`, `read-latency`, `write-latency`, `access-bandwidth`,
/// `read-bandwidth`, `write-bandwidth` (`_` for `-` is accepted too). SIZE is bytes per
/// second with QEMU's binary suffixes: `200M` is 200 MiB/s.
pub fn parse_hmat_lb(s: &str) -> Result<HmatLbConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "initiator",
            "target",
            "hierarchy",
            "data-type",
            "latency",
            "bandwidth",
        ],
    )?;
    let required_number = |key: &str| -> Result<u32, OptionError> {
        o.number(key)?.ok_or_else(|| OptionError {
            key: Some(key.to_owned()),
            message: format!("`{key}` is required"),
        })
    };
    let hierarchy = match o.required("hierarchy")?.replace('_', "-").as_str() {
        "memory" => HmatHierarchy::Memory,
        "first-level" => HmatHierarchy::FirstLevel,
        "second-level" => HmatHierarchy::SecondLevel,
        "third-level" => HmatHierarchy::ThirdLevel,
        other => {
            return Err(OptionError::key(
                "hierarchy",
                format!("`{other}` is not memory, first-level, second-level or third-level"),
            ))
        }
    };
    let data_type = o.required("data-type")?.replace('_', "-");
    let data_type = HmatDataType::ALL
        .into_iter()
        .find(|t| t.qemu_name() == data_type)
        .ok_or_else(|| {
            let names: Vec<&str> = HmatDataType::ALL.iter().map(|t| t.qemu_name()).collect();
            OptionError::key(
                "data-type",
                format!("`{data_type}` is not one of {}", names.join(", ")),
            )
        })?;
    let hmat = HmatLbConfig {
        initiator: required_number("initiator")?,
        target: required_number("target")?,
        hierarchy,
        data_type,
        latency: o.number("latency")?,
        bandwidth: o.size("bandwidth")?,
    };
    // The checks of one value alone, named by their key as the command line spells it.
    hmat.validate("hmat").map_err(|e| {
        let key = e.field.rsplit('.').next().unwrap_or_default().to_owned();
        OptionError::key(&key, e.message)
    })?;
    Ok(hmat)
}

/// QEMU's `-numa hmat-cache` option string:
/// `node-id=N,size=SIZE,level=L[,associativity=none|direct|complex,policy=none|write-back|write-through,line=N]`.
pub fn parse_hmat_cache(s: &str) -> Result<HmatCacheConfig, OptionError> {
    let o = Options::parse(
        s,
        &[
            "node-id",
            "size",
            "level",
            "associativity",
            "policy",
            "line",
        ],
    )?;
    let required = |key: &str, v: Option<u64>| {
        v.ok_or_else(|| OptionError {
            key: Some(key.to_owned()),
            message: format!("`{key}` is required"),
        })
    };
    let associativity = match o.string("associativity").as_deref() {
        None | Some("none") => HmatCacheAssociativity::None,
        Some("direct") => HmatCacheAssociativity::Direct,
        Some("complex") => HmatCacheAssociativity::Complex,
        Some(other) => {
            return Err(OptionError::key(
                "associativity",
                format!("`{other}` is not none, direct or complex"),
            ))
        }
    };
    let policy = match o.string("policy").map(|p| p.replace('_', "-")).as_deref() {
        None | Some("none") => HmatCachePolicy::None,
        Some("write-back") => HmatCachePolicy::WriteBack,
        Some("write-through") => HmatCachePolicy::WriteThrough,
        Some(other) => {
            return Err(OptionError::key(
                "policy",
                format!("`{other}` is not none, write-back or write-through"),
            ))
        }
    };
    let line = o
        .size("line")?
        .map(|l| {
            u16::try_from(l).map_err(|_| OptionError::key("line", format!("{l} is over 65535")))
        })
        .transpose()?
        .unwrap_or(0);
    Ok(HmatCacheConfig {
        node: required("node-id", o.number("node-id")?)?
            .try_into()
            .map_err(|_| OptionError::key("node-id", "is not a node number"))?,
        size: required("size", o.size("size")?)?,
        level: o.number("level")?.ok_or_else(|| OptionError {
            key: Some("level".into()),
            message: "`level` is required".into(),
        })?,
        associativity,
        policy,
        line,
    })
}

/// `id=NAME`, `device=ID,node=N` or `device=ID,nodes=SET`:
/// `PUT /vm.remove-generic-initiator`'s body.
pub fn parse_remove_generic_initiator(s: &str) -> Result<RemoveGenericInitiator, OptionError> {
    let o = Options::parse(s, &["id", "device", "node", "nodes"])?;
    let r = RemoveGenericInitiator {
        id: o.string("id"),
        device: o.string("device"),
        node: o.number("node")?,
        nodes: o.node_set("nodes")?,
    };
    match (&r.id, &r.device) {
        (Some(_), Some(_)) => Err(OptionError {
            key: Some("id".into()),
            message: "give `id` alone, or `device` with `node` or `nodes`".into(),
        }),
        (Some(_), None) if r.node.is_some() || r.nodes.is_some() => Err(OptionError {
            key: Some("id".into()),
            message: "`id` goes alone: it names the links to remove".into(),
        }),
        (Some(_), None) => Ok(r),
        (None, None) => Err(OptionError {
            key: Some("device".into()),
            message: "give `id=NAME`, or `device=ID` with `node` or `nodes`".into(),
        }),
        (None, Some(_)) => {
            one_of_node_nodes(r.node.is_some(), r.nodes.is_some())?;
            Ok(r)
        }
    }
}

fn one_of_node_nodes(node: bool, nodes: bool) -> Result<(), OptionError> {
    match (node, nodes) {
        (true, true) => Err(OptionError {
            key: Some("nodes".into()),
            message: "give `node` or `nodes`, not both".into(),
        }),
        (false, false) => Err(OptionError {
            key: Some("node".into()),
            message: "`node` or `nodes` is required".into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_device() {
        let d = parse_device("mdev_parent=/sys/devices/virtual/mtty/mtty,mdev_type=mtty-2,id=tty0")
            .unwrap();
        assert_eq!(
            d.mdev_parent.as_deref(),
            Some("/sys/devices/virtual/mtty/mtty")
        );
        assert_eq!(d.mdev_type.as_deref(), Some("mtty-2"));
        assert!(d.path.as_os_str().is_empty());
        let d = parse_device("uuid=9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51").unwrap();
        assert!(d.uuid.is_some());
        let d = parse_device("path=/sys/bus/pci/devices/0000:00:03.0,managed=on").unwrap();
        assert!(d.managed);
        let d = parse_device("path=/sys/bus/pci/devices/0000:41:00.4,vgpu_type=558").unwrap();
        assert_eq!(d.vgpu_type, Some(558));
        for (bad, key) in [
            ("mdev_parent=mtty", "mdev_type"),
            ("mdev_type=mtty-1", "mdev_parent"),
            ("mdev_parent=mtty,mdev_type=mtty-1,path=/x", "path"),
            ("mdev_parent=mtty,mdev_type=mtty-1,managed=on", "managed"),
            ("mdev_parent=mtty,mdev_type=mtty-1,uuid=nope", "uuid"),
            ("path=/x,uuid=9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51", "uuid"),
            ("path=/x,managed=on,vgpu_type=1", "managed"),
            ("path=/x,managed=maybe", "managed"),
        ] {
            let e = parse_device(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e:?}");
        }
    }

    #[test]
    fn device() {
        let d = parse_device(
            "path=/sys/bus/pci/devices/0000:41:00.0,id=gpu0,pci_segment=1,pci_device_id=3",
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("/sys/bus/pci/devices/0000:41:00.0"));
        assert_eq!(d.id.as_deref(), Some("gpu0"));
        assert_eq!((d.pci_segment, d.pci_device_id), (1, Some(3)));
        let e = parse_device("id=gpu0").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("path"));
        assert!(e.message.contains("`path` is required"), "{e}");
        let e = parse_device("path=/x,pci_segment=x").unwrap_err();
        assert_eq!(e.to_string(), "pci_segment: `x` is not a number");
        let e = parse_device("path=/x,bus=2").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bus"));
        let e = parse_device("path=/x,path=/y").unwrap_err();
        assert!(e.message.contains("given twice"), "{e}");
        let e = parse_device("/x").unwrap_err();
        assert_eq!((e.key, e.message.as_str()), (None, "`/x` is not key=value"));
    }

    #[test]
    fn pci_slot() {
        let s = parse_pci_slot("id=gpu0,pci_segment=1,pci_device_id=0").unwrap();
        assert_eq!(
            (s.id.as_str(), s.pci_segment, s.pci_device_id),
            ("gpu0", 1, Some(0))
        );
        let s = parse_pci_slot("id=gpu1").unwrap();
        assert_eq!((s.pci_segment, s.pci_device_id), (0, None));
        for (bad, key) in [
            ("pci_segment=1", "id"),
            ("id=a,pci_device_id=x", "pci_device_id"),
            ("id=a,pci_device_id=256", "pci_device_id"),
            ("id=a,path=/x", "path"),
        ] {
            let e = parse_pci_slot(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
    }

    #[test]
    fn console() {
        assert_eq!(parse_console("off").unwrap().mode, ConsoleMode::Off);
        assert_eq!(parse_console("null").unwrap().mode, ConsoleMode::Null);
        for s in ["tty", "pty", "file=/tmp/c", "socket=/tmp/s"] {
            let e = parse_console(s).unwrap_err();
            assert!(e.message.contains("no virtio console"), "{s}: {e}");
            assert!(e.message.contains("--serial"), "{s}: {e}");
        }
        let e = parse_console("stdout").unwrap_err();
        assert!(e.message.contains("is not off, null"), "{e}");
    }

    #[test]
    fn numa() {
        let n = parse_numa(
            "guest_numa_id=2,cpus=[0-1,4],memory_zones=[m0,m1],distances=[0@20,1@30],pci_segments=[1],device_id=gpu0",
        )
        .unwrap();
        assert_eq!(n.guest_numa_id, 2);
        assert_eq!(n.cpus, [0, 1, 4]);
        assert_eq!(n.memory_zones, ["m0", "m1"]);
        assert_eq!(
            n.distances,
            [
                NumaDistance {
                    destination: 0,
                    distance: 20
                },
                NumaDistance {
                    destination: 1,
                    distance: 30
                }
            ]
        );
        assert_eq!(n.pci_segments, [1]);
        assert_eq!(n.device_id.as_deref(), Some("gpu0"));
        // Bare single items, as the tessera CLI takes them.
        let n = parse_numa("guest_numa_id=0,cpus=0-3,memory_zones=m0").unwrap();
        assert_eq!(
            (n.cpus, n.memory_zones),
            (vec![0, 1, 2, 3], vec!["m0".to_owned()])
        );
        for (s, key) in [
            ("cpus=[0]", "guest_numa_id"),
            ("guest_numa_id=0,cpus=[a]", "cpus"),
            ("guest_numa_id=0,distances=[1-20]", "distances"),
            ("guest_numa_id=0,pci_segments=[x]", "pci_segments"),
            ("guest_numa_id=-1", "guest_numa_id"),
            ("guest_numa_id=0,zones=[m0]", "zones"),
        ] {
            let e = parse_numa(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
            assert!(e.message.contains(key), "{s}: {e}");
        }
    }

    #[test]
    fn generic_initiator() {
        let gi = parse_generic_initiator("device=gpu0,node=2").unwrap();
        assert_eq!(
            (gi.device.as_str(), gi.node, gi.nodes),
            ("gpu0", Some(2), None)
        );
        let gi = parse_generic_initiator("device=gpu0,nodes=2-9,id=gi0").unwrap();
        assert_eq!(
            (
                gi.id.as_deref(),
                gi.nodes.as_ref().map(ToString::to_string).as_deref()
            ),
            (Some("gi0"), Some("2-9"))
        );
        let gi = parse_generic_initiator("device=gpu0,nodes=[2,4-5]").unwrap();
        assert_eq!(
            gi.nodes.as_ref().map(ToString::to_string).as_deref(),
            Some("2,4-5")
        );
        for (s, key) in [
            ("node=2", "device"),
            ("device=gpu0", "node"),
            ("device=gpu0,node=1,nodes=2-3", "nodes"),
            ("device=gpu0,nodes=9-2", "nodes"),
            ("device=gpu0,node=x", "node"),
        ] {
            let e = parse_generic_initiator(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
        }
    }

    #[test]
    fn hmat_lb() {
        let h = parse_hmat_lb(
            "initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=10",
        )
        .unwrap();
        assert_eq!(
            h,
            HmatLbConfig {
                initiator: 0,
                target: 1,
                hierarchy: HmatHierarchy::Memory,
                data_type: HmatDataType::AccessLatency,
                latency: Some(10),
                bandwidth: None,
            }
        );
        assert_eq!(h.table_value(), Some(10));
        // QEMU's units: 200M is 200 MiB/s, stored as 200 in the HMAT.
        let h = parse_hmat_lb(
            "initiator=2,target=3,hierarchy=memory,data-type=read_bandwidth,bandwidth=200M",
        )
        .unwrap();
        assert_eq!(h.data_type, HmatDataType::ReadBandwidth);
        assert_eq!(h.bandwidth, Some(200 << 20));
        assert_eq!(h.table_value(), Some(200));
        for (s, key) in [
            (
                "initiator=0,target=1,hierarchy=first-level,data-type=access-latency,latency=1",
                "hierarchy",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=access-latency,bandwidth=1G",
                "bandwidth",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=read-bandwidth,latency=5",
                "latency",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=read-bandwidth",
                "bandwidth",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=read-latency,latency=0",
                "latency",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=read-bandwidth,bandwidth=1000",
                "bandwidth",
            ),
            (
                "initiator=0,target=1,hierarchy=memory,data-type=latency,latency=5",
                "data-type",
            ),
            (
                "target=1,hierarchy=memory,data-type=read-latency,latency=5",
                "initiator",
            ),
            (
                "initiator=0,target=1,data-type=read-latency,latency=5",
                "hierarchy",
            ),
        ] {
            let e = parse_hmat_lb(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
        }
        let e = parse_hmat_lb(
            "initiator=0,target=1,hierarchy=second-level,data-type=read-latency,latency=5",
        )
        .unwrap_err();
        assert!(e.message.contains("only `memory` is supported"), "{e}");
    }

    #[test]
    fn device_memory() {
        let m = parse_device_memory("device=ivs0,bar=2,node=3").unwrap();
        assert_eq!(
            m,
            DeviceMemoryConfig {
                device: "ivs0".into(),
                bar: 2,
                node: 3,
                distance: None,
            }
        );
        assert_eq!(
            parse_device_memory("device=g,bar=0,node=1,distance=80")
                .unwrap()
                .distance,
            Some(80)
        );
        for (s, key) in [
            ("bar=2,node=3", "device"),
            ("device=a,node=3", "bar"),
            ("device=a,bar=2", "node"),
            ("device=a,bar=300,node=1", "bar"),
            ("device=a,bar=2,node=1,size=1G", "size"),
        ] {
            let e = parse_device_memory(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
        }
    }

    #[test]
    fn hmat_cache() {
        let c = parse_hmat_cache(
            "node-id=3,size=16M,level=1,associativity=direct,policy=write-back,line=64",
        )
        .unwrap();
        assert_eq!(
            c,
            HmatCacheConfig {
                node: 3,
                size: 16 << 20,
                level: 1,
                associativity: HmatCacheAssociativity::Direct,
                policy: HmatCachePolicy::WriteBack,
                line: 64,
            }
        );
        let c = parse_hmat_cache("node-id=0,size=1G,level=2").unwrap();
        assert_eq!(c.policy, HmatCachePolicy::None);
        for (s, key) in [
            ("size=1G,level=1", "node-id"),
            ("node-id=0,level=1", "size"),
            ("node-id=0,size=1G", "level"),
            (
                "node-id=0,size=1G,level=1,associativity=full",
                "associativity",
            ),
            ("node-id=0,size=1G,level=1,policy=write-around", "policy"),
            ("node-id=0,size=1G,level=1,line=1M", "line"),
        ] {
            let e = parse_hmat_cache(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s}: {e}");
        }
    }

    #[test]
    fn remove_generic_initiator() {
        let r = parse_remove_generic_initiator("id=gi0").unwrap();
        assert_eq!(
            r,
            RemoveGenericInitiator {
                id: Some("gi0".into()),
                ..Default::default()
            }
        );
        let r = parse_remove_generic_initiator("device=gpu0,nodes=2-3").unwrap();
        assert_eq!(
            r.nodes.as_ref().map(ToString::to_string).as_deref(),
            Some("2-3")
        );
        assert!(r.check().is_ok());
        let r = parse_remove_generic_initiator("device=gpu0,node=3").unwrap();
        assert!(r.check().is_ok());
        for (s, key) in [
            ("id=gi0,device=gpu0", "id"),
            ("id=gi0,node=2", "id"),
            ("", "device"),
            ("node=2", "device"),
            ("device=gpu0", "node"),
            ("device=gpu0,nodes=x", "nodes"),
        ] {
            let e = parse_remove_generic_initiator(s).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{s:?}: {e}");
        }
    }
}
