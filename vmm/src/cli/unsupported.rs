//! Cloud Hypervisor's flags for features Tessera does not have (yet). Each is known to
//! the command line and takes the values CH's takes, so that giving one stops `tessera`
//! with what it lacks, instead of clap's bare "unexpected argument", and so that its
//! values are never mistaken for the next flag's.

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// How many values a flag takes, as in CH's definition.
#[derive(Clone, Copy, Debug)]
enum Takes {
    /// A switch (`--pvpanic`).
    Nothing,
    /// One value (`--rng src=/dev/urandom`).
    One,
    /// An optional value (`--rtc`, `--rtc id=rtc0`).
    Optional,
    /// One or more values after the flag, which may also repeat (`--disk A B`).
    Several,
}

/// One of CH's flags Tessera refuses.
#[derive(Debug)]
struct Lacking {
    flag: &'static str,
    takes: Takes,
    /// Why, completing "--flag: ".
    why: &'static str,
}

const fn lacking(flag: &'static str, takes: Takes, why: &'static str) -> Lacking {
    Lacking { flag, takes, why }
}

/// Every flag of CH v54's `cloud-hypervisor` (`cloud-hypervisor/src/main.rs`) that
/// Tessera does not take, with what it lacks.
const LACKING: &[Lacking] = &[
    lacking("balloon", Takes::One, "Tessera has no virtio-balloon device yet"),
    lacking("dbus-object-path", Takes::One, "Tessera has no D-Bus API; its API is HTTP on --api-socket"),
    lacking("dbus-service-name", Takes::One, "Tessera has no D-Bus API; its API is HTTP on --api-socket"),
    lacking("dbus-system-bus", Takes::Nothing, "Tessera has no D-Bus API; its API is HTTP on --api-socket"),
    lacking("disk", Takes::Several, "Tessera has no virtio-block devices yet"),
    lacking("event-monitor", Takes::One, "Tessera has no event monitor yet"),
    lacking("firmware", Takes::One, "Tessera loads no firmware; it boots a kernel directly (--kernel)"),
    lacking("fs", Takes::Several, "Tessera has no virtio-fs devices yet"),
    lacking("fw-cfg-config", Takes::One, "Tessera has no fw_cfg device"),
    lacking("gdb", Takes::One, "Tessera has no GDB stub"),
    lacking("generic-vhost-user", Takes::Several, "Tessera has no vhost-user devices"),
    lacking("host-data", Takes::One, "Tessera has no SEV-SNP guests"),
    lacking("igvm", Takes::One, "Tessera cannot load IGVM files; it boots a kernel directly (--kernel)"),
    lacking("ivshmem", Takes::One, "Tessera has no ivshmem device"),
    lacking("landlock", Takes::Nothing, "Tessera has no Landlock sandbox yet"),
    lacking("landlock-rules", Takes::Several, "Tessera has no Landlock sandbox yet"),
    lacking("log-format", Takes::One, "Tessera's log lines have one fixed format"),
    lacking("net", Takes::Several, "Tessera has no virtio-net devices yet"),
    lacking("pci-segment", Takes::Several, "Tessera has no per-segment aperture settings; --platform num_pci_segments=N gives the segments"),
    lacking("pmem", Takes::Several, "Tessera has no virtio-pmem devices"),
    lacking("pvmemcontrol", Takes::Nothing, "Tessera has no pvmemcontrol device"),
    lacking("pvpanic", Takes::Nothing, "Tessera has no pvpanic device yet"),
    lacking("rate-limit-group", Takes::Several, "Tessera has no rate limiters (nor the virtio-block and virtio-net devices they serve)"),
    lacking("restore", Takes::One, "Tessera cannot snapshot or restore a VM yet"),
    lacking("rng", Takes::One, "Tessera has no virtio-rng device yet"),
    lacking("rtc", Takes::Optional, "Tessera has no virtio-rtc device"),
    lacking("tpm", Takes::One, "Tessera has no TPM device"),
    lacking("user-device", Takes::Several, "Tessera has no vfio-user devices; --device passes host devices through with VFIO"),
    lacking("vdpa", Takes::Several, "Tessera has no vDPA devices"),
    lacking("vsock", Takes::One, "Tessera has no virtio-vsock device yet"),
    lacking("watchdog", Takes::Nothing, "Tessera has no virtio-watchdog device yet"),
];

impl Lacking {
    fn arg(&self) -> Arg {
        let arg = Arg::new(self.flag).long(self.flag).hide(true);
        match self.takes {
            Takes::Nothing => arg.num_args(0).action(ArgAction::SetTrue),
            Takes::One => arg.num_args(1).action(ArgAction::Set),
            Takes::Optional => arg
                .num_args(0..=1)
                .default_missing_value("")
                .action(ArgAction::Set),
            Takes::Several => arg.num_args(1..).action(ArgAction::Append),
        }
    }
}

/// The flags of CH's Tessera refuses: parsing fails on the first one given, with the
/// flag and what Tessera lacks for it. (Flattened into [`super::Args`]; holds nothing.)
#[derive(Clone, Copy, Debug, Default)]
pub struct Unsupported;

impl clap::FromArgMatches for Unsupported {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = LACKING
            .iter()
            .find(|l| matches.value_source(l.flag) == Some(ValueSource::CommandLine));
        match given {
            Some(l) => Err(clap::Error::raw(
                ErrorKind::UnknownArgument,
                format!("--{}: {}", l.flag, l.why),
            )),
            None => Ok(Unsupported),
        }
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for Unsupported {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(LACKING.iter().map(Lacking::arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CH's flags, as `cloud-hypervisor/src/main.rs` (v54) defines them, each either
    /// taken by Tessera or refused here; none may be unknown to the command line.
    const CH_FLAGS: &[&str] = &[
        "api-socket",
        "balloon",
        "cmdline",
        "console",
        "cpus",
        "dbus-object-path",
        "dbus-service-name",
        "dbus-system-bus",
        "debug-console",
        "device",
        "disk",
        "event-monitor",
        "firmware",
        "fs",
        "fw-cfg-config",
        "gdb",
        "generic-vhost-user",
        "host-data",
        "igvm",
        "initramfs",
        "ivshmem",
        "kernel",
        "landlock",
        "landlock-rules",
        "log-file",
        "log-format",
        "memory",
        "memory-zone",
        "net",
        "no-shutdown",
        "numa",
        "pci-segment",
        "platform",
        "pmem",
        "pvmemcontrol",
        "pvpanic",
        "rate-limit-group",
        "restore",
        "rng",
        "rtc",
        "seccomp",
        "serial",
        "tpm",
        "user-device",
        "vdpa",
        "version",
        "vsock",
        "watchdog",
    ];

    #[test]
    fn every_ch_flag_is_known() {
        use clap::CommandFactory;
        let mut cmd = super::super::Args::command();
        // Adds --version and --help.
        cmd.build();
        for flag in CH_FLAGS {
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(flag)),
                "--{flag}"
            );
        }
        // `-v`, CH's only short flag besides -V and -h.
        assert!(cmd.get_arguments().any(|a| a.get_short() == Some('v')));
    }

    fn refusal(args: &[&str]) -> String {
        use clap::Parser;
        let e =
            super::super::Args::try_parse_from(["tessera", "--kernel", "/k"].iter().chain(args))
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{args:?}: {e}");
        e.to_string()
    }

    #[test]
    fn each_lacking_flag_is_refused_naming_what_tessera_lacks() {
        for l in LACKING {
            let flag = format!("--{}", l.flag);
            let args: Vec<&str> = match l.takes {
                Takes::Nothing | Takes::Optional => vec![&flag],
                Takes::One => vec![&flag, "x=1"],
                Takes::Several => vec![&flag, "x=1", "x=2"],
            };
            let e = refusal(&args);
            assert!(e.contains(&format!("{flag}: {}", l.why)), "{e}");
        }
        let e = refusal(&["--disk", "path=/a.img", "path=/b.img", "--cpus", "boot=2"]);
        assert!(
            e.contains("--disk: Tessera has no virtio-block devices yet"),
            "{e}"
        );
        let e = refusal(&["--rtc", "--cpus", "boot=2"]);
        assert!(e.contains("--rtc: Tessera has no virtio-rtc device"), "{e}");
        let e = refusal(&["--cpus", "boot=2", "--pvpanic"]);
        assert!(
            e.contains("--pvpanic: Tessera has no pvpanic device yet"),
            "{e}"
        );
    }
}
