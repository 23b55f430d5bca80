//! The command line: option strings of the `key=value,...` kind made from the keys and
//! values the parsers know (and junk), given to each parser in `tessera_api::options`, and
//! whole `tessera` command lines given to clap and turned into a `VmConfig`, which must
//! then validate or be refused with an error, never panic.

use arbitrary::{Result as ArbResult, Unstructured};
use clap::Parser;
use tessera_api::options;
use tessera_vmm::cli::Args;

/// Keys the option parsers know, and some they do not.
const KEYS: &[&str] = &[
    "acpi",
    "affinity",
    "boot",
    "bus",
    "cpus",
    "device",
    "device_id",
    "distances",
    "fd",
    "file",
    "guest_numa_id",
    "host_numa_node",
    "hotplug_method",
    "hotplug_size",
    "hugepage_size",
    "hugepages",
    "id",
    "iommu",
    "iommu_segments",
    "managed",
    "max",
    "max_phys_bits",
    "mdev_parent",
    "mdev_type",
    "memory",
    "memory_zones",
    "mergeable",
    "node",
    "nodes",
    "num_pci_segments",
    "path",
    "pci_device_id",
    "pci_segment",
    "pci_segments",
    "prefault",
    "shared",
    "size",
    "socket",
    "topology",
    "uuid",
    "vgpu_type",
    "x_exclude_mmap_bars",
    "x_nv_gpudirect_clique",
    "zone",
    "zones",
    "bogus",
    "",
];

/// Values that mean something to some key.
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "2",
    "4",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1G",
    "1g",
    "512M",
    "4K",
    "0x10",
    "1T",
    "16E",
    "1Z",
    "on",
    "off",
    "true",
    "false",
    "0-3",
    "[0-3]",
    "[1,3-5]",
    "3-1",
    "[0@10,1@20]",
    "[1@255]",
    "0@10",
    "1:2:1:1",
    "0000:00:01.0",
    "00:1f.7",
    "ffff:ff:20.0",
    "/dev/null",
    "/sys/bus/pci/devices/0000:01:00.0",
    "dev0",
    "_x",
    "m0",
    "4b20d080-1b54-4048-85b3-a6a62d165c01",
    "[0,2]",
    "[]",
    "[",
    "]",
    "=",
    ",",
    "@",
    "tty",
    "null",
    "pty",
    "socket=/tmp/s",
];

/// One option string: `key=value` pairs (some bare, some with brackets split by commas).
fn option(u: &mut Unstructured<'_>) -> ArbResult<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let mut out = String::new();
    for i in 0..u.int_in_range(0..=5)? {
        if i > 0 {
            out.push(',');
        }
        if u.ratio(1, 10)? {
            out.push_str(u.choose(VALUES)?);
            continue;
        }
        out.push_str(u.choose(KEYS)?);
        out.push('=');
        out.push_str(u.choose(VALUES)?);
        if u.ratio(1, 6)? {
            out.push_str(u.choose(VALUES)?);
        }
    }
    Ok(out)
}

/// Options of `tessera` that take a string, and flags.
const FLAGS: &[&str] = &[
    "--cpus",
    "--memory",
    "--memory-zone",
    "--numa",
    "--generic-initiator",
    "--device",
    "--pci-slot",
    "--platform",
    "--serial",
    "--console",
    "--kernel",
    "--initramfs",
    "--cmdline",
    "--uuid",
    "--eject-timeout",
    "--seccomp",
    "--api-socket",
];

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(which) = u.int_in_range(0..=12u8) else {
        return;
    };
    let Ok(s) = option(&mut u) else { return };
    // Each parser on its own, then whole command lines.
    match which {
        0 => drop(options::parse_size(&s)),
        1 => drop(options::parse_cpus(&s)),
        2 => drop(options::parse_memory(&s)),
        3 => drop(options::parse_memory_zone(&s)),
        4 => drop(options::parse_platform(&s)),
        5 => drop(options::parse_serial(&s)),
        6 => drop(options::parse_console(&s)),
        7 => drop(options::parse_device(&s)),
        8 => drop(options::parse_pci_slot(&s)),
        9 => drop(options::parse_numa(&s)),
        10 => drop(options::parse_generic_initiator(&s)),
        11 => drop(options::parse_remove_generic_initiator(&s)),
        _ => {
            let mut argv = vec!["tessera".to_string()];
            let first = s;
            let mut n = 0;
            while let Ok(flag) = u.choose(FLAGS) {
                argv.push((*flag).to_string());
                argv.push(if n == 0 {
                    first.clone()
                } else {
                    option(&mut u).unwrap_or_default()
                });
                n += 1;
                if n >= 8 || u.ratio(1, 3).unwrap_or(true) {
                    break;
                }
            }
            command_line(&argv);
        }
    }
}

/// A `tessera` command line: parsed, checked, turned into a config, validated.
fn command_line(argv: &[String]) {
    let Ok(args) = Args::try_parse_from(argv) else {
        return;
    };
    if args.check().is_err() {
        return;
    }
    if let Ok(Some(config)) = args.vm_config() {
        let _ = config.validate();
    }
}
