//! VFIO passthrough end to end, in the nested test host: L1's NVMe and edu devices bound
//! to vfio-pci and an mtty mdev are passed to an L2 Linux guest by the `tessera` binary,
//! with 8 Generic Initiator nodes linked to the NVMe. L2's kernel is the judge: its nvme
//! driver binds and moves data with MSI-X, edu's registers answer through its BAR, the
//! mdev's serial port carries bytes, and its NUMA report lists the GI nodes. After the
//! guest powers off the devices are still bound to vfio-pci and the mdev still exists, and
//! a second boot does the same. Bad devices fail before boot with a message that says why;
//! two devices of one IOMMU group pass through together once the whole group is bound.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_device_report, parse_report};
use tessera_tests::nested::{self, SECCOMP_THREADS_SH};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 judge.devices=1";
const MDEV: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

/// The tessera command line for L1, kernel and initramfs included, plus `args`.
fn tessera(args: &str) -> String {
    let judge = images().unwrap();
    format!(
        "in-host {TESSERA} --kernel {} --initramfs {} --cmdline '{CMDLINE}' {args}",
        judge.vmlinuz.display(),
        judge.initramfs.display()
    )
}

/// The L1 script preamble: the helpers, and L1's NVMe and edu bound to vfio-pci.
fn preamble() -> String {
    format!(
        ". \"$HOST{REPO}/scripts/l1-vfio.sh\"\n\
         vfio_bind 0000:00:03.0 >/dev/null || exit 1\n\
         vfio_bind 0000:00:04.0 >/dev/null || exit 1\n"
    )
}

#[test]
fn nvme_edu_and_an_mtty_mdev_work_in_the_guest_twice() {
    let numa: String = (1..=8)
        .map(|n| format!(" --numa guest_numa_id={n}"))
        .collect();
    let run = tessera(&format!(
        "--cpus boot=2 --memory size=0 --memory-zone id=m0,size=512M \
         --numa guest_numa_id=0,cpus=[0-1],memory_zones=m0{numa} \
         --device id=nvme0,path=/sys/bus/pci/devices/0000:00:03.0 \
         --device id=edu0,path=/sys/bus/pci/devices/0000:00:04.0 \
         --device id=tty0,path=/sys/bus/mdev/devices/{MDEV} \
         --generic-initiator device=nvme0,nodes=1-8"
    ));
    let script = format!(
        "{SECCOMP_THREADS_SH}{preamble}\
         mtty_create {MDEV} mtty-2 >/dev/null || exit 1\n\
         for boot in 1 2; do\n\
           echo \"vfio-boot=$boot\"\n\
           {run} &\n\
           pid=$!\n\
           seccomp_watch $pid &\n\
           wait $pid\n\
           echo \"tessera-exit=$?\"\n\
           sleep 1\n\
           seccomp_threads_of $pid\n\
         done\n\
         echo \"after: nvme=$(driver_of 0000:00:03.0) edu=$(driver_of 0000:00:04.0) \
         mdev=$([ -e /sys/bus/mdev/devices/{MDEV} ] && echo present || echo gone)\"\n\
         mtty_remove {MDEV}\n",
        preamble = preamble()
    );
    let out = nested::run(&script, &[]).unwrap();
    let console = out.console;
    assert_eq!(out.status, 0, "{console}");
    assert!(
        console.contains("after: nvme=vfio-pci edu=vfio-pci mdev=present"),
        "devices must stay bound and the mdev must stay:\n{console}"
    );
    let boots: Vec<&str> = console.split("vfio-boot=").skip(1).collect();
    assert_eq!(boots.len(), 2, "{console}");
    for (i, boot) in boots.iter().enumerate() {
        assert!(
            boot.contains("tessera-exit=0"),
            "boot {}: tessera must exit 0 on poweroff:\n{boot}",
            i + 1
        );
        // With the default `--seccomp true`, while the guest used its devices.
        nested::every_thread_filtered(boot, &["tessera", "vcpu"])
            .unwrap_or_else(|e| panic!("boot {}: {e}:\n{boot}", i + 1));
        let numa = parse_report(boot)
            .unwrap()
            .unwrap_or_else(|| panic!("boot {}: no NUMA report:\n{boot}", i + 1));
        assert_eq!(numa.has_generic_initiator, (1..=8).collect::<Vec<u32>>());
        let d = parse_device_report(boot)
            .unwrap()
            .unwrap_or_else(|| panic!("boot {}: no device report:\n{boot}", i + 1));
        eprintln!("boot {}: {:?}", i + 1, d.values);
        // Configuration order gives the BDFs: nvme0, edu0, tty0 on slots 1, 2, 3.
        assert_eq!(d.devices("nvme"), vec!["0000:00:01.0"], "{d:?}");
        assert_eq!(d.field("nvme", "0000:00:01.0", "driver"), Some("nvme"));
        assert!(d.is_ok("nvme", "0000:00:01.0", "rw"), "{d:?}\n{boot}");
        assert!(
            d.number("nvme", "0000:00:01.0", "msix_vectors").unwrap() >= 2,
            "{d:?}"
        );
        assert!(
            d.number("nvme", "0000:00:01.0", "msix_interrupts").unwrap() > 0,
            "{d:?}"
        );
        assert_eq!(d.field("edu", "0000:00:02.0", "id"), Some("0x010000ed"));
        assert!(d.is_ok("edu", "0000:00:02.0", "liveness"), "{d:?}");
        assert!(
            !d.field("mtty", "0000:00:03.0", "tty")
                .unwrap_or_default()
                .is_empty(),
            "{d:?}"
        );
        assert!(d.is_ok("mtty", "0000:00:03.0", "loopback"), "{d:?}\n{boot}");
    }
}

#[test]
fn bad_devices_fail_before_boot_and_say_why() {
    let base = "--cpus boot=1 --memory size=256M";
    let case = |name: &str, device: &str| {
        format!(
            "echo case={name}\n{} --device {device} >/run/tmp/case.out 2>&1\n\
             st=$?\ncat /run/tmp/case.out\necho \"case-exit=$st\"\n",
            tessera(base)
        )
    };
    let script = format!(
        ". \"$HOST{REPO}/scripts/l1-vfio.sh\"\n\
         {nodriver}\
         vfio_bind 0000:00:03.0 >/dev/null || exit 1\n\
         group=$(group_of 0000:00:03.0)\n\
         sleep 120 3<>/dev/vfio/$group &\n\
         holder=$!\n\
         sleep 1\n\
         echo holder=$holder\n\
         {busy}\
         kill $holder\n\
         echo \"lpc-group: $(ls /sys/bus/pci/devices/0000:00:1f.2/iommu_group/devices | tr '\\n' ' ')\"\n\
         echo \"smbus-driver: $(driver_of 0000:00:1f.3)\"\n\
         vfio_bind 0000:00:1f.2 >/dev/null || exit 1\n\
         {notviable}\
         {missing}\
         vfio_bind 0000:00:1f.3 >/dev/null && vfio_bind 0000:00:1f.0 >/dev/null || exit 1\n\
         echo case=samegroup\n\
         {samegroup} >/run/tmp/case.out 2>&1\n\
         echo \"samegroup-exit=$?\"\n\
         grep -a '^pci=' /run/tmp/case.out\n\
         echo \"after: nvme=$(driver_of 0000:00:03.0) open=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c /dev/vfio/)\"\n",
        nodriver = case("nodriver", "path=/sys/bus/pci/devices/0000:00:03.0"),
        busy = case("busy", "path=/sys/bus/pci/devices/0000:00:03.0"),
        notviable = case("notviable", "path=/sys/bus/pci/devices/0000:00:1f.2"),
        missing = case("missing", "path=/sys/bus/pci/devices/0000:00:09.0"),
        // Several devices of one group: once the whole group is bound to vfio-pci.
        samegroup = tessera(&format!(
            "{base} --device path=/sys/bus/pci/devices/0000:00:1f.2 \
             --device path=/sys/bus/pci/devices/0000:00:1f.3"
        )),
    );
    let out = nested::run(&script, &[]).unwrap();
    let console = out.console;
    assert_eq!(out.status, 0, "{console}");
    let section = |name: &str| -> String {
        let start = console
            .find(&format!("case={name}"))
            .unwrap_or_else(|| panic!("no case {name}:\n{console}"));
        let rest = &console[start..];
        let end = rest.find("case-exit=").unwrap_or(rest.len());
        assert!(
            rest[end..].starts_with("case-exit=1"),
            "case {name} must exit 1:\n{rest}"
        );
        rest[..end].to_string()
    };
    let nodriver = section("nodriver");
    assert!(
        nodriver.contains("devices[0].path")
            && nodriver.contains("0000:00:03.0 is bound to no driver"),
        "{nodriver}"
    );
    let busy = section("busy");
    let holder = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("holder="))
        .unwrap()
        .to_string();
    assert!(
        busy.contains("is busy (EBUSY)") && busy.contains(&format!("pid {holder} (sleep)")),
        "the busy group must name its holder, pid {holder}:\n{busy}"
    );
    let notviable = section("notviable");
    assert!(
        notviable
            .contains("is not viable: 0000:00:1f.3 is in the same group and bound to i801_smbus"),
        "{notviable}\n{console}"
    );
    let missing = section("missing");
    assert!(missing.contains("0000:00:09.0 does not exist"), "{missing}");
    for name in ["nodriver", "busy", "notviable", "missing"] {
        assert!(
            !section(name).contains("Linux version"),
            "{name}: nothing may boot"
        );
    }
    assert!(
        console.contains("samegroup-exit=0"),
        "two devices of one group boot together:\n{console}"
    );
    let pci = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("pci="))
        .unwrap_or_else(|| panic!("the two-device guest printed no report:\n{console}"));
    assert!(
        pci.contains("0000:00:01.0") && pci.contains("0000:00:02.0"),
        "the guest must see both functions: {pci}"
    );
    assert!(
        console.contains("after: nvme=vfio-pci open=0"),
        "nothing may keep a VFIO group open:\n{console}"
    );
}
