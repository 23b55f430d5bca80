//! The HTTP API of the real `tessera` binary over its real Unix socket, driven with
//! curl: the VM lifecycle and every state error, configuration edits before boot and
//! their refusal after it, vm.acpi showing the GI entries an orchestrator asked for,
//! socket handling, signals, and many clients at once.
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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

struct Tessera {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tessera {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let child = spawn(&socket);
        wait_for(&socket);
        Tessera {
            child,
            socket,
            _dir: dir,
        }
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        curl(&self.socket, method, path, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.api(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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

fn spawn(socket: &Path) -> Child {
    Command::new(TESSERA)
        .arg("--api-socket")
        .arg(socket)
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
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost/api/v1/{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .output()
        .expect("curl is needed (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
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

    // Two devices, ten nodes, sixteen GI links, before boot.
    for (id, bdf) in [("gpu0", "0000:00:01.0"), ("gpu1", "0000:00:02.0")] {
        let body = format!(
            r#"{{"path": "/sys/bus/pci/devices/0000:41:00.{}", "id": "{id}"}}"#,
            &id[3..]
        );
        let (status, placed) = t.json("PUT", "vm.add-device", Some(&body));
        assert_eq!(
            (status, placed["bdf"].as_str()),
            (200, Some(bdf)),
            "{placed}"
        );
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

    assert_eq!(t.api("PUT", "vm.resume", None).0, 405);
    assert_eq!(t.api("PUT", "vm.pause", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Paused");
    assert_eq!(t.api("PUT", "vm.pause", None).0, 405);
    assert_eq!(t.api("PUT", "vm.power-button", None).0, 405);
    assert_eq!(t.api("PUT", "vm.resume", None).0, 204);
    assert_eq!(t.api("PUT", "vm.power-button", None).0, 204);
    assert_eq!(t.api("PUT", "vm.reboot", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Running");

    assert_eq!(t.api("PUT", "vm.shutdown", None).0, 204);
    assert_eq!(t.json("GET", "vm.info", None).1["state"], "Shutdown");
    assert_eq!(t.api("PUT", "vm.shutdown", None).0, 405);
    assert_eq!(t.api("GET", "vm.counters", None).0, 405);
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
    let mut second = spawn(&socket);
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

#[test]
fn bad_requests_to_the_real_binary() {
    let t = Tessera::start();
    // Malformed JSON, an unknown (Cloud Hypervisor) field, a wrong type: 400 naming it.
    let (status, e) = t.json("PUT", "vm.create", Some("{\"payload\": "));
    assert_eq!(status, 400, "{e}");
    let (status, e) = t.json(
        "PUT",
        "vm.create",
        Some(r#"{"payload": {"kernel": "/k"}, "disks": []}"#),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("disks")), "{e}");
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
    let (status, e) = t.json("GET", "vm.snapshot", None);
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().is_some());
    // Still serving after all that.
    assert_eq!(t.api("GET", "vmm.ping", None).0, 200);
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
