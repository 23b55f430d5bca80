//! `tessera-ctl`, the built binary, against `serve` on a temporary socket with a scripted
//! fake VMM: each subcommand's request (as the typed action the VMM gets, and as raw
//! bytes on a recording socket), its readable and `--json` output, API errors, connection
//! failures, option strings refused before anything is sent, and `acpi --dump`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::Harness;
use serde_json::{json, Value};
use tessera_api::config::{
    DeviceConfig, GenericInitiatorConfig, NumaConfig, NumaDistance, PayloadConfig, VmConfig,
};
use tessera_api::server::{ApiError, ApiReply, RemoveGenericInitiator, VmAction};
use tessera_api::types::{
    AcpiInfo, AcpiTable, DeviceInfo, PciDeviceInfo, TopologyMirror, VmInfo, VmState,
    VmmPingResponse,
};

const CTL: &str = env!("CARGO_BIN_EXE_tessera-ctl");

// ---- the fake VMM ----

fn ping() -> VmmPingResponse {
    VmmPingResponse {
        build_version: "v0.1.0-test".into(),
        version: "0.1.0".into(),
        pid: 42,
        features: vec!["vfio".into()],
    }
}

fn info() -> VmInfo {
    let config = serde_json::from_value(json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 4},
        "memory": {"size": 0, "zones": [
            {"id": "m0", "size": 512u64 << 20, "host_numa_node": 0},
            {"id": "m1", "size": 512u64 << 20}
        ]},
        "payload": {"kernel": "/boot/vmlinuz"},
        "devices": [
            {"path": "/sys/bus/pci/devices/0000:41:00.0", "id": "gpu0"},
            {"path": "/sys/bus/pci/devices/0000:42:00.0", "id": "nic0"}
        ],
        "numa": [
            {"guest_numa_id": 0, "cpus": [0, 1], "memory_zones": ["m0"],
             "distances": [{"destination": 1, "distance": 20}]},
            {"guest_numa_id": 1, "cpus": [2, 3], "memory_zones": ["m1"],
             "distances": [{"destination": 0, "distance": 20}], "pci_segments": [0]},
            {"guest_numa_id": 2},
            {"guest_numa_id": 3}
        ],
        "generic_initiators": [{"id": "gi0", "device": "gpu0", "nodes": "2-3"}]
    }))
    .unwrap();
    VmInfo {
        config,
        state: VmState::Running,
        memory_actual_size: Some(1 << 30),
        device_tree: None,
        devices: vec![
            DeviceInfo {
                id: "gpu0".into(),
                bdf: "0000:00:04.0".into(),
                generic_initiator_nodes: vec![2, 3],
            },
            DeviceInfo {
                id: "nic0".into(),
                bdf: "0000:00:05.0".into(),
                generic_initiator_nodes: vec![],
            },
        ],
        slots: vec![],
        device_memory: vec![],
    }
}

fn counters() -> BTreeMap<String, BTreeMap<String, u64>> {
    BTreeMap::from([
        (
            "gpu0".to_owned(),
            BTreeMap::from([("irqs".to_owned(), 7u64), ("mmio_exits".to_owned(), 12)]),
        ),
        (
            "vcpu0".to_owned(),
            BTreeMap::from([("exits".to_owned(), 3)]),
        ),
    ])
}

/// Table bytes with a real header signature and length; padding-exercising lengths.
fn table_bytes(sig: &[u8; 4], len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
    b[..4].copy_from_slice(sig);
    b[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    b
}

fn acpi() -> AcpiInfo {
    let table = |sig: &[u8; 4], len| {
        let bytes = table_bytes(sig, len);
        AcpiTable {
            address: 0xe_0040,
            signature: String::from_utf8(sig.to_vec()).unwrap(),
            length: len as u32,
            checksum: bytes[9],
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        }
    };
    AcpiInfo {
        tables: vec![table(b"DSDT", 101), table(b"SRAT", 232), table(b"SLIT", 50)],
        srat: json!({
            "processors": [{"apic_id": 0, "node": 0, "x2apic": false, "enabled": true}],
            "memory": [],
            "generic_initiators": [
                {"node": 2, "handle_type": 1, "bdf": "0000:00:04.0", "enabled": true},
                {"node": 3, "handle_type": 1, "bdf": "0000:00:04.0", "enabled": true}
            ],
            "other": []
        }),
        slit: json!({"distances": [[10, 20], [20, 10]]}),
        hmat: Value::Null,
    }
}

fn script(action: &VmAction) -> Result<ApiReply, ApiError> {
    match action {
        VmAction::Ping => ApiReply::json(&ping()),
        VmAction::Info => ApiReply::json(&info()),
        VmAction::Counters => ApiReply::json(&counters()),
        VmAction::Acpi => ApiReply::json(&acpi()),
        VmAction::HostDevices => ApiReply::json(&common::host_devices()),
        // A stand-in answer: the VMM makes the real one from the host.
        VmAction::TopologyMirror(r) => ApiReply::json(&VmConfig {
            payload: r.payload.clone(),
            ..VmConfig::default()
        }),
        VmAction::Create(c) => c
            .validate()
            .map(|()| ApiReply::NoContent)
            .map_err(Into::into),
        VmAction::Boot => Err(ApiError::new(409, "the VM is already running", None)),
        VmAction::AddDevice(d) if d.id.as_deref() == Some("cold") => Ok(ApiReply::NoContent),
        VmAction::AddDevice(d) => ApiReply::json(&PciDeviceInfo {
            id: d.id.clone().unwrap_or_else(|| "_dev0".into()),
            bdf: "0000:00:06.0".into(),
        }),
        VmAction::RemoveDevice { id } if id == "nope" => Err(ApiError::new(
            404,
            "no device has id `nope`",
            Some("id".into()),
        )),
        _ => Ok(ApiReply::NoContent),
    }
}

// ---- running the binary ----

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_ctl(args: Vec<String>, stdin: Option<Vec<u8>>) -> Out {
    let mut child = Command::new(CTL)
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn argv(socket: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec!["--api-socket".to_owned(), socket.display().to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Runs `tessera-ctl --api-socket SOCKET ARGS...` off the runtime the server runs on.
async fn ctl(socket: &Path, args: &[&str]) -> Out {
    let a = argv(socket, args);
    tokio::task::spawn_blocking(move || run_ctl(a, None))
        .await
        .unwrap()
}

async fn ctl_stdin(socket: &Path, args: &[&str], stdin: &[u8]) -> Out {
    let (a, input) = (argv(socket, args), stdin.to_vec());
    tokio::task::spawn_blocking(move || run_ctl(a, Some(input)))
        .await
        .unwrap()
}

/// Runs a subcommand that must succeed and reach the VMM as exactly `action`.
async fn expect(h: &Harness, args: &[&str], action: VmAction) -> String {
    let before = h.actions().len();
    let out = ctl(&h.socket, args).await;
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    assert_eq!(out.stderr, "", "{args:?}");
    let actions = h.actions();
    assert_eq!(actions.len(), before + 1, "{args:?}: {actions:?}");
    assert_eq!(actions.last(), Some(&action), "{args:?}");
    out.stdout
}

fn temp_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_sends_its_request_and_prints_its_answer() {
    let h = Harness::start(script);
    let tmp = tempfile::tempdir().unwrap();

    let out = expect(&h, &["ping"], VmAction::Ping).await;
    assert_eq!(
        out,
        "tessera 0.1.0 (build v0.1.0-test), pid 42\nfeatures: vfio\n"
    );

    // Actions answered with 204 print nothing.
    for (cmd, action) in [
        ("shutdown-vmm", VmAction::VmmShutdown),
        ("shutdown", VmAction::Shutdown),
        ("reboot", VmAction::Reboot),
        ("pause", VmAction::Pause),
        ("resume", VmAction::Resume),
        ("delete", VmAction::Delete),
        ("power-button", VmAction::PowerButton),
    ] {
        assert_eq!(expect(&h, &[cmd], action).await, "", "{cmd}");
    }

    // create: from a file and from stdin.
    let config = json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "payload": {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"}
    });
    let typed: VmConfig = serde_json::from_value(config.clone()).unwrap();
    let file = temp_json(tmp.path(), "vm.json", &config);
    let out = expect(
        &h,
        &["create", file.to_str().unwrap()],
        VmAction::Create(Box::new(typed.clone())),
    )
    .await;
    assert_eq!(out, "");
    let before = h.actions().len();
    let out = ctl_stdin(&h.socket, &["create", "-"], config.to_string().as_bytes()).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    assert_eq!(h.actions()[before..], [VmAction::Create(Box::new(typed))]);

    let out = expect(&h, &["info"], VmAction::Info).await;
    assert_eq!(
        out,
        "state: Running\n\
         vcpus: 2 (max 4)\n\
         memory: 1 GiB, 1 GiB in use\n\
         \x20 zone m0: 512 MiB, host node 0\n\
         \x20 zone m1: 512 MiB\n\
         kernel: /boot/vmlinuz\n\
         numa nodes:\n\
         \x20 node 0: cpus 0-1; memory zones m0; distances 1@20\n\
         \x20 node 1: cpus 2-3; memory zones m1; distances 0@20; pci segments 0\n\
         \x20 node 2: cpus none; memory zones none; initiators gpu0\n\
         \x20 node 3: cpus none; memory zones none; initiators gpu0\n\
         devices:\n\
         \x20 gpu0 0000:00:04.0 /sys/bus/pci/devices/0000:41:00.0, GI nodes 2-3\n\
         \x20 nic0 0000:00:05.0 /sys/bus/pci/devices/0000:42:00.0\n"
    );

    let out = expect(&h, &["counters"], VmAction::Counters).await;
    assert_eq!(
        out,
        "gpu0:\n  irqs: 7\n  mmio_exits: 12\nvcpu0:\n  exits: 3\n"
    );

    // add-device: key=value, and --file JSON; 200 prints where it landed, 204 nothing.
    let out = expect(
        &h,
        &[
            "add-device",
            "path=/sys/bus/pci/devices/0000:41:00.0,id=gpu1,pci_segment=0,pci_device_id=6",
        ],
        VmAction::AddDevice(DeviceConfig {
            path: "/sys/bus/pci/devices/0000:41:00.0".into(),
            id: Some("gpu1".into()),
            pci_segment: 0,
            pci_device_id: Some(6),
            ..DeviceConfig::new("")
        }),
    )
    .await;
    assert_eq!(out, "gpu1 at 0000:00:06.0\n");
    let file = temp_json(
        tmp.path(),
        "dev.json",
        &json!({"path": "/sys/bus/pci/devices/0000:42:00.0"}),
    );
    let out = expect(
        &h,
        &["add-device", "--file", file.to_str().unwrap()],
        VmAction::AddDevice(DeviceConfig {
            path: "/sys/bus/pci/devices/0000:42:00.0".into(),
            id: None,
            pci_segment: 0,
            pci_device_id: None,
            ..DeviceConfig::new("")
        }),
    )
    .await;
    assert_eq!(out, "_dev0 at 0000:00:06.0\n");
    let out = expect(
        &h,
        &["add-device", "path=/x,id=cold"],
        VmAction::AddDevice(DeviceConfig {
            path: "/x".into(),
            id: Some("cold".into()),
            pci_segment: 0,
            pci_device_id: None,
            ..DeviceConfig::new("")
        }),
    )
    .await;
    assert_eq!(out, "");

    let out = expect(
        &h,
        &["remove-device", "gpu1"],
        VmAction::RemoveDevice { id: "gpu1".into() },
    )
    .await;
    assert_eq!(out, "");

    // add-numa-node: key=value with lists and ranges, and --file JSON from stdin.
    let numa = NumaConfig {
        guest_numa_id: 4,
        cpus: vec![0, 1, 2, 3, 6],
        distances: vec![
            NumaDistance {
                destination: 0,
                distance: 20,
            },
            NumaDistance {
                destination: 1,
                distance: 30,
            },
        ],
        memory_zones: vec!["m2".into(), "m3".into()],
        pci_segments: vec![1],
        device_id: Some("gpu0".into()),
    };
    expect(
        &h,
        &[
            "add-numa-node",
            "guest_numa_id=4,cpus=[0-3,6],memory_zones=[m2,m3],distances=[0@20,1@30],pci_segments=[1],device_id=gpu0",
        ],
        VmAction::AddNumaNode(numa.clone()),
    )
    .await;
    let before = h.actions().len();
    let out = ctl_stdin(
        &h.socket,
        &["add-numa-node", "--file", "-"],
        &serde_json::to_vec(&numa).unwrap(),
    )
    .await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    assert_eq!(h.actions()[before..], [VmAction::AddNumaNode(numa)]);

    expect(
        &h,
        &["remove-numa-node", "4"],
        VmAction::RemoveNumaNode { guest_numa_id: 4 },
    )
    .await;

    // Generic Initiators: every form.
    let gi = |id: Option<&str>, node, nodes: Option<&str>| GenericInitiatorConfig {
        id: id.map(Into::into),
        device: "gpu0".into(),
        node,
        nodes: nodes.map(|n| n.parse().unwrap()),
    };
    expect(
        &h,
        &["add-generic-initiator", "device=gpu0,node=2"],
        VmAction::AddGenericInitiator(gi(None, Some(2), None)),
    )
    .await;
    expect(
        &h,
        &["add-generic-initiator", "device=gpu0,nodes=2-9,id=gi1"],
        VmAction::AddGenericInitiator(gi(Some("gi1"), None, Some("2-9"))),
    )
    .await;
    expect(
        &h,
        &["add-generic-initiator", "device=gpu0,nodes=[2,4-5]"],
        VmAction::AddGenericInitiator(gi(None, None, Some("2,4-5"))),
    )
    .await;
    let rm = |id: Option<&str>, device: Option<&str>, node, nodes: Option<&str>| {
        VmAction::RemoveGenericInitiator(RemoveGenericInitiator {
            id: id.map(Into::into),
            device: device.map(Into::into),
            node,
            nodes: nodes.map(|n| n.parse().unwrap()),
        })
    };
    expect(
        &h,
        &["remove-generic-initiator", "id=gi1"],
        rm(Some("gi1"), None, None, None),
    )
    .await;
    expect(
        &h,
        &["remove-generic-initiator", "device=gpu0,node=2"],
        rm(None, Some("gpu0"), Some(2), None),
    )
    .await;
    expect(
        &h,
        &["remove-generic-initiator", "device=gpu0,nodes=4-5"],
        rm(None, Some("gpu0"), None, Some("4-5")),
    )
    .await;

    let out = expect(&h, &["acpi"], VmAction::Acpi).await;
    assert_eq!(
        out,
        "tables:\n\
         \x20 DSDT    101 bytes  checksum 0x40\n\
         \x20 SRAT    232 bytes  checksum 0x40\n\
         \x20 SLIT     50 bytes  checksum 0x40\n\
         SRAT generic initiators:\n\
         \x20 node 2 <- 0000:00:04.0\n\
         \x20 node 3 <- 0000:00:04.0\n\
         SLIT distances:\n\
         \x20 node 0:  10  20\n\
         \x20 node 1:  20  10\n"
    );

    // openapi is answered by the API itself, not the VMM.
    let before = h.actions().len();
    let out = ctl(&h.socket, &["openapi"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Tessera API "), "{}", out.stdout);
    assert!(out.stdout.contains("\nGET  /vm.info "), "{}", out.stdout);
    assert!(
        out.stdout.contains("\nPUT  /vm.add-generic-initiator "),
        "{}",
        out.stdout
    );
    // One line per endpoint, plus the title.
    assert_eq!(
        out.stdout.lines().count(),
        tessera_api::server::routes().count() + 1
    );
    assert_eq!(h.actions().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_the_raw_body() {
    let h = Harness::start(script);
    let raw = |v: Value| format!("{v}\n");
    for (args, body) in [
        (
            &["--json", "ping"][..],
            raw(serde_json::to_value(ping()).unwrap()),
        ),
        (
            &["--json", "info"],
            raw(serde_json::to_value(info()).unwrap()),
        ),
        (
            &["counters", "--json"],
            raw(serde_json::to_value(counters()).unwrap()),
        ),
        (
            &["acpi", "--json"],
            raw(serde_json::to_value(acpi()).unwrap()),
        ),
        (
            &["--json", "add-device", "path=/x,id=gpu1"],
            raw(json!({"id": "gpu1", "bdf": "0000:00:06.0"})),
        ),
        (
            &["--json", "openapi"],
            tessera_api::server::openapi_json().to_owned(),
        ),
        // 204: no body, nothing printed.
        (&["--json", "pause"], String::new()),
        (&["--json", "add-device", "path=/x,id=cold"], String::new()),
    ] {
        let out = ctl(&h.socket, args).await;
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        let mut expected = body;
        if !expected.is_empty() && !expected.ends_with('\n') {
            expected.push('\n');
        }
        assert_eq!(out.stdout, expected, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_exit_1_with_status_error_and_field() {
    let h = Harness::start(script);
    let tmp = tempfile::tempdir().unwrap();

    // The VMM's refusal, naming the field.
    let bad = temp_json(
        tmp.path(),
        "bad.json",
        &json!({"cpus": {"boot_vcpus": 0, "max_vcpus": 1}, "payload": {"kernel": "/k"}}),
    );
    let out = ctl(&h.socket, &["create", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "tessera-ctl: 400 must be at least 1 (field: cpus.boot_vcpus)\n"
    );

    // The same with --json: the error still goes to stderr.
    let out = ctl(&h.socket, &["--json", "remove-device", "nope"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (1, ""), "{out:?}");
    assert_eq!(
        out.stderr,
        "tessera-ctl: 404 no device has id `nope` (field: id)\n"
    );

    // No field.
    let out = ctl(&h.socket, &["boot"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr, "tessera-ctl: 409 the VM is already running\n");

    // The API's own parse error (the server names the unknown field).
    let unknown = temp_json(
        tmp.path(),
        "unknown.json",
        &json!({"payload": {"kernel": "/k"}, "bogus": 1}),
    );
    let out = ctl(&h.socket, &["create", unknown.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("tessera-ctl: 400 "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bogus"), "{}", out.stderr);

    // A VMM that is gone: 503.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let gone = Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new())));
    let out = ctl(&gone.socket, &["ping"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "tessera-ctl: 503 the VMM is not answering requests\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_name_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.sock");
    let out = ctl(&missing, &["ping"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (1, ""), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "tessera-ctl: cannot connect to the API socket {}: ",
            missing.display()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // A stale socket: nobody listens.
    let stale = tmp.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = ctl(&stale, &["info"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&stale.display().to_string()),
        "{}",
        out.stderr
    );

    // A server that hangs up without answering.
    let hangup = tmp.path().join("hangup.sock");
    let listener = UnixListener::bind(&hangup).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
    });
    let out = ctl(&hangup, &["ping"]).await;
    server.join().unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "tessera-ctl: no answer on the API socket {}: ",
            hangup.display()
        )),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_option_strings_fail_before_anything_is_sent() {
    let h = Harness::start(script);
    let tmp = tempfile::tempdir().unwrap();
    let not_json = tmp.path().join("not.json");
    std::fs::write(&not_json, "path=/x").unwrap();
    let not_json = not_json.to_str().unwrap();
    let absent = tmp.path().join("absent.json");
    let absent = absent.to_str().unwrap();
    for (args, message) in [
        (
            &["add-device", "id=gpu0"][..],
            "add-device: `path` is required",
        ),
        (
            &["add-device", "path=/x,bus=1"],
            "add-device: unknown key `bus`",
        ),
        (
            &["add-device", "path=/x,pci_segment=one"],
            "add-device: pci_segment: `one` is not a number",
        ),
        (
            &["add-device", "path=/x,id=a,id=b"],
            "add-device: `id` is given twice",
        ),
        (&["add-device", "/x"], "add-device: `/x` is not key=value"),
        (&["add-device", "--file", not_json], "add-device: "),
        (
            &["add-numa-node", "cpus=[0]"],
            "add-numa-node: `guest_numa_id` is required",
        ),
        (
            &["add-numa-node", "guest_numa_id=1,cpus=[0-x]"],
            "add-numa-node: cpus: ",
        ),
        (
            &["add-numa-node", "guest_numa_id=1,distances=[0:20]"],
            "add-numa-node: distances: `0:20` is not NODE@DISTANCE",
        ),
        (
            &["add-numa-node", "guest_numa_id=1,pci_segments=[a]"],
            "add-numa-node: pci_segments: ",
        ),
        (
            &["add-numa-node", "guest_numa_id=1,cpus=0,1"],
            "add-numa-node: `1` is not key=value",
        ),
        (
            &["remove-numa-node", "one"],
            "remove-numa-node: guest_numa_id: `one` is not a node number",
        ),
        (
            &["add-generic-initiator", "node=2"],
            "add-generic-initiator: `device` is required",
        ),
        (
            &["add-generic-initiator", "device=gpu0"],
            "add-generic-initiator: `node` or `nodes` is required",
        ),
        (
            &["add-generic-initiator", "device=gpu0,node=1,nodes=2-3"],
            "add-generic-initiator: give `node` or `nodes`, not both",
        ),
        (
            &["add-generic-initiator", "device=gpu0,nodes=9-2"],
            "add-generic-initiator: nodes: range `9-2`",
        ),
        (
            &["add-generic-initiator", "device=gpu0,node=2,pxm=3"],
            "add-generic-initiator: unknown key `pxm`",
        ),
        (
            &["remove-generic-initiator", "id=gi0,device=gpu0"],
            "remove-generic-initiator: give `id` alone",
        ),
        (
            &["remove-generic-initiator", "device=gpu0"],
            "remove-generic-initiator: `node` or `nodes` is required",
        ),
        (
            &["remove-generic-initiator", "node=2"],
            "remove-generic-initiator: give `id=NAME`, or `device=ID`",
        ),
        (
            &["remove-generic-initiator", "device=gpu0,nodes=x"],
            "remove-generic-initiator: nodes: ",
        ),
        (
            &["create", not_json],
            &format!("create: {not_json} is not JSON: "),
        ),
        (
            &["create", absent],
            &format!("create: cannot read {absent}: "),
        ),
    ] {
        let out = ctl(&h.socket, args).await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (1, ""),
            "{args:?}: {out:?}"
        );
        let expected = format!("tessera-ctl: {message}");
        assert!(
            out.stderr.starts_with(&expected),
            "{args:?}: {:?}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {:?}", out.stderr);

        // Before any request: the socket is not even looked at.
        let out = ctl(&tmp.path().join("no.sock"), args).await;
        assert!(
            out.stderr.starts_with(&expected),
            "{args:?}: {:?}",
            out.stderr
        );
    }
    assert_eq!(h.actions(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_1_and_help_exits_0() {
    let h = Harness::start(script);
    for args in [
        &["frobnicate"][..],
        &["add-device"],
        &["add-device", "path=/x", "--file", "d.json"],
        &["remove-generic-initiator"],
        &["ping", "extra"],
    ] {
        let out = ctl(&h.socket, args).await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (1, ""),
            "{args:?}: {out:?}"
        );
        assert!(out.stderr.contains("Usage"), "{args:?}: {}", out.stderr);
    }
    let out = tokio::task::spawn_blocking(|| run_ctl(vec!["ping".into()], None))
        .await
        .unwrap();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--api-socket"), "{}", out.stderr);

    let out = ctl(&h.socket, &["--help"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for cmd in [
        "ping",
        "shutdown-vmm",
        "create",
        "boot",
        "info",
        "counters",
        "shutdown",
        "reboot",
        "pause",
        "resume",
        "delete",
        "power-button",
        "add-device",
        "remove-device",
        "add-numa-node",
        "remove-numa-node",
        "add-generic-initiator",
        "remove-generic-initiator",
        "acpi",
        "openapi",
    ] {
        assert!(out.stdout.contains(&format!("\n  {cmd} ")), "{cmd}");
    }
    assert_eq!(h.actions(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_dump_writes_decodable_files() {
    let h = Harness::start(script);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tables/nested");
    let out = ctl(&h.socket, &["acpi", "--dump", dir.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("  node 2 <- 0000:00:04.0\n"),
        "{}",
        out.stdout
    );
    for (sig, len) in [(b"DSDT", 101), (b"SRAT", 232), (b"SLIT", 50)] {
        let path = dir.join(format!("{}.dat", std::str::from_utf8(sig).unwrap()));
        assert_eq!(std::fs::read(&path).unwrap(), table_bytes(sig, len));
        assert!(
            out.stdout
                .contains(&format!("wrote {} ({len} bytes)\n", path.display())),
            "{}",
            out.stdout
        );
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);

    // With --json: the files, and the raw body on stdout.
    let dir = tmp.path().join("json");
    let out = ctl(
        &h.socket,
        &["--json", "acpi", "--dump", dir.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body, serde_json::to_value(acpi()).unwrap());
    assert_eq!(
        std::fs::read(dir.join("SRAT.dat")).unwrap(),
        table_bytes(b"SRAT", 232)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_dump_refuses_unsafe_signatures_and_bad_base64() {
    fn one_table(signature: &str, base64: &str) -> Result<ApiReply, ApiError> {
        ApiReply::json(&AcpiInfo {
            tables: vec![AcpiTable {
                address: 0xe_0040,
                signature: signature.into(),
                length: 4,
                checksum: 0,
                base64: base64.into(),
            }],
            ..AcpiInfo::default()
        })
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let h = Harness::start(|_| one_table("../x", "AAAAAA=="));
    let out = ctl(&h.socket, &["acpi", "--dump", dir.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("\"../x\""), "{}", out.stderr);
    assert!(!dir.exists());
    let h = Harness::start(|_| one_table("SRAT", "not base64!"));
    let out = ctl(&h.socket, &["acpi", "--dump", dir.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("tessera-ctl: acpi: table SRAT is not valid base64: "),
        "{}",
        out.stderr
    );
    assert!(!dir.exists());
    // Without --dump, nothing is decoded: the listing still prints.
    let out = ctl(&h.socket, &["acpi"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("no SRAT"), "{}", out.stdout);
}

// ---- the bytes on the wire ----

/// The requests a [`recorder`] saw: (request line, body).
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A socket that records each request (request line, body) and answers it with `answer`.
fn recorder(socket: PathBuf, answer: &'static str) -> (std::thread::JoinHandle<()>, Seen) {
    let listener = UnixListener::bind(&socket).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            if request_line.is_empty() {
                return; // the test's "stop" connection
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            log.lock()
                .unwrap()
                .push((request_line.trim_end().to_owned(), body));
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    (thread, seen)
}

#[test]
fn requests_on_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("rec.sock");
    let (thread, seen) = recorder(
        socket.clone(),
        "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    );
    let cases: Vec<(Vec<&str>, &str, Option<Value>)> = vec![
        (vec!["ping"], "GET /api/v1/vmm.ping", None),
        (vec!["shutdown-vmm"], "PUT /api/v1/vmm.shutdown", None),
        (vec!["boot"], "PUT /api/v1/vm.boot", None),
        (vec!["info"], "GET /api/v1/vm.info", None),
        (vec!["counters"], "GET /api/v1/vm.counters", None),
        (vec!["shutdown"], "PUT /api/v1/vm.shutdown", None),
        (vec!["reboot"], "PUT /api/v1/vm.reboot", None),
        (vec!["pause"], "PUT /api/v1/vm.pause", None),
        (vec!["resume"], "PUT /api/v1/vm.resume", None),
        (vec!["delete"], "PUT /api/v1/vm.delete", None),
        (vec!["power-button"], "PUT /api/v1/vm.power-button", None),
        (
            vec![
                "add-device",
                "path=/sys/bus/pci/devices/0000:41:00.0,id=gpu0",
            ],
            "PUT /api/v1/vm.add-device",
            // What CH's ch-remote sends for the same arguments.
            Some(json!({"id": "gpu0", "pci_segment": 0,
                        "path": "/sys/bus/pci/devices/0000:41:00.0", "x_exclude_mmap_bars": []})),
        ),
        (
            vec!["remove-device", "gpu0"],
            "PUT /api/v1/vm.remove-device",
            Some(json!({"id": "gpu0"})),
        ),
        (
            vec!["add-numa-node", "guest_numa_id=2,device_id=gpu0"],
            "PUT /api/v1/vm.add-numa-node",
            Some(json!({"guest_numa_id": 2, "device_id": "gpu0"})),
        ),
        (
            vec!["remove-numa-node", "2"],
            "PUT /api/v1/vm.remove-numa-node",
            Some(json!({"guest_numa_id": 2})),
        ),
        (
            vec!["add-generic-initiator", "device=gpu0,nodes=2-9"],
            "PUT /api/v1/vm.add-generic-initiator",
            Some(json!({"device": "gpu0", "nodes": "2-9"})),
        ),
        (
            vec!["remove-generic-initiator", "id=gi0"],
            "PUT /api/v1/vm.remove-generic-initiator",
            Some(json!({"id": "gi0"})),
        ),
        (vec!["acpi"], "GET /api/v1/vm.acpi", None),
        (vec!["openapi"], "GET /api/v1/openapi.json", None),
    ];
    for (args, _, _) in &cases {
        let out = run_ctl(argv(&socket, args), None);
        // Every answer is a bodiless 204: the commands that expect a body say so.
        let expects_body = ["ping", "info", "counters", "acpi", "openapi"].contains(&args[0]);
        assert_eq!(out.code, i32::from(expects_body), "{args:?}: {out:?}");
    }
    // create sends the file (here stdin) byte for byte.
    let raw = b"{ \"payload\": {\"kernel\": \"/k\"} }";
    let out = run_ctl(argv(&socket, &["create", "-"]), Some(raw.to_vec()));
    assert_eq!(out.code, 0, "{out:?}");
    drop(std::os::unix::net::UnixStream::connect(&socket).unwrap());
    thread.join().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), cases.len() + 1);
    for ((args, line, body), (got_line, got_body)) in cases.iter().zip(seen.iter()) {
        assert_eq!(got_line, &format!("{line} HTTP/1.1"), "{args:?}");
        match body {
            None => assert!(got_body.is_empty(), "{args:?}"),
            Some(body) => assert_eq!(
                &serde_json::from_slice::<Value>(got_body).unwrap(),
                body,
                "{args:?}"
            ),
        }
    }
    let (line, body) = seen.last().unwrap();
    assert_eq!(line, "PUT /api/v1/vm.create HTTP/1.1");
    assert_eq!(body, raw);
}

#[test]
fn a_non_api_error_answer_is_reported_by_status() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("rec.sock");
    let (thread, _) = recorder(
        socket.clone(),
        "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    let out = run_ctl(argv(&socket, &["info"]), None);
    drop(std::os::unix::net::UnixStream::connect(&socket).unwrap());
    thread.join().unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr, "tessera-ctl: 502 Bad Gateway\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_mirror_sends_the_options_and_prints_the_config() {
    let h = Harness::start(script);
    let out = expect(
        &h,
        &[
            "topology",
            "mirror",
            "--device",
            "0000:41:00.0",
            "--device",
            "03:00.0",
            "--gi-nodes",
            "4",
            "--host-node",
            "1",
            "--vcpus-per-node",
            "2",
            "--memory-per-node",
            "1G",
            "--managed",
            "--kernel",
            "/k",
            "--cmdline",
            "console=ttyS0",
        ],
        VmAction::TopologyMirror(TopologyMirror {
            devices: vec!["0000:41:00.0".into(), "03:00.0".into()],
            gi_nodes: Some(4),
            host_nodes: Some(vec![1]),
            vcpus_per_node: Some(2),
            memory_per_node: Some(1 << 30),
            managed: true,
            payload: PayloadConfig {
                kernel: Some("/k".into()),
                cmdline: Some("console=ttyS0".into()),
                ..PayloadConfig::default()
            },
        }),
    )
    .await;
    // Indented JSON that is a VmConfig, to be handed to `create`.
    assert!(out.starts_with("{\n  \"cpus\""), "{out}");
    let c: VmConfig = serde_json::from_str(&out).unwrap();
    assert_eq!(c.payload.kernel.as_deref(), Some(Path::new("/k")));
    // Defaults stay unset for the VMM to fill; --device-nodes-only mirrors no others.
    let _ = expect(
        &h,
        &[
            "topology",
            "mirror",
            "--device",
            "41:00.0",
            "--device-nodes-only",
        ],
        VmAction::TopologyMirror(TopologyMirror {
            devices: vec!["41:00.0".into()],
            host_nodes: Some(vec![]),
            ..TopologyMirror::default()
        }),
    )
    .await;
    let out = ctl(
        &h.socket,
        &[
            "topology",
            "mirror",
            "--device",
            "41:00.0",
            "--memory-per-node",
            "lots",
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("tessera-ctl: topology mirror: --memory-per-node: "),
        "{}",
        out.stderr
    );
    let out = ctl(&h.socket, &["topology", "mirror"]).await;
    assert_eq!(out.code, 1, "--device is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_devices_prints_a_table_or_the_json() {
    let h = Harness::start(script);
    let out = expect(&h, &["host-devices"], VmAction::HostDevices).await;
    assert_eq!(
        out,
        "PCI devices:\n\
         BDF           VENDOR:DEVICE  CLASS   DRIVER  NODE  IOMMU GROUP\n\
         0000:41:00.0  10de:13f2      030000  nvidia  1     40 blocked by 0000:41:00.0 (nvidia)\n\
         \x20 mdev types:\n\
         \x20   nvidia-35  \"GRID M60-2Q\"  vfio-pci  2 available  \
         instances a1b2c3d4-0000-4000-8000-000000000001\n\
         \x20 vGPU types creatable: 1414 NVIDIA H200X-1-18C; current type 0\n\
         0000:00:03.0  1b36:0010      010802  none    -     none\n\
         mdev parents (not PCI devices):\n\
         \x20 mtty:\n\
         \x20   mtty-2  \"Dual-port-serial\"  vfio-pci  2 available  \
         instances 83b8f4f2-509f-382f-3c1e-e6bfe0fa1002\n\
         NUMA nodes:\n\
         NODE  CPUS  MEMORY    DISTANCES\n\
         0     0-1   2048 MiB  10 21\n\
         1     none  1024 MiB  21 10\n\
         HMAT (memory node, access class, best initiators):\n\
         \x20 node 0 access1 from 0: read 80 ns, 40000 MB/s; write 90 ns, 30000 MB/s\n\
         \x20 node 1 access0 from 0: read 120 ns, 20000 MB/s; write 130 ns, -\n"
    );
    let out = expect(&h, &["--json", "host-devices"], VmAction::HostDevices).await;
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json, serde_json::to_value(common::host_devices()).unwrap());
}
