//! Managed devices end to end in the nested test host: tessera itself creates an mtty
//! mdev (given by parent and type) and binds L1's NVMe (no driver in L1) to vfio-pci
//! (`managed=on`), L2's kernel judges both (its serial driver takes the mdev's ports and
//! loops bytes back; its nvme driver binds and moves data), and after the guest powers off
//! L1 has no mdev and the NVMe has no driver again. Killed with SIGKILL while L2 runs,
//! tessera leaves its records, and `tessera --cleanup` (or the next tessera start) gives
//! L1 back. Bad requests are refused with their messages and change nothing.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_device_report};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 judge.devices=1";
const NVME: &str = "path=/sys/bus/pci/devices/0000:00:03.0,managed=on";
const USED: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";

/// The tessera command line for L1 (kernel, initramfs, `cmdline_extra` added to the
/// judge's command line), plus `args`.
fn tessera(cmdline_extra: &str, args: &str) -> String {
    let judge = images().unwrap();
    format!(
        "in-host {TESSERA} --kernel {} --initramfs {} --cmdline '{CMDLINE}{cmdline_extra}' \
         --cpus boot=1 --memory size=512M {args}",
        judge.vmlinuz.display(),
        judge.initramfs.display()
    )
}

/// L1 shell: prints `LABEL: nvme=DRIVER override=... mdevs=N records=N`.
fn state(label: &str) -> String {
    format!(
        "echo \"{label}: nvme=$(driver_of 0000:00:03.0) \
         override=$(cat /sys/bus/pci/devices/0000:00:03.0/driver_override) \
         mdevs=$(ls /sys/bus/mdev/devices | wc -l) \
         records=$(ls /run/tessera 2>/dev/null | grep -c json)\"\n"
    )
}

/// L1 shell: boots the managed VM with L2 waiting on its console after its reports,
/// waits for it, SIGKILLs tessera, and prints the state after.
fn kill_while_l2_runs(label: &str) -> String {
    let run = tessera(
        " judge.action=console",
        &format!("--device id=tty0,mdev_parent=mtty,mdev_type=mtty-2 --device id=nvme0,{NVME}"),
    );
    format!(
        "rm -f /run/tmp/in; mkfifo /run/tmp/in\n\
         {run} </run/tmp/in >/run/tmp/{label}.out 2>&1 &\n\
         pid=$!\n\
         exec 3>/run/tmp/in\n\
         i=0\n\
         while [ $i -lt 300 ] && ! grep -q judge-boot-id= /run/tmp/{label}.out; do sleep 1; i=$((i+1)); done\n\
         echo \"{label}-l2-waiting=$(grep -c judge-boot-id= /run/tmp/{label}.out)\"\n\
         {during}\
         kill -9 $pid\n\
         wait $pid\n\
         echo \"{label}-exit=$?\"\n\
         exec 3>&-\n\
         echo '{label}-console-begin'\n\
         cat /run/tmp/{label}.out\n\
         echo '{label}-console-end'\n\
         {after}",
        during = state(&format!("{label}-during")),
        after = state(&format!("{label}-killed")),
    )
}

fn section<'a>(console: &'a str, begin: &str, end: &str) -> &'a str {
    let start = console
        .find(begin)
        .unwrap_or_else(|| panic!("no {begin}:\n{console}"));
    let rest = &console[start..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

fn line<'a>(console: &'a str, label: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no line {label}:\n{console}"))
}

/// The device report of an L2 boot: its serial driver took the mdev's two ports and
/// looped bytes back; its nvme driver bound the NVMe and read back what it wrote.
fn judge_l2(boot: &str) {
    let d = parse_device_report(boot)
        .unwrap()
        .unwrap_or_else(|| panic!("no device report:\n{boot}"));
    // Configuration order: tty0 at slot 1, nvme0 at slot 2.
    assert!(
        !d.field("mtty", "0000:00:01.0", "tty")
            .unwrap_or_default()
            .is_empty(),
        "{d:?}\n{boot}"
    );
    assert!(d.is_ok("mtty", "0000:00:01.0", "loopback"), "{d:?}\n{boot}");
    assert_eq!(
        d.field("nvme", "0000:00:02.0", "driver"),
        Some("nvme"),
        "{d:?}"
    );
    assert!(d.is_ok("nvme", "0000:00:02.0", "rw"), "{d:?}\n{boot}");
}

#[test]
fn managed_mdev_and_nvme_work_and_are_given_back_after_poweroff_and_after_kill_9() {
    let boot = tessera(
        "",
        &format!(
            "--device id=tty0,mdev_parent=/sys/devices/virtual/mtty/mtty,mdev_type=mtty-2 \
             --device id=nvme0,{NVME}"
        ),
    );
    let script = format!(
        ". \"$HOST{REPO}/scripts/l1-vfio.sh\"\n\
         {before}\
         echo boot-begin\n\
         {boot}\n\
         echo \"boot-exit=$?\"\n\
         {after}\
         {kill}\
         echo cleanup-begin\n\
         in-host {TESSERA} --cleanup\n\
         echo \"cleanup-exit=$?\"\n\
         {cleaned}",
        before = state("before"),
        after = state("after-poweroff"),
        kill = kill_while_l2_runs("kill"),
        cleaned = state("after-cleanup"),
    );
    let out = nested::run(&script, &[]).unwrap();
    let console = out.console;
    assert_eq!(out.status, 0, "{console}");
    let clean = "nvme=none override=(null) mdevs=0 records=0";
    assert_eq!(line(&console, "before"), format!("before: {clean}"));

    let boot = section(&console, "boot-begin", "boot-exit=");
    assert!(console.contains("boot-exit=0"), "{boot}");
    judge_l2(boot);
    assert_eq!(
        line(&console, "after-poweroff"),
        format!("after-poweroff: {clean}"),
        "the mdev must be removed and the NVMe left with no driver:\n{console}"
    );

    assert!(console.contains("kill-l2-waiting=1"), "{console}");
    judge_l2(section(&console, "kill-console-begin", "kill-console-end"));
    assert_eq!(
        line(&console, "kill-during"),
        "kill-during: nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        "{console}"
    );
    assert!(console.contains("kill-exit=137"), "{console}");
    assert_eq!(
        line(&console, "kill-killed"),
        "kill-killed: nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        "SIGKILL undoes nothing; the records stay:\n{console}"
    );
    let cleanup = section(&console, "cleanup-begin", "cleanup-exit=");
    assert!(
        cleanup.contains("2 change(s) of dead tessera processes undone, 0 failed"),
        "{cleanup}"
    );
    assert!(console.contains("cleanup-exit=0"), "{console}");
    assert_eq!(
        line(&console, "after-cleanup"),
        format!("after-cleanup: {clean}"),
        "{console}"
    );
}

#[test]
fn the_next_start_cleans_up_after_kill_9_and_bad_requests_change_nothing() {
    // Each case: tessera must exit 1 and say what is wrong; the state after it is printed.
    let case = |name: &str, device: &str| {
        format!(
            "echo case={name}\n{} >/run/tmp/case.out 2>&1\n\
             st=$?\ncat /run/tmp/case.out\necho \"case-exit=$st\"\n{}",
            tessera("", &format!("--device {device}")),
            state(&format!("after-{name}"))
        )
    };
    let script = format!(
        ". \"$HOST{REPO}/scripts/l1-vfio.sh\"\n\
         {kill}\
         {nosuch}\
         {notype}\
         sata=$(driver_of 0000:00:1f.2)\n\
         {notviable}\
         echo \"sata: $sata -> $(driver_of 0000:00:1f.2)\"\n\
         {undefined}\
         mtty_create {USED} mtty-2 >/dev/null || exit 1\n\
         {used}\
         avail=/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/available_instances\n\
         while [ \"$(cat $avail)\" -gt 0 ]; do \
           mtty_create $(cat /proc/sys/kernel/random/uuid) mtty-2 >/dev/null || exit 1; done\n\
         full=$(ls /sys/bus/mdev/devices | wc -l)\n\
         echo \"full: $full\"\n\
         {none_left}\
         for m in /sys/bus/mdev/devices/*; do echo 1 >$m/remove; done\n\
         {end}",
        kill = kill_while_l2_runs("kill"),
        // The first start after the kill: it cleans up before it looks at its request.
        nosuch = case("nosuch", "mdev_parent=nosuch,mdev_type=mtty-2"),
        notype = case("notype", "mdev_parent=mtty,mdev_type=mtty-9"),
        notviable = case(
            "notviable",
            "path=/sys/bus/pci/devices/0000:00:1f.2,managed=on"
        ),
        undefined = case("undefined", "uuid=83b8f4f2-509f-382f-3c1e-e6bfe0fa10ff"),
        used = case(
            "used",
            &format!("mdev_parent=mtty,mdev_type=mtty-2,uuid={USED}")
        ),
        none_left = case("noneleft", "mdev_parent=mtty,mdev_type=mtty-2"),
        end = state("end"),
    );
    let out = nested::run(&script, &[]).unwrap();
    let console = out.console;
    assert_eq!(out.status, 0, "{console}");
    assert!(console.contains("kill-l2-waiting=1"), "{console}");
    assert_eq!(
        line(&console, "kill-killed"),
        "kill-killed: nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        "{console}"
    );
    let refused = |name: &str, words: &[&str]| -> String {
        let s = section(&console, &format!("case={name}"), "case-exit=");
        let rest = &console[console.find(s).unwrap() + s.len()..];
        assert!(
            rest.starts_with("case-exit=1"),
            "case {name} must exit 1:\n{s}"
        );
        for w in words {
            assert!(s.contains(w), "case {name} must say `{w}`:\n{s}");
        }
        assert!(
            !s.contains("Linux version"),
            "case {name} booted a guest:\n{s}"
        );
        s.to_string()
    };
    let clean = "nvme=none override=(null) mdevs=0 records=0";
    let nosuch = refused(
        "nosuch",
        &["devices[0].mdev_parent: `nosuch` does not exist; this host's mdev parents: mtty"],
    );
    assert!(
        nosuch.contains("2 change(s) of dead tessera processes undone, 0 failed"),
        "the next start must undo the killed tessera's changes first:\n{nosuch}"
    );
    assert_eq!(
        line(&console, "after-nosuch"),
        format!("after-nosuch: {clean}")
    );
    refused(
        "notype",
        &[
            "devices[0].mdev_type: `mtty-9` is not an mdev type of mtty; its types: mtty-1",
            "mtty-2",
        ],
    );
    assert_eq!(
        line(&console, "after-notype"),
        format!("after-notype: {clean}")
    );
    refused(
        "notviable",
        &[
            "devices[0].path: IOMMU group",
            "is not viable: ",
            "0000:00:1f.3 (bound to i801_smbus)",
        ],
    );
    let sata = line(&console, "sata");
    let (before, after) = sata["sata: ".len()..].split_once(" -> ").unwrap();
    assert_eq!(before, after, "no device may be rebound: {sata}");
    assert_eq!(
        line(&console, "after-notviable"),
        format!("after-notviable: {clean}")
    );
    refused("undefined", &["devices[0].uuid: no mdev 83b8f4f2-509f-382f-3c1e-e6bfe0fa10ff is defined in /etc/mdevctl.d"]);
    refused(
        "used",
        &[&format!("devices[0].uuid: mdev {USED} is already in use")],
    );
    assert_eq!(
        line(&console, "after-used"),
        "after-used: nvme=none override=(null) mdevs=1 records=0"
    );
    refused("noneleft", &["devices[0].mdev_type: mtty can create no more `mtty-2` mdevs (available_instances is 0)"]);
    let full = line(&console, "full")["full: ".len()..].to_string();
    assert_eq!(
        line(&console, "after-noneleft"),
        format!("after-noneleft: nvme=none override=(null) mdevs={full} records=0")
    );
    assert_eq!(line(&console, "end"), format!("end: {clean}"));
}

/// tessera SIGKILLed at each moment of bringing managed devices in (the test hook
/// `TESSERA_TEST_KILL_AT`): after the mdev is created, after the NVMe is bound, with
/// guest RAM DMA-mapped. Each time the records match the changes left, and `tessera
/// --cleanup` gives L1 back. Then managed devices hot-added to a running VM over the API
/// are given back once the guest ejects them, and a bad hot-add changes nothing.
#[test]
fn kill_9_at_each_moment_is_cleaned_up_and_hot_removed_devices_are_given_back() {
    let kills: String = ["after-mdev-create", "after-bind", "during-dma-map"]
        .iter()
        .map(|point| {
            format!(
                "echo kill-at={point}\n\
                 TESSERA_TEST_KILL_AT={point} {run} >/run/tmp/kill.out 2>&1\n\
                 echo \"{point}-exit=$?\"\n\
                 {killed}\
                 in-host {TESSERA} --cleanup\n\
                 echo \"{point}-cleanup-exit=$?\"\n\
                 {cleaned}",
                run = tessera(
                    "",
                    &format!(
                        "--device id=tty0,mdev_parent=mtty,mdev_type=mtty-2 \
                         --device id=nvme0,{NVME}"
                    )
                ),
                killed = state(&format!("{point}-killed")),
                cleaned = state(&format!("{point}-cleaned")),
            )
        })
        .collect();
    let api = tessera(
        " judge.action=console",
        "--api-socket /run/api.sock --eject-timeout 20",
    );
    let script = format!(
        r#". "$HOST{REPO}/scripts/l1-vfio.sh"
{kills}
rm -f /run/tmp/in; mkfifo /run/tmp/in
{api} </run/tmp/in >/run/tmp/hp.out 2>&1 &
pid=$!
exec 3>/run/tmp/in
i=0
while [ $i -lt 300 ] && ! grep -q judge-boot-id= /run/tmp/hp.out; do sleep 1; i=$((i+1)); done
put() {{ echo "$1: $(in-host curl -s -w ' %{{http_code}}' --unix-socket /run/api.sock -X PUT "http://localhost/api/v1/$2" -d "$3")"; }}
put add-mdev vm.add-device '{{"id": "tty9", "mdev_parent": "mtty", "mdev_type": "mtty-1"}}'
echo "uuid-in-info: $(in-host curl -s --unix-socket /run/api.sock http://localhost/api/v1/vm.info | grep -c '"id":"tty9","[^}}]*"uuid":"[0-9a-f-]\{{36\}}"')"
put add-nvme vm.add-device '{{"id": "nvme9", "path": "/sys/bus/pci/devices/0000:00:03.0", "managed": true}}'
{added}
put add-bad vm.add-device '{{"id": "tty8", "mdev_parent": "mtty", "mdev_type": "mtty-9"}}'
{bad}
put remove-mdev vm.remove-device '{{"id": "tty9"}}'
put remove-nvme vm.remove-device '{{"id": "nvme9"}}'
{removed}
put shutdown vmm.shutdown ''
exec 3>&-
wait $pid
echo "api-exit=$?"
{end}
echo '=== tessera'
grep -v '^judge' /run/tmp/hp.out | tail -20
"#,
        added = state("hot-added"),
        bad = state("hot-bad"),
        removed = state("hot-removed"),
        end = state("api-end"),
    );
    let out = nested::run(&script, &[]).unwrap();
    let console = out.console;
    assert_eq!(out.status, 0, "{console}");
    let clean = "nvme=none override=(null) mdevs=0 records=0";
    for (point, left) in [
        (
            "after-mdev-create",
            "nvme=none override=(null) mdevs=1 records=1",
        ),
        (
            "after-bind",
            "nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        ),
        (
            "during-dma-map",
            "nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        ),
    ] {
        assert!(
            console.contains(&format!("{point}-exit=137")),
            "{point}:\n{console}"
        );
        assert_eq!(
            line(&console, &format!("{point}-killed")),
            format!("{point}-killed: {left}"),
            "{console}"
        );
        assert!(
            console.contains(&format!("{point}-cleanup-exit=0")),
            "{console}"
        );
        assert_eq!(
            line(&console, &format!("{point}-cleaned")),
            format!("{point}-cleaned: {clean}"),
            "{console}"
        );
    }
    assert!(line(&console, "add-mdev").ends_with(" 200"), "{console}");
    assert_eq!(
        line(&console, "uuid-in-info"),
        "uuid-in-info: 1",
        "{console}"
    );
    assert!(line(&console, "add-nvme").ends_with(" 200"), "{console}");
    assert_eq!(
        line(&console, "hot-added"),
        "hot-added: nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        "{console}"
    );
    let bad = line(&console, "add-bad");
    assert!(
        bad.contains("mdev_type: `mtty-9` is not an mdev type of mtty") && bad.ends_with(" 400"),
        "{console}"
    );
    assert_eq!(
        line(&console, "hot-bad"),
        "hot-bad: nvme=vfio-pci override=vfio-pci mdevs=1 records=2",
        "{console}"
    );
    assert!(line(&console, "remove-mdev").ends_with(" 204"), "{console}");
    assert!(line(&console, "remove-nvme").ends_with(" 204"), "{console}");
    assert_eq!(
        line(&console, "hot-removed"),
        format!("hot-removed: {clean}"),
        "given back once the guest ejected them:\n{console}"
    );
    assert!(console.contains("api-exit=0"), "{console}");
    assert_eq!(line(&console, "api-end"), format!("api-end: {clean}"));
}
