//! Cloud Hypervisor's configurations, given by Cloud Hypervisor's own client, boot for
//! real: in the nested test host, `ch-remote create` hands `tessera --api-socket` the
//! VmConfig exactly as CH v54 reports it in `vm.info` (tests/fixtures/cloud-hypervisor/
//! rich.json: every field at CH's default, 2 NUMA nodes with zones, a passed-through
//! device whose Generic Initiator node is CH's `numa[].device_id`, 2 PCI segments), then
//! `boot`; L2's Linux reports the topology and drives the device. Then the same VMM takes
//! a configuration as a CH user writes one (user.json), boots it, and `shutdown-vmm` ends
//! tessera with 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use serde_json::Value;
use tessera_tests::linux_judge::{images, parse_device_report, parse_report};
use tessera_tests::nested;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4";
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/cloud-hypervisor"
);

/// A fixture with this host's judge kernel, initramfs and command line in its payload;
/// everything else as CH wrote it.
fn fixture_for_l2(name: &str, extra_cmdline: &str) -> Value {
    let judge = images().unwrap();
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    let payload = &mut config["payload"];
    payload["kernel"] = judge.vmlinuz.display().to_string().into();
    payload["initramfs"] = judge.initramfs.display().to_string().into();
    payload["cmdline"] = format!("{CMDLINE} {extra_cmdline}").into();
    config
}

#[test]
fn ch_remote_creates_and_boots_chs_own_configs() {
    let ch_remote = tessera_tests::peers::ch_remote()
        .unwrap_or_else(|e| panic!("{e}"))
        .canonicalize()
        .unwrap();
    // The host's /tmp is L1's view of the host too (in-host chroots into it).
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let rich = fixture_for_l2("rich.json", "judge.devices=1");
    assert_eq!(
        rich["devices"][0]["path"], "/sys/bus/pci/devices/0000:00:04.0",
        "the fixture's device is L1's edu"
    );
    let user = fixture_for_l2("user.json", "");
    let (rich_path, user_path) = (dir.path().join("rich.json"), dir.path().join("user.json"));
    std::fs::write(&rich_path, rich.to_string()).unwrap();
    std::fs::write(&user_path, user.to_string()).unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ch = ch_remote.display();
    let script = format!(
        r#". "$HOST{repo}/scripts/l1-vfio.sh"
vfio_bind 0000:00:04.0 >/dev/null || exit 1
sock=/run/api.sock
in-host {TESSERA} --api-socket $sock 2>/run/tessera.err &
pid=$!
while [ ! -S $sock ]; do sleep 0.2; done
chr() {{ in-host {ch} --api-socket $sock "$@"; }}
# Waits until the guest has powered off (the judge does, after its report).
wait_shutdown() {{
  for i in $(seq 1 150); do
    chr info 2>/dev/null | grep -q '"state":"Shutdown"' && return 0
    sleep 1
  done
  return 1
}}
chr create {rich} && echo "rich-create=ok"
chr info | grep -o '"state":"[A-Za-z]*"'
chr boot && echo "rich-boot=ok"
wait_shutdown && echo "rich-shutdown=ok"
chr info > /tmp/rich-info.json
echo "rich-info-devices=$(grep -o '"bdf":"[0-9a-f:.]*"' /tmp/rich-info.json | tr '\n' ' ')"
chr delete && echo "rich-delete=ok"
echo "=== the user's config"
chr create {user} && echo "user-create=ok"
chr boot && echo "user-boot=ok"
wait_shutdown && echo "user-shutdown=ok"
chr shutdown-vmm && echo "shutdown-vmm=ok"
wait $pid
echo "tessera-exit=$?"
cat /run/tessera.err
echo "after: edu=$(driver_of 0000:00:04.0)"
"#,
        rich = rich_path.display(),
        user = user_path.display(),
    );
    let run = nested::run(&script, &[]).unwrap();
    let c = &run.console;
    for step in [
        "rich-create=ok",
        "\"state\":\"Created\"",
        "rich-boot=ok",
        "rich-shutdown=ok",
        "rich-delete=ok",
        "user-create=ok",
        "user-boot=ok",
        "user-shutdown=ok",
        "shutdown-vmm=ok",
        "tessera-exit=0",
        "after: edu=vfio-pci",
    ] {
        assert!(c.contains(step), "no `{step}`:\n{c}");
    }
    let (first, second) = c.split_once("=== the user's config").unwrap();

    // CH's rich config: nodes 0 and 1 with a vCPU and 256 MiB each, node 2 the device's
    // Generic Initiator node, CH's distances; the device answers in the guest.
    let r = parse_report(first)
        .unwrap()
        .unwrap_or_else(|| panic!("no report from the first boot:\n{first}"));
    assert_eq!(r.online, vec![0, 1, 2]);
    assert_eq!(r.has_cpu, vec![0, 1]);
    assert_eq!(r.has_memory, vec![0, 1]);
    assert_eq!(r.has_generic_initiator, vec![2]);
    assert_eq!(r.nodes[&0].distances, vec![10, 20, 30]);
    assert_eq!(r.nodes[&1].distances, vec![20, 10, 30]);
    let bdf = c
        .lines()
        .find_map(|l| l.strip_prefix("rich-info-devices="))
        .unwrap_or_default();
    let d = parse_device_report(first)
        .unwrap()
        .unwrap_or_else(|| panic!("no device report:\n{first}"));
    let edus = d.devices("edu");
    assert_eq!(edus.len(), 1, "the guest must see the one edu: {d:?}");
    let edu = edus[0];
    assert_eq!(d.field("edu", edu, "id"), Some("0x010000ed"), "{d:?}");
    assert!(
        bdf.contains(edu),
        "vm.info's BDFs {bdf} vs the guest's {edu}"
    );
    assert!(d.is_ok("edu", edu, "liveness"), "{d:?}");

    // The user's config: one node, 2 vCPUs, 512 MiB.
    let r = parse_report(second)
        .unwrap()
        .unwrap_or_else(|| panic!("no report from the second boot:\n{second}"));
    assert_eq!(r.online, vec![0]);
    let kb = r.nodes[&0].memtotal_kb;
    assert!((400_000..=524_288).contains(&kb), "MemTotal {kb} kB");
    assert_eq!(r.nodes[&0].cpus, vec![0, 1]);
}
