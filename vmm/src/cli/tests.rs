//! The command line: CH's forms parse into the configuration they mean.

use super::*;
use clap::Parser;
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
    assert_eq!(
        c.generic_initiators[0]
            .nodes
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("2")
    );
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
    a.pci_slots = vec!["pci_segment=1".into()];
    let e = a.to_config().unwrap_err();
    assert_eq!(
        (e.option.as_str(), e.message.as_str()),
        ("pci-slot", "`id` is required")
    );

    let mut a = args();
    a.memory = Some("size=1G,size=2G".into());
    assert!(a.to_config().unwrap_err().message.contains("given twice"));
}

fn parse(line: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("tessera").chain(line.iter().copied()))
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn config(line: &[&str]) -> VmConfig {
    parse(line).vm_config().unwrap().unwrap()
}

const MULTI: &[&str] = &[
    "--kernel",
    "/k",
    "--cpus",
    "boot=2",
    "--memory",
    "size=0",
    "--memory-zone",
    "id=m0,size=256M",
    "id=m1,size=256M",
    "--numa",
    "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]",
    "guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]",
    "guest_numa_id=2",
    "--device",
    "path=/sys/bus/pci/devices/0000:00:04.0,id=d0",
    "path=/sys/bus/pci/devices/0000:00:05.0",
    "--pci-slot",
    "id=s0",
    "id=s1,pci_device_id=7",
    "--generic-initiator",
    "device=d0,node=2",
    "device=_host_bridge,nodes=2",
    "--console",
    "off",
    "--serial",
    "tty",
];

const REPEATED: &[&str] = &[
    "--kernel",
    "/k",
    "--cpus",
    "boot=2",
    "--memory",
    "size=0",
    "--memory-zone",
    "id=m0,size=256M",
    "--memory-zone",
    "id=m1,size=256M",
    "--numa",
    "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]",
    "--numa",
    "guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]",
    "--numa",
    "guest_numa_id=2",
    "--device",
    "path=/sys/bus/pci/devices/0000:00:04.0,id=d0",
    "--device",
    "path=/sys/bus/pci/devices/0000:00:05.0",
    "--pci-slot",
    "id=s0",
    "--pci-slot",
    "id=s1,pci_device_id=7",
    "--generic-initiator",
    "device=d0,node=2",
    "--generic-initiator",
    "device=_host_bridge,nodes=2",
    "--console",
    "off",
    "--serial",
    "tty",
];

#[test]
fn several_values_after_one_flag_are_the_same_as_the_flag_repeated() {
    let multi = config(MULTI);
    assert_eq!(multi, config(REPEATED));
    multi.validate().unwrap();
    assert_eq!(multi.memory.zones.len(), 2);
    assert_eq!(multi.numa.len(), 3);
    assert_eq!(multi.numa[1].distances[0].destination, 0);
    assert_eq!(multi.devices.len(), 2);
    assert_eq!(multi.generic_initiators.len(), 2);
    assert_eq!(multi.pci_slots.len(), 2);
    assert_eq!(multi.pci_slots[1].pci_device_id, Some(7));
    // Both forms at once, in any order.
    let mixed = config(&[
        "--numa",
        "guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20]",
        "--memory-zone",
        "id=m0,size=256M",
        "--numa",
        "guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20]",
        "guest_numa_id=2",
        "--kernel",
        "/k",
        "--generic-initiator",
        "device=d0,node=2",
        "--device",
        "path=/sys/bus/pci/devices/0000:00:04.0,id=d0",
        "--memory-zone",
        "id=m1,size=256M",
        "--pci-slot",
        "id=s0",
        "--generic-initiator",
        "device=_host_bridge,nodes=2",
        "--console",
        "off",
        "--pci-slot",
        "id=s1,pci_device_id=7",
        "--device",
        "path=/sys/bus/pci/devices/0000:00:05.0",
        "--serial",
        "tty",
        "--memory",
        "size=0",
        "--cpus",
        "boot=2",
    ]);
    assert_eq!(mixed, multi);
}

#[test]
fn several_values_stop_at_the_next_flag() {
    let a = parse(&[
        "--kernel",
        "/k",
        "--numa",
        "guest_numa_id=0",
        "guest_numa_id=1",
        "--cpus",
        "boot=2",
    ]);
    assert_eq!(a.vm.numa, ["guest_numa_id=0", "guest_numa_id=1"]);
    assert_eq!(a.vm.cpus.as_deref(), Some("boot=2"));
    assert_eq!(a.vm.kernel, Some(PathBuf::from("/k")));
    // A multi-value flag last, and the `--flag=value` form (one value: clap takes
    // no more after an attached one, in CH as here).
    let a = parse(&[
        "--numa=guest_numa_id=0",
        "--kernel",
        "/k",
        "--numa",
        "guest_numa_id=1",
        "guest_numa_id=2",
    ]);
    assert_eq!(
        a.vm.numa,
        ["guest_numa_id=0", "guest_numa_id=1", "guest_numa_id=2"]
    );
    let e = Args::try_parse_from(["tessera", "--numa=guest_numa_id=0", "guest_numa_id=1"]);
    assert!(e.is_err(), "{:?}", e.map(|a| a.vm.numa));
    // A switch or a single-value flag does not take the values after it.
    let e =
        Args::try_parse_from(["tessera", "--kernel", "/k", "--no-shutdown", "x=1"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{e}");
    let e = Args::try_parse_from(["tessera", "--cpus", "boot=1", "boot=2"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{e}");
    // A flag needs a value.
    assert!(Args::try_parse_from(["tessera", "--kernel", "/k", "--numa"]).is_err());
    assert!(
        Args::try_parse_from(["tessera", "--numa", "--kernel", "/k"]).is_err(),
        "--numa must not take --kernel as its value"
    );
}

#[test]
fn console_off_or_null_only() {
    use tessera_api::config::ConsoleMode;
    let c = config(&["--kernel", "/k", "--console", "off"]);
    assert_eq!(c.console.mode, ConsoleMode::Off);
    assert_eq!(c.serial.mode, ConsoleMode::Tty);
    let c = config(&["--kernel", "/k", "--console", "null"]);
    assert_eq!(c.console.mode, ConsoleMode::Null);
    // Not given: no virtio console either (CH's default, tty, would need one).
    let c = config(&["--kernel", "/k"]);
    assert_eq!(c.console.mode, ConsoleMode::Off);
    for v in ["tty", "pty", "file=/tmp/c.log", "socket=/tmp/c.sock"] {
        let e = parse(&["--kernel", "/k", "--console", v])
            .vm_config()
            .unwrap_err();
        assert_eq!(e.option, "console", "{v}");
        assert!(
            e.message.contains("Tessera has no virtio console yet"),
            "{e}"
        );
        assert!(e.message.contains("serial port (--serial)"), "{e}");
    }
    let e =
        Args::try_parse_from(["tessera", "--config", "/c.json", "--console", "off"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[test]
fn vm_options_need_a_kernel() {
    assert_eq!(parse(&["--api-socket", "/s"]).vm_config(), Ok(None));
    let e = parse(&["--api-socket", "/s", "--cpus", "boot=2"])
        .vm_config()
        .unwrap_err();
    assert_eq!(e.option, "cpus");
    assert!(e.message.contains("needs --kernel"), "{e}");
}

#[test]
fn api_socket_forms() {
    for (s, want) in [
        ("path=/tmp/ch.sock", ApiSocket::Path("/tmp/ch.sock".into())),
        ("/tmp/ch.sock", ApiSocket::Path("/tmp/ch.sock".into())),
        ("fd=3", ApiSocket::Fd(3)),
    ] {
        assert_eq!(ApiSocket::parse(s), Ok(want), "{s}");
    }
    assert!(ApiSocket::parse("fd=x")
        .unwrap_err()
        .message
        .contains("not a number"));
    assert!(ApiSocket::parse("path=").is_err());
    let a = parse(&["--api-socket=/tmp/api2"]);
    assert_eq!(a.api_socket.as_deref(), Some("/tmp/api2"));
}

#[test]
fn seccomp_true_false_log_and_debug_console_off_only() {
    use crate::seccomp::{SeccompMode, ThreadRole};
    for line in [
        &["--seccomp", "false"][..],
        &["--seccomp", "true"],
        &["--seccomp", "log"],
        &["--debug-console", "off"],
        &["--debug-console", "off,iobase=0xe9"],
    ] {
        parse(line).check().unwrap();
    }
    // CH's default: filters on.
    assert_eq!(parse(&[]).seccomp, SeccompMode::Enforce);
    assert_eq!(parse(&["--seccomp", "log"]).seccomp, SeccompMode::Log);
    assert_eq!(parse(&["--seccomp", "false"]).seccomp, SeccompMode::Off);
    for (value, says) in [
        ("yes", "not true, false or log"),
        ("errno", "not supported"),
    ] {
        let e = Args::try_parse_from(["tessera", "--seccomp", value]).unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(
        parse(&["--seccomp-selftest", "vcpu"]).seccomp_selftest,
        Some(ThreadRole::Vcpu)
    );
    let e = parse(&["--debug-console", "tty"]).check().unwrap_err();
    assert!(e.message.contains("no debug console"), "{e}");
    assert!(parse(&["--debug-console", "off,iobase=zz"])
        .check()
        .is_err());
}

#[test]
fn verbosity_and_log_file() {
    assert_eq!(parse(&[]).log_level(), None);
    assert_eq!(parse(&["-v"]).log_level(), Some("info"));
    assert_eq!(parse(&["-vv"]).log_level(), Some("debug"));
    assert_eq!(parse(&["-v", "-v", "-v"]).log_level(), Some("trace"));
    let a = parse(&["--log-file", "/tmp/t.log", "--no-shutdown"]);
    assert_eq!(a.log_file, Some(PathBuf::from("/tmp/t.log")));
    assert!(a.no_shutdown);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("2G"), Ok(2 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("G").is_err());
    assert!(parse_size("99999999999T").is_err());
}

#[test]
fn the_vm_uuid_goes_into_the_platform_config() {
    let u = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51";
    let a = Args::parse_from(["tessera", "--kernel", "/k", "--uuid", u]);
    let c = a.vm_config().unwrap().unwrap();
    assert_eq!(c.platform.system_uuid.as_deref(), Some(u));
    c.validate().unwrap();
    // Given both ways, they must agree.
    let other = "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a52";
    let a = Args::parse_from([
        "tessera",
        "--kernel",
        "/k",
        "--platform",
        &format!("uuid={other}"),
        "--uuid",
        u,
    ]);
    assert_eq!(a.vm_config().unwrap_err().option, "uuid");
    // Not a UUID: refused by name.
    let a = Args::parse_from(["tessera", "--kernel", "/k", "--uuid", "nope"]);
    let e = a.vm_config().unwrap().unwrap().validate().unwrap_err();
    assert_eq!(e.field, "platform.system_uuid");
}

/// Issue 12's review defect: `--config` beside a VM option used to drop the option
/// silently. Every VM option is refused beside it, by name.
#[test]
fn config_refuses_every_vm_option_beside_it() {
    for (option, value) in [
        ("--kernel", "/k"),
        ("--initramfs", "/i"),
        ("--cmdline", "console=ttyS0"),
        ("--cpus", "boot=2"),
        ("--memory", "size=1G"),
        ("--memory-zone", "id=m0,size=1G"),
        ("--numa", "guest_numa_id=0"),
        ("--device", "path=/sys/bus/pci/devices/0000:00:04.0"),
        ("--pci-slot", "id=s0"),
        ("--generic-initiator", "device=s0,nodes=1"),
        (
            "--hmat-lb",
            "initiator=0,target=0,hierarchy=memory,data-type=read-latency,latency=5",
        ),
        ("--hmat-cache", "node-id=0,size=1M,level=1"),
        ("--device-memory", "device=a,bar=2,node=1"),
        ("--platform", "num_pci_segments=2"),
        ("--serial", "tty"),
    ] {
        let e =
            Args::try_parse_from(["tessera", "--config", "/c.json", option, value]).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{option}"
        );
        assert!(e.to_string().contains(option), "{option}: {e}");
    }
}

#[test]
fn hmat_lb_is_repeatable_and_names_its_key() {
    let c = config(&[
        "--kernel",
        "/k",
        "--hmat-lb",
        "initiator=0,target=0,hierarchy=memory,data-type=read-latency,latency=10",
        "initiator=0,target=0,hierarchy=memory,data-type=read-bandwidth,bandwidth=20G",
        "--hmat-lb",
        "initiator=0,target=0,hierarchy=memory,data-type=write-latency,latency=12",
    ]);
    assert_eq!(c.hmat.len(), 3);
    assert_eq!(c.hmat[1].table_value(), Some(20 << 10));
    let e = Args::try_parse_from([
        "tessera",
        "--kernel",
        "/k",
        "--hmat-lb",
        "initiator=0,target=0,hierarchy=third-level,data-type=read-latency,latency=10",
    ])
    .unwrap()
    .vm
    .to_config()
    .unwrap_err();
    assert_eq!(e.option, "hmat-lb");
    assert!(e.message.starts_with("hierarchy: only `memory`"), "{e}");
}

#[test]
fn device_memory_is_repeatable_and_names_its_key() {
    let c = config(&[
        "--kernel",
        "/k",
        "--device-memory",
        "device=gpu0,bar=2,node=2",
        "device=gpu1,bar=4,node=3,distance=80",
    ]);
    assert_eq!(c.device_memory.len(), 2);
    assert_eq!((c.device_memory[1].bar, c.device_memory[1].node), (4, 3));
    assert_eq!(c.device_memory[1].distance(), 80);
    assert_eq!(c.device_memory[0].distance(), 40);
    let e = Args::try_parse_from([
        "tessera",
        "--kernel",
        "/k",
        "--device-memory",
        "device=a,node=2",
    ])
    .unwrap()
    .vm
    .to_config()
    .unwrap_err();
    assert_eq!(e.option, "device-memory");
    assert!(e.message.contains("`bar` is required"), "{e}");
}
