//! The API held to its own contract by a judge no one here wrote: Schemathesis (the
//! version `scripts/setup.sh` pins, in its venv under the cache) generates requests from
//! `api/openapi.json`, schema-valid and not, sends them to the real `tessera` binary
//! and runs all its checks on the answers: no server error, documented statuses,
//! headers and bodies, schema-valid requests accepted and invalid ones refused.
//!
//! Schemathesis speaks TCP, so the test bridges a loopback port to the API socket.
//! `vmm.shutdown` is left out (it would end the server under the run; `api.rs` tests
//! it), and the Cloud Hypervisor endpoints Tessera lacks may answer their documented 501.
//! One run starts from an empty VMM, as a new user's would; another from a created VM,
//! for the lifecycle and the answers that need a VM.
//! The seed and case counts are fixed and one worker sends the requests in order, so a
//! run is repeatable. Everything lives in a temporary directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

/// Keep in step with `schemathesis_version` in `scripts/setup.sh`.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Hypothesis's seed and the most cases per operation and phase: enough to cover every
/// field of every body, few enough to run in well under a minute.
const SEED: u64 = 12;
const MAX_EXAMPLES: u32 = 200;

/// The `schemathesis` command of the venv `scripts/setup.sh` makes.
fn schemathesis() -> PathBuf {
    let cache = std::env::var_os("TESSERA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/tessera")
        });
    let bin = cache.join("schemathesis-venv/bin/schemathesis");
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", bin.display()));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(SCHEMATHESIS_VERSION),
        "{} is {version}, not {SCHEMATHESIS_VERSION}; run scripts/setup.sh",
        bin.display()
    );
    bin
}

/// `tessera --api-socket` in a temporary directory, killed when the test ends.
struct Tessera {
    child: Child,
    socket: PathBuf,
}

impl Tessera {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("api.sock");
        let child = Command::new(TESSERA)
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Tessera { child, socket }
    }
}

impl Drop for Tessera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies one direction of a bridged connection until its end, then passes the end on.
fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    close();
}

/// A loopback TCP port whose every connection is relayed to the API socket, by threads
/// of this test process (so nothing outlives the test). Returns the port.
fn bridge(socket: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(unix) = UnixStream::connect(&socket) else {
                continue;
            };
            let (tcp2, unix2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            let (tcp3, unix3) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || {
                pump(tcp, unix, move || {
                    let _ = unix3.shutdown(Shutdown::Write);
                })
            });
            std::thread::spawn(move || {
                pump(unix2, tcp2, move || {
                    let _ = tcp3.shutdown(Shutdown::Write);
                })
            });
        }
    });
    port
}

/// The operations whose documented answers include 501: Cloud Hypervisor endpoints for
/// features Tessera lacks, which answer so on purpose.
fn not_implemented(doc: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            if op["responses"].get("501").is_some() {
                paths.push(path.clone());
            }
        }
    }
    paths
}

/// Schemathesis's configuration: 501 is the expected answer of those operations (every
/// other check stays on for them).
fn config(doc: &Value) -> String {
    let mut toml = String::new();
    for path in not_implemented(doc) {
        toml.push_str(&format!(
            "[[operations]]\ninclude-path = \"{path}\"\n\
             checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"501\"]\n\n"
        ));
    }
    toml
}

/// One `schemathesis run` of `api/openapi.json` against `tessera` (through a bridge),
/// with `args` added; asserts that every case passed every check and that tessera is
/// still running, and returns the number of cases.
fn run(dir: &Path, tessera: &mut Tessera, args: &[&str]) -> u64 {
    let st = schemathesis();
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis_hooks.py");
    let doc: Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    let not_implemented = not_implemented(&doc);
    assert!(
        not_implemented.len() >= 10,
        "the CH endpoints Tessera lacks: {not_implemented:?}"
    );
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&doc)).unwrap();
    let port = bridge(tessera.socket.clone());

    let out = Command::new(&st)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(&doc_path)
        .args(["--url", &format!("http://127.0.0.1:{port}/api/v1")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // It would end the server under the run (api.rs tests it).
        .args(["--exclude-path", "/vmm.shutdown"])
        .args(["--seed", &SEED.to_string()])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        // Hypothesis's warning that it made data slowly judges the machine's load, not
        // the API: on a busy CI machine it would fail a run that found nothing.
        .args(["--suppress-health-check", "too_slow"])
        .args(args)
        // Hypothesis and Schemathesis write nothing outside the temporary directory.
        .current_dir(dir)
        .env("HOME", dir)
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The counts, for the log: "N generated, ..." and the closing line.
    for line in stdout
        .lines()
        .filter(|l| l.contains(" generated,") || (l.starts_with("===") && l.contains(" in ")))
    {
        println!(
            "schemathesis: {}",
            line.trim_matches(|c| c == '=' || c == ' ')
        );
    }
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // "  2116 generated, 2116 passed": every case passed every check.
    let (cases, passed) = stdout
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(" generated, ")?;
            let passed = rest.strip_suffix(" passed")?;
            Some((n.parse::<u64>().ok()?, passed.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no `N generated, N passed` in:\n{stdout}"));
    assert_eq!(cases, passed, "{stdout}");
    // The server outlived every request.
    assert!(
        tessera.child.try_wait().unwrap().is_none(),
        "tessera exited under the run"
    );
    cases
}

/// A request over the API socket; its status and body.
fn call(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Every operation, from an empty VMM, as a new user runs it: vm.create makes a VM
/// with the first request it accepts, and vm.delete removes it.
#[test]
fn every_operation_from_an_empty_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let mut tessera = Tessera::start(dir.path());
    let cases = run(dir.path(), &mut tessera, &[]);
    assert!(cases >= 1000, "only {cases} cases");
    println!("schemathesis: {cases} cases from an empty VMM, 0 failures");
}

/// The lifecycle and the reads with a VM that boots (the Linux judge's kernel): boot,
/// pause, resume, reboot, power button, shutdown, and vm.info, vm.acpi and vm.counters
/// answering in the states these leave. The edits (vm.add-*, vm.remove-*) and vm.delete
/// are left to the run from an empty VMM.
#[test]
fn the_lifecycle_and_reads_with_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let mut tessera = Tessera::start(dir.path());
    let kernel = tessera_tests::linux_judge::images().unwrap().vmlinuz;
    let config = serde_json::json!({
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "memory": {"size": 268435456},
        "serial": {"mode": "Null"}
    });
    let (status, body) = call(&tessera.socket, "PUT", "vm.create", &config.to_string());
    assert_eq!(status, 204, "{body}");
    let cases = run(
        dir.path(),
        &mut tessera,
        &[
            "--exclude-path-regex",
            r"^/vm\.(add|remove)-",
            "--exclude-path",
            "/vm.delete",
        ],
    );
    assert!(cases >= 100, "only {cases} cases");
    // The run booted the VM, so the lifecycle was answered in more than one state.
    let (status, info) = call(&tessera.socket, "GET", "vm.info", "");
    assert_eq!(status, 200, "{info}");
    let state: Value = serde_json::from_str(&info).unwrap();
    assert_ne!(state["state"], "Created", "{info}");
    println!("schemathesis: {cases} cases with a VM, 0 failures");
}
