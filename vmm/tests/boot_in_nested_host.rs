//! The `tessera` binary boots an unmodified Linux guest (Debian's cloud kernel, the
//! judge's initramfs) in the nested test host: tessera runs in L1 under L1's KVM, and
//! what L2's Linux reports about its NUMA nodes must be what the configuration says.
//! Also: the guest's `poweroff -f` ends tessera with status 0, `reboot -f` boots the
//! guest again, its poweroff after a reboot still ends tessera, typed input reaches it,
//! and SIGTERM stops tessera cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tessera_tests::linux_judge::{images, parse_report, GuestReport};
use tessera_tests::nested::{self, SECCOMP_THREADS_SH};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4";

/// Runs `tessera ARGS` in L1 with the judge's kernel (the bzImage) and initramfs;
/// returns tessera's exit status and L1's console (tessera's serial output included).
fn tessera_in_l1(args: &str, extra_cmdline: &str) -> (i32, String) {
    tessera_in_l1_with(&images().unwrap().vmlinuz, args, extra_cmdline)
}

fn tessera_in_l1_with(kernel: &std::path::Path, args: &str, extra_cmdline: &str) -> (i32, String) {
    let judge = images().unwrap();
    // tessera runs with its default `--seccomp true`: while the guest runs, every thread
    // of tessera must show a seccomp filter. In the background its stdin is /dev/null, so
    // its serial-input thread ends at once; the typed-orders test sees that one.
    let script = format!(
        "{SECCOMP_THREADS_SH}\
         in-host {TESSERA} --kernel {} --initramfs {} \
           --cmdline '{CMDLINE} {extra_cmdline}' {args} &\n\
         pid=$!\n\
         seccomp_watch $pid &\n\
         wait $pid\n\
         echo \"tessera-exit=$?\"\n\
         sleep 1\n\
         seccomp_threads_of $pid\n",
        kernel.display(),
        judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let status = run
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("tessera-exit="))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("tessera did not finish in L1:\n{}", run.console));
    nested::every_thread_filtered(&run.console, &["tessera", "vcpu"])
        .unwrap_or_else(|e| panic!("{e}:\n{}", run.console));
    (status, run.console)
}

fn report(console: &str) -> GuestReport {
    parse_report(console)
        .unwrap_or_else(|e| panic!("{e}:\n{console}"))
        .unwrap_or_else(|| panic!("L2 printed no report:\n{console}"))
}

#[test]
fn two_nodes_with_a_cpu_and_256_mib_each() {
    // Cloud Hypervisor's own form: several values after one flag, and CH's console off.
    let (status, console) = tessera_in_l1(
        "--cpus boot=2 --memory size=0 \
         --memory-zone id=m0,size=256M id=m1,size=256M \
         --numa guest_numa_id=0,cpus=[0],memory_zones=m0,distances=[1@20] \
                guest_numa_id=1,cpus=[1],memory_zones=m1,distances=[0@20] \
         --console off --serial tty",
        "",
    );
    assert_eq!(status, 0, "poweroff -f must end tessera with 0:\n{console}");
    let r = report(&console);
    assert_eq!(r.online, vec![0, 1]);
    assert_eq!(r.has_cpu, vec![0, 1]);
    assert_eq!(r.has_memory, vec![0, 1]);
    assert_eq!(r.nodes[&0].cpus, vec![0]);
    assert_eq!(r.nodes[&1].cpus, vec![1]);
    assert_eq!(r.nodes[&0].distances, vec![10, 20]);
    assert_eq!(r.nodes[&1].distances, vec![20, 10]);
    for node in [0, 1] {
        let kb = r.nodes[&node].memtotal_kb;
        assert!(
            (180_000..=262_144).contains(&kb),
            "node{node} MemTotal {kb} kB"
        );
    }
}

#[test]
fn an_elf_vmlinux_boots_through_pvh() {
    let vmlinux = images().unwrap().vmlinux;
    let (status, console) = tessera_in_l1_with(
        &vmlinux,
        "--cpus boot=2 --memory size=0 \
         --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \
         --numa guest_numa_id=0,cpus=[0],memory_zones=m0 \
         --numa guest_numa_id=1,cpus=[1],memory_zones=m1",
        "",
    );
    assert_eq!(status, 0, "{console}");
    let r = report(&console);
    assert_eq!(r.online, vec![0, 1]);
    assert_eq!(r.has_cpu, vec![0, 1]);
}

#[test]
fn the_seed_shape_8_gi_nodes_on_a_pci_device() {
    // The seed's 8 GI nodes on an EMPTY GI-ready slot at device 0 of segment 1 (where a
    // GPU hot-added later would land), and a 9th on the host bridge, a device that is
    // there: Linux takes GI entries for a BDF where no device exists yet.
    let (status, console) = tessera_in_l1(
        "--cpus boot=2 --memory size=0 \
         --memory-zone id=m0,size=256M --memory-zone id=m1,size=256M \
         --numa guest_numa_id=0,cpus=[0],memory_zones=m0 \
         --numa guest_numa_id=1,cpus=[1],memory_zones=m1 \
         --numa guest_numa_id=2 --numa guest_numa_id=3 --numa guest_numa_id=4 \
         --numa guest_numa_id=5 --numa guest_numa_id=6 --numa guest_numa_id=7 \
         --numa guest_numa_id=8 --numa guest_numa_id=9 --numa guest_numa_id=10 \
         --platform num_pci_segments=2 \
         --pci-slot id=gpu0,pci_segment=1,pci_device_id=0 \
         --generic-initiator device=gpu0,nodes=2-9 device=_host_bridge,node=10",
        "",
    );
    assert_eq!(status, 0, "{console}");
    let r = report(&console);
    assert_eq!(r.has_generic_initiator, (2..=10).collect::<Vec<_>>());
    assert_eq!(r.online, (0..=10).collect::<Vec<_>>());
    assert_eq!(r.has_cpu, vec![0, 1]);
    // The host bridge is in the guest; the slot's BDF is empty.
    assert!(r.pci_numa.contains_key("0000:00:00.0"), "{:?}", r.pci_numa);
    assert!(!r.pci_numa.contains_key("0001:00:00.0"), "{:?}", r.pci_numa);
}

#[test]
fn reboot_boots_again_and_sigterm_stops_cleanly() {
    let judge = images().unwrap();
    // The guest reboots after each report; once two boots have reported, SIGTERM.
    let script = format!(
        "{SECCOMP_THREADS_SH}log=/run/serial.log\n\
         in-host {TESSERA} --kernel {} --initramfs {} --cmdline '{CMDLINE} judge.action=reboot' \
           --serial file=$log &\n\
         pid=$!\n\
         seccomp_watch $pid &\n\
         for i in $(seq 1 120); do\n\
           [ \"$(grep -c TESSERA-JUDGE-END $log 2>/dev/null)\" -ge 2 ] && break\n\
           sleep 1\n\
         done\n\
         echo \"reports=$(grep -c TESSERA-JUDGE-END $log)\"\n\
         kill -TERM $pid\n\
         wait $pid\n\
         echo \"tessera-exit=$?\"\n\
         sleep 1\n\
         seccomp_threads_of $pid\n",
        judge.vmlinuz.display(),
        judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let c = &run.console;
    nested::every_thread_filtered(c, &["tessera", "vcpu"]).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    let reports: u32 = c
        .lines()
        .find_map(|l| l.trim().strip_prefix("reports="))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(reports >= 2, "the guest did not boot twice:\n{c}");
    assert!(
        c.contains("tessera-exit=0"),
        "SIGTERM must end tessera with 0:\n{c}"
    );
}

#[test]
fn typed_orders_reboot_the_guest_and_then_its_poweroff_ends_tessera() {
    // Lines typed on tessera's stdin reach the guest through the serial port, on each
    // boot: the first boot is told to reboot, the second to power off, which must end
    // tessera with 0 by itself (issue 10: a poweroff after a reboot did not end it).
    let judge = images().unwrap();
    let script = format!(
        "{SECCOMP_THREADS_SH}log=/run/serial.log\n\
         orders() {{\n\
           while true; do\n\
             set -- $(sed -n 's/^judge-boot-id=\\([0-9a-f-]*\\).*/\\1/p' $log 2>/dev/null)\n\
             case $# in 1) echo \"$1 reboot\" ;; 2) echo \"$2 poweroff\" ;; esac\n\
             sleep 1\n\
           done\n\
         }}\n\
         orders | TESSERA_LOG=info in-host {TESSERA} --kernel {} --initramfs {} \\\n\
           --cmdline '{CMDLINE} judge.action=console' >$log 2>/run/tessera.err &\n\
         pid=$!\n\
         seccomp_watch $pid &\n\
         # The bound only keeps a tessera that never ends from using up L1's time.\n\
         for i in $(seq 1 150); do kill -0 $pid 2>/dev/null || break; sleep 1; done\n\
         kill -0 $pid 2>/dev/null && echo tessera-still-running && kill -TERM $pid\n\
         wait $pid\n\
         echo \"tessera-exit=$?\"\n\
         grep -E '^judge-(boot-id|order)|reboot: ' $log\n\
         cat /run/tessera.err\n\
         sleep 1\n\
         seccomp_threads_of $pid\n",
        judge.vmlinuz.display(),
        judge.initramfs.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let c = &run.console;
    let orders: Vec<&str> = c
        .lines()
        .filter_map(|l| l.trim().strip_prefix("judge-order: "))
        .collect();
    assert_eq!(
        orders,
        ["reboot", "poweroff"],
        "the guest did not take both typed orders:\n{c}"
    );
    assert!(
        !c.contains("tessera-still-running"),
        "the guest's poweroff after its reboot did not end tessera:\n{c}"
    );
    assert!(c.contains("tessera-exit=0"), "{c}");
    nested::every_thread_filtered(c, &["tessera", "vcpu", "serial-input"])
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
}

#[test]
fn the_api_flow_creates_edits_checks_and_boots_the_topology() {
    // Issue 4's full flow: create, add 2 passed-through devices, 10 NUMA nodes and 16 GI
    // links over the API; vm.acpi shows the 16 SRAT GI entries with the devices' BDFs; the
    // guest boots in L2 and its kernel reports the nodes and drives the devices.
    let judge = images().unwrap();
    let config = format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
           "memory": {{"size": 0, "zones": [{{"id": "m0", "size": 268435456}}, {{"id": "m1", "size": 268435456}}]}},
           "payload": {{"kernel": "{}", "initramfs": "{}", "cmdline": "{CMDLINE} judge.devices=1"}},
           "serial": {{"mode": "File", "file": "/run/serial.log"}},
           "numa": [{{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]}},
                    {{"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]}}]}}"#,
        judge.vmlinuz.display(),
        judge.initramfs.display()
    );
    std::fs::write("/tmp/tessera-api-flow.json", &config).unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // In L1: tessera serves the API; curl (the host's, chrooted) drives it.
    let script = format!(
        r#"{SECCOMP_THREADS_SH}. "$HOST{repo}/scripts/l1-vfio.sh"
vfio_bind 0000:00:03.0 >/dev/null && vfio_bind 0000:00:04.0 >/dev/null || exit 1
sock=/run/api.sock
TESSERA_LOG=info in-host {TESSERA} --api-socket $sock 2>/run/tessera.err &
pid=$!
seccomp_watch $pid &
while [ ! -S $sock ]; do sleep 0.2; done
api() {{ in-host curl -s -w ' %{{http_code}}' -X "$1" --unix-socket $sock "http://localhost/api/v1/$2" ${{3:+--data-binary "$3"}}; echo; }}
echo "create: $(api PUT vm.create @/tmp/tessera-api-flow.json)"
echo "dev-nvme: $(api PUT vm.add-device '{{"id": "nvme0", "path": "/sys/bus/pci/devices/0000:00:03.0"}}')"
echo "dev-edu: $(api PUT vm.add-device '{{"id": "edu0", "path": "/sys/bus/pci/devices/0000:00:04.0"}}')"
for n in 2 3 4 5 6 7 8 9; do api PUT vm.add-numa-node "{{\"guest_numa_id\": $n}}"; done
echo "gi-nvme: $(api PUT vm.add-generic-initiator '{{"device": "nvme0", "nodes": "2-9"}}')"
for n in 2 3 4 5 6 7 8 9; do api PUT vm.add-generic-initiator "{{\"id\": \"e$n\", \"device\": \"edu0\", \"node\": $n}}"; done
acpi=$(api GET vm.acpi)
echo "acpi-gi-nvme=$(echo "$acpi" | grep -o '"bdf":"0000:00:01.0"' | wc -l)"
echo "acpi-gi-edu=$(echo "$acpi" | grep -o '"bdf":"0000:00:02.0"' | wc -l)"
echo "boot: $(api PUT vm.boot)"
for i in $(seq 1 120); do grep -q TESSERA-DEVICES-END /run/serial.log 2>/dev/null && break; sleep 1; done
sleep 1
echo "late-node: $(api PUT vm.add-numa-node '{{"guest_numa_id": 10}}')"
echo "state: $(api GET vm.info | grep -o '"state":"[A-Za-z]*"')"
echo "vmm-shutdown: $(api PUT vmm.shutdown)"
wait $pid
echo "tessera-exit=$?"
cat /run/tessera.err
cat /run/serial.log
sleep 1
seccomp_threads_of $pid
echo "after: nvme=$(driver_of 0000:00:03.0) edu=$(driver_of 0000:00:04.0)"
"#
    );
    let run = nested::run(&script, &[]).unwrap();
    let c = &run.console;
    assert!(c.contains("create:  204"), "{c}");
    for dev in ["dev-nvme", "dev-edu"] {
        let line = c
            .lines()
            .find(|l| l.starts_with(&format!("{dev}:")))
            .unwrap_or_default();
        assert!(
            line.ends_with(" 200") || line.ends_with(" 204"),
            "{line}\n{c}"
        );
    }
    assert!(c.contains("gi-nvme:  204"), "{c}");
    assert!(
        c.contains("acpi-gi-nvme=8") && c.contains("acpi-gi-edu=8"),
        "vm.acpi must show 16 GI entries, 8 per device BDF:\n{c}"
    );
    assert!(c.contains("boot:  204"), "{c}");
    let late = c
        .lines()
        .find(|l| l.starts_with("late-node:"))
        .unwrap_or_default();
    assert!(late.ends_with("409") || late.ends_with("204"), "{late}");
    assert!(
        c.contains("state: \"state\":\"Shutdown\""),
        "the guest's poweroff leaves the VM shut down:\n{c}"
    );
    assert!(c.contains("tessera-exit=0"), "{c}");
    assert!(c.contains("after: nvme=vfio-pci edu=vfio-pci"), "{c}");
    nested::every_thread_filtered(c, &["tessera", "api", "vcpu"])
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
    let r = report(c);
    assert_eq!(r.online, (0..=9).collect::<Vec<_>>());
    assert_eq!(r.has_generic_initiator, (2..=9).collect::<Vec<_>>());
    assert_eq!(r.has_cpu, vec![0, 1]);
    let d = tessera_tests::linux_judge::parse_device_report(c)
        .unwrap()
        .unwrap_or_else(|| panic!("no device report:\n{c}"));
    assert_eq!(d.field("nvme", "0000:00:01.0", "driver"), Some("nvme"));
    assert!(d.is_ok("nvme", "0000:00:01.0", "rw"), "{d:?}");
    assert_eq!(d.field("edu", "0000:00:02.0", "id"), Some("0x010000ed"));
}
