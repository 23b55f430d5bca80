//! The `tessera` command line in Cloud Hypervisor's style: each option takes a
//! `key=value,key=value` string (`--numa guest_numa_id=0,cpus=[0-1],distances=[1@20]`),
//! parsed by `tessera_api::options` (which `tessera-ctl` shares) into the same
//! [`VmConfig`] the API and `--config FILE` give.

use std::path::PathBuf;

use tessera_api::config::{PayloadConfig, VmConfig};
use tessera_api::options::{
    parse_cpus, parse_device, parse_generic_initiator, parse_memory, parse_memory_zone, parse_numa,
    parse_platform, parse_serial, OptionError,
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
                ..PayloadConfig::default()
            },
            ..VmConfig::default()
        };
        let at = |option: &str| {
            let option = option.to_string();
            move |e: OptionError| CliError {
                option: option.clone(),
                message: e.message,
            }
        };
        if let Some(s) = &self.cpus {
            config.cpus = parse_cpus(s).map_err(at("cpus"))?;
        }
        if let Some(s) = &self.memory {
            config.memory = parse_memory(s).map_err(at("memory"))?;
        }
        for s in &self.memory_zones {
            let zone = parse_memory_zone(s).map_err(at("memory-zone"))?;
            config.memory.zones.push(zone);
        }
        for s in &self.numa {
            config.numa.push(parse_numa(s).map_err(at("numa"))?);
        }
        for s in &self.generic_initiators {
            let link = parse_generic_initiator(s).map_err(at("generic-initiator"))?;
            config.generic_initiators.push(link);
        }
        for s in &self.devices {
            config.devices.push(parse_device(s).map_err(at("device"))?);
        }
        if let Some(s) = &self.platform {
            config.platform = parse_platform(s).map_err(at("platform"))?;
        }
        if let Some(s) = &self.serial {
            config.serial = parse_serial(s).map_err(at("serial"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::config::NumaDistance;
    use tessera_api::options::parse_size;

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
