//! The served OpenAPI document is valid JSON, lists exactly the router's routes with the
//! right methods and request bodies, documents every answer the server gives on its own
//! (400, 413, 503), and its schemas match the Rust types field for field: names, which
//! are required, and that unknown fields are refused. (The VMM's answers, in every
//! state of the VM, are held to the document by `vmm/tests/api.rs`.)

#![recursion_limit = "256"]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use common::Harness;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tessera_api::config::{
    ConsoleMode, CoreScheduling, CpuProfile, DeviceConfig, DeviceMemoryConfig,
    GenericInitiatorConfig, HmatCacheAssociativity, HmatCacheConfig, HmatCachePolicy, HmatDataType,
    HmatHierarchy, HmatLbConfig, HotplugMethod, NumaConfig, VmConfig,
};
use tessera_api::server::{
    openapi_json, routes, ApiError, ApiReply, ApiRequest, Snapshot, VmAction, MAX_BODY,
};
use tessera_api::types::{
    AcpiInfo, AcpiTable, DeviceInfo, DeviceMemoryInfo, DeviceNode, PciDeviceInfo,
    RemoveGenericInitiator, SlotInfo, VmInfo, VmRemoveDevice, VmRemoveNumaNode, VmState,
    VmmPingResponse,
};

fn doc() -> Value {
    serde_json::from_str(openapi_json()).expect("openapi.json is JSON")
}

/// The schema `schema` names: through a `$ref`, or an `allOf` of one `$ref` (the form a
/// nullable reference takes, since OpenAPI 3.0 ignores keys beside `$ref`).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let schema = match schema.get("allOf").and_then(Value::as_array) {
        Some(one) if one.len() == 1 && one[0].get("$ref").is_some() => &one[0],
        _ => schema,
    };
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_lists_exactly_the_routes() {
    let h = Harness::start(|_| Ok(ApiReply::NoContent));
    let r = h.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let served = r.json();
    assert_eq!(served, doc());
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    let prefix = served["servers"][0]["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://localhost")
        .unwrap()
        .to_owned();
    assert_eq!(prefix, "/api/v1");

    let mut documented = BTreeSet::new();
    for (path, ops) in served["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), format!("{prefix}{path}")));
        }
    }
    let routed: BTreeSet<_> = routes().map(|(m, p)| (m.to_owned(), p)).collect();
    assert_eq!(documented, routed);
    assert!(routed.len() >= 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_request_bodies_are_the_ones_the_server_needs() {
    let h = Harness::start(|_| Ok(ApiReply::NoContent));
    let d = doc();
    for (path, ops) in d["paths"].as_object().unwrap() {
        let Some(put) = ops.get("put") else { continue };
        let needs_body = put.get("requestBody").is_some();
        if needs_body {
            assert_eq!(put["requestBody"]["required"], true, "{path}");
        }
        let r = h.call("PUT", &format!("/api/v1{path}"), None).await;
        if documented(&d, "put", path).contains(&501) {
            let e = r.assert_error(501, None);
            assert!(e.contains("Tessera"), "{path}: {e}");
        } else if needs_body {
            let e = r.assert_error(400, None);
            assert!(e.contains("needs a JSON body"), "{path}: {e}");
            assert!(put["responses"].get("400").is_some(), "{path}");
        } else {
            assert_eq!(r.status, 204, "{path}: {r:?}");
        }
    }
}

/// The statuses `openapi.json` documents for `method` (lower case) on `path`.
fn documented(d: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    d["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_own_answers_are_documented() {
    let d = doc();
    let ops: Vec<(String, String)> = d["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let h = Harness::start(|_| Ok(ApiReply::NoContent));
    // Every route reads its body, with or without one documented, and refuses one over
    // the limit before anything else.
    let big = vec![b' '; MAX_BODY + 1];
    for (method, path) in &ops {
        let r = h
            .call(
                &method.to_uppercase(),
                &format!("/api/v1{path}"),
                Some(&big),
            )
            .await;
        assert_eq!(r.status, 413, "{method} {path}");
        assert!(
            documented(&d, method, path).contains(&413),
            "{method} {path} 413"
        );
    }
    assert!(h.actions().is_empty());

    // Without a VMM, everything but this document is 503: when its channel is closed,
    // and, for the answers the VMM publishes, when its snapshot says it has stopped.
    let (tx, rx) = tokio::sync::mpsc::channel::<ApiRequest>(1);
    drop(rx);
    let gone = Harness::with_channel(tx, Arc::new(Mutex::new(Vec::new())));
    h.published.publish(Snapshot::closed());
    let mut published = 0;
    for (method, path) in &ops {
        let needs_body = d["paths"][path][method].get("requestBody").is_some();
        // A body the server refuses before asking the VMM would be a 400.
        let body = needs_body.then(|| match path.as_str() {
            "/vm.create" => r#"{"payload": {"kernel": "/k"}}"#,
            "/vm.add-device" => r#"{"path": "/p"}"#,
            "/vm.remove-device" => r#"{"id": "d"}"#,
            "/vm.add-numa-node" | "/vm.remove-numa-node" => r#"{"guest_numa_id": 1}"#,
            "/vm.add-generic-initiator" => r#"{"device": "d", "node": 1}"#,
            "/vm.remove-generic-initiator" => r#"{"id": "g"}"#,
            "/vmm.topology-mirror" => r#"{"devices": ["41:00.0"]}"#,
            _ => panic!("{path}: give an example body"),
        });
        let method_uc = method.to_uppercase();
        let url = format!("/api/v1{path}");
        let r = gone.call(&method_uc, &url, body.map(str::as_bytes)).await;
        let asked = h.actions().len();
        let s = h.call(&method_uc, &url, body.map(str::as_bytes)).await;
        if path == "/openapi.json" {
            assert_eq!((r.status, s.status), (200, 200));
            continue;
        }
        if documented(&d, method, path).contains(&501) {
            // Answered without the VMM: a feature Tessera does not have.
            r.assert_error(501, None);
            s.assert_error(501, None);
            assert_eq!(h.actions().len(), asked, "{path}");
            continue;
        }
        r.assert_error(503, None);
        assert!(
            documented(&d, method, path).contains(&503),
            "{method} {path} 503"
        );
        if h.actions().len() == asked {
            s.assert_error(503, None);
            published += 1;
        }
    }
    assert_eq!(published, 3, "vmm.ping, vm.info and vm.acpi are published");
}

#[test]
fn every_ref_resolves_and_every_error_response_is_the_error_body() {
    let d = doc();
    fn walk(d: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(d, v);
                }
                m.values().for_each(|v| walk(d, v));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(d, v)),
            _ => {}
        }
    }
    walk(&d, &d);
    for (path, ops) in d["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (code, resp) in op["responses"].as_object().unwrap() {
                let code: u16 = code.parse().unwrap();
                assert_eq!(
                    code >= 400,
                    resp.get("$ref") == Some(&json!("#/components/responses/Error")),
                    "{method} {path} {code}"
                );
            }
        }
    }
    // The error body is what an ApiError answers with, and its field is in the header
    // the Error response documents.
    let answer = ApiError::new(400, "bad", Some("cpus".into())).into_response();
    let field = answer.headers()[tessera_api::error::ERROR_FIELD_HEADER].clone();
    assert_eq!(field, "cpus");
    let headers = d["components"]["responses"]["Error"]["headers"]
        .as_object()
        .unwrap();
    assert!(headers
        .keys()
        .all(|h| h.eq_ignore_ascii_case(tessera_api::error::ERROR_FIELD_HEADER)));
    let body = body_json(answer);
    check_shape(
        &d,
        &json!({"$ref": "#/components/schemas/ErrorBody"}),
        &body,
        "ErrorBody",
    );
    assert_eq!(body, json!(["bad"]));
}

/// The JSON body of a response made in this process.
fn body_json(response: axum::response::Response) -> Value {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt
        .block_on(response.into_body().collect())
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Checks `value` against `schema`: objects have exactly the schema's properties (so
/// `value` should set every optional field), scalars have the schema's type.
fn check_shape(d: &Value, schema: &Value, value: &Value, at: &str) {
    let s = resolve(d, schema);
    let ty = s.get("type").and_then(Value::as_str);
    match value {
        Value::Object(map) => {
            assert_eq!(ty, Some("object"), "{at}");
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                let keys: BTreeSet<&String> = map.keys().collect();
                let names: BTreeSet<&String> = props.keys().collect();
                assert_eq!(keys, names, "{at}: fields vs documented properties");
                for name in s["required"].as_array().into_iter().flatten() {
                    assert!(props.contains_key(name.as_str().unwrap()), "{at}.{name}");
                }
                for (k, v) in map {
                    check_shape(d, &props[k], v, &format!("{at}.{k}"));
                }
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in map {
                    check_shape(d, ap, v, &format!("{at}.{k}"));
                }
            }
        }
        Value::Array(items) => {
            assert_eq!(ty, Some("array"), "{at}");
            assert!(!items.is_empty(), "{at}: give an example item");
            for (i, v) in items.iter().enumerate() {
                check_shape(d, &s["items"], v, &format!("{at}[{i}]"));
            }
        }
        Value::String(x) => {
            assert_eq!(ty, Some("string"), "{at}");
            if let Some(e) = s.get("enum") {
                assert!(e.as_array().unwrap().contains(&json!(x)), "{at}: {x}");
            }
        }
        Value::Number(_) => assert_eq!(ty, Some("integer"), "{at}"),
        Value::Bool(_) => assert_eq!(ty, Some("boolean"), "{at}"),
        Value::Null => assert!(
            s.get("nullable") == Some(&json!(true)) || schema.get("nullable") == Some(&json!(true)),
            "{at}"
        ),
    }
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A request type: `maximal` (every field set) matches the schema, and at every object
/// in it, removing a property fails to parse exactly when the schema requires it, and
/// an extra property fails to parse (`additionalProperties: false`).
fn check_request<T: DeserializeOwned + Serialize>(name: &str, maximal: Value) {
    let d = doc();
    let typed: T = serde_json::from_value(maximal.clone()).unwrap();
    let value = serde_json::to_value(&typed).unwrap();
    assert_eq!(value, maximal, "{name}: the example should round-trip");
    check_shape(&d, &schema(name), &value, name);

    fn objects(d: &Value, s: &Value, v: &Value, ptr: String, out: &mut Vec<(String, Value)>) {
        let s = resolve(d, s).clone();
        match v {
            Value::Object(m) => {
                if let Some(props) = s.get("properties") {
                    for (k, v) in m {
                        objects(d, &props[k], v, format!("{ptr}/{k}"), out);
                    }
                    out.push((ptr, s));
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    objects(d, &s["items"], v, format!("{ptr}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    objects(&d, &schema(name), &value, String::new(), &mut all);
    let mut null_mismatches = Vec::new();
    for (ptr, s) in all {
        assert_eq!(s["additionalProperties"], false, "{name}{ptr}");
        let mut extra = value.clone();
        let obj = extra.pointer_mut(&ptr).unwrap().as_object_mut().unwrap();
        obj.insert("zz_unknown".into(), json!(1));
        assert!(serde_json::from_value::<T>(extra).is_err(), "{name}{ptr}");
        let required: Vec<&str> = s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_str().unwrap())
            .collect();
        for prop in s["properties"].as_object().unwrap().keys() {
            let mut less = value.clone();
            let obj = less.pointer_mut(&ptr).unwrap().as_object_mut().unwrap();
            obj.remove(prop);
            assert_eq!(
                serde_json::from_value::<T>(less).is_err(),
                required.contains(&prop.as_str()),
                "{name}{ptr}/{prop}: required in the document iff serde needs it"
            );
            // And null is read exactly where the document says `nullable`.
            let mut null = value.clone();
            let obj = null.pointer_mut(&ptr).unwrap().as_object_mut().unwrap();
            obj.insert(prop.clone(), Value::Null);
            let reads_null = serde_json::from_value::<T>(null).is_ok();
            let says_null = s["properties"][prop]["nullable"] == true;
            if reads_null != says_null {
                null_mismatches.push(format!("{name}{ptr}/{prop}: serde reads null {reads_null}, document nullable {says_null}"));
            }
        }
    }
    assert!(null_mismatches.is_empty(), "{}", null_mismatches.join("\n"));
}

/// Every field of the configuration set, most to values `validate` refuses: the
/// document's types are what is read. (Its string enums are what is accepted, so those
/// values are accepted ones.)
fn maximal_config() -> Value {
    json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 4,
                 "topology": {"threads_per_core": 1, "cores_per_die": 4, "dies_per_package": 1, "packages": 1},
                 "kvm_hyperv": true, "max_phys_bits": 40,
                 "affinity": [{"vcpu": 0, "host_cpus": [2, 3]}],
                 "features": {"amx": true}, "nested": false, "core_scheduling": "Off",
                 "profile": "Host"},
        "memory": {"size": 0, "mergeable": true, "hotplug_method": "Acpi",
                   "hotplug_size": 1073741824, "hotplugged_size": 0,
                   "shared": true, "hugepages": true, "hugepage_size": 2097152,
                   "prefault": true, "reserve": true,
                   "zones": [{"id": "m0", "size": 1073741824, "file": "/z", "shared": true, "hugepages": true,
                              "hugepage_size": 2097152, "host_numa_node": 0,
                              "hotplug_size": 1073741824, "hotplugged_size": 0,
                              "prefault": true, "reserve": true, "mergeable": true}],
                   "thp": false},
        "payload": {"firmware": "/fw", "kernel": "/k", "cmdline": "console=ttyS0", "initramfs": "/i",
                    "igvm": "/igvm", "host_data": "00", "fw_cfg_config": {"e820": true}},
        "rate_limit_groups": [{"id": "g0", "rate_limiter_config": {}}],
        "disks": [{"path": "/disk.img"}],
        "net": [{"tap": "tap0"}],
        "rng": {"id": "rng0", "iommu": true, "pci_segment": 0, "pci_device_id": 5, "src": "/dev/urandom"},
        "balloon": {"size": 0},
        "generic_vhost_user": [{"socket": "/v", "queue_sizes": [256], "device_type": 1}],
        "fs": [{"tag": "t", "socket": "/fs"}],
        "pmem": [{"file": "/pmem"}],
        "serial": {"mode": "Socket", "file": "/f", "socket": "/s"},
        "console": {"file": "/f", "mode": "Off", "socket": "/s", "id": "con0", "iommu": true,
                    "pci_segment": 0, "pci_device_id": 6},
        "debug_console": {"file": "/dbg", "mode": "Off", "iobase": 1026},
        "devices": [{"id": "gpu0", "iommu": true, "pci_segment": 0, "pci_device_id": 4,
                     "path": "/sys/bus/pci/devices/0000:01:00.0", "fd": 3,
                     "x_nv_gpudirect_clique": 1, "x_exclude_mmap_bars": [0, 2],
                     "mdev_parent": "mtty", "mdev_type": "mtty-1",
                     "uuid": "9e4ae7a6-13a3-4b8b-8d7e-6d1f2c3b4a51", "managed": true,
                     "vgpu_type": 558}],
        "pci_slots": [{"id": "gpu0", "pci_segment": 0, "pci_device_id": 4}],
        "user_devices": [{"socket": "/u"}],
        "vdpa": [{"path": "/dev/vhost-vdpa-0"}],
        "vsock": {"cid": 3, "socket": "/vsock"},
        "pvmemcontrol": {},
        "pvpanic": true,
        "iommu": true,
        "numa": [{"guest_numa_id": 0, "cpus": [0, 1], "distances": [{"destination": 1, "distance": 20}],
                  "memory_zones": ["m0"], "pci_segments": [0], "device_id": "gpu0"}],
        "generic_initiators": [{"id": "gi0", "device": "gpu0", "node": 1, "nodes": "2-9"}],
        "hmat": [{"initiator": 0, "target": 0, "hierarchy": "memory", "data_type": "access_latency",
                  "latency": 10, "bandwidth": 1048576}],
        "hmat_caches": [{"node": 0, "size": 1048576, "level": 1, "associativity": "direct",
                         "policy": "write_back", "line": 64}],
        "device_memory": [{"device": "gpu0", "bar": 2, "node": 3, "distance": 40}],
        "watchdog": true,
        "rtc": {},
        "gdb": true,
        "pci_segments": [{"pci_segment": 0, "mmio32_aperture_weight": 2, "mmio64_aperture_weight": 3}],
        "platform": {"num_pci_segments": 1, "iommu_segments": [0], "iommu_address_width_bits": 48,
                     "system_serial_number": "s", "system_uuid": "u", "oem_strings": ["o"],
                     "system_manufacturer": "m", "system_product_name": "p", "system_version": "v",
                     "system_family": "f", "system_sku_number": "k", "chassis_asset_tag": "c",
                     "tdx": true, "sev_snp": true, "iommufd": true, "iommufd_fd": 4,
                     "vfio_p2p_dma": false},
        "tpm": {"socket": "/tpm"},
        "landlock_enable": true,
        "landlock_rules": [{"path": "/", "access": "r"}],
        "ivshmem": {"path": "/shm", "size": 1}
    })
}

#[test]
fn request_schemas_match_the_types() {
    // serde reads a payload without a kernel (vmm.topology-mirror's may have none), but
    // `VmConfig::validate` refuses one (config.rs tests it): the document requires it of
    // a VM's configuration, at VmConfig.
    let d = doc();
    let rule = &d["components"]["schemas"]["VmConfig"]["allOf"][0]["properties"]["payload"];
    assert_eq!(rule["required"], json!(["kernel"]));
    assert_eq!(rule["properties"]["kernel"], json!({"type": "string"}));
    let config = maximal_config();
    check_request::<VmConfig>("VmConfig", config.clone());
    check_request::<DeviceConfig>("DeviceConfig", config["devices"][0].clone());
    check_request::<NumaConfig>("NumaConfig", config["numa"][0].clone());
    check_request::<GenericInitiatorConfig>(
        "GenericInitiatorConfig",
        config["generic_initiators"][0].clone(),
    );
    check_request::<HmatLbConfig>("HmatLbConfig", config["hmat"][0].clone());
    check_request::<HmatCacheConfig>("HmatCacheConfig", config["hmat_caches"][0].clone());
    check_request::<DeviceMemoryConfig>("DeviceMemoryConfig", config["device_memory"][0].clone());
    check_request::<VmRemoveDevice>("VmRemoveDevice", json!({"id": "gpu0"}));
    check_request::<VmRemoveNumaNode>("VmRemoveNumaNode", json!({"guest_numa_id": 3}));
    check_request::<RemoveGenericInitiator>(
        "RemoveGenericInitiator",
        json!({"id": "gi0", "device": "gpu0", "node": 1, "nodes": "2-9"}),
    );
    check_request::<tessera_api::types::TopologyMirror>(
        "TopologyMirror",
        json!({
            "devices": ["0000:41:00.0"],
            "gi_nodes": 8,
            "host_nodes": [0, 1],
            "vcpus_per_node": 2,
            "memory_per_node": 1073741824,
            "managed": true,
            "payload": config["payload"].clone()
        }),
    );
}

#[test]
fn response_schemas_match_the_types() {
    let d = doc();
    let config: VmConfig = serde_json::from_value(maximal_config()).unwrap();
    let info = VmInfo {
        config: config.clone(),
        state: VmState::Paused,
        memory_actual_size: Some(1 << 30),
        device_tree: Some(
            [(
                "gpu0".to_string(),
                DeviceNode {
                    id: "gpu0".into(),
                    resources: vec![json!({"PciBar": {"index": 0}})],
                    children: vec!["gpu0-fn1".into()],
                    pci_bdf: Some("0000:00:04.0".into()),
                },
            )]
            .into(),
        ),
        devices: vec![DeviceInfo {
            id: "gpu0".into(),
            bdf: "0000:00:04.0".into(),
            generic_initiator_nodes: vec![1, 2],
        }],
        slots: vec![
            SlotInfo {
                id: "gpu0".into(),
                bdf: "0000:00:04.0".into(),
                generic_initiator_nodes: vec![1, 2],
                device: Some("gpu0".into()),
            },
            SlotInfo {
                id: "gpu1".into(),
                bdf: "0001:00:00.0".into(),
                generic_initiator_nodes: vec![3],
                device: None,
            },
        ],
        device_memory: vec![DeviceMemoryInfo {
            device: "gpu0".into(),
            bar: 2,
            node: 3,
            guest_address: 1 << 32,
            size: 128 << 20,
        }],
    };
    let ping = VmmPingResponse {
        build_version: "b".into(),
        version: "v".into(),
        pid: 1,
        features: vec!["acpi".into()],
    };
    let acpi = AcpiInfo {
        tables: vec![AcpiTable {
            address: 0xe_0040,
            signature: "SRAT".into(),
            length: 48,
            checksum: 1,
            base64: "AA==".into(),
        }],
        srat: json!({}),
        slit: json!({}),
        hmat: Value::Null,
    };
    let pci = PciDeviceInfo {
        id: "gpu0".into(),
        bdf: "0000:00:04.0".into(),
    };
    for (name, v) in [
        ("VmInfo", serde_json::to_value(&info).unwrap()),
        ("VmmPingResponse", serde_json::to_value(&ping).unwrap()),
        ("AcpiInfo", serde_json::to_value(&acpi).unwrap()),
        ("PciDeviceInfo", serde_json::to_value(&pci).unwrap()),
        ("VmCounters", json!({"gpu0": {"irqs": 1}})),
        (
            "HostDevices",
            serde_json::to_value(common::host_devices()).unwrap(),
        ),
    ] {
        check_shape(&d, &schema(name), &v, name);
    }
    // The required fields of a response are always there.
    let minimal = VmInfo {
        config,
        state: VmState::Created,
        memory_actual_size: None,
        device_tree: None,
        devices: vec![],
        slots: vec![],
        device_memory: vec![],
    };
    let v = serde_json::to_value(&minimal).unwrap();
    for r in d["components"]["schemas"]["VmInfo"]["required"]
        .as_array()
        .unwrap()
    {
        assert!(v.get(r.as_str().unwrap()).is_some(), "{r}");
    }
}

#[test]
fn enums_match_the_types() {
    let d = doc();
    let names = |schema: &str| -> BTreeSet<String> {
        d["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let modes = [
        ConsoleMode::Off,
        ConsoleMode::Pty,
        ConsoleMode::Tty,
        ConsoleMode::File,
        ConsoleMode::Socket,
        ConsoleMode::Null,
    ];
    let ours: BTreeSet<String> = modes
        .iter()
        .map(|m| {
            serde_json::to_value(m)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ours, names("ConsoleMode"));
    let states = [
        VmState::Created,
        VmState::Running,
        VmState::Shutdown,
        VmState::Paused,
    ];
    let ours: BTreeSet<String> = states
        .iter()
        .map(|m| {
            serde_json::to_value(m)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ours, names("VmState"));
    let names_of = |values: Vec<Value>| -> BTreeSet<String> {
        values
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names_of(vec![
            json!(CoreScheduling::Vm),
            json!(CoreScheduling::Vcpu),
            json!(CoreScheduling::Off)
        ]),
        names("CoreSchedulingMode")
    );
    assert_eq!(names_of(vec![json!(CpuProfile::Host)]), names("CpuProfile"));
    assert_eq!(
        names_of(vec![
            json!(HotplugMethod::Acpi),
            json!(HotplugMethod::VirtioMem)
        ]),
        names("HotplugMethod")
    );
    assert_eq!(
        names_of(vec![
            json!(HmatHierarchy::Memory),
            json!(HmatHierarchy::FirstLevel),
            json!(HmatHierarchy::SecondLevel),
            json!(HmatHierarchy::ThirdLevel)
        ]),
        names("HmatHierarchy")
    );
    assert_eq!(
        names_of(HmatDataType::ALL.iter().map(|t| json!(t)).collect()),
        names("HmatDataType")
    );
    assert_eq!(
        names_of(vec![
            json!(HmatCacheAssociativity::None),
            json!(HmatCacheAssociativity::Direct),
            json!(HmatCacheAssociativity::Complex)
        ]),
        names("HmatCacheAssociativity")
    );
    assert_eq!(
        names_of(vec![
            json!(HmatCachePolicy::None),
            json!(HmatCachePolicy::WriteBack),
            json!(HmatCachePolicy::WriteThrough)
        ]),
        names("HmatCachePolicy")
    );
}

#[test]
fn every_action_has_a_route() {
    // A compile-time reminder: a new VmAction needs a route, and the route a document
    // entry (checked above).
    fn path(a: &VmAction) -> &'static str {
        match a {
            VmAction::Ping => "/vmm.ping",
            VmAction::VmmShutdown => "/vmm.shutdown",
            VmAction::Create(_) => "/vm.create",
            VmAction::Boot => "/vm.boot",
            VmAction::Info => "/vm.info",
            VmAction::Counters => "/vm.counters",
            VmAction::Shutdown => "/vm.shutdown",
            VmAction::Reboot => "/vm.reboot",
            VmAction::Pause => "/vm.pause",
            VmAction::Resume => "/vm.resume",
            VmAction::Delete => "/vm.delete",
            VmAction::PowerButton => "/vm.power-button",
            VmAction::AddDevice(_) => "/vm.add-device",
            VmAction::RemoveDevice { .. } => "/vm.remove-device",
            VmAction::AddNumaNode(_) => "/vm.add-numa-node",
            VmAction::RemoveNumaNode { .. } => "/vm.remove-numa-node",
            VmAction::AddGenericInitiator(_) => "/vm.add-generic-initiator",
            VmAction::RemoveGenericInitiator(_) => "/vm.remove-generic-initiator",
            VmAction::Acpi => "/vm.acpi",
            VmAction::HostDevices => "/vmm.host-devices",
            VmAction::TopologyMirror(_) => "/vmm.topology-mirror",
        }
    }
    let config: VmConfig = serde_json::from_value(maximal_config()).unwrap();
    let all = [
        VmAction::Ping,
        VmAction::VmmShutdown,
        VmAction::Create(Box::new(config.clone())),
        VmAction::Boot,
        VmAction::Info,
        VmAction::Counters,
        VmAction::Shutdown,
        VmAction::Reboot,
        VmAction::Pause,
        VmAction::Resume,
        VmAction::Delete,
        VmAction::PowerButton,
        VmAction::AddDevice(config.devices[0].clone()),
        VmAction::RemoveDevice { id: "gpu0".into() },
        VmAction::AddNumaNode(config.numa[0].clone()),
        VmAction::RemoveNumaNode { guest_numa_id: 0 },
        VmAction::AddGenericInitiator(config.generic_initiators[0].clone()),
        VmAction::RemoveGenericInitiator(RemoveGenericInitiator::default()),
        VmAction::Acpi,
        VmAction::HostDevices,
        VmAction::TopologyMirror(tessera_api::types::TopologyMirror::default()),
    ];
    let routed: BTreeSet<String> = routes().map(|(_, p)| p).collect();
    let acted: BTreeSet<String> = all.iter().map(|a| format!("/api/v1{}", path(a))).collect();
    assert_eq!(acted.len(), all.len());
    let served_locally: BTreeSet<String> = routed.difference(&acted).cloned().collect();
    // The document itself, and the Cloud Hypervisor endpoints Tessera answers 501.
    let d = doc();
    let mut local = BTreeSet::from(["/api/v1/openapi.json".to_owned()]);
    for path in d["paths"].as_object().unwrap().keys() {
        if d["paths"][path]["put"]["responses"].get("501").is_some() {
            local.insert(format!("/api/v1{path}"));
        }
    }
    assert_eq!(served_locally, local);
    assert!(acted.is_subset(&routed));
}
