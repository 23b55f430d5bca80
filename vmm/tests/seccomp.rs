//! Seccomp on the real `tessera` binary, on this host's /dev/kvm: for each thread role, a
//! syscall outside its filter kills tessera with SIGSYS under `--seccomp true` (after a
//! line naming the role and the syscall), and is only logged under `--seccomp log`
//! (tessera lives on, and the kernel's audit log names the thread and the syscall when
//! the kernel log is readable). The trigger is the hidden test hook
//! `--seccomp-selftest ROLE`: once that role's thread is filtered, it makes `getppid`,
//! which no filter allows.
//!
//! Every role's thread runs without a booted guest: the API thread and the control loop
//! start with tessera, and a boot on this host's paravirtual KVM gets as far as starting
//! the vCPU and serial-input threads (the guest itself gets nowhere, which is not needed).
//! That every thread is filtered while real guests run is checked by the nested host's
//! tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tessera_tests::linux_judge::images;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
/// x86_64's getppid, the self-test's syscall.
const GETPPID: i64 = 110;

/// Starts tessera so that `role`'s thread exists: with `--api-socket` for the API thread,
/// else booting the judge's kernel with the serial port on stdin/stdout.
fn start(role: &str, mode: &str, dir: &std::path::Path) -> Child {
    let mut cmd = Command::new(TESSERA);
    cmd.args(["--seccomp", mode, "--seccomp-selftest", role]);
    if role == "api" {
        cmd.arg("--api-socket").arg(dir.join("api.sock"));
    } else {
        let judge = images().unwrap();
        cmd.arg("--kernel")
            .arg(&judge.vmlinuz)
            .arg("--initramfs")
            .arg(&judge.initramfs)
            .args(["--cmdline", "console=ttyS0", "--serial", "tty"]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Standard error's lines as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to 60 s for a line containing `want`; returns every line read so far.
fn wait_for(rx: &mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(want);
                seen.push(line);
                if found {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tessera did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fatal_under_true(role: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start(role, "true", dir.path());
    let rx = lines(&mut child);
    let status = wait_exit(&mut child);
    let stderr: Vec<String> = rx.try_iter().collect();
    let stderr = stderr.join("\n");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{role}: tessera must die of SIGSYS, got {status:?}:\n{stderr}"
    );
    let report = format!("tessera: seccomp: the {role} thread made syscall {GETPPID}, ");
    assert!(stderr.contains(&report), "{role}: no report:\n{stderr}");
    assert!(!stderr.contains("survived"), "{stderr}");
}

/// The kernel log's audit records of SECCOMP_RET_LOG for `pid`, if the log is readable.
fn audit_records(pid: u32) -> Option<Vec<String>> {
    let out = Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| l.contains("type=1326") && l.contains(&format!(" pid={pid} ")))
            .map(str::to_owned)
            .collect(),
    )
}

fn logged_under_log(role: &str, thread_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start(role, "log", dir.path());
    let pid = child.id();
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    let survived = format!("the {role} thread survived syscall {GETPPID} (--seccomp log)");
    let found = wait_for(&rx, &survived, &mut seen);
    // Still running: SIGTERM ends it cleanly, through the signal handler under the filters.
    let alive = child.try_wait().unwrap().is_none();
    unsafe_free_kill(pid, libc::SIGTERM);
    let status = wait_exit(&mut child);
    seen.extend(rx.try_iter());
    let stderr = seen.join("\n");
    assert!(found, "{role}: the self-test did not survive:\n{stderr}");
    assert!(
        alive,
        "{role}: tessera ended by itself: {status:?}\n{stderr}"
    );
    assert_eq!(status.code(), Some(0), "{role}: {status:?}\n{stderr}");
    if let Some(records) = audit_records(pid) {
        // Audit may be rate-limited or off; when it printed anything for this process,
        // the self-test's syscall is there, named with its thread.
        if !records.is_empty() {
            // Nothing else this run did was outside its thread's filter.
            let others: Vec<&String> = records
                .iter()
                .filter(|r| !r.contains(&format!("syscall={GETPPID} ")))
                .collect();
            assert!(
                others.is_empty(),
                "{role}: syscalls outside the filters: {others:#?}"
            );
            assert!(
                records
                    .iter()
                    .any(|r| r.contains(&format!("syscall={GETPPID} "))
                        && r.contains(&format!("comm=\"{thread_name}"))),
                "{role}: {records:#?}"
            );
        }
    }
}

/// `kill(pid, sig)` through the `kill` command, keeping this test free of unsafe code.
fn unsafe_free_kill(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_forbidden_syscall_on_the_control_loop_kills_tessera() {
    fatal_under_true("control");
}

#[test]
fn a_forbidden_syscall_on_the_api_thread_kills_tessera() {
    fatal_under_true("api");
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_kills_tessera() {
    fatal_under_true("vcpu");
}

#[test]
fn a_forbidden_syscall_on_the_serial_input_thread_kills_tessera() {
    fatal_under_true("serial-input");
}

#[test]
fn under_log_a_forbidden_syscall_on_the_control_loop_is_logged() {
    logged_under_log("control", "tessera");
}

#[test]
fn under_log_a_forbidden_syscall_on_the_api_thread_is_logged() {
    logged_under_log("api", "api");
}

#[test]
fn under_log_a_forbidden_syscall_on_a_vcpu_is_logged() {
    logged_under_log("vcpu", "vcpu");
}

#[test]
fn under_log_a_forbidden_syscall_on_the_serial_input_thread_is_logged() {
    logged_under_log("serial-input", "serial-input");
}

#[test]
fn under_false_nothing_is_filtered() {
    // The hook's syscall is then allowed: no report, no death; SIGTERM ends tessera.
    let dir = tempfile::tempdir().unwrap();
    let mut child = start("api", "false", dir.path());
    let rx = lines(&mut child);
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none());
    unsafe_free_kill(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child);
    let stderr: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert!(!stderr.iter().any(|l| l.contains("seccomp")), "{stderr:?}");
}
