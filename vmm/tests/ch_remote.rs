//! Cloud Hypervisor's own client, `ch-remote` (../shared/peers, `CH_REMOTE` or `PATH`;
//! see `tessera_tests::peers`), drives the real `tessera` binary over its real socket:
//! every lifecycle subcommand exits 0 and leaves the VM where Cloud Hypervisor's would,
//! an error comes back as CH's error chain (which ch-remote prints line by line), and the
//! subcommands for features Tessera lacks exit non-zero with Tessera's message naming the
//! feature.
//!
//! Runs on this host: a booted guest here runs on a paravirtual KVM that cannot get far
//! into Linux, which is enough for the lifecycle (the nested host tests boot CH configs
//! for real).

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

/// A `tessera --api-socket` process, killed if the test ends before it does.
struct Tessera {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Tessera {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let child = Command::new(TESSERA)
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Tessera { child, socket, dir }
    }

    /// `ch-remote --api-socket S ARGS`: exit status, stdout, stderr.
    fn ch_remote(&self, args: &[&str]) -> (i32, String, String) {
        let ch_remote = tessera_tests::peers::ch_remote().unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(ch_remote)
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A subcommand that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.ch_remote(args);
        assert_eq!(status, 0, "ch-remote {args:?}: {out}{err}");
        out
    }

    /// A subcommand that must fail; what ch-remote printed of the server's error.
    fn fails(&self, args: &[&str]) -> String {
        let (status, out, err) = self.ch_remote(args);
        assert_ne!(status, 0, "ch-remote {args:?} succeeded: {out}");
        assert!(
            !err.contains("Can't get remote's error messages"),
            "ch-remote could not decode the error body: {err}"
        );
        err
    }

    fn info(&self) -> Value {
        serde_json::from_str(&self.ok(&["info"])).unwrap()
    }

    fn state(&self) -> String {
        self.info()["state"].as_str().unwrap().to_owned()
    }

    fn wait(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
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

fn kernel() -> PathBuf {
    tessera_tests::linux_judge::images().unwrap().vmlinuz
}

/// A configuration as a Cloud Hypervisor user writes one for `ch-remote create`.
fn write_config(dir: &Path) -> PathBuf {
    let config = serde_json::json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 268435456},
        "payload": {"kernel": kernel(), "cmdline": "console=ttyS0"},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"}
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn ch_remote_drives_the_whole_lifecycle() {
    let t = Tessera::start();
    let ping: Value = serde_json::from_str(&t.ok(&["ping"])).unwrap();
    assert!(ping["version"].is_string(), "{ping}");
    assert!(t.fails(&["info"]).contains("no VM has been created"));

    let config = write_config(t.dir.path());
    t.ok(&["create", config.to_str().unwrap()]);
    let info = t.info();
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["memory_actual_size"], 268435456);

    // Cold add and remove, as ch-remote sends them (with `x_exclude_mmap_bars`).
    let device = "path=/sys/bus/pci/devices/0000:41:00.0,id=d0";
    t.ok(&["add-device", device]);
    let devices = t.info()["config"]["devices"].clone();
    assert_eq!(devices[0]["id"], "d0", "{devices}");
    assert!(
        t.fails(&["add-device", device]).contains("d0"),
        "a second d0 is refused naming it"
    );
    t.ok(&["remove-device", "d0"]);
    assert!(t.info()["config"]["devices"]
        .as_array()
        .is_none_or(|d| d.is_empty()));
    assert!(t.fails(&["remove-device", "d0"]).contains("d0"));

    // States: a refusal names the state, and the VM stays where it was.
    assert!(t.fails(&["pause"]).contains("not running"));
    t.ok(&["boot"]);
    assert_eq!(t.state(), "Running");
    let counters: Value = serde_json::from_str(&t.ok(&["counters"])).unwrap();
    assert!(counters.is_object(), "{counters}");
    t.ok(&["pause"]);
    assert_eq!(t.state(), "Paused");
    assert!(t.fails(&["pause"]).contains("not running"));
    t.ok(&["resume"]);
    assert_eq!(t.state(), "Running");
    t.ok(&["reboot"]);
    assert_eq!(t.state(), "Running");
    t.ok(&["power-button"]);
    t.ok(&["shutdown"]);
    assert_eq!(t.state(), "Shutdown");
    t.ok(&["delete"]);
    assert!(t.fails(&["info"]).contains("no VM has been created"));

    // A VM again, booted, then the VMM shut down under it: tessera exits 0 and takes its
    // socket with it.
    t.ok(&["create", config.to_str().unwrap()]);
    t.ok(&["boot"]);
    t.ok(&["shutdown-vmm"]);
    let socket = t.socket.clone();
    assert_eq!(t.wait(), 0);
    assert!(!socket.exists());
}

#[test]
fn ch_remote_prints_tessera_errors_as_its_own() {
    let t = Tessera::start();
    let dir = t.dir.path();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cpus": {"boot_vcpus": 0, "max_vcpus": 1}, "payload": {"kernel": "/k"}}"#,
    )
    .unwrap();
    let err = t.fails(&["create", bad.to_str().unwrap()]);
    // ch-remote prints the status, then each message of the chain.
    assert!(err.contains("Server responded with BadRequest"), "{err}");
    assert!(
        err.contains("cpus.boot_vcpus") && err.contains("must be at least 1"),
        "{err}"
    );
}

#[test]
fn ch_remote_subcommands_for_features_tessera_lacks_say_which() {
    let t = Tessera::start();
    let config = write_config(t.dir.path());
    t.ok(&["create", config.to_str().unwrap()]);
    for (args, feature) in [
        (&["add-disk", "path=/tmp/disk.img"][..], "virtio-block"),
        (&["add-net", "tap=tap0"], "virtio-net"),
        (&["add-fs", "tag=fs0,socket=/tmp/fs.sock"], "virtio-fs"),
        (&["add-pmem", "file=/tmp/pmem"], "virtio-pmem"),
        (&["add-vsock", "cid=3,socket=/tmp/vsock"], "virtio-vsock"),
        (&["add-vdpa", "path=/dev/vhost-vdpa-0"], "vDPA"),
        (&["add-user-device", "socket=/tmp/user.sock"], "vfio-user"),
        (
            &[
                "add-generic-vhost-user",
                "socket=/tmp/vu.sock,virtio_id=1,queue_sizes=[256]",
            ],
            "vhost-user",
        ),
        (&["resize", "--cpus", "2"], "resizing vCPUs or memory"),
        (
            &["resize-zone", "--id", "m0", "--size", "1G"],
            "memory zone",
        ),
        (
            &["resize-disk", "--disk", "d0", "--size", "1G"],
            "virtio-block",
        ),
        (&["snapshot", "file:///tmp/snapshot"], "snapshots"),
        (&["restore", "source_url=file:///tmp/snapshot"], "snapshots"),
        (&["coredump", "file:///tmp/core"], "core dumps"),
        (&["nmi"], "NMIs"),
        (
            &["send-migration", "destination_url=unix:/tmp/m"],
            "migration",
        ),
        (
            &["receive-migration", "receiver_url=unix:/tmp/m"],
            "migration",
        ),
    ] {
        let err = t.fails(args);
        assert!(
            err.contains("Server responded with NotImplemented") && err.contains(feature),
            "ch-remote {args:?}: {err}"
        );
    }
    // None of them touched the VM.
    assert_eq!(t.state(), "Created");
}
