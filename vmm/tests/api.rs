//! The HTTP API of the real `tessera` binary over its real Unix socket, driven with
//! curl: the VM lifecycle and every state error, configuration edits before boot and
//! their refusal after it, vm.acpi showing the GI entries an orchestrator asked for,
//! socket handling, signals, and many clients at once.
//!
//! Every answer is held to `api/openapi.json` (its status is documented for the
//! request, and its body has the documented shape), and every request is made in every
//! state of the VM, against the state table of `docs/api.md`. Reads see the writes
//! answered before them, on the same connection or another.
//!
//! Runs on this host: a booted guest here runs on a paravirtual KVM that cannot get far
//! into Linux, which is enough for the API's state machine (guest-visible results are
//! judged in the nested host tests).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_api::error::ERROR_FIELD_HEADER;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

struct Tessera {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tessera {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with these options besides `--api-socket`.
    fn start_with(args: &[&std::ffi::OsStr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let child = spawn(&socket, args);
        wait_for(&socket);
        Tessera {
            child,
            socket,
            _dir: dir,
        }
    }

    /// One request; its answer must be one `openapi.json` documents.
    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let (status, text, _) = self.call(method, path, body);
        (status, text)
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String, Option<String>) {
        let (status, text, field) = curl_with_field(&self.socket, method, path, body);
        assert_documented(method, path, status, &text);
        (status, text, field)
    }

    /// The answer as JSON; an error as `{"error": message, "field": header}`, the two
    /// things a client takes from it (the body is Cloud Hypervisor's error chain).
    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text, field) = self.call(method, path, body);
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status < 400 {
            return (status, value);
        }
        let chain: Vec<String> = serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("{method} {path}: error body {text:?}: {e}"));
        assert_eq!(chain.len(), 1, "{text}");
        (
            status,
            serde_json::json!({"error": chain[0], "field": field}),
        )
    }

    fn wait(mut self) -> (i32, bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.socket.exists());
            }
            assert!(Instant::now() < deadline, "tessera did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tessera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(socket: &Path, args: &[&std::ffi::OsStr]) -> Child {
    Command::new(TESSERA)
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn curl(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (status, text, _) = curl_with_field(socket, method, path, body);
    (status, text)
}

/// [`curl`], with the error's field header.
fn curl_with_field(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, Option<String>) {
    let mut cmd = Command::new("curl");
    let format = format!("\n%{{http_code}} %header{{{ERROR_FIELD_HEADER}}}");
    cmd.args(["-s", "-w", &format, "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost/api/v1/{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .output()
        .expect("curl is needed (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, field) = trailer.split_once(' ').unwrap_or((trailer, ""));
    let field = (!field.is_empty()).then(|| field.to_owned());
    (code.trim().parse().unwrap_or(0), body.to_string(), field)
}

/// `openapi.json`, which every answer is held to.
fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(tessera_api::server::openapi_json()).unwrap())
}

/// The schema `schema` names: through a `$ref`, or an `allOf` of one `$ref` (the form a
/// nullable reference takes, since OpenAPI 3.0 ignores keys beside `$ref`).
fn resolve(schema: &Value) -> &Value {
    let schema = match schema.get("allOf").and_then(Value::as_array) {
        Some(one) if one.len() == 1 && one[0].get("$ref").is_some() => &one[0],
        _ => schema,
    };
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => openapi()
            .pointer(r.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

/// Panics unless `value` has the shape of `schema`: the types, the required properties,
/// no property the schema does not allow.
fn assert_conforms(schema: &Value, value: &Value, at: &str) {
    let s = resolve(schema);
    if value.is_null() {
        assert!(
            s["nullable"] == true || schema["nullable"] == true,
            "{at}: null"
        );
        return;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let map = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object"));
            let props = s.get("properties").and_then(Value::as_object);
            for name in s["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                assert!(map.contains_key(name), "{at}: no `{name}`");
            }
            for (k, v) in map {
                let at = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), &s["additionalProperties"]) {
                    (Some(p), _) => assert_conforms(p, v, &at),
                    (None, Value::Bool(false)) => panic!("{at}: not a documented property"),
                    (None, extra) if extra.is_object() => assert_conforms(extra, v, &at),
                    (None, _) => {}
                }
            }
        }
        Some("array") => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"));
            for (i, v) in items.iter().enumerate() {
                assert_conforms(&s["items"], v, &format!("{at}[{i}]"));
            }
        }
        Some("string") => {
            assert!(value.is_string(), "{at}: not a string");
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                assert!(e.contains(value), "{at}: {value} is not one of {e:?}");
            }
        }
        Some("integer") => assert!(value.is_i64() || value.is_u64(), "{at}: not an integer"),
        Some("number") => assert!(value.is_number(), "{at}: not a number"),
        Some("boolean") => assert!(value.is_boolean(), "{at}: not a boolean"),
        Some(other) => panic!("{at}: schema type {other}"),
        None => {}
    }
}

/// Panics unless `openapi.json` documents this answer to `method path`: its status is
/// one of the request's responses, a response without content has no body, and a body
/// has the documented schema's shape. A method or path that is no endpoint is the
/// router's business (404, 405), not the document's.
fn assert_documented(method: &str, path: &str, status: u16, body: &str) {
    let path = format!("/{}", path.split('?').next().unwrap_or_default());
    let Some(op) = openapi()["paths"]
        .get(&path)
        .and_then(|p| p.get(method.to_lowercase()))
    else {
        return;
    };
    let what = format!("{method} {path} answered {status} {body:?}");
    let response = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{what}: openapi.json does not document {status} here"));
    match resolve(response).pointer("/content/application~1json/schema") {
        None => assert!(body.is_empty(), "{what}: documented without a body"),
        Some(schema) => {
            let value: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{what}: documented as JSON: {e}"));
            assert_conforms(schema, &value, &what);
        }
    }
}

fn kernel() -> String {
    tessera_tests::linux_judge::images()
        .unwrap()
        .vmlinuz
        .display()
        .to_string()
}

fn vm_config() -> String {
    format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
           "memory": {{"size": 0, "zones": [{{"id": "m0", "size": 134217728}}, {{"id": "m1", "size": 134217728}}]}},
           "payload": {{"kernel": "{}", "cmdline": "console=ttyS0"}},
           "serial": {{"mode": "Null"}},
           "numa": [{{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]}},
                    {{"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]}}]}}"#,
        kernel()
    )
}

#[test]
fn the_vm_lifecycle_and_its_errors() {
    let t = Tessera::start();
    let (status, ping) = t.json("GET", "vmm.ping", None);
    assert_eq!(status, 200);
    assert_eq!(ping["pid"], t.child.id());
    assert_eq!(t.api("GET", "vm.info", None).0, 404);
    assert_eq!(t.api("PUT", "vm.boot", None).0, 404);

    assert_eq!(t.api("PUT", "vm.create", Some(&vm_config())).0, 204);
    assert_eq!(t.api("PUT", "vm.create", Some(&vm_config())).0, 409);

    // Two devices, ten nodes, sixteen GI links, before boot. A cold add is a 204, as
    // in Cloud Hypervisor; vm.info tells where each device landed.
    for (id, bdf) in [("gpu0", "0000:00:01.0"), ("gpu1", "0000:00:02.0")] {
        let body = format!(
            r#"{{"path": "/sys/bus/pci/devices/0000:41:00.{}", "id": "{id}"}}"#,
            &id[3..]
        );
        assert_eq!(
            t.api("PUT", "vm.add-device", Some(&body)),
            (204, String::new())
        );
        let (_, info) = t.json("GET", "vm.info", None);
        let placed = info["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {info}"));
        assert_eq!(placed["bdf"], bdf, "{info}");
    }
    let (status, dup) = t.json(
        "PUT",
        "vm.add-device",
        Some(r#"{"path": "/x", "id": "gpu0"}"#),
    );
    assert_eq!((status, dup["field"].as_str()), (409, Some("id")));
    for node in 2..10 {
        let body = format!(r#"{{"guest_numa_id": {node}}}"#);
        assert_eq!(t.api("PUT", "vm.add-numa-node", Some(&body)).0, 204);
    }
    assert_eq!(
        t.api("PUT", "vm.add-numa-node", Some(r#"{"guest_numa_id": 3}"#))
            .0,
        409
    );
    for body in [
        r#"{"id": "mig0", "device": "gpu0", "node": 2}"#,
        r#"{"device": "gpu0", "nodes": "3-5"}"#,
        r#"{"device": "gpu1", "nodes": "6-9"}"#,
        r#"{"device": "_host_bridge", "nodes": "2-9"}"#,
    ] {
        assert_eq!(
            t.api("PUT", "vm.add-generic-initiator", Some(body)).0,
            204,
            "{body}"
        );
    }
    let (status, e) = t.json(
        "PUT",
        "vm.add-generic-initiator",
        Some(r#"{"device": "gpu9", "node": 2}"#),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("device")), "{e}");
    let (status, e) = t.json(
        "PUT",
        "vm.add-generic-initiator",
        Some(r#"{"device": "gpu0", "node": 42}"#),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("node")), "{e}");
    let (status, e) = t.json(
        "PUT",
        "vm.add-generic-initiator",
        Some(r#"{"device": "gpu0", "node": 2}"#),
    );
    assert_eq!(status, 400, "a repeated device:node link: {e}");

    // What the guest will be told: 16 GI entries with the devices' BDFs.
    let (status, acpi) = t.json("GET", "vm.acpi", None);
    assert_eq!(status, 200);
    let gi = acpi["srat"]["generic_initiators"].as_array().unwrap();
    assert_eq!(gi.len(), 16);
    let count = |bdf: &str| gi.iter().filter(|g| g["bdf"] == bdf).count();
    assert_eq!(
        (
            count("0000:00:01.0"),
            count("0000:00:02.0"),
            count("0000:00:00.0")
        ),
        (4, 4, 8)
    );
    let sigs: Vec<&str> = acpi["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["signature"].as_str().unwrap())
        .collect();
    assert!(
        sigs.contains(&"SRAT") && sigs.contains(&"SLIT") && sigs.contains(&"DSDT"),
        "{sigs:?}"
    );
    let (_, info) = t.json("GET", "vm.info", None);
    assert_eq!(info["state"], "Created");
    let gpu0 = info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "gpu0")
        .unwrap();
    assert_eq!(
        gpu0["generic_initiator_nodes"],
        serde_json::json!([2, 3, 4, 5])
    );

    // The devices do not exist on this host: boot names the first one, touching nothing.
    let (status, e) = t.json("PUT", "vm.boot", None);
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("devices[0].path")),
        "{e}"
    );
    assert!(
        e["error"].as_str().unwrap().contains("does not exist"),
        "{e}"
    );
    assert_eq!(
        t.api("PUT", "vm.remove-device", Some(r#"{"id": "gpu0"}"#))
            .0,
        409
    );
    assert_eq!(
        t.api(
            "PUT",
            "vm.remove-generic-initiator",
            Some(r#"{"device": "gpu0", "nodes": "2-5"}"#)
        )
        .0,
        204
    );
    assert_eq!(
        t.api(
            "PUT",
            "vm.remove-generic-initiator",
            Some(r#"{"device": "gpu1", "nodes": "6-9"}"#)
        )
        .0,
        204
    );
    for id in ["gpu0", "gpu1"] {
        let body = format!(r#"{{"id": "{id}"}}"#);
        assert_eq!(t.api("PUT", "vm.remove-device", Some(&body)).0, 204);
    }
    assert_eq!(
        t.api("PUT", "vm.remove-device", Some(r#"{"id": "gpu0"}"#))
            .0,
        404
    );

    // Booted: the SRAT is fixed.
    assert_eq!(t.api("PUT", "vm.boot", None).0, 204);
    assert_eq!(t.api("PUT", "vm.boot", None).0, 409);
    let (status, e) = t.json("PUT", "vm.add-numa-node", Some(r#"{"guest_numa_id": 10}"#));
    assert_eq!(status, 409);
    assert!(e["error"].as_str().unwrap().contains("SRAT"), "{e}");
    assert_eq!(
        t.api(
            "PUT",
            "vm.add-generic-initiator",
            Some(r#"{"device": "_host_bridge", "node": 1}"#)
        )
        .0,
        409
    );
    let (status, counters) = t.json("GET", "vm.counters", None);
    assert_eq!(status, 200);
    assert!(counters["vcpu1"]["io_exits"].is_u64(), "{counters}");

    assert_eq!(t.api("PUT", "vm.resume", None).0, 409);
    assert_eq!(t.api("PUT", "vm.pause", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Paused");
    assert_eq!(t.api("PUT", "vm.pause", None).0, 409);
    assert_eq!(t.api("PUT", "vm.power-button", None).0, 409);
    assert_eq!(t.api("PUT", "vm.resume", None).0, 204);
    assert_eq!(t.api("PUT", "vm.power-button", None).0, 204);
    assert_eq!(t.api("PUT", "vm.reboot", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Running");

    assert_eq!(t.api("PUT", "vm.shutdown", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Shutdown");
    assert_eq!(t.api("PUT", "vm.shutdown", None).0, 409);
    assert_eq!(t.api("GET", "vm.counters", None).0, 409);
    assert_eq!(
        t.api("PUT", "vm.boot", None).0,
        204,
        "a shut-down VM boots again"
    );
    assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
    assert_eq!(t.api("GET", "vm.info", None).0, 404);

    assert_eq!(t.api("PUT", "vmm.shutdown", None).0, 204);
    let (code, socket_left) = t.wait();
    assert_eq!((code, socket_left), (0, false));
}

#[test]
fn sigterm_during_requests_stops_cleanly() {
    let t = Tessera::start();
    assert_eq!(t.api("PUT", "vm.create", Some(&vm_config())).0, 204);
    assert_eq!(t.api("PUT", "vm.boot", None).0, 204);
    let socket = t.socket.clone();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let s = socket.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    curl(&s, "GET", "vm.info", None);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let pid = i32::try_from(t.child.id()).unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let (code, socket_left) = t.wait();
    assert_eq!(
        (code, socket_left),
        (0, false),
        "exit status, socket file left"
    );
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let first = Tessera::start();
    let out = Command::new(TESSERA)
        .arg("--api-socket")
        .arg(&first.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&first.socket.display().to_string()) && err.contains("listening"),
        "{err}"
    );
    assert_eq!(
        first.api("GET", "vmm.ping", None).0,
        200,
        "the first VMM still answers"
    );

    // A VMM killed outright leaves its socket behind; the next one replaces it.
    let socket = first.socket.clone();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists());
    let mut second = spawn(&socket, &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&socket, "GET", "vmm.ping", None).0, 200);
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn sixty_four_concurrent_clients() {
    let t = Tessera::start();
    let socket = t.socket.clone();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let s = socket.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| curl(&s, "GET", "vmm.ping", None).0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for th in threads {
        assert!(th.join().unwrap().iter().all(|&s| s == 200));
    }
}

/// Issue 12's load case: a thousand connections held open and idle, and clients that send
/// their request a byte at a time, must not stop `vmm.ping` being answered, nor a
/// `vm.shutdown`, nor `vmm.shutdown` ending tessera with 0 (idle connections are dropped
/// after the grace period).
#[test]
fn idle_connections_and_slow_clients_do_not_stop_the_api() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    // This test holds over a thousand sockets itself.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read a plain struct.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(8192);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let t = Tessera::start();
    let (status, _) = t.api("PUT", "vm.create", Some(&vm_config()));
    assert_eq!(status, 204);
    let idle: Vec<UnixStream> = (0..1000)
        .map(|i| UnixStream::connect(&t.socket).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let socket = t.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(socket).unwrap();
                for b in b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n".iter() {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    for _ in 0..20 {
        assert_eq!(t.api("GET", "vmm.ping", None).0, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A VM that is created but not booted: vm.shutdown is answered (409, as in the state
    // table), not stalled.
    let (status, body) = t.api("PUT", "vm.shutdown", None);
    assert_eq!(status, 409, "{body}");
    for th in slow {
        th.join().unwrap();
    }
    assert_eq!(t.api("PUT", "vmm.shutdown", None).0, 204);
    assert_eq!(t.wait(), (0, false));
    drop(idle);
}

#[test]
fn bad_requests_to_the_real_binary() {
    let t = Tessera::start();
    // Malformed JSON, a Cloud Hypervisor device Tessera lacks, an unknown field, a wrong
    // type: 400 naming it.
    let (status, e) = t.json("PUT", "vm.create", Some("{\"payload\": "));
    assert_eq!(status, 400, "{e}");
    let (status, e) = t.json(
        "PUT",
        "vm.create",
        Some(r#"{"payload": {"kernel": "/k"}, "disks": [{"path": "/disk.img"}]}"#),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("disks")), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("no virtio-block"),
        "{e}"
    );
    let (status, e) = t.json(
        "PUT",
        "vm.create",
        Some(r#"{"payload": {"kernel": "/k"}, "disk": []}"#),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("disk")), "{e}");
    let (status, e) = t.json(
        "PUT",
        "vm.create",
        Some(r#"{"payload": {}, "cpus": {"boot_vcpus": "two", "max_vcpus": 2}}"#),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("cpus.boot_vcpus")),
        "{e}"
    );
    // Over the 1 MiB body limit.
    let big = format!(
        "{{\"payload\": {{\"cmdline\": \"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), big).unwrap();
    let (status, _) = t.api(
        "PUT",
        "vm.create",
        Some(&format!("@{}", file.path().display())),
    );
    assert_eq!(status, 413);
    // Wrong method, unknown path.
    assert_eq!(t.api("GET", "vm.boot", None).0, 405);
    assert_eq!(t.api("PUT", "vm.info", None).0, 405);
    let (status, e) = t.json("GET", "vm.snapshots", None);
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().is_some());
    // A Cloud Hypervisor feature Tessera lacks.
    let (status, e) = t.json("PUT", "vm.snapshot", Some("{}"));
    assert_eq!(status, 501, "{e}");
    assert!(e["error"].as_str().unwrap().contains("snapshots"), "{e}");
    // Still serving after all that.
    assert_eq!(t.api("GET", "vmm.ping", None).0, 200);
}

/// A configuration Cloud Hypervisor wrote (`tests/fixtures/cloud-hypervisor/`), with this
/// host's kernel for CH's placeholder.
fn ch_fixture(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/cloud-hypervisor/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["payload"]["kernel"] = Value::String(kernel());
    v
}

/// Every leaf of `ch` is in `ours` with the same value.
fn assert_contains(ch: &Value, ours: &Value, at: &str) {
    match (ch, ours) {
        (Value::Object(c), Value::Object(o)) => {
            for (k, v) in c {
                let at = format!("{at}.{k}");
                assert_contains(v, o.get(k).unwrap_or_else(|| panic!("{at}: missing")), &at);
            }
        }
        (Value::Array(c), Value::Array(o)) => {
            assert_eq!(c.len(), o.len(), "{at}");
            for (i, (c, o)) in c.iter().zip(o).enumerate() {
                assert_contains(c, o, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(ch, ours, "{at}"),
    }
}

#[test]
fn chs_own_configurations_round_trip_through_vm_info() {
    let t = Tessera::start();
    for name in ["minimal.json", "rich.json", "honoured.json"] {
        let ch = ch_fixture(name);
        let (status, text) = t.api("PUT", "vm.create", Some(&ch.to_string()));
        assert_eq!(status, 204, "{name}: {text}");
        let (_, info) = t.json("GET", "vm.info", None);
        // Every field CH wrote, at CH's value; and CH's VmInfo keys.
        assert_contains(&ch, &info["config"], name);
        assert_eq!(info["memory_actual_size"], 512 << 20, "{name}");
        for (id, node) in info["device_tree"].as_object().unwrap() {
            assert_eq!(node["id"], *id);
            let listed = info["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == *id)
                .unwrap();
            assert_eq!(node["pci_bdf"], listed["bdf"], "{name}: {id}");
        }
        // vm.info's config, given back to vm.create, makes the same VM.
        assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
        let again = info["config"].to_string();
        assert_eq!(t.api("PUT", "vm.create", Some(&again)).0, 204, "{name}");
        let (_, info2) = t.json("GET", "vm.info", None);
        assert_eq!(info2, info, "{name}");
        assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
    }
    // ch-remote's add-device body, and a CH field Tessera refuses, named.
    assert_eq!(
        t.api(
            "PUT",
            "vm.create",
            Some(&ch_fixture("minimal.json").to_string())
        )
        .0,
        204
    );
    let body = r#"{"id":"d0","pci_segment":0,"path":"/sys/bus/pci/devices/0000:41:00.0","x_exclude_mmap_bars":[]}"#;
    assert_eq!(t.api("PUT", "vm.add-device", Some(body)).0, 204);
    let (status, e) = t.json(
        "PUT",
        "vm.add-device",
        Some(r#"{"id":"d1","path":"/sys/bus/pci/devices/0000:42:00.0","iommu":true}"#),
    );
    // Named within the request's body, as add-device's other refusals are.
    assert_eq!((status, e["field"].as_str()), (400, Some("iommu")), "{e}");
    assert!(e["error"].as_str().unwrap().contains("virtio-iommu"), "{e}");
    assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
    let mut refused = ch_fixture("minimal.json");
    refused["cpus"]["kvm_hyperv"] = Value::Bool(true);
    let (status, e) = t.json("PUT", "vm.create", Some(&refused.to_string()));
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("cpus.kvm_hyperv")),
        "{e}"
    );
}

#[test]
fn acpi_checksums_and_link_removal_keep_their_promises() {
    use base64::Engine as _;
    let t = Tessera::start();
    assert_eq!(t.api("PUT", "vm.create", Some(&vm_config())).0, 204);
    for n in 2..6 {
        assert_eq!(
            t.api(
                "PUT",
                "vm.add-numa-node",
                Some(&format!(r#"{{"guest_numa_id": {n}}}"#))
            )
            .0,
            204
        );
    }
    // Every table's reported checksum is its own checksum byte, and the bytes sum to 0.
    let (_, acpi) = t.json("GET", "vm.acpi", None);
    for table in acpi["tables"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(table["base64"].as_str().unwrap())
            .unwrap();
        let (at, summed) = if table["signature"] == "RSDP" {
            (8, &bytes[..20])
        } else {
            (9, &bytes[..])
        };
        assert_eq!(table["checksum"], bytes[at], "{}", table["signature"]);
        assert_eq!(
            summed.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "{}",
            table["signature"]
        );
        assert_eq!(table["length"], bytes.len());
    }

    // Removing some of a device's links keeps the untouched entries and their ids.
    assert_eq!(
        t.api(
            "PUT",
            "vm.add-generic-initiator",
            Some(r#"{"id": "a", "device": "_host_bridge", "node": 2}"#)
        )
        .0,
        204
    );
    assert_eq!(
        t.api(
            "PUT",
            "vm.add-generic-initiator",
            Some(r#"{"device": "_host_bridge", "nodes": "3-5"}"#)
        )
        .0,
        204
    );
    assert_eq!(
        t.api(
            "PUT",
            "vm.remove-generic-initiator",
            Some(r#"{"device": "_host_bridge", "node": 4}"#)
        )
        .0,
        204
    );
    let (_, info) = t.json("GET", "vm.info", None);
    assert_eq!(
        info["devices"][0]["generic_initiator_nodes"],
        serde_json::json!([2, 3, 5])
    );
    assert_eq!(
        t.api("PUT", "vm.remove-generic-initiator", Some(r#"{"id": "a"}"#))
            .0,
        204,
        "the id survived"
    );
    // Nothing to remove is a 404, whichever way it is asked.
    let (status, e) = t.json("PUT", "vm.remove-generic-initiator", Some(r#"{"id": "a"}"#));
    assert_eq!((status, e["field"].as_str()), (404, Some("id")));
    let (status, e) = t.json(
        "PUT",
        "vm.remove-generic-initiator",
        Some(r#"{"device": "_host_bridge", "nodes": "4"}"#),
    );
    assert_eq!((status, e["field"].as_str()), (404, Some("nodes")));
}

/// Two CPU nodes with memory, a memory-only node 2 and a GI node 3 on a GI-ready slot,
/// with `hmat` values; `extra` is spliced into the `hmat` list.
fn hmat_config(extra: &str) -> String {
    format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
           "memory": {{"size": 0, "zones": [{{"id": "m0", "size": 134217728}}, {{"id": "m1", "size": 134217728}},
                                          {{"id": "m2", "size": 134217728}}]}},
           "payload": {{"kernel": "{}", "cmdline": "console=ttyS0"}},
           "serial": {{"mode": "Null"}},
           "platform": {{"num_pci_segments": 2}},
           "pci_slots": [{{"id": "gpu0", "pci_segment": 1, "pci_device_id": 0}}],
           "numa": [{{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]}},
                    {{"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]}},
                    {{"guest_numa_id": 2, "memory_zones": ["m2"]}},
                    {{"guest_numa_id": 3}}],
           "generic_initiators": [{{"device": "gpu0", "node": 3}}],
           "hmat": [{{"initiator": 0, "target": 0, "hierarchy": "memory", "data_type": "read_latency", "latency": 10}},
                    {{"initiator": 3, "target": 2, "hierarchy": "memory", "data_type": "read_latency", "latency": 5}},
                    {{"initiator": 1, "target": 2, "hierarchy": "memory", "data_type": "read_bandwidth",
                      "bandwidth": 21474836480}}{extra}]}}"#,
        kernel()
    )
}

#[test]
fn hmat_from_the_config_is_in_vm_acpi_and_bad_values_are_named() {
    let t = Tessera::start();
    assert_eq!(t.api("PUT", "vm.create", Some(&hmat_config(""))).0, 204);
    let (status, acpi) = t.json("GET", "vm.acpi", None);
    assert_eq!(status, 200);
    let hmat = &acpi["hmat"];
    // CPU nodes with memory name themselves as attached initiator; node 2 has none.
    assert_eq!(
        hmat["memory_domains"],
        serde_json::json!([{"node": 0, "initiator": 0}, {"node": 1, "initiator": 1}])
    );
    let mut values: Vec<(String, u64, u64, u64)> = hmat["localities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["value"].as_u64() != Some(0))
        .map(|l| {
            (
                l["data_type"].as_str().unwrap().to_owned(),
                l["initiator"].as_u64().unwrap(),
                l["target"].as_u64().unwrap(),
                l["value"].as_u64().unwrap(),
            )
        })
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            ("read_bandwidth".to_owned(), 1, 2, 20480),
            ("read_latency".to_owned(), 0, 0, 10),
            ("read_latency".to_owned(), 3, 2, 5),
        ],
        "{hmat}"
    );

    // Memory-side caches in front of node 2 (QEMU's hmat-cache), decoded as given.
    let t2 = Tessera::start();
    let mut with_caches: Value = serde_json::from_str(&hmat_config("")).unwrap();
    with_caches["hmat_caches"] = serde_json::json!([
        {"node": 2, "size": 16777216, "level": 1, "associativity": "direct", "policy": "write_back", "line": 64},
        {"node": 2, "size": 67108864, "level": 2, "policy": "write_through"}
    ]);
    let body = with_caches.to_string();
    assert_eq!(t2.api("PUT", "vm.create", Some(&body)).0, 204);
    let (_, acpi) = t2.json("GET", "vm.acpi", None);
    assert_eq!(
        acpi["hmat"]["caches"],
        serde_json::json!([
            {"node": 2, "size": 16777216, "level": 1, "total_levels": 2,
             "associativity": "direct", "policy": "write_back", "line": 64},
            {"node": 2, "size": 67108864, "level": 2, "total_levels": 2,
             "associativity": "none", "policy": "write_through", "line": 0}
        ])
    );
    // A cache on a node without memory is refused by its field.
    with_caches["hmat_caches"][1]["node"] = 3.into();
    assert_eq!(t2.api("PUT", "vm.delete", None).0, 204);
    let (status, e) = t2.json("PUT", "vm.create", Some(&with_caches.to_string()));
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("hmat_caches[1].node")),
        "{e}"
    );
    drop(t2);

    // Each refusal names the entry's field, and leaves the created VM as it was.
    for (extra, field, says) in [
        (
            r#"{"initiator": 2, "target": 0, "hierarchy": "memory", "data_type": "read_latency", "latency": 7}"#,
            "hmat[3].initiator",
            "neither CPUs nor Generic Initiators",
        ),
        (
            r#"{"initiator": 0, "target": 3, "hierarchy": "memory", "data_type": "read_latency", "latency": 7}"#,
            "hmat[3].target",
            "has no memory",
        ),
        (
            r#"{"initiator": 0, "target": 9, "hierarchy": "memory", "data_type": "read_latency", "latency": 7}"#,
            "hmat[3].target",
            "9",
        ),
        (
            r#"{"initiator": 0, "target": 0, "hierarchy": "memory", "data_type": "read_latency", "latency": 7}"#,
            "hmat[3].data_type",
            "already given by hmat[0]",
        ),
        (
            r#"{"initiator": 0, "target": 0, "hierarchy": "memory", "data_type": "access_latency", "bandwidth": 1048576}"#,
            "hmat[3].bandwidth",
            "takes `latency`",
        ),
        (
            r#"{"initiator": 0, "target": 0, "hierarchy": "second_level", "data_type": "access_latency", "latency": 1}"#,
            "hmat[3].hierarchy",
            "only `memory`",
        ),
        (
            r#"{"initiator": 0, "target": 1, "hierarchy": "memory", "data_type": "read_latency", "latency": 70000000}"#,
            "hmat",
            "cannot be encoded",
        ),
    ] {
        let t = Tessera::start();
        let (status, e) = t.json(
            "PUT",
            "vm.create",
            Some(&hmat_config(&format!(", {extra}"))),
        );
        assert_eq!(status, 400, "{extra}: {e}");
        assert_eq!(e["field"].as_str(), Some(field), "{extra}: {e}");
        assert!(
            e.to_string().contains(says),
            "{extra}: {e} should say {says}"
        );
        assert_eq!(t.api("GET", "vm.info", None).0, 404, "{extra}: no VM");
    }
}

#[test]
fn the_api_socket_in_cloud_hypervisors_path_form() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ch.sock");
    let mut child = Command::new(TESSERA)
        .arg(format!("--api-socket=path={}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&socket);
    let (status, _) = curl(&socket, "GET", "vmm.ping", None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[test]
fn an_inherited_api_socket_must_be_an_open_socket() {
    let out = Command::new(TESSERA)
        .args(["--api-socket", "fd=99"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd=99: no such open descriptor"));
    let out = Command::new(TESSERA)
        .args(["--api-socket", "fd=0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
}

/// A keep-alive HTTP/1.1 connection to the API, spoken by hand, so that a test controls
/// which connection each request goes on.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> Self {
        let writer = UnixStream::connect(socket).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    /// One request and its answer, or why there was none (the connection closed).
    fn try_call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let body = body.unwrap_or_default();
        write!(
            self.writer,
            "{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line: {line:?}"))?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut text = vec![0; length];
        self.reader
            .read_exact(&mut text)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(text).unwrap();
        assert_documented(method, path, status, &text);
        Ok((status, text))
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_call(method, path, body).unwrap()
    }

    fn info(&mut self) -> Value {
        let (status, text) = self.call("GET", "vm.info", None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

#[test]
fn reads_see_every_write_answered_before_them() {
    let t = Tessera::start();
    // One connection only reads, another only writes: a read that follows a write's
    // answer sees the write, whichever connection it comes on.
    let mut reader = Conn::open(&t.socket);
    let mut writer = Conn::open(&t.socket);
    assert_eq!(reader.call("GET", "vm.info", None).0, 404);
    assert_eq!(writer.call("PUT", "vm.create", Some(&vm_config())).0, 204);
    assert_eq!(reader.info()["state"], "Created");
    for node in 2..34 {
        let body = format!(r#"{{"guest_numa_id": {node}}}"#);
        assert_eq!(writer.call("PUT", "vm.add-numa-node", Some(&body)).0, 204);
        let info = reader.info();
        let numa = info["config"]["numa"].as_array().unwrap();
        assert_eq!(numa.last().unwrap()["guest_numa_id"], node, "{info}");
        // And on the writer's own connection, and a new one.
        assert_eq!(writer.info(), info);
        assert_eq!(
            serde_json::from_str::<Value>(&t.api("GET", "vm.info", None).1).unwrap(),
            info
        );
    }
    for (request, state) in [
        ("vm.boot", "Running"),
        ("vm.pause", "Paused"),
        ("vm.resume", "Running"),
        ("vm.reboot", "Running"),
        ("vm.shutdown", "Shutdown"),
        ("vm.boot", "Running"),
    ] {
        assert_eq!(writer.call("PUT", request, None).0, 204, "{request}");
        assert_eq!(reader.info()["state"], state, "after {request}");
    }
    assert_eq!(writer.call("PUT", "vm.delete", None).0, 204);
    assert_eq!(reader.call("GET", "vm.info", None).0, 404);

    // Many writers at once, each reading its own writes on a second connection while
    // the others write.
    assert_eq!(writer.call("PUT", "vm.create", Some(&vm_config())).0, 204);
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let socket = t.socket.clone();
            std::thread::spawn(move || {
                let (mut put, mut get) = (Conn::open(&socket), Conn::open(&socket));
                let id = format!("dev{i}");
                let has = |info: &Value| {
                    info["devices"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|d| d["id"] == id.as_str())
                };
                for _ in 0..25 {
                    let body = format!(r#"{{"path": "/sys/bus/pci/devices/{id}", "id": "{id}"}}"#);
                    assert_eq!(put.call("PUT", "vm.add-device", Some(&body)).0, 204);
                    assert!(has(&get.info()), "{id} added");
                    let body = format!(r#"{{"id": "{id}"}}"#);
                    assert_eq!(put.call("PUT", "vm.remove-device", Some(&body)).0, 204);
                    assert!(!has(&get.info()), "{id} removed");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    // Once vmm.shutdown has answered, no read is answered from the VM it stopped.
    assert_eq!(writer.call("PUT", "vm.boot", None).0, 204);
    assert_eq!(reader.info()["state"], "Running");
    assert_eq!(writer.call("PUT", "vmm.shutdown", None).0, 204);
    for path in ["vm.info", "vmm.ping"] {
        match reader.try_call("GET", path, None) {
            Ok((status, text)) => assert_eq!(status, 503, "{path}: {text}"),
            Err(_closed) => break,
        }
    }
    assert_eq!(t.wait(), (0, false));
}

/// The VM's states, in the order of the columns of `docs/api.md`'s state table.
const STATES: [&str; 5] = ["NotCreated", "Created", "Running", "Paused", "Shutdown"];

/// `docs/api.md`'s table of answers by request and state: (request, status per state).
/// A request may be a pattern ending in `*` (`vm.add-*`).
fn docs_state_table() -> Vec<(String, [u16; 5])> {
    let page = include_str!("../../docs/api.md");
    let header = format!("| request | {} |", STATES.join(" | "));
    let mut lines = page.lines().skip_while(|l| *l != header).skip(2);
    let mut rows = Vec::new();
    for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let statuses: Vec<u16> = cells[1..]
            .iter()
            .map(|c| {
                c.parse()
                    .unwrap_or_else(|_| panic!("{line}: {c} is no status"))
            })
            .collect();
        let statuses: [u16; 5] = statuses.try_into().unwrap();
        for name in cells[0].split('`').skip(1).step_by(2) {
            rows.push((name.to_owned(), statuses));
        }
    }
    assert!(rows.len() > 10, "docs/api.md has no state table: {header}");
    rows
}

#[test]
fn every_request_in_every_state_is_answered_as_documented() {
    let t = Tessera::start();
    let table = docs_state_table();
    let expected = |name: &str| {
        table
            .iter()
            .find(|(n, _)| match n.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => n == name,
            })
            .map(|(_, s)| *s)
    };
    // Nodes 0 to 3, 2 and 3 without CPUs or memory, and a GI link to node 2: every edit
    // below is valid when edits are allowed.
    let config = format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
           "memory": {{"size": 0, "zones": [{{"id": "m0", "size": 134217728}}, {{"id": "m1", "size": 134217728}}]}},
           "payload": {{"kernel": "{}", "cmdline": "console=ttyS0"}},
           "serial": {{"mode": "Null"}},
           "numa": [{{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]}},
                    {{"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]}},
                    {{"guest_numa_id": 2}}, {{"guest_numa_id": 3}}],
           "generic_initiators": [{{"id": "gi0", "device": "_host_bridge", "node": 2}}]}}"#,
        kernel()
    );
    let body = |name: &str| -> Option<String> {
        Some(match name {
            "vm.create" => config.clone(),
            "vm.add-device" => {
                r#"{"path": "/sys/bus/pci/devices/0000:41:00.1", "id": "gpu1"}"#.into()
            }
            "vm.remove-device" => r#"{"id": "gpu0"}"#.into(),
            "vm.add-numa-node" => r#"{"guest_numa_id": 4}"#.into(),
            "vm.remove-numa-node" => r#"{"guest_numa_id": 3}"#.into(),
            "vm.add-generic-initiator" => r#"{"device": "_host_bridge", "node": 3}"#.into(),
            "vm.remove-generic-initiator" => r#"{"id": "gi0"}"#.into(),
            "vmm.topology-mirror" => r#"{"devices": ["0000:fe:1f.7"]}"#.into(),
            _ => return None,
        })
    };
    let mut checked = 0;
    for (column, state) in STATES.iter().enumerate() {
        for (method, path) in tessera_api::server::routes() {
            let name = path.strip_prefix("/api/v1/").unwrap().to_owned();
            if name == "vmm.shutdown" {
                continue; // last, below
            }
            // Into the state, from scratch.
            assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
            if *state != "NotCreated" {
                assert_eq!(t.api("PUT", "vm.create", Some(&config)).0, 204);
            }
            let steps: &[&str] = match *state {
                "Running" => &["vm.boot"],
                "Paused" => &["vm.boot", "vm.pause"],
                "Shutdown" => &["vm.boot", "vm.shutdown"],
                _ => &[],
            };
            for step in steps {
                assert_eq!(t.api("PUT", step, None).0, 204, "{state}: {step}");
            }
            if name == "vm.remove-device" && matches!(*state, "Created" | "Shutdown") {
                let device = r#"{"path": "/sys/bus/pci/devices/0000:41:00.0", "id": "gpu0"}"#;
                assert_eq!(t.api("PUT", "vm.add-device", Some(device)).0, 204);
            }
            // `api` holds the answer to openapi.json; the table gives its status.
            let (status, text) = t.api(method, &name, body(&name).as_deref());
            // A hotplug's success (200/204) needs a VFIO device and a guest that ejects:
            // hotplug_in_nested_host.rs has both. Here the request must reach the hotplug
            // path (not be refused for the state) and fail on the device alone.
            // A mirror's 200 needs a host with NUMA nodes and a device VFIO can take:
            // host_devices_from_a_fake_sysfs and topology_in_nested_host.rs have them. Here
            // the request must be answered in every state, and refused for the device alone:
            // a well-formed request about a device the host lacks is a 404.
            if name == "vmm.topology-mirror" {
                assert_eq!(expected(&name).map(|s| s[column]), Some(200), "{name}");
                assert_eq!(status, 404, "{name} in {state}: {text}");
                assert!(
                    text.contains("the host has no PCI device 0000:fe:1f.7"),
                    "{text}"
                );
                checked += 1;
                continue;
            }
            if *state == "Running" && matches!(name.as_str(), "vm.add-device" | "vm.remove-device")
            {
                let (want, refusal) = match name.as_str() {
                    "vm.add-device" => (200, (400, "does not exist")),
                    _ => (204, (404, "no device has id `gpu0`")),
                };
                assert_eq!(expected(&name).map(|s| s[column]), Some(want), "{name}");
                assert_eq!(status, refusal.0, "{name} in Running: {text}");
                assert!(text.contains(refusal.1), "{name} in Running: {text}");
                checked += 1;
                continue;
            }
            match expected(&name) {
                Some(statuses) => {
                    assert_eq!(
                        status, statuses[column],
                        "{method} {name} in {state}: {text}"
                    );
                    checked += 1;
                }
                None => assert!(
                    matches!(name.as_str(), "vmm.ping" | "openapi.json"),
                    "docs/api.md's state table has no row for {name}"
                ),
            }
        }
    }
    assert!(checked >= 5 * 16, "{checked}");
    assert_eq!(t.api("PUT", "vmm.shutdown", None).0, 204);
    assert_eq!(t.wait(), (0, false));
}

/// Devices configured without an id get `_vfioN` (N their place in the configuration),
/// written into the configuration when they come in: vm.info shows it, and removing a
/// device renames no other.
#[test]
fn generated_device_ids_are_written_back_and_stable() {
    let t = Tessera::start();
    let config: Value = serde_json::from_str(&vm_config()).unwrap();
    let mut config = config;
    config["devices"] = serde_json::json!([
        {"path": "/sys/bus/pci/devices/0000:41:00.0"},
        {"path": "/sys/bus/pci/devices/0000:41:00.1", "id": "gpu1"},
    ]);
    assert_eq!(t.api("PUT", "vm.create", Some(&config.to_string())).0, 204);
    let body = r#"{"path": "/sys/bus/pci/devices/0000:41:00.2"}"#;
    assert_eq!(t.api("PUT", "vm.add-device", Some(body)).0, 204);
    let ids = |t: &Tessera| {
        let (_, info) = t.json("GET", "vm.info", None);
        let from_config: Vec<Value> = info["config"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect();
        let placed: Vec<(Value, Value)> = info["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].clone(), d["bdf"].clone()))
            .collect();
        (from_config, placed)
    };
    let (from_config, placed) = ids(&t);
    assert_eq!(from_config, ["_vfio0", "gpu1", "_vfio2"]);
    assert_eq!(
        placed,
        [
            ("_host_bridge", "0000:00:00.0"),
            ("_vfio0", "0000:00:01.0"),
            ("gpu1", "0000:00:02.0"),
            ("_vfio2", "0000:00:03.0"),
        ]
        .map(|(i, b)| (Value::from(i), Value::from(b)))
    );
    let body = r#"{"id": "_vfio0"}"#;
    assert_eq!(t.api("PUT", "vm.remove-device", Some(body)).0, 204);
    let (from_config, _) = ids(&t);
    assert_eq!(from_config, ["gpu1", "_vfio2"]);
}

/// A fake sysfs tree, laid out as the kernel lays it out (device directories, and the
/// bus, class and group entries as symlinks to them).
struct FakeSysfs {
    dir: tempfile::TempDir,
}

impl FakeSysfs {
    fn new() -> Self {
        FakeSysfs {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The fake `/` (`--host-root`).
    fn host(&self) -> &Path {
        self.dir.path()
    }

    /// Its `sys/`, which the helpers fill.
    fn root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn file(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    fn link(&self, rel: &str, target_rel: &str) {
        let p = self.root().join(rel);
        let target = self.root().join(target_rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    fn pci(&self, bdf: &str, ids: [&str; 3], driver: Option<&str>, numa: i32, group: u32) {
        let dev = format!("devices/pci0000:00/{bdf}");
        for (name, value) in ["vendor", "device", "class"].iter().zip(ids) {
            self.file(&format!("{dev}/{name}"), &format!("0x{value}"));
        }
        self.file(&format!("{dev}/numa_node"), &numa.to_string());
        self.link(&format!("bus/pci/devices/{bdf}"), &dev);
        if let Some(d) = driver {
            self.link(&format!("{dev}/driver"), &format!("bus/pci/drivers/{d}"));
        }
        self.link(
            &format!("{dev}/iommu_group"),
            &format!("kernel/iommu_groups/{group}"),
        );
        self.link(&format!("kernel/iommu_groups/{group}/devices/{bdf}"), &dev);
    }
}

/// `vmm.host-devices` through the real binary, pointed at a fake host with the hidden
/// `--host-root`: an NVMe with no driver on no NUMA node, a NIC function whose sibling
/// on its kernel driver blocks their group, an NVIDIA VF, the mtty sample parent with
/// an instance, and two host nodes. The same answer in every VM state that does not
/// need a guest to get into (the state table test covers the others with the real
/// `/sys`).
#[test]
fn host_devices_from_a_fake_sysfs() {
    let fake = FakeSysfs::new();
    fake.pci("0000:00:03.0", ["1b36", "0010", "010802"], None, -1, 4);
    fake.pci(
        "0000:03:00.0",
        ["8086", "1521", "020000"],
        Some("vfio-pci"),
        0,
        9,
    );
    fake.pci(
        "0000:03:00.1",
        ["8086", "1521", "020000"],
        Some("igb"),
        0,
        9,
    );
    fake.pci(
        "0000:41:00.4",
        ["10de", "2335", "030200"],
        Some("nvidia"),
        1,
        61,
    );
    let vf = "devices/pci0000:00/0000:41:00.4/nvidia";
    fake.file(
        &format!("{vf}/creatable_vgpu_types"),
        "1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C",
    );
    fake.file(&format!("{vf}/current_vgpu_type"), "0");
    let mtty = "devices/virtual/mtty/mtty";
    let t = format!("{mtty}/mdev_supported_types/mtty-2");
    fake.file(&format!("{t}/name"), "Dual-port-serial");
    fake.file(&format!("{t}/description"), "Two ports");
    fake.file(&format!("{t}/device_api"), "vfio-pci");
    fake.file(&format!("{t}/available_instances"), "11");
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";
    fake.link(&format!("{t}/devices/{uuid}"), &format!("{mtty}/{uuid}"));
    fake.link("class/mdev_bus/mtty", mtty);
    for (id, cpus, distance) in [(0, "0-1", "10 21"), (1, "", "21 10")] {
        let n = format!("devices/system/node/node{id}");
        fake.file(&format!("{n}/cpulist"), cpus);
        fake.file(
            &format!("{n}/meminfo"),
            &format!("Node {id} MemTotal:       1048576 kB"),
        );
        fake.file(&format!("{n}/distance"), distance);
    }

    let t = Tessera::start_with(&["--host-root".as_ref(), fake.host().as_os_str()]);
    let expected = |t: &Tessera| {
        let (status, host) = t.json("GET", "vmm.host-devices", None);
        assert_eq!(status, 200, "{host}");
        host
    };
    let host = expected(&t);
    let devices = host["pci_devices"].as_array().unwrap();
    let bdfs: Vec<&str> = devices.iter().map(|d| d["bdf"].as_str().unwrap()).collect();
    assert_eq!(
        bdfs,
        [
            "0000:00:03.0",
            "0000:03:00.0",
            "0000:03:00.1",
            "0000:41:00.4"
        ]
    );
    let nvme = &devices[0];
    assert_eq!(
        (&nvme["vendor"], &nvme["device"], &nvme["class"]),
        (
            &Value::from("1b36"),
            &Value::from("0010"),
            &Value::from("010802")
        )
    );
    assert_eq!(nvme["driver"], Value::Null);
    assert_eq!(nvme["numa_node"], Value::Null, "numa_node -1 is null");
    assert_eq!(nvme["iommu_group"]["id"], 4);
    assert_eq!(nvme["iommu_group"]["viable"], true);
    assert_eq!(nvme["mdev_types"], Value::Null);
    let nic = &devices[1];
    assert_eq!(nic["iommu_group"]["viable"], false);
    assert_eq!(
        nic["iommu_group"]["blocking"],
        serde_json::json!(["0000:03:00.1"])
    );
    assert_eq!(
        nic["iommu_group"]["members"],
        serde_json::json!([
            {"name": "0000:03:00.0", "driver": "vfio-pci"},
            {"name": "0000:03:00.1", "driver": "igb"},
        ])
    );
    let vgpu = &devices[3]["nvidia_vgpu"];
    assert_eq!(
        vgpu["creatable_types"],
        serde_json::json!([
            {"id": 1428, "name": "NVIDIA H200X-141C"},
            {"id": 1414, "name": "NVIDIA H200X-1-18C"},
        ])
    );
    assert_eq!(vgpu["current_type"], 0);
    assert_eq!(devices[3]["numa_node"], 1);
    assert_eq!(
        host["mdev_parents"],
        serde_json::json!([{"name": "mtty", "types": [{
            "id": "mtty-2", "name": "Dual-port-serial", "description": "Two ports",
            "device_api": "vfio-pci", "available_instances": 11, "instances": [uuid],
        }]}])
    );
    assert_eq!(
        host["numa_nodes"],
        serde_json::json!([
            {"id": 0, "cpus": "0-1", "memory_bytes": 1u64 << 30, "distances": [10, 21]},
            {"id": 1, "cpus": "", "memory_bytes": 1u64 << 30, "distances": [21, 10]},
        ])
    );
    // The same with a VM created, and after it is deleted.
    assert_eq!(t.api("PUT", "vm.create", Some(&vm_config())).0, 204);
    assert_eq!(expected(&t), host);
    assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
    assert_eq!(expected(&t), host);
    // The host changes under the VMM: the next answer sees it.
    std::fs::remove_file(fake.root().join("bus/pci/devices/0000:03:00.1")).unwrap();
    assert_eq!(expected(&t)["pci_devices"].as_array().unwrap().len(), 3);

    // vmm.topology-mirror around the vGPU VF (on node 1, which has memory and no CPUs;
    // managed, since it is on nvidia): node 0 for the CPUs, node 1, and the GPU's eight
    // GI nodes; vm.create takes the answer as it is.
    let request = format!(
        r#"{{"devices": ["0000:41:00.4"], "managed": true, "payload": {{"kernel": "{}"}}}}"#,
        kernel()
    );
    let (status, config) = t.json("PUT", "vmm.topology-mirror", Some(&request));
    assert_eq!(status, 200, "{config}");
    let numa = config["numa"].as_array().unwrap();
    assert_eq!(numa.len(), 10, "{config:#}");
    assert_eq!(numa[0]["cpus"], serde_json::json!([0]));
    assert_eq!(
        numa[1]["distances"][0],
        serde_json::json!({"destination": 0, "distance": 21})
    );
    assert_eq!(
        config["generic_initiators"],
        serde_json::json!([{"device": "dev0", "nodes": "2-9"}])
    );
    assert_eq!(
        config["cpus"]["affinity"],
        serde_json::json!([{"vcpu": 0, "host_cpus": [0, 1]}])
    );
    assert_eq!(config["devices"][0]["managed"], true);
    assert_eq!(
        t.api("PUT", "vm.create", Some(&config.to_string())).0,
        204,
        "{config}"
    );
    assert_eq!(t.api("PUT", "vm.delete", None).0, 204);
    // A device numa_node -1 on a host of two nodes, by the request's field: the device
    // exists but cannot be placed, a 409.
    let (status, text) = t.api(
        "PUT",
        "vmm.topology-mirror",
        Some(r#"{"devices": ["0000:41:00.4", "00:03.0"], "managed": true}"#),
    );
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("devices[1]: the host's firmware puts 0000:00:03.0 on no NUMA node"),
        "{text}"
    );
    // The other refusals by whose fault they are: the host lacks it (404), has it but
    // cannot give it (409: another driver, unmanaged), or the request is malformed (400).
    for (request, want, message) in [
        (
            r#"{"devices": ["41:00.4"], "managed": true, "host_nodes": [7]}"#,
            404,
            "host_nodes[0]: the host has no NUMA node 7",
        ),
        (
            r#"{"devices": ["41:00.4"]}"#,
            409,
            "devices[0]: 0000:41:00.4 is bound to nvidia",
        ),
        (
            r#"{"devices": ["fe:00.0", "fe:00.0"]}"#,
            400,
            "devices[1]: 0000:fe:00.0 is already devices[0]",
        ),
        (
            r#"{"devices": ["41:00.4"], "managed": true, "memory_per_node": 1048576}"#,
            400,
            "memory_per_node: 1048576 bytes is not a positive multiple of 2 MiB",
        ),
    ] {
        let (status, text) = t.api("PUT", "vmm.topology-mirror", Some(request));
        assert_eq!(status, want, "{request}: {text}");
        assert!(text.contains(message), "{request}: {text}");
    }
}

/// Without a PCI bus (or any sysfs) the answer is empty lists, not an error.
#[test]
fn host_devices_without_sysfs_is_empty() {
    let empty = tempfile::tempdir().unwrap();
    let t = Tessera::start_with(&["--host-root".as_ref(), empty.path().as_os_str()]);
    let (status, host) = t.json("GET", "vmm.host-devices", None);
    assert_eq!(status, 200);
    assert_eq!(
        host,
        serde_json::json!({"pci_devices": [], "mdev_parents": [], "numa_nodes": []})
    );
}

/// A VM whose node 2 is BAR 2 of the device at `path` (a fake sysfs directory), with a
/// GI link from the device to that node.
fn device_memory_config(path: &Path) -> String {
    format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}},
           "memory": {{"size": 0, "zones": [{{"id": "m0", "size": 134217728}}, {{"id": "m1", "size": 134217728}}]}},
           "payload": {{"kernel": "{}", "cmdline": "console=ttyS0"}},
           "serial": {{"mode": "Null"}},
           "devices": [{{"id": "ivs0", "path": "{}"}}],
           "numa": [{{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]}},
                    {{"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]}},
                    {{"guest_numa_id": 2}}],
           "generic_initiators": [{{"device": "ivs0", "node": 2}}],
           "device_memory": [{{"device": "ivs0", "bar": 2, "node": 2}}]}}"#,
        kernel(),
        path.display()
    )
}

/// A PCI function's sysfs `resource` file: BAR 0 256 bytes, BAR 2 `bar2` bytes of 64-bit
/// memory (BAR 3 its upper half).
fn fake_function(dir: &Path, bar2: u64) {
    let line = |start: u64, size: u64, flags: u64| {
        let end = if size == 0 { 0 } else { start + size - 1 };
        format!("{start:#018x} {end:#018x} {flags:#018x}\n")
    };
    let text = [
        line(0xfea0_0000, 0x100, 0x40200),
        line(0, 0, 0),
        line(0x8_0000_0000, bar2, 0x14220c),
        line(0, 0, 0),
        line(0, 0, 0),
        line(0, 0, 0),
        line(0, 0, 0),
    ]
    .concat();
    std::fs::write(dir.join("resource"), text).unwrap();
}

#[test]
fn device_memory_is_in_vm_info_and_vm_acpi_and_its_device_stays() {
    let sysfs = tempfile::tempdir().unwrap();
    fake_function(sysfs.path(), 256 << 20);
    let t = Tessera::start();
    let config = device_memory_config(sysfs.path());
    assert_eq!(t.api("PUT", "vm.create", Some(&config)).0, 204);
    let (status, info) = t.json("GET", "vm.info", None);
    assert_eq!(status, 200);
    assert_eq!(
        info["device_memory"],
        serde_json::json!([{"device": "ivs0", "bar": 2, "node": 2,
                            "guest_address": 1u64 << 32, "size": 256u64 << 20}])
    );
    // Guest RAM is the zones'; the device's memory is listed apart.
    assert_eq!(info["memory_actual_size"], 256u64 << 20);
    let (_, acpi) = t.json("GET", "vm.acpi", None);
    let memory: Vec<&Value> = acpi["srat"]["memory"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["node"] == 2)
        .collect();
    assert_eq!(memory.len(), 1, "{acpi}");
    assert_eq!(
        (
            &memory[0]["base"],
            &memory[0]["size"],
            &memory[0]["hotpluggable"]
        ),
        (
            &Value::from(1u64 << 32),
            &Value::from(256u64 << 20),
            &Value::Bool(true)
        ),
        "{acpi}"
    );
    let distances = &acpi["slit"]["distances"];
    assert_eq!(distances[0][2], 40, "{acpi}");
    assert_eq!(distances[2][1], 40, "{acpi}");

    // Its device cannot go while the entry names it.
    let (status, e) = t.json("PUT", "vm.remove-device", Some(r#"{"id": "ivs0"}"#));
    assert_eq!((status, e["field"].as_str()), (409, Some("id")), "{e}");
    assert!(e.to_string().contains("device_memory[0]"), "{e}");

    // Refusals name the entry, before anything is created.
    let small = tempfile::tempdir().unwrap();
    fake_function(small.path(), 64 << 20);
    let cases = [
        (
            device_memory_config(small.path()),
            "device_memory[0].bar",
            "not a multiple of 128 MiB",
        ),
        (
            config.replace(r#""bar": 2"#, r#""bar": 3"#),
            "device_memory[0].bar",
            "no BAR 3",
        ),
        (
            config.replace(r#""bar": 2"#, r#""bar": 0"#),
            "device_memory[0].bar",
            "not a multiple",
        ),
        (
            config.replace(r#""node": 2}]}"#, r#""node": 1}]}"#),
            "device_memory[0].node",
            "vCPUs or memory zones",
        ),
        (
            config.replace(r#""device": "ivs0", "bar""#, r#""device": "gpu9", "bar""#),
            "device_memory[0].device",
            "no device has id `gpu9`",
        ),
    ];
    for (body, field, says) in cases {
        let t = Tessera::start();
        let (status, e) = t.json("PUT", "vm.create", Some(&body));
        assert_eq!((status, e["field"].as_str()), (400, Some(field)), "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says}");
        assert_eq!(t.api("GET", "vm.info", None).0, 404, "no VM");
    }
}
