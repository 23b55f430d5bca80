//! The HTTP API over a real Unix socket with a scripted fake VMM: every route and method,
//! the error statuses and bodies (400, 404, 405, 413, 503, and the VMM's own), many
//! concurrent clients, and shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Harness};
use serde_json::json;
use tessera_api::config::{DeviceConfig, GenericInitiatorConfig, NumaConfig, VmConfig};
use tessera_api::server::{
    openapi_json, routes, ApiError, ApiReply, ApiRequest, RemoveGenericInitiator, Snapshot,
    VmAction, MAX_BODY, SHUTDOWN_GRACE,
};
use tessera_api::types::{
    AcpiInfo, AcpiTable, DeviceInfo, PciDeviceInfo, VmInfo, VmState, VmmPingResponse,
};
use tokio::sync::mpsc;

fn ping() -> VmmPingResponse {
    VmmPingResponse {
        build_version: "v0.1.0-test".into(),
        version: "0.1.0".into(),
        pid: 42,
        features: vec![],
    }
}

fn info() -> VmInfo {
    VmInfo {
        config: serde_json::from_value(json!({"payload": {"kernel": "/k"}})).unwrap(),
        state: VmState::Running,
        memory_actual_size: Some(512 << 20),
        device_tree: None,
        devices: vec![DeviceInfo {
            id: "gpu0".into(),
            bdf: "0000:00:04.0".into(),
            generic_initiator_nodes: vec![2, 3],
        }],
        slots: vec![],
        device_memory: vec![],
    }
}

fn acpi() -> AcpiInfo {
    AcpiInfo {
        tables: vec![AcpiTable {
            address: 0xe_0040,
            signature: "SLIT".into(),
            length: 40,
            checksum: 0x5a,
            base64: "U0xJVA==".into(),
        }],
        srat: json!({"entries": []}),
        slit: json!({"localities": 2}),
        hmat: serde_json::Value::Null,
    }
}

/// The fake VMM's answers.
fn script(action: &VmAction) -> Result<ApiReply, ApiError> {
    match action {
        VmAction::Ping => ApiReply::json(&ping()),
        VmAction::Info => ApiReply::json(&info()),
        VmAction::Counters => ApiReply::json(&BTreeMap::from([(
            "gpu0".to_owned(),
            BTreeMap::from([("irqs".to_owned(), 7u64)]),
        )])),
        VmAction::Acpi => ApiReply::json(&acpi()),
        VmAction::HostDevices => ApiReply::json(&common::host_devices()),
        VmAction::TopologyMirror(r) => ApiReply::json(&tessera_api::config::VmConfig {
            payload: r.payload.clone(),
            ..Default::default()
        }),
        VmAction::AddDevice(d) => ApiReply::json(&PciDeviceInfo {
            id: d.id.clone().unwrap_or_else(|| "_dev0".into()),
            bdf: "0000:00:05.0".into(),
        }),
        VmAction::RemoveDevice { id } if id == "nope" => Err(ApiError::new(
            404,
            "no device has id `nope`",
            Some("id".into()),
        )),
        VmAction::RemoveNumaNode { guest_numa_id: 0 } => {
            Err(ApiError::new(409, "node 0 has vCPUs", None))
        }
        VmAction::RemoveNumaNode { guest_numa_id: 1 } => Err(ApiError::new(
            200,
            "a VMM bug: an error with status 200",
            None,
        )),
        _ => Ok(ApiReply::NoContent),
    }
}

/// (method, path, body, the action the VMM gets, status, JSON answer)
type Case = (
    &'static str,
    &'static str,
    Option<String>,
    VmAction,
    u16,
    Option<serde_json::Value>,
);

fn config(v: serde_json::Value) -> Box<VmConfig> {
    Box::new(serde_json::from_value(v).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_reaches_the_vmm_as_its_action() {
    let h = Harness::start(script);
    let seed = json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 0, "zones": [{"id": "m0", "size": 268435456}, {"id": "m1", "size": 268435456}]},
        "payload": {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"},
        "devices": [{"path": "/sys/bus/pci/devices/0000:00:04.0", "id": "gpu0"}],
        "numa": [
            {"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]},
            {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]},
            {"guest_numa_id": 2}
        ],
        "generic_initiators": [{"device": "gpu0", "nodes": "2"}]
    });
    let device = DeviceConfig {
        path: "/sys/bus/mdev/devices/c0ffee00-0000-0000-0000-000000000001".into(),
        id: Some("mig0".into()),
        pci_segment: 0,
        pci_device_id: Some(7),
        ..DeviceConfig::new("")
    };
    let node = NumaConfig {
        guest_numa_id: 3,
        distances: vec![tessera_api::config::NumaDistance {
            destination: 0,
            distance: 20,
        }],
        ..Default::default()
    };
    let gi = GenericInitiatorConfig {
        id: Some("gi0".into()),
        device: "mig0".into(),
        node: None,
        nodes: Some("2-9".parse().unwrap()),
    };
    let no_content = None;
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/vmm.ping",
            None,
            VmAction::Ping,
            200,
            Some(serde_json::to_value(ping()).unwrap()),
        ),
        (
            "PUT",
            "/vmm.shutdown",
            None,
            VmAction::VmmShutdown,
            204,
            no_content.clone(),
        ),
        (
            "PUT",
            "/vm.create",
            Some(seed.to_string()),
            VmAction::Create(config(seed.clone())),
            204,
            None,
        ),
        ("PUT", "/vm.boot", None, VmAction::Boot, 204, None),
        (
            "GET",
            "/vm.info",
            None,
            VmAction::Info,
            200,
            Some(serde_json::to_value(info()).unwrap()),
        ),
        (
            "GET",
            "/vm.counters",
            None,
            VmAction::Counters,
            200,
            Some(json!({"gpu0": {"irqs": 7}})),
        ),
        (
            "GET",
            "/vmm.host-devices",
            None,
            VmAction::HostDevices,
            200,
            Some(serde_json::to_value(common::host_devices()).unwrap()),
        ),
        (
            "PUT",
            "/vmm.topology-mirror",
            Some(
                r#"{"devices": ["0000:41:00.0"], "gi_nodes": 2, "payload": {"kernel": "/k"}}"#
                    .into(),
            ),
            VmAction::TopologyMirror(tessera_api::types::TopologyMirror {
                devices: vec!["0000:41:00.0".into()],
                gi_nodes: Some(2),
                payload: tessera_api::config::PayloadConfig {
                    kernel: Some("/k".into()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            200,
            Some(
                serde_json::to_value(tessera_api::config::VmConfig {
                    payload: tessera_api::config::PayloadConfig {
                        kernel: Some("/k".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
        ("PUT", "/vm.shutdown", None, VmAction::Shutdown, 204, None),
        ("PUT", "/vm.reboot", None, VmAction::Reboot, 204, None),
        ("PUT", "/vm.pause", None, VmAction::Pause, 204, None),
        ("PUT", "/vm.resume", None, VmAction::Resume, 204, None),
        ("PUT", "/vm.delete", None, VmAction::Delete, 204, None),
        (
            "PUT",
            "/vm.power-button",
            None,
            VmAction::PowerButton,
            204,
            None,
        ),
        (
            "PUT",
            "/vm.add-device",
            Some(serde_json::to_string(&device).unwrap()),
            VmAction::AddDevice(device.clone()),
            200,
            Some(json!({"id": "mig0", "bdf": "0000:00:05.0"})),
        ),
        (
            "PUT",
            "/vm.remove-device",
            Some(r#"{"id": "mig0"}"#.into()),
            VmAction::RemoveDevice { id: "mig0".into() },
            204,
            None,
        ),
        (
            "PUT",
            "/vm.add-numa-node",
            Some(serde_json::to_string(&node).unwrap()),
            VmAction::AddNumaNode(node.clone()),
            204,
            None,
        ),
        (
            "PUT",
            "/vm.remove-numa-node",
            Some(r#"{"guest_numa_id": 3}"#.into()),
            VmAction::RemoveNumaNode { guest_numa_id: 3 },
            204,
            None,
        ),
        (
            "PUT",
            "/vm.add-generic-initiator",
            Some(serde_json::to_string(&gi).unwrap()),
            VmAction::AddGenericInitiator(gi.clone()),
            204,
            None,
        ),
        (
            "PUT",
            "/vm.remove-generic-initiator",
            Some(r#"{"id": "gi0"}"#.into()),
            VmAction::RemoveGenericInitiator(RemoveGenericInitiator {
                id: Some("gi0".into()),
                ..Default::default()
            }),
            204,
            None,
        ),
        (
            "PUT",
            "/vm.remove-generic-initiator",
            Some(r#"{"device": "mig0", "node": 4}"#.into()),
            VmAction::RemoveGenericInitiator(RemoveGenericInitiator {
                device: Some("mig0".into()),
                node: Some(4),
                ..Default::default()
            }),
            204,
            None,
        ),
        (
            "PUT",
            "/vm.remove-generic-initiator",
            Some(r#"{"device": "mig0", "nodes": "5-6"}"#.into()),
            VmAction::RemoveGenericInitiator(RemoveGenericInitiator {
                device: Some("mig0".into()),
                nodes: Some("5-6".parse().unwrap()),
                ..Default::default()
            }),
            204,
            None,
        ),
        (
            "GET",
            "/vm.acpi",
            None,
            VmAction::Acpi,
            200,
            Some(serde_json::to_value(acpi()).unwrap()),
        ),
    ];
    let mut expected = Vec::new();
    for (method, path, body, action, status, answer) in &cases {
        let r = h
            .call(
                method,
                &format!("/api/v1{path}"),
                body.as_deref().map(str::as_bytes),
            )
            .await;
        assert_eq!(r.status, *status, "{method} {path}: {r:?}");
        match answer {
            Some(v) => {
                assert_eq!(r.content_type.as_deref(), Some("application/json"));
                assert_eq!(&r.json(), v, "{method} {path}");
            }
            None => assert!(r.body.is_empty(), "{method} {path}: {r:?}"),
        }
        expected.push(action.clone());
        assert_eq!(h.actions(), expected, "{method} {path}");
    }
    // The table covers every route but those the API answers itself: openapi.json, and
    // the Cloud Hypervisor features Tessera lacks (501, tested below).
    let doc: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
    for (method, path) in routes() {
        let covered = cases
            .iter()
            .any(|(m, p, ..)| *m == method && format!("/api/v1{p}") == path);
        let unsupported = doc["paths"][path.trim_start_matches("/api/v1")]["put"]["responses"]
            .get("501")
            .is_some();
        assert!(
            covered || unsupported || path == "/api/v1/openapi.json",
            "{method} {path} untested"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodyless_routes_ignore_a_body_and_head_works_on_gets() {
    let h = Harness::start(script);
    let r = h.call("PUT", "/api/v1/vm.boot", Some(b"{}")).await;
    assert_eq!(r.status, 204);
    let r = h.call("HEAD", "/api/v1/vmm.ping", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(h.actions(), vec![VmAction::Boot, VmAction::Ping]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_is_405_with_allow() {
    let h = Harness::start(script);
    for (method, path, allow) in [
        ("PUT", "/api/v1/vmm.ping", "GET, HEAD"),
        ("POST", "/api/v1/vm.info", "GET, HEAD"),
        ("PUT", "/api/v1/openapi.json", "GET, HEAD"),
        ("GET", "/api/v1/vm.create", "PUT"),
        ("DELETE", "/api/v1/vm.delete", "PUT"),
        ("POST", "/api/v1/vm.add-generic-initiator", "PUT"),
        ("HEAD", "/api/v1/vm.boot", "PUT"),
    ] {
        let r = h.call(method, path, None).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.allow.as_deref(), Some(allow), "{method} {path}");
        if method != "HEAD" {
            let e = r.assert_error(405, None);
            assert!(e.contains(method) && e.contains(path), "{e}");
        }
    }
    assert!(h.actions().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_path_is_404() {
    let h = Harness::start(script);
    for path in [
        "/api/v1/xyz",
        "/api/v1/vm.resize-memory",
        "/api/v1/vm.info/",
        "/api/v2/vmm.ping",
        "/",
    ] {
        for method in ["GET", "PUT"] {
            let r = h.call(method, path, None).await;
            assert_eq!(r.json(), json!([format!("no such endpoint: {path}")]));
            r.assert_error(404, None);
        }
    }
    assert!(h.actions().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_hypervisor_endpoints_tessera_lacks_are_501_naming_the_feature() {
    let h = Harness::start(script);
    for (path, feature) in [
        ("vm.add-disk", "virtio-block"),
        ("vm.add-net", "virtio-net"),
        ("vm.resize", "resizing"),
        ("vm.snapshot", "snapshots"),
        ("vm.send-migration", "migration"),
        ("vm.nmi", "NMI"),
    ] {
        let r = h.call("PUT", &format!("/api/v1/{path}"), Some(b"{}")).await;
        let e = r.assert_error(501, None);
        assert!(e.starts_with(path) && e.contains(feature), "{e}");
    }
    assert!(h.actions().is_empty());
}

/// Cloud Hypervisor's client reads `HTTP/1.1 ` + the code + nothing but spaces, and the
/// body length under exactly `Content-Length: `; the connection stays open for the next
/// request, and the field of an error is in its header.
#[tokio::test(flavor = "multi_thread")]
async fn answers_are_framed_as_cloud_hypervisors_client_reads_them() {
    use std::io::{Read, Write};
    let h = Harness::start(script);
    let mut stream = std::os::unix::net::UnixStream::connect(&h.socket).unwrap();
    // Blocking reads, off the runtime's worker threads.
    tokio::task::spawn_blocking(move || {
        let mut exchange = |request: &[u8]| {
            stream.write_all(request).unwrap();
            let mut got = Vec::new();
            loop {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |l| l.trim().parse().unwrap());
                    if text.len() >= end + 4 + len {
                        return text;
                    }
                }
            }
        };
        let ok = exchange(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 \r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Length: "), "{ok}");
        assert!(ok.contains("\r\nContent-Type: application/json\r\n"), "{ok}");
        // The same connection, and a body as ch-remote sends it.
        let body = r#"{"id": "nope"}"#;
        let err = exchange(
            format!(
                "PUT /api/v1/vm.remove-device HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert!(err.starts_with("HTTP/1.1 404 \r\n"), "{err}");
        assert!(err.contains("\r\nTessera-Error-Field: id\r\n"), "{err}");
        assert!(err.ends_with("\r\n\r\n[\"no device has id `nope`\"]"), "{err}");
        let none = exchange(b"PUT /api/v1/vm.boot HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(none.starts_with("HTTP/1.1 204 \r\n"), "{none}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_1_mib_is_413_and_1_mib_is_fine() {
    let h = Harness::start(script);
    let mut body = br#"{"guest_numa_id": 5}"#.to_vec();
    body.resize(MAX_BODY, b' ');
    let r = h
        .call("PUT", "/api/v1/vm.remove-numa-node", Some(&body))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    body.push(b' ');
    let r = h
        .call("PUT", "/api/v1/vm.remove-numa-node", Some(&body))
        .await;
    r.assert_error(413, None);
    let r = h
        .call("PUT", "/api/v1/vm.create", Some(&vec![b'['; 4 * MAX_BODY]))
        .await;
    r.assert_error(413, None);
    assert_eq!(
        h.actions(),
        vec![VmAction::RemoveNumaNode { guest_numa_id: 5 }]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_are_400_naming_the_field() {
    let h = Harness::start(script);
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("/vm.create", r#"{"payload": {"kernel": "/k"}"#, None, "EOF"),
        ("/vm.create", "{payload}", None, "key must be a string"),
        (
            "/vm.create",
            r#"{"payload": {}} trailing"#,
            None,
            "trailing characters",
        ),
        // CH's fields are all known (their values are the VMM's to judge); a misspelt
        // one, or one of the wrong shape, is refused here.
        (
            "/vm.create",
            r#"{"payload": {}, "disk": []}"#,
            Some("disk"),
            "unknown field `disk`",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "net": {}}"#,
            Some("net"),
            "invalid type",
        ),
        (
            "/vm.create",
            r#"{"payload": {"firmwre": "/fw"}}"#,
            Some("payload.firmwre"),
            "unknown field `firmwre`",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "rng": {"src": "/dev/urandom", "seed": 1}}"#,
            Some("rng.seed"),
            "unknown field `seed`",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "core_scheduling": "Core"}}"#,
            Some("cpus.core_scheduling"),
            "unknown variant `Core`",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "cpus": {"boot_vcpus": "two", "max_vcpus": 2}}"#,
            Some("cpus.boot_vcpus"),
            "invalid type",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "cpus": {"boot_vcpus": 2}}"#,
            Some("cpus.max_vcpus"),
            "missing field `max_vcpus`",
        ),
        (
            "/vm.create",
            r#"{"cpus": {"boot_vcpus": 1, "max_vcpus": 1}}"#,
            Some("payload"),
            "missing field `payload`",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "numa": [{"guest_numa_id": 0}, {"guest_numa_id": -1}]}"#,
            Some("numa[1].guest_numa_id"),
            "-1",
        ),
        (
            "/vm.create",
            r#"{"payload": {}, "serial": {"mode": "Bogus"}}"#,
            Some("serial.mode"),
            "unknown variant",
        ),
        ("/vm.create", "", None, "needs a JSON body"),
        ("/vm.create", " \n", None, "needs a JSON body"),
        ("/vm.create", "null", None, "invalid type: null"),
        (
            "/vm.add-device",
            r#"{"path": "/sys/x", "iommu": "on"}"#,
            Some("iommu"),
            "invalid type",
        ),
        (
            "/vm.add-device",
            r#"{"path": "/sys/x", "bus": 1}"#,
            Some("bus"),
            "unknown field `bus`",
        ),
        (
            "/vm.add-device",
            r#"{"id": "x"}"#,
            Some("path"),
            "path: give `path`, or `mdev_parent` and `mdev_type`",
        ),
        ("/vm.add-device", "", None, "needs a JSON body"),
        ("/vm.remove-device", "{}", Some("id"), "missing field `id`"),
        (
            "/vm.remove-device",
            r#"{"id": 3}"#,
            Some("id"),
            "invalid type",
        ),
        (
            "/vm.add-numa-node",
            r#"{"guest_numa_id": 1, "cpus": [0, "1"]}"#,
            Some("cpus[1]"),
            "invalid type",
        ),
        (
            "/vm.remove-numa-node",
            r#"{"guest_numa_id": 1, "force": true}"#,
            Some("force"),
            "unknown field `force`",
        ),
        (
            "/vm.add-generic-initiator",
            r#"{"device": "d", "node": 2, "nodes": "3-4"}"#,
            None,
            "not both",
        ),
        (
            "/vm.add-generic-initiator",
            r#"{"device": "d"}"#,
            None,
            "needs `node` or `nodes`",
        ),
        (
            "/vm.add-generic-initiator",
            r#"{"device": "d", "nodes": "9-2"}"#,
            Some("nodes"),
            "backwards",
        ),
        (
            "/vm.add-generic-initiator",
            r#"{"node": 2}"#,
            Some("device"),
            "missing field `device`",
        ),
        (
            "/vm.remove-generic-initiator",
            "{}",
            Some("device"),
            "give `id`",
        ),
        (
            "/vm.remove-generic-initiator",
            r#"{"id": "gi0", "device": "d"}"#,
            None,
            "`id` alone",
        ),
        (
            "/vm.remove-generic-initiator",
            r#"{"device": "d"}"#,
            Some("node"),
            "needs `node` or `nodes`",
        ),
        (
            "/vm.remove-generic-initiator",
            r#"{"device": "d", "nodes": "x"}"#,
            Some("nodes"),
            "not a node number",
        ),
        (
            "/vm.remove-generic-initiator",
            r#"{"device": "d", "node": 1, "nodes": "2"}"#,
            None,
            "not both",
        ),
    ];
    for (path, body, field, needle) in cases {
        let r = h
            .call("PUT", &format!("/api/v1{path}"), Some(body.as_bytes()))
            .await;
        let e = r.assert_error(400, *field);
        assert!(e.contains(needle), "{path} {body}: {e}");
    }
    assert!(h.actions().is_empty(), "{:?}", h.actions());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vmms_errors_are_answered_as_given() {
    let h = Harness::start(script);
    let r = h
        .call(
            "PUT",
            "/api/v1/vm.remove-device",
            Some(br#"{"id": "nope"}"#),
        )
        .await;
    assert_eq!(r.json(), json!(["no device has id `nope`"]));
    r.assert_error(404, Some("id"));
    let r = h
        .call(
            "PUT",
            "/api/v1/vm.remove-numa-node",
            Some(br#"{"guest_numa_id": 0}"#),
        )
        .await;
    assert_eq!(r.json(), json!(["node 0 has vCPUs"]));
    r.assert_error(409, None);
    // An error the VMM gave a non-error status is still an error.
    let r = h
        .call(
            "PUT",
            "/api/v1/vm.remove-numa-node",
            Some(br#"{"guest_numa_id": 1}"#),
        )
        .await;
    r.assert_error(500, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_vmm_is_503() {
    // The VMM's end of the channel is gone.
    let (tx, rx) = mpsc::channel::<ApiRequest>(1);
    drop(rx);
    let h = Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new())));
    h.call("GET", "/api/v1/vmm.ping", None)
        .await
        .assert_error(503, None);
    // Body errors are still reported first.
    h.call("PUT", "/api/v1/vm.create", Some(b"{"))
        .await
        .assert_error(400, None);
    // The openapi document needs no VMM.
    assert_eq!(
        h.call("GET", "/api/v1/openapi.json", None).await.status,
        200
    );

    // A VMM that drops the reply.
    let (tx, mut rx) = mpsc::channel::<ApiRequest>(1);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            drop(req);
        }
    });
    let h = Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new())));
    let e = h
        .call("PUT", "/api/v1/vm.boot", None)
        .await
        .assert_error(503, None);
    assert!(e.contains("VMM"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_answers_are_given_without_the_vmm() {
    let h = Harness::start(script);
    // Nothing published yet: they reach the VMM.
    assert_eq!(
        h.call("GET", "/api/v1/vmm.ping", None).await.json(),
        json!(ping())
    );
    assert_eq!(
        h.call("GET", "/api/v1/vm.info", None).await.json(),
        json!(info())
    );
    assert_eq!(h.actions(), [VmAction::Ping, VmAction::Info]);

    let mut created = info();
    created.state = VmState::Created;
    h.published.publish(Snapshot {
        ping: Some(ApiReply::json_text(&ping())),
        info: Some(ApiReply::json_text(&created)),
        acpi: Some(ApiReply::json_text(&acpi())),
    });
    for _ in 0..3 {
        let r = h.call("GET", "/api/v1/vm.info", None).await;
        assert_eq!(
            (r.status, r.content_type.as_deref()),
            (200, Some("application/json"))
        );
        assert_eq!(r.json(), json!(created));
        let r = h.call("GET", "/api/v1/vmm.ping", None).await;
        assert_eq!(r.json(), json!(ping()));
        let r = h.call("GET", "/api/v1/vm.acpi", None).await;
        assert_eq!(r.json(), json!(acpi()));
    }
    // A published error is answered as such; what is not published still goes to the VMM.
    h.published.publish(Snapshot {
        ping: Some(ApiReply::json_text(&ping())),
        info: Some(Err(ApiError::new(404, "no VM has been created", None))),
        acpi: None,
    });
    h.call("GET", "/api/v1/vm.info", None)
        .await
        .assert_error(404, None);
    assert_eq!(h.call("GET", "/api/v1/vm.counters", None).await.status, 200);
    assert_eq!(h.call("GET", "/api/v1/vm.acpi", None).await.status, 200);
    assert_eq!(
        h.actions()[2..],
        [VmAction::Counters, VmAction::Acpi],
        "{:?}",
        h.actions()
    );
    // The wrong method is still a 405, and a body still has its limit.
    assert_eq!(h.call("PUT", "/api/v1/vm.info", None).await.status, 405);
    let big = vec![b' '; MAX_BODY + 1];
    h.call("GET", "/api/v1/vmm.ping", Some(&big))
        .await
        .assert_error(413, None);

    // A VMM that has stopped: 503, as when its channel is gone.
    h.published.publish(Snapshot::closed());
    for path in ["/api/v1/vmm.ping", "/api/v1/vm.info", "/api/v1/vm.acpi"] {
        let e = h.call("GET", path, None).await.assert_error(503, None);
        assert!(e.contains("VMM"), "{e}");
    }
    assert_eq!(h.actions().len(), 4);
}

#[test]
fn json_text_is_the_text_json_sends() {
    // The two constructors give the same bytes on the wire (sorted keys), so a published
    // answer reads exactly like one the VMM makes per request.
    let ApiReply::Json(value) = ApiReply::json(&info()).unwrap() else {
        panic!("not JSON")
    };
    assert_eq!(
        ApiReply::json_text(&info()).unwrap(),
        ApiReply::JsonText(value.to_string().into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_clients() {
    let (tx, mut rx) = mpsc::channel::<ApiRequest>(8);
    // A VMM that answers out of order, some requests later than others.
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(req) = rx.recv().await {
            n += 1;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(n % 7)).await;
                let _ = req.reply.send(script(&req.action));
            });
        }
    });
    let h = Arc::new(Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new()))));
    let mut clients = Vec::new();
    for i in 0..64 {
        let h = Arc::clone(&h);
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(&h.socket).await;
            for round in 0..4 {
                let id = format!("dev{i}-{round}");
                let body = json!({"path": format!("/sys/bus/pci/devices/{id}"), "id": id});
                let r = c
                    .call(
                        "PUT",
                        "/api/v1/vm.add-device",
                        Some(body.to_string().as_bytes()),
                    )
                    .await;
                assert_eq!(r.json(), json!({"id": id, "bdf": "0000:00:05.0"}));
                let r = c.call("GET", "/api/v1/vmm.ping", None).await;
                assert_eq!(r.json()["pid"], 42);
                let r = c.call("PUT", "/api/v1/vm.boot", None).await;
                assert_eq!(r.status, 204);
                let r = c.call("GET", "/api/v1/nope", None).await;
                assert_eq!(r.status, 404);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_serve_and_leaves_the_socket_file() {
    let mut h = Harness::start(script);
    // An idle keep-alive connection does not hold the server up.
    let mut idle = Client::connect(&h.socket).await;
    assert_eq!(idle.call("GET", "/api/v1/vmm.ping", None).await.status, 200);
    let t = Instant::now();
    h.stop();
    let server = std::mem::replace(&mut h.server, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < SHUTDOWN_GRACE);
    assert!(h.socket.exists(), "serve removes nothing");
    assert!(tokio::net::UnixStream::connect(&h.socket).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_forever_for_a_stuck_vmm() {
    let (tx, mut rx) = mpsc::channel::<ApiRequest>(1);
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            keep.lock().unwrap().push(req); // never answered
        }
    });
    let mut h = Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new())));
    let socket = h.socket.clone();
    let stuck = tokio::spawn(async move {
        let mut c = Client::connect(&socket).await;
        c.call("PUT", "/api/v1/vm.boot", None).await
    });
    while held.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    h.stop();
    let server = std::mem::replace(&mut h.server, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(SHUTDOWN_GRACE * 2, server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() >= SHUTDOWN_GRACE);
    stuck.abort();
}
