//! The `tessera` command line in Cloud Hypervisor's style: each option takes a
//! `key=value,key=value` string (`--numa guest_numa_id=0,cpus=[0-1],distances=[1@20]`),
//! parsed here into the same [`VmConfig`] the API and `--config FILE` give.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tessera_api::config::{
    parse_node_set, ConsoleConfig, ConsoleMode, CpusConfig, DeviceConfig, GenericInitiatorConfig,
    MemoryConfig, MemoryZoneConfig, NumaConfig, NumaDistance, PayloadConfig, PlatformConfig,
    VmConfig,
};

/// A command-line option that could not be parsed: which option, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--{option}: {message}")]
pub struct CliError {
    /// The option, without dashes (`memory-zone`).
    pub option: String,
    /// What is wrong.
    pub message: String,
}

/// The VM-describing options, as given (each value still a CH-style option string).
#[derive(Clone, Debug, Default)]
pub struct VmArgs {
    /// `--kernel PATH`
    pub kernel: Option<PathBuf>,
    /// `--initramfs PATH`
    pub initramfs: Option<PathBuf>,
    /// `--cmdline STRING`
    pub cmdline: Option<String>,
    /// `--cpus boot=N[,max=N]`
    pub cpus: Option<String>,
    /// `--memory size=SIZE[,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on]`
    pub memory: Option<String>,
    /// `--memory-zone id=ID,size=SIZE[,host_numa_node=N,shared=on,hugepages=on,...]`, repeatable
    pub memory_zones: Vec<String>,
    /// `--numa guest_numa_id=N[,cpus=[..],memory_zones=[..],distances=[D@V,..],pci_segments=[..],device_id=ID]`
    pub numa: Vec<String>,
    /// `--generic-initiator device=ID,node=N` or `device=ID,nodes=2-9`, repeatable
    pub generic_initiators: Vec<String>,
    /// `--device path=PATH[,id=ID,pci_segment=N,pci_device_id=N]`, repeatable
    pub devices: Vec<String>,
    /// `--platform num_pci_segments=N`
    pub platform: Option<String>,
    /// `--serial off|null|tty|pty|file=PATH|socket=PATH`
    pub serial: Option<String>,
}

impl VmArgs {
    /// Builds the configuration; defaults are Cloud Hypervisor's (1 vCPU, 512 MiB),
    /// with the serial port on the terminal.
    pub fn to_config(&self) -> Result<VmConfig, CliError> {
        let mut config = VmConfig {
            payload: PayloadConfig {
                kernel: self.kernel.clone(),
                cmdline: self.cmdline.clone(),
                initramfs: self.initramfs.clone(),
            },
            ..VmConfig::default()
        };
        if let Some(s) = &self.cpus {
            config.cpus = parse_cpus(s)?;
        }
        if let Some(s) = &self.memory {
            config.memory = parse_memory(s)?;
        }
        for s in &self.memory_zones {
            config.memory.zones.push(parse_memory_zone(s)?);
        }
        for s in &self.numa {
            config.numa.push(parse_numa(s)?);
        }
        for s in &self.generic_initiators {
            config.generic_initiators.push(parse_generic_initiator(s)?);
        }
        for s in &self.devices {
            config.devices.push(parse_device(s)?);
        }
        if let Some(s) = &self.platform {
            config.platform = parse_platform(s)?;
        }
        if let Some(s) = &self.serial {
            config.serial = parse_serial(s)?;
        }
        Ok(config)
    }
}

/// `key=value` pairs of one option string; commas inside `[...]` belong to the value.
struct Options {
    option: &'static str,
    pairs: BTreeMap<String, String>,
}

impl Options {
    fn parse(option: &'static str, s: &str, known: &[&str]) -> Result<Self, CliError> {
        let err = |message: String| CliError {
            option: option.to_string(),
            message,
        };
        let mut pairs = BTreeMap::new();
        for item in split_top_level(s) {
            if item.is_empty() {
                continue;
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| err(format!("`{item}` is not key=value")))?;
            if !known.contains(&k) {
                return Err(err(format!(
                    "unknown key `{k}` (known: {})",
                    known.join(", ")
                )));
            }
            if pairs.insert(k.to_string(), v.to_string()).is_some() {
                return Err(err(format!("`{k}` is given twice")));
            }
        }
        Ok(Options { option, pairs })
    }

    fn err(&self, key: &str, message: impl std::fmt::Display) -> CliError {
        CliError {
            option: self.option.to_string(),
            message: format!("{key}: {message}"),
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        self.pairs.get(key).cloned()
    }

    fn required(&self, key: &str) -> Result<String, CliError> {
        self.string(key).ok_or_else(|| CliError {
            option: self.option.to_string(),
            message: format!("`{key}` is required"),
        })
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, CliError> {
        self.pairs
            .get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| self.err(key, format!("`{v}` is not a number")))
            })
            .transpose()
    }

    fn size(&self, key: &str) -> Result<Option<u64>, CliError> {
        self.pairs
            .get(key)
            .map(|v| parse_size(v).map_err(|m| self.err(key, m)))
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, CliError> {
        match self.pairs.get(key).map(String::as_str) {
            None | Some("off") | Some("false") => Ok(false),
            Some("on") | Some("true") => Ok(true),
            Some(v) => Err(self.err(key, format!("`{v}` is not on or off"))),
        }
    }

    /// `[a,b]` or a bare single item.
    fn list(&self, key: &str) -> Vec<String> {
        self.pairs.get(key).map_or_else(Vec::new, |v| {
            let inner = v
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or(v);
            inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }
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

fn parse_cpus(s: &str) -> Result<CpusConfig, CliError> {
    let o = Options::parse("cpus", s, &["boot", "max"])?;
    let boot = o.number("boot")?.unwrap_or(1);
    Ok(CpusConfig {
        boot_vcpus: boot,
        max_vcpus: o.number("max")?.unwrap_or(boot),
    })
}

fn parse_memory(s: &str) -> Result<MemoryConfig, CliError> {
    let o = Options::parse(
        "memory",
        s,
        &["size", "shared", "hugepages", "hugepage_size", "prefault"],
    )?;
    Ok(MemoryConfig {
        size: o.size("size")?.unwrap_or(MemoryConfig::default().size),
        shared: o.flag("shared")?,
        hugepages: o.flag("hugepages")?,
        hugepage_size: o.size("hugepage_size")?,
        prefault: o.flag("prefault")?,
        zones: Vec::new(),
    })
}

fn parse_memory_zone(s: &str) -> Result<MemoryZoneConfig, CliError> {
    let o = Options::parse(
        "memory-zone",
        s,
        &[
            "id",
            "size",
            "shared",
            "hugepages",
            "hugepage_size",
            "host_numa_node",
            "prefault",
        ],
    )?;
    Ok(MemoryZoneConfig {
        id: o.required("id")?,
        size: o
            .size("size")?
            .ok_or_else(|| o.err("size", "is required"))?,
        shared: o.flag("shared")?,
        hugepages: o.flag("hugepages")?,
        hugepage_size: o.size("hugepage_size")?,
        host_numa_node: o.number("host_numa_node")?,
        prefault: o.flag("prefault")?,
    })
}

fn parse_numa(s: &str) -> Result<NumaConfig, CliError> {
    let o = Options::parse(
        "numa",
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
        .map(|c| parse_node_set(c).map_err(|m| o.err("cpus", m)))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let distances = o
        .list("distances")
        .iter()
        .map(|d| {
            let (dest, dist) = d
                .split_once('@')
                .ok_or_else(|| o.err("distances", format!("`{d}` is not NODE@DISTANCE")))?;
            let parse = |x: &str| {
                x.parse::<u32>()
                    .map_err(|_| o.err("distances", format!("`{d}` is not NODE@DISTANCE")))
            };
            Ok(NumaDistance {
                destination: parse(dest)?,
                distance: parse(dist)?,
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let pci_segments = o
        .list("pci_segments")
        .iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| o.err("pci_segments", format!("`{p}` is not a segment number")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NumaConfig {
        guest_numa_id: o
            .number("guest_numa_id")?
            .ok_or_else(|| o.err("guest_numa_id", "is required"))?,
        cpus,
        distances,
        memory_zones: o.list("memory_zones"),
        pci_segments,
        device_id: o.string("device_id"),
    })
}

fn parse_generic_initiator(s: &str) -> Result<GenericInitiatorConfig, CliError> {
    let o = Options::parse("generic-initiator", s, &["id", "device", "node", "nodes"])?;
    Ok(GenericInitiatorConfig {
        id: o.string("id"),
        device: o.required("device")?,
        node: o.number("node")?,
        nodes: o.string("nodes"),
    })
}

fn parse_device(s: &str) -> Result<DeviceConfig, CliError> {
    let o = Options::parse("device", s, &["path", "id", "pci_segment", "pci_device_id"])?;
    Ok(DeviceConfig {
        path: PathBuf::from(o.required("path")?),
        id: o.string("id"),
        pci_segment: o.number("pci_segment")?,
        pci_device_id: o.number("pci_device_id")?,
    })
}

fn parse_platform(s: &str) -> Result<PlatformConfig, CliError> {
    let o = Options::parse("platform", s, &["num_pci_segments"])?;
    Ok(PlatformConfig {
        num_pci_segments: o.number("num_pci_segments")?.unwrap_or(1),
    })
}

fn parse_serial(s: &str) -> Result<ConsoleConfig, CliError> {
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
                return Err(CliError {
                    option: "serial".into(),
                    message: format!("`{s}` is not off, null, tty, pty, file=PATH or socket=PATH"),
                })
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> VmArgs {
        VmArgs {
            kernel: Some("/boot/vmlinuz".into()),
            cmdline: Some("console=ttyS0".into()),
            cpus: Some("boot=2".into()),
            memory: Some("size=0".into()),
            memory_zones: vec![
                "id=m0,size=256M".into(),
                "id=m1,size=256M,host_numa_node=0".into(),
            ],
            numa: vec![
                "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]".into(),
                "guest_numa_id=1,cpus=[1],memory_zones=[m1],distances=[0@20]".into(),
                "guest_numa_id=2".into(),
            ],
            generic_initiators: vec!["device=d0,nodes=2".into()],
            devices: vec!["path=/sys/bus/pci/devices/0000:00:04.0,id=d0".into()],
            ..VmArgs::default()
        }
    }

    #[test]
    fn ch_style_options_make_a_valid_config() {
        let c = args().to_config().unwrap();
        c.validate().unwrap();
        assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (2, 2));
        assert_eq!(c.memory.size, 0);
        assert_eq!(c.memory.zones[1].size, 256 << 20);
        assert_eq!(c.memory.zones[1].host_numa_node, Some(0));
        assert_eq!(
            c.numa[0].distances,
            vec![NumaDistance {
                destination: 1,
                distance: 20
            }]
        );
        assert_eq!(c.numa[1].memory_zones, vec!["m1".to_string()]);
        assert_eq!(c.devices[0].id.as_deref(), Some("d0"));
        assert_eq!(c.generic_initiators[0].nodes.as_deref(), Some("2"));
    }

    #[test]
    fn cpu_lists_take_ranges() {
        let mut a = args();
        a.cpus = Some("boot=4".into());
        a.numa[0] = "guest_numa_id=0,cpus=[0-2],memory_zones=m0".into();
        a.numa[1] = "guest_numa_id=1,cpus=[3],memory_zones=m1".into();
        assert_eq!(a.to_config().unwrap().numa[0].cpus, vec![0, 1, 2]);
    }

    #[test]
    fn errors_name_the_option_and_key() {
        let mut a = args();
        a.memory_zones[0] = "id=m0,size=lots".into();
        let e = a.to_config().unwrap_err();
        assert_eq!(e.option, "memory-zone");
        assert!(e.message.starts_with("size: `lots` is not a size"), "{e}");

        let mut a = args();
        a.numa[0] = "guest_numa_id=0,colour=blue".into();
        assert!(a
            .to_config()
            .unwrap_err()
            .message
            .contains("unknown key `colour`"));

        let mut a = args();
        a.numa[0] = "guest_numa_id=0,distances=[1-20]".into();
        assert!(a.to_config().unwrap_err().message.contains("NODE@DISTANCE"));

        let mut a = args();
        a.serial = Some("stdout".into());
        assert_eq!(a.to_config().unwrap_err().option, "serial");

        let mut a = args();
        a.memory = Some("size=1G,size=2G".into());
        assert!(a.to_config().unwrap_err().message.contains("given twice"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
