//! Runtime hotplug end to end, in the nested test host, driven by Cloud Hypervisor's own
//! `ch-remote`, with L2's kernel as the judge. In one L1 run: L1's NVMe and edu bound to
//! vfio-pci and an mtty mdev; `tessera --api-socket` boots a guest that takes typed
//! orders (`BOOT_ID devices N` prints what it sees now), with a GI-ready slot `nvme0` at
//! device 0 of segment 1 that 8 Generic Initiator nodes name while it is empty (the
//! guest lists them at boot), among 40 segments, whose hotplug AML makes a DSDT of over
//! 200 KiB (so the tables are past what the BIOS area below 1 MiB could hold). The NVMe is hot-added into that slot (the guest finds it
//! at 0001:00:00.0, the BDF the answer gave, its driver binds, data reads back, MSI-X fires),
//! hot-removed (gone in the guest; in L1 still on vfio-pci and no fd of it held), added
//! again; the mdev and edu are hot-added; a reboot keeps all three at their BDFs; after
//! the guest's poweroff, a second VM whose guest has no ACPI hotplug driver
//! (`acpiphp.disable=1`) never ejects: the removal times out, the device stays, and the
//! request can be sent again. `shutdown-vmm` ends tessera with 0 and leaves L1 clean.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_device_report, parse_report, DeviceReport};
use tessera_tests::nested::{self, SECCOMP_THREADS_SH};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// `judge.devices=1`: every boot reports its devices at startup too.
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 judge.devices=1 judge.action=console";
const MDEV: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";
const NVME: &str = "/sys/bus/pci/devices/0000:00:03.0";
const EDU: &str = "/sys/bus/pci/devices/0000:00:04.0";

/// The devices report the guest printed for order `devices SEQ`.
fn report(serial: &str, seq: u32) -> DeviceReport {
    let start = serial
        .find(&format!("judge-order: devices {seq}"))
        .unwrap_or_else(|| panic!("the guest took no order `devices {seq}`:\n{serial}"));
    let rest = &serial[start..];
    let end = rest
        .find(&format!("judge-done: {seq}"))
        .unwrap_or_else(|| panic!("order `devices {seq}` did not finish:\n{rest}"));
    parse_device_report(&rest[..end])
        .unwrap()
        .unwrap_or_else(|| panic!("no devices report for order {seq}:\n{rest}"))
}

/// The devices report boot `boot` (1-based) printed at startup, before taking orders.
fn startup_report(serial: &str, boot: usize) -> DeviceReport {
    let chunk = serial
        .split("TESSERA-INIT")
        .nth(boot)
        .unwrap_or_else(|| panic!("no boot {boot}:\n{serial}"));
    let chunk = &chunk[..chunk.find("judge-boot-id=").unwrap_or(chunk.len())];
    parse_device_report(chunk)
        .unwrap()
        .unwrap_or_else(|| panic!("boot {boot} printed no devices report:\n{chunk}"))
}

/// The GI nodes boot `boot` (1-based) listed at startup.
fn startup_gi_nodes(serial: &str, boot: usize) -> Vec<u32> {
    let chunk = serial
        .split("TESSERA-INIT")
        .nth(boot)
        .unwrap_or_else(|| panic!("no boot {boot}:\n{serial}"));
    parse_report(chunk)
        .unwrap()
        .unwrap_or_else(|| panic!("boot {boot} printed no node report:\n{chunk}"))
        .has_generic_initiator
}

/// The value of the first `key=` line of the L1 console.
fn value<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("L1 printed no {key}=:\n{console}"))
}

/// ch-remote's `PciDeviceInfo` for a hot-add: its `bdf`.
fn added_bdf(console: &str, key: &str, id: &str) -> String {
    let line = value(console, key);
    let json_end = line.rfind('}').unwrap_or_else(|| panic!("{key}: {line}"));
    let info: serde_json::Value = serde_json::from_str(&line[..=json_end])
        .unwrap_or_else(|e| panic!("{key}: ch-remote printed no PciDeviceInfo ({e}): {line}"));
    assert_eq!(info["id"], id, "{line}");
    assert!(line.ends_with("rc=0"), "{key}: {line}");
    info["bdf"].as_str().unwrap().to_string()
}

fn assert_nvme_works(d: &DeviceReport, bdf: &str) {
    assert_eq!(d.devices("nvme"), vec![bdf], "{d:?}");
    assert_eq!(d.field("nvme", bdf, "driver"), Some("nvme"), "{d:?}");
    assert!(d.is_ok("nvme", bdf, "rw"), "{d:?}");
    assert!(d.number("nvme", bdf, "msix_vectors").unwrap() >= 2, "{d:?}");
    assert!(
        d.number("nvme", bdf, "msix_interrupts").unwrap() > 0,
        "{d:?}"
    );
}

#[test]
fn nvme_mdev_and_edu_come_and_go_at_runtime_through_ch_remote() {
    let ch = tessera_tests::peers::ch_remote().unwrap_or_else(|e| panic!("{e}"));
    let ch = ch.display();
    let judge = images().unwrap();
    let (kernel, initramfs) = (judge.vmlinuz.display(), judge.initramfs.display());
    // The second VM: the same guest, without acpiphp.
    let noacpiphp = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 268_435_456u64},
        "payload": {
            "kernel": judge.vmlinuz,
            "initramfs": judge.initramfs,
            "cmdline": format!("{CMDLINE} acpiphp.disable=1"),
        },
        "serial": {"mode": "Tty"},
    });
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let noacpiphp_path = dir.path().join("noacpiphp.json");
    std::fs::write(&noacpiphp_path, noacpiphp.to_string()).unwrap();
    let noacpiphp_path = noacpiphp_path.display();
    let script = format!(
        r#"{SECCOMP_THREADS_SH}. "$HOST{REPO}/scripts/l1-vfio.sh"
vfio_bind 0000:00:03.0 >/dev/null && vfio_bind 0000:00:04.0 >/dev/null || exit 1
mtty_create {MDEV} mtty-2 >/dev/null || exit 1
nvme_group=$(group_of 0000:00:03.0)
sock=/run/api.sock
log=/run/serial.log
: >/run/order
# Types the current order every 2 s; the guest does an order with a SEQ once.
# It ends when told (/run/typist.stop), so that the pipeline, and `wait`, end.
typist() {{ while [ ! -e /run/typist.stop ]; do cat /run/order; sleep 2; done; }}
typist | TESSERA_LOG=info in-host {TESSERA} --api-socket $sock --eject-timeout 10 \
  --cpus boot=2 --memory size=0 --memory-zone id=m0,size=512M \
  --platform num_pci_segments=40 --pci-slot id=nvme0,pci_segment=1,pci_device_id=0 \
  --numa guest_numa_id=0,cpus=[0-1],memory_zones=m0 guest_numa_id=1 guest_numa_id=2 \
    guest_numa_id=3 guest_numa_id=4 guest_numa_id=5 guest_numa_id=6 guest_numa_id=7 \
    guest_numa_id=8 \
  --generic-initiator device=nvme0,nodes=1-8 \
  --kernel {kernel} --initramfs {initramfs} \
  --cmdline '{CMDLINE}' >$log 2>/run/tessera.err &
pid=$!
seccomp_watch $pid &
chr() {{ in-host {ch} --api-socket $sock "$@"; }}
# `say KEY CMD...`: KEY=output (one line) rc=status.
say() {{ k=$1; shift; r=$("$@" 2>&1); rc=$?; echo "$k=$(echo "$r" | tr '\n' ' ' | sed 's/ *$//') rc=$rc"; }}
# Waits for the Nth boot's id and prints it.
boot_id() {{
  for i in $(seq 1 120); do
    id=$(sed -n 's/^judge-boot-id=\([0-9a-f-]*\).*/\1/p' $log | sed -n "$1p")
    [ -n "$id" ] && echo "$id" && return 0
    sleep 1
  done
  return 1
}}
# `devices SEQ` to boot $boot: waits for the guest's `judge-done: SEQ`.
devices() {{
  echo "$boot devices $1" >/run/order
  for i in $(seq 1 120); do grep -q "^judge-done: $1" $log && break; sleep 1; done
  : >/run/order
}}
# File descriptors of tessera on the NVMe's group and on VFIO devices.
held() {{
  echo "group:$(ls -l /proc/$pid/fd 2>/dev/null | grep -c "/dev/vfio/$nvme_group\$") \
device:$(ls -l /proc/$pid/fd 2>/dev/null | grep -c 'vfio-device')"
}}
boot=$(boot_id 1) || {{ echo no-boot; cat /run/tessera.err; exit 1; }}
echo "held-before=$(held)"
say add1 chr add-device path={NVME},id=nvme0
echo "held-added=$(held)"
devices 2
t0=$(date +%s)
say remove1 chr remove-device nvme0
echo "remove1-secs=$(( $(date +%s) - t0 ))"
echo "held-removed=$(held) driver=$(driver_of 0000:00:03.0)"
devices 3
say add2 chr add-device path={NVME},id=nvme0
devices 4
say bad-again chr add-device path={NVME},id=nvme9
say bad-id chr add-device path={EDU},id=nvme0
say bad-segment chr add-device path={EDU},id=edu0,pci_segment=40
say bad-unbound chr add-device path=/sys/bus/pci/devices/0000:00:1f.3,id=smbus
say bad-unknown chr remove-device nope
say add-mdev chr add-device path=/sys/bus/mdev/devices/{MDEV},id=tty0
say add-edu chr add-device path={EDU},id=edu0
devices 5
echo "$boot reboot" >/run/order
boot=$(boot_id 2) || {{ echo no-reboot; cat /run/tessera.err; exit 1; }}
echo "$boot poweroff" >/run/order
taken=no
for i in $(seq 1 40); do chr info 2>/dev/null | grep -q '"state":"Shutdown"' && taken=yes && break; sleep 1; done
: >/run/order
echo "typed-poweroff=$taken"
[ $taken = yes ] || chr shutdown
echo "after-poweroff=$(chr info | grep -o '"state":"[A-Za-z]*"') held=$(held)"
chr delete && echo "delete=ok"
chr create {noacpiphp_path} && chr boot && echo "noacpiphp-boot=ok"
boot=$(boot_id 3) || {{ echo no-boot-3; cat /run/tessera.err; exit 1; }}
say noacpiphp-add chr add-device path={NVME},id=nvme0
t0=$(date +%s)
say noacpiphp-remove1 chr remove-device nvme0
echo "noacpiphp-remove1-secs=$(( $(date +%s) - t0 ))"
say noacpiphp-remove2 chr remove-device nvme0
echo "noacpiphp-still=$(chr info | grep -o '"id":"nvme0","pci_bdf":"[0-9a-f:.]*"' | head -1) held=$(held)"
chr shutdown-vmm && echo "shutdown-vmm=ok"
touch /run/typist.stop
wait $pid
echo "tessera-exit=$?"
sleep 1
seccomp_threads_of $pid
echo "after: nvme=$(driver_of 0000:00:03.0) edu=$(driver_of 0000:00:04.0) \
mdev=$([ -e /sys/bus/mdev/devices/{MDEV} ] && echo present || echo gone) \
open=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c -e /dev/vfio/ -e vfio-device)"
mtty_remove {MDEV}
echo "=== serial"
cat $log
echo "=== tessera"
grep -E 'hot-added|removed from|eject' /run/tessera.err
"#
    );
    let out = nested::run(&script, &[]).unwrap();
    let c = &out.console;
    assert_eq!(out.status, 0, "{c}");
    let serial = &c[c.find("=== serial").unwrap_or_else(|| panic!("{c}"))..];
    // With the default `--seccomp true`, through every hot-add and hot-remove.
    nested::every_thread_filtered(c, &["tessera", "api", "vcpu", "serial-input"])
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));

    // Boot: no device; tessera holds nothing of the NVMe; the empty GI-ready slot's 8
    // Generic Initiator nodes are in the guest already.
    assert_eq!(value(c, "held-before"), "group:0 device:0");
    let d = startup_report(serial, 1);
    assert!(d.devices("nvme").is_empty(), "{d:?}");
    assert_eq!(startup_gi_nodes(serial, 1), (1..=8).collect::<Vec<_>>());

    // Hot-add into the slot: at exactly the answer's BDF, the slot's, driven by the
    // guest's nvme driver.
    let bdf = added_bdf(c, "add1", "nvme0");
    assert_eq!(bdf, "0001:00:00.0");
    assert_eq!(value(c, "held-added"), "group:1 device:1");
    let d = report(serial, 2);
    eprintln!("after hot-add: {:?}", d.values);
    assert_nvme_works(&d, &bdf);

    // Hot-remove: answered once released; gone in the guest, still on vfio-pci in L1.
    assert_eq!(
        value(c, "remove1").trim(),
        "rc=0",
        "remove-device prints nothing on 204"
    );
    eprintln!("hot-remove answered in {} s", value(c, "remove1-secs"));
    assert!(
        c.contains("held-removed=group:0 device:0 driver=vfio-pci"),
        "tessera must hold no fd of the removed NVMe:\n{c}"
    );
    let d = report(serial, 3);
    assert!(d.devices("nvme").is_empty(), "{d:?}");

    // Again.
    assert_eq!(added_bdf(c, "add2", "nvme0"), bdf);
    assert_nvme_works(&report(serial, 4), &bdf);

    // Refusals, each before any side effect.
    let refused = |key: &str, needle: &str| {
        let v = value(c, key);
        assert!(v.contains(needle) && !v.ends_with("rc=0"), "{key}: {v}");
    };
    refused("bad-again", "already a device of this VM");
    refused("bad-id", "a device with id `nvme0` already exists");
    refused("bad-segment", "segment 40 does not exist");
    refused("bad-unbound", "i801_smbus");
    refused("bad-unknown", "no device has id `nope`");

    // The mdev and edu, into free slots of segment 0.
    let mdev = added_bdf(c, "add-mdev", "tty0");
    let edu = added_bdf(c, "add-edu", "edu0");
    assert_eq!(
        (mdev.as_str(), edu.as_str()),
        ("0000:00:01.0", "0000:00:02.0")
    );
    let check_all = |d: &DeviceReport| {
        assert_nvme_works(d, &bdf);
        assert!(
            !d.field("mtty", &mdev, "tty").unwrap_or_default().is_empty(),
            "{d:?}"
        );
        assert!(d.is_ok("mtty", &mdev, "loopback"), "{d:?}");
        assert_eq!(d.field("edu", &edu, "id"), Some("0x010000ed"), "{d:?}");
        assert!(d.is_ok("edu", &edu, "liveness"), "{d:?}");
    };
    let d = report(serial, 5);
    eprintln!("after hot-adding the mdev and edu: {:?}", d.values);
    check_all(&d);

    // A reboot keeps them, at the same BDFs: the rebooted guest's startup report.
    let d = startup_report(serial, 2);
    eprintln!("after the reboot: {:?}", d.values);
    check_all(&d);
    assert_eq!(startup_gi_nodes(serial, 2), (1..=8).collect::<Vec<_>>());
    let orders: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("judge-order: "))
        .filter(|o| !o.starts_with("devices"))
        .collect();
    assert_eq!(orders, ["reboot", "poweroff"], "{serial}");
    // The script falls back to vm.shutdown, so that L1 still ends clean if it was not.
    assert_eq!(value(c, "typed-poweroff"), "yes", "{serial}");
    assert!(
        c.contains("after-poweroff=\"state\":\"Shutdown\" held=group:0 device:0"),
        "{c}"
    );
    assert!(
        c.contains("delete=ok") && c.contains("noacpiphp-boot=ok"),
        "{c}"
    );

    // A guest without acpiphp never ejects: 504 after the bound, the device stays, and
    // the request can be sent again.
    assert!(serial.contains("judge-acpiphp-disable=Y"), "{serial}");
    assert_eq!(added_bdf(c, "noacpiphp-add", "nvme0"), "0000:00:01.0");
    for key in ["noacpiphp-remove1", "noacpiphp-remove2"] {
        let v = value(c, key);
        assert!(
            v.contains("did not eject `nvme0` within 10 s") && !v.ends_with("rc=0"),
            "{key}: {v}"
        );
    }
    let secs: u64 = value(c, "noacpiphp-remove1-secs").parse().unwrap();
    assert!(secs >= 10, "answered before the bound: {secs} s");
    assert!(
        c.contains(
            "noacpiphp-still=\"id\":\"nvme0\",\"pci_bdf\":\"0000:00:01.0\" held=group:1 device:1"
        ),
        "{c}"
    );

    // The end: tessera exits 0, L1 clean.
    assert!(
        c.contains("shutdown-vmm=ok") && c.contains("tessera-exit=0"),
        "{c}"
    );
    assert!(
        c.contains("after: nvme=vfio-pci edu=vfio-pci mdev=present open=0"),
        "{c}"
    );
}
