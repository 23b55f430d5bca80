//! The `tessera` command line, Cloud Hypervisor's unchanged where Tessera has the
//! feature: each option takes a `key=value,key=value` string
//! (`--numa guest_numa_id=0,cpus=[0-1],distances=[1@20]`), parsed by
//! `tessera_api::options` (which `tessera-ctl` shares) into the same [`VmConfig`] the
//! API and `--config FILE` give. Where CH takes several values after one flag
//! (`--memory-zone id=m0,size=1G id=m1,size=1G`), so does Tessera; repeating the flag
//! works too. CH's flags for features Tessera lacks are refused by [`unsupported`],
//! naming what is missing.

pub mod unsupported;

use std::path::PathBuf;

use clap::{ArgAction, Parser};
use tessera_api::config::{PayloadConfig, VmConfig};
use tessera_api::options::{
    parse_console, parse_cpus, parse_device, parse_device_memory, parse_generic_initiator,
    parse_hmat_cache, parse_hmat_lb, parse_memory, parse_memory_zone, parse_numa, parse_pci_slot,
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

impl CliError {
    fn new(option: &str, message: impl Into<String>) -> Self {
        CliError {
            option: option.to_owned(),
            message: message.into(),
        }
    }
}

/// Runs one VM that gives its guest the true topology of its devices.
#[derive(Parser, Debug)]
#[command(name = "tessera", version)]
pub struct Args {
    /// A JSON VM configuration (Cloud Hypervisor's VmConfig shape) instead of the VM options.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "kernel", "initramfs", "cmdline", "cpus", "memory", "memory_zones", "numa",
        "devices", "pci_slots", "generic_initiators", "hmat_lb", "hmat_caches", "device_memory", "platform", "serial", "console",
    ])]
    pub config: Option<PathBuf>,
    /// Write the ACPI tables the configuration gives into DIR (one SIG.dat each) and exit.
    #[arg(long, value_name = "DIR")]
    pub dump_acpi: Option<PathBuf>,
    /// Serve the HTTP API on this Unix socket (path=PATH or PATH, or fd=N for an inherited
    /// listener). With VM options too, the VM is created and booted at once; without, it
    /// waits for vm.create and vm.boot.
    #[arg(long, value_name = "path=PATH|PATH|fd=N")]
    pub api_socket: Option<String>,
    /// The VM.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Do not exit when the guest powers off (wait for a signal); with --api-socket,
    /// Tessera never exits on power-off.
    #[arg(long)]
    pub no_shutdown: bool,
    /// How long `vm.remove-device` waits for the guest to eject the device before it
    /// answers 504 and leaves the device attached.
    #[arg(long, value_name = "SECS", default_value_t = crate::control::DEFAULT_EJECT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub eject_timeout: u64,
    /// The VM's UUID (`platform.uuid`), also accepted as QEMU's `-uuid UUID`: NVIDIA's vGPU
    /// manager reads it from the VMM's command line.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Where records of host changes (mdevs created, drivers bound, vGPU types written)
    /// are kept until they are undone; a later tessera undoes a crashed one's.
    #[arg(long, value_name = "DIR", default_value = crate::managed::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Undo the host changes of tessera processes that died without undoing them (read
    /// from --state-dir), print what was done, and exit. Every start does this too.
    #[arg(long)]
    pub cleanup: bool,
    /// More log output: -v info, -vv debug, -vvv trace (default: warnings; overrides TESSERA_LOG).
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
    /// Write the log to FILE instead of standard error.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Test hook, hidden from --help: a fake `/` whose `sys/` and `etc/mdevctl.d/` Tessera
    /// reads and writes instead of the host's, for `vmm.host-devices` and managed devices
    /// (vmm/tests/api.rs, vmm/tests/managed.rs). VFIO devices are still opened for real.
    #[arg(long, value_name = "DIR", hide = true)]
    pub host_root: Option<PathBuf>,
    /// Seccomp filters on every thread: `true` (a syscall outside its thread's list kills
    /// tessera, naming the thread and the syscall), `log` (the kernel logs it instead),
    /// `false` (no filters).
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test hook, hidden from --help: once its filter is on, the thread of this role
    /// (control, api, vcpu, serial-input) makes one syscall no filter allows, so tests
    /// can see that `--seccomp true` kills tessera and `--seccomp log` does not
    /// (vmm/tests/seccomp.rs).
    #[arg(long, value_name = "ROLE", hide = true)]
    pub seccomp_selftest: Option<crate::seccomp::ThreadRole>,
    /// Only `off` (CH's default, `off,iobase=0xe9`): Tessera has no debug console yet.
    #[arg(long, value_name = "off")]
    pub debug_console: Option<String>,
    /// Cloud Hypervisor's flags for what Tessera lacks, each refused by name.
    #[command(flatten)]
    pub unsupported: unsupported::Unsupported,
}

impl Args {
    /// The VM the options describe, from `--config FILE` or the VM options; `None` when
    /// there is neither a configuration file nor a kernel (the API then waits for
    /// vm.create). VM options without `--kernel` are refused, as Cloud Hypervisor
    /// refuses them, rather than ignored.
    pub fn vm_config(&self) -> Result<Option<VmConfig>, CliError> {
        let mut config = self.vm_config_without_uuid()?;
        if let (Some(c), Some(uuid)) = (config.as_mut(), &self.uuid) {
            match &c.platform.system_uuid {
                Some(u) if !u.eq_ignore_ascii_case(uuid) => {
                    return Err(CliError::new(
                        "uuid",
                        format!("{uuid} differs from the configuration's platform.uuid {u}"),
                    ))
                }
                _ => c.platform.system_uuid = Some(uuid.clone()),
            }
        }
        Ok(config)
    }

    fn vm_config_without_uuid(&self) -> Result<Option<VmConfig>, CliError> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::new("config", format!("cannot read {}: {e}", path.display()))
            })?;
            return serde_json::from_str(&text).map(Some).map_err(|e| {
                CliError::new(
                    "config",
                    format!("{} is not a valid VM configuration: {e}", path.display()),
                )
            });
        }
        if self.vm.kernel.is_none() {
            return match self.vm.first_given() {
                Some(option) => Err(CliError::new(
                    option,
                    "describes a VM, which needs --kernel (or --config FILE)",
                )),
                None => Ok(None),
            };
        }
        self.vm.to_config().map(Some)
    }

    /// Checks the options that map to no configuration but whose values Tessera must
    /// agree with: `--debug-console` (`--seccomp`'s values are checked as it is parsed).
    pub fn check(&self) -> Result<(), CliError> {
        if let Some(s) = &self.debug_console {
            check_debug_console(s)?;
        }
        Ok(())
    }

    /// The log filter `-v` asks for, if it was given.
    pub fn log_level(&self) -> Option<&'static str> {
        match self.verbose {
            0 => None,
            1 => Some("info"),
            2 => Some("debug"),
            _ => Some("trace"),
        }
    }
}

/// CH's `--debug-console`, whose default is `off,iobase=0xe9`: Tessera has no debug
/// console, so only `off` (with or without an `iobase`) is accepted.
fn check_debug_console(s: &str) -> Result<(), CliError> {
    let mut items = s.split(',');
    let mode = items.next().unwrap_or_default();
    for item in items {
        let port = item.strip_prefix("iobase=").and_then(|v| {
            let hex = v
                .strip_prefix("0x")
                .or_else(|| v.strip_prefix("0X"))
                .unwrap_or(v);
            u16::from_str_radix(hex, 16).ok()
        });
        if port.is_none() {
            return Err(CliError::new(
                "debug-console",
                format!("`{item}` is not iobase=PORT (hexadecimal)"),
            ));
        }
    }
    match mode {
        "off" => Ok(()),
        "pty" | "tty" | "null" => Err(CliError::new(
            "debug-console",
            format!("`{mode}`: Tessera has no debug console (I/O port 0xe9) yet; give off"),
        )),
        _ if mode.starts_with("file=") => Err(CliError::new(
            "debug-console",
            "`file=`: Tessera has no debug console (I/O port 0xe9) yet; give off",
        )),
        _ => Err(CliError::new(
            "debug-console",
            format!("`{mode}` is not off, pty, tty, null or file=PATH"),
        )),
    }
}

/// Where `--api-socket` says the API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiSocket {
    /// A socket file to create (`path=PATH`, or `PATH` alone).
    Path(PathBuf),
    /// A listening socket inherited as this descriptor (`fd=N`).
    Fd(i32),
}

impl ApiSocket {
    /// CH's forms: `path=PATH`, `fd=N`, or a bare path (anything else, as in CH).
    pub fn parse(s: &str) -> Result<Self, CliError> {
        if let Some(fd) = s.strip_prefix("fd=") {
            return fd.parse().map(ApiSocket::Fd).map_err(|_| {
                CliError::new("api-socket", format!("fd={fd}: `{fd}` is not a number"))
            });
        }
        let path = s.strip_prefix("path=").unwrap_or(s);
        if path.is_empty() {
            return Err(CliError::new("api-socket", "the socket's path is empty"));
        }
        Ok(ApiSocket::Path(PathBuf::from(path)))
    }
}

/// The options that describe the VM, as given (each value still a CH-style option
/// string). Where CH's flag takes several values, so does the field's.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VmArgs {
    /// bzImage or ELF vmlinux (PVH).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// boot=N[,max=N]
    #[arg(long)]
    pub cpus: Option<String>,
    /// size=SIZE[,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on]
    #[arg(long)]
    pub memory: Option<String>,
    /// id=ID,size=SIZE[,host_numa_node=N,shared=on,hugepages=on,hugepage_size=SIZE,prefault=on] ...
    #[arg(long = "memory-zone", num_args = 1.., value_name = "ZONE")]
    pub memory_zones: Vec<String>,
    /// guest_numa_id=N[,cpus=[..],memory_zones=[..],distances=[N@D,..],pci_segments=[..],device_id=ID] ...
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub numa: Vec<String>,
    /// device=ID,node=N | device=ID,nodes=2-9: Generic Initiator links ...
    #[arg(long = "generic-initiator", num_args = 1.., value_name = "LINK")]
    pub generic_initiators: Vec<String>,
    /// initiator=N,target=N,hierarchy=memory,data-type=TYPE,latency=NS|bandwidth=SIZE:
    /// HMAT values, as QEMU's `-numa hmat-lb` (SIZE in bytes/s, 200M = 200 MiB/s) ...
    #[arg(long = "hmat-lb", num_args = 1.., value_name = "VALUE")]
    pub hmat_lb: Vec<String>,
    /// node-id=N,size=SIZE,level=L[,associativity=none|direct|complex,policy=none|write-back|write-through,line=N]:
    /// HMAT memory-side caches, as QEMU's `-numa hmat-cache` ...
    #[arg(long = "hmat-cache", num_args = 1.., value_name = "CACHE")]
    pub hmat_caches: Vec<String>,
    /// device=ID,bar=N,node=N[,distance=N]: BAR N of device ID (a memory BAR of a multiple
    /// of 128 MiB) becomes the RAM of memory-only node N, DISTANCE (default 40) from every
    /// other node ...
    #[arg(long = "device-memory", num_args = 1.., value_name = "MEMORY")]
    pub device_memory: Vec<String>,
    /// path=/sys/bus/pci/devices/BDF[,id=ID,pci_segment=N,pci_device_id=N] ...
    #[arg(long = "device", num_args = 1.., value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// id=ID[,pci_segment=N,pci_device_id=D]: GI-ready PCI slots, reserved at boot; the
    /// device with the same id fills one ...
    #[arg(long = "pci-slot", num_args = 1.., value_name = "SLOT")]
    pub pci_slots: Vec<String>,
    /// num_pci_segments=N
    #[arg(long)]
    pub platform: Option<String>,
    /// The serial port (COM1): tty (default) | pty | file=PATH | socket=PATH | null | off
    #[arg(long)]
    pub serial: Option<String>,
    /// CH's virtio console: off | null (Tessera has none yet; the serial port carries the console)
    #[arg(long)]
    pub console: Option<String>,
}

impl VmArgs {
    /// The first option given, by its flag, that describes the VM beyond `--kernel`.
    fn first_given(&self) -> Option<&'static str> {
        [
            ("initramfs", self.initramfs.is_some()),
            ("cmdline", self.cmdline.is_some()),
            ("cpus", self.cpus.is_some()),
            ("memory", self.memory.is_some()),
            ("memory-zone", !self.memory_zones.is_empty()),
            ("numa", !self.numa.is_empty()),
            ("generic-initiator", !self.generic_initiators.is_empty()),
            ("hmat-lb", !self.hmat_lb.is_empty()),
            ("hmat-cache", !self.hmat_caches.is_empty()),
            ("device-memory", !self.device_memory.is_empty()),
            ("device", !self.devices.is_empty()),
            ("pci-slot", !self.pci_slots.is_empty()),
            ("platform", self.platform.is_some()),
            ("serial", self.serial.is_some()),
            ("console", self.console.is_some()),
        ]
        .into_iter()
        .find_map(|(option, given)| given.then_some(option))
    }

    /// Builds the configuration; defaults are Cloud Hypervisor's (1 vCPU, 512 MiB),
    /// except that the serial port is on the terminal and there is no virtio console
    /// (CH's console, on the terminal by default, is a device Tessera lacks).
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
        for s in &self.hmat_lb {
            config.hmat.push(parse_hmat_lb(s).map_err(at("hmat-lb"))?);
        }
        for s in &self.hmat_caches {
            config
                .hmat_caches
                .push(parse_hmat_cache(s).map_err(at("hmat-cache"))?);
        }
        for s in &self.device_memory {
            config
                .device_memory
                .push(parse_device_memory(s).map_err(at("device-memory"))?);
        }
        for s in &self.devices {
            config.devices.push(parse_device(s).map_err(at("device"))?);
        }
        for s in &self.pci_slots {
            config
                .pci_slots
                .push(parse_pci_slot(s).map_err(at("pci-slot"))?);
        }
        if let Some(s) = &self.platform {
            config.platform = parse_platform(s).map_err(at("platform"))?;
        }
        if let Some(s) = &self.serial {
            config.serial = parse_serial(s).map_err(at("serial"))?;
        }
        config.console =
            parse_console(self.console.as_deref().unwrap_or("off")).map_err(at("console"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
