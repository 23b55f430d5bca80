//! The Linux judge: boots Debian 12's cloud kernel under QEMU TCG with extra ACPI
//! tables and reports what Linux made of the NUMA topology (sysfs nodes, distances,
//! HMAT access classes, PCI device nodes, relevant dmesg lines).
//!
//! This module owns the QEMU invocation, the timeout, and the parser for the
//! `TESSERA-JUDGE-BEGIN`/`END` block printed by `scripts/judge-init.sh`; the guest
//! images themselves come from `scripts/guest-images.sh`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BEGIN: &str = "TESSERA-JUDGE-BEGIN";
const END: &str = "TESSERA-JUDGE-END";
const DEFAULT_TIMEOUT_SECS: u64 = 300;
const TAIL_LINES: usize = 60;
/// `earlyprintk` makes panics during early ACPI parsing (SRAT/SLIT run in
/// `setup_arch`, before the serial console exists) reach the captured output.
const KERNEL_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 loglevel=4";

/// Everything that can go wrong while building images, booting, or parsing.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// An I/O operation (spawning, reading, waiting) failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `scripts/guest-images.sh` failed or printed no judge directory.
    #[error("scripts/guest-images.sh failed ({status}):\n{output}")]
    Images {
        /// The script's exit status.
        status: String,
        /// The tail of its stderr.
        output: String,
    },
    /// The guest did not finish within the timeout and was killed.
    #[error("judge guest timed out after {secs}s and was killed; last output:\n{tail}")]
    Timeout {
        /// The timeout that expired.
        secs: u64,
        /// The last lines of console output.
        tail: String,
    },
    /// QEMU exited without a complete report block (kernel panic, bad arguments...).
    #[error("judge guest printed no complete TESSERA-JUDGE-BEGIN/END block (qemu {status}); last output:\n{tail}")]
    NoReport {
        /// QEMU's exit status.
        status: String,
        /// The last lines of console output and QEMU's stderr.
        tail: String,
    },
    /// A value in the report block could not be parsed.
    #[error("bad value for {key}: {value:?}")]
    BadValue {
        /// The key (or list kind) being parsed.
        key: String,
        /// The offending text.
        value: String,
    },
    /// The report block had a key this parser does not know.
    #[error("unknown key in judge report: {0:?}")]
    UnknownKey(String),
}

/// One judge VM: the machine shape plus our ACPI tables and extra QEMU arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JudgeVm {
    /// Number of vCPUs (`-smp`).
    pub cpus: u32,
    /// Guest RAM in MiB (`-m`).
    pub memory_mib: u64,
    /// ACPI table files, each passed as `-acpitable file=PATH`.
    pub acpi_tables: Vec<PathBuf>,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
}

/// Paths of the cached guest images made by `scripts/guest-images.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeImages {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The same kernel as an ELF vmlinux (extracted from the bzImage), for PVH boots.
    pub vmlinux: PathBuf,
    /// The busybox initramfs with `scripts/judge-init.sh` as `/init`.
    pub initramfs: PathBuf,
    /// The kernel's build configuration (`config-*` from the package).
    pub config: PathBuf,
}

impl JudgeImages {
    /// The value of `name` (e.g. `CONFIG_NUMA`) in the kernel config; `None` if unset.
    pub fn config_value(&self, name: &str) -> Result<Option<String>, JudgeError> {
        let text = std::fs::read_to_string(&self.config).map_err(|source| JudgeError::Io {
            context: format!("reading {}", self.config.display()),
            source,
        })?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string()))
    }
}

/// What the guest reported; node lists are sorted node numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// `/sys/devices/system/node/possible`.
    pub possible: Vec<u32>,
    /// `/sys/devices/system/node/online`.
    pub online: Vec<u32>,
    /// `/sys/devices/system/node/has_cpu`.
    pub has_cpu: Vec<u32>,
    /// `/sys/devices/system/node/has_memory`.
    pub has_memory: Vec<u32>,
    /// `/sys/devices/system/node/has_normal_memory`.
    pub has_normal_memory: Vec<u32>,
    /// `/sys/devices/system/node/has_generic_initiator`.
    pub has_generic_initiator: Vec<u32>,
    /// Every `/sys/devices/system/node/nodeN`, by N.
    pub nodes: BTreeMap<u32, GuestNode>,
    /// PCI device (`0000:00:03.0`) to its `numa_node` (-1 when none).
    pub pci_numa: BTreeMap<String, i32>,
    /// dmesg lines about SRAT/SLIT/HMAT/NUMA/nodes/ACPI, without the `dmesg: ` prefix.
    pub dmesg: Vec<String>,
    /// The full console output of the boot.
    pub raw: String,
}

/// One guest NUMA node as sysfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNode {
    /// CPUs of the node (`cpulist`).
    pub cpus: Vec<u32>,
    /// The node's row of the distance matrix, indexed by node order.
    pub distances: Vec<u32>,
    /// `MemTotal` of the node's meminfo, in kB.
    pub memtotal_kb: u64,
    /// The `access0` class (any initiator), if the kernel created it.
    pub access0: Option<Access>,
    /// The `access1` class (CPU initiators only), if the kernel created it.
    pub access1: Option<Access>,
    /// HMAT memory-side caches (`memory_side_cache/indexL`), by level.
    pub caches: BTreeMap<u32, MemorySideCache>,
}

/// One memory-side cache level of a node as sysfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySideCache {
    /// `size`, bytes.
    pub size: Option<u64>,
    /// `line_size`, bytes.
    pub line_size: Option<u64>,
    /// `indexing`: 0 direct-mapped, 1 indexed (complex), 2 other.
    pub indexing: Option<u64>,
    /// `write_policy`: 0 write-back, 1 write-through, 2 other.
    pub write_policy: Option<u64>,
}

/// One HMAT access class of a node (`nodeN/accessK`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Nodes listed under `initiators/`.
    pub initiators: Vec<u32>,
    /// Nodes listed under `targets/`.
    pub targets: Vec<u32>,
    /// `initiators/read_latency`, nanoseconds.
    pub read_latency: Option<u64>,
    /// `initiators/write_latency`, nanoseconds.
    pub write_latency: Option<u64>,
    /// `initiators/read_bandwidth`, MB/s.
    pub read_bandwidth: Option<u64>,
    /// `initiators/write_bandwidth`, MB/s.
    pub write_bandwidth: Option<u64>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JudgeError {
    let context = context.into();
    move |source| JudgeError::Io { context, source }
}

fn bad(key: &str, value: &str) -> JudgeError {
    JudgeError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

static IMAGES: Mutex<Option<JudgeImages>> = Mutex::new(None);

/// Builds (or finds cached) guest images; the script runs at most once per process
/// unless it fails.
pub fn images() -> Result<JudgeImages, JudgeError> {
    let mut cached = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(images) = cached.as_ref() {
        return Ok(images.clone());
    }
    let script = repo_root().join("scripts/guest-images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
    let dir = match (out.status.success(), dir) {
        (true, Some(dir)) => PathBuf::from(dir),
        _ => {
            return Err(JudgeError::Images {
                status: out.status.to_string(),
                output: tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
            })
        }
    };
    let images = JudgeImages {
        vmlinux: dir.join("vmlinux"),
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        config: dir.join("config"),
    };
    *cached = Some(images.clone());
    Ok(images)
}

fn timeout() -> Duration {
    let secs = std::env::var("TESSERA_JUDGE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stream {
            // A read error just ends the capture; what we got so far is kept.
            let _ = s.read_to_end(&mut buf);
        }
        buf
    })
}

/// Boots the judge VM and parses its report.
pub fn boot(vm: &JudgeVm) -> Result<GuestReport, JudgeError> {
    let images = images()?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &vm.cpus.to_string()])
        .args(["-m", &format!("{}M", vm.memory_mib)])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&images.vmlinuz)
        .arg("-initrd")
        .arg(&images.initramfs)
        .args(["-append", KERNEL_CMDLINE]);
    for table in &vm.acpi_tables {
        cmd.arg("-acpitable")
            .arg(format!("file={}", table.display()));
    }
    cmd.args(&vm.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err("spawning qemu-system-x86_64"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());

    let limit = timeout();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err("waiting for qemu"))? {
            break Some(status);
        }
        if start.elapsed() >= limit {
            child.kill().map_err(io_err("killing qemu"))?;
            child.wait().map_err(io_err("reaping qemu"))?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let raw = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    let Some(status) = status else {
        return Err(JudgeError::Timeout {
            secs: limit.as_secs(),
            tail: tail(&format!("{raw}\n{stderr}"), TAIL_LINES),
        });
    };
    match parse_report(&raw)? {
        Some(report) => Ok(report),
        None => Err(JudgeError::NoReport {
            status: status.to_string(),
            tail: tail(&format!("{raw}\n{stderr}"), TAIL_LINES),
        }),
    }
}

/// Parses a Linux list (`"0-3,5,7-8"`; `""` gives `[]`) into sorted numbers.
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, JudgeError> {
    let mut out = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| bad("cpulist", s));
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(bad("cpulist", s));
                }
                out.extend(lo..=hi);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, JudgeError> {
    value.trim().parse().map_err(|_| bad(key, value))
}

/// `node0,node2` (directory entry names) into sorted node numbers.
fn parse_node_names(key: &str, value: &str) -> Result<Vec<u32>, JudgeError> {
    let mut out = value
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.strip_prefix("node")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(key, value))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    out.sort_unstable();
    Ok(out)
}

fn set_access(access: &mut Access, key: &str, field: &str, value: &str) -> Result<(), JudgeError> {
    match field {
        "initiators" => access.initiators = parse_node_names(key, value)?,
        "targets" => access.targets = parse_node_names(key, value)?,
        "read_latency" => access.read_latency = Some(parse_num(key, value)?),
        "write_latency" => access.write_latency = Some(parse_num(key, value)?),
        "read_bandwidth" => access.read_bandwidth = Some(parse_num(key, value)?),
        "write_bandwidth" => access.write_bandwidth = Some(parse_num(key, value)?),
        _ => return Err(JudgeError::UnknownKey(key.to_string())),
    }
    Ok(())
}

fn set_node(node: &mut GuestNode, key: &str, field: &str, value: &str) -> Result<(), JudgeError> {
    match field {
        "cpulist" => node.cpus = parse_cpulist(value)?,
        "distance" => {
            node.distances = value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| parse_num(key, v))
                .collect::<Result<_, _>>()?;
        }
        "memtotal_kb" => node.memtotal_kb = parse_num(key, value)?,
        _ => {
            let (class, rest) = field
                .split_once('.')
                .ok_or_else(|| JudgeError::UnknownKey(key.to_string()))?;
            if let Some(level) = class.strip_prefix("cache") {
                let level: u32 = parse_num(key, level)?;
                let cache = node.caches.entry(level).or_default();
                let v = Some(parse_num(key, value)?);
                match rest {
                    "size" => cache.size = v,
                    "line_size" => cache.line_size = v,
                    "indexing" => cache.indexing = v,
                    "write_policy" => cache.write_policy = v,
                    _ => return Err(JudgeError::UnknownKey(key.to_string())),
                }
                return Ok(());
            }
            let slot = match class {
                "access0" => &mut node.access0,
                "access1" => &mut node.access1,
                _ => return Err(JudgeError::UnknownKey(key.to_string())),
            };
            set_access(slot.get_or_insert_with(Access::default), key, rest, value)?;
        }
    }
    Ok(())
}

fn set_key(report: &mut GuestReport, key: &str, value: &str) -> Result<(), JudgeError> {
    let list = match key {
        "possible" => &mut report.possible,
        "online" => &mut report.online,
        "has_cpu" => &mut report.has_cpu,
        "has_memory" => &mut report.has_memory,
        "has_normal_memory" => &mut report.has_normal_memory,
        "has_generic_initiator" => &mut report.has_generic_initiator,
        "pci" => {
            for entry in value.split(',').filter(|e| !e.is_empty()) {
                let (bdf, node) = entry.rsplit_once(':').ok_or_else(|| bad(key, entry))?;
                report
                    .pci_numa
                    .insert(bdf.to_string(), parse_num(key, node)?);
            }
            return Ok(());
        }
        _ => {
            let (node, field) = key
                .split_once('.')
                .ok_or_else(|| JudgeError::UnknownKey(key.to_string()))?;
            let n = node
                .strip_prefix("node")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| JudgeError::UnknownKey(key.to_string()))?;
            return set_node(report.nodes.entry(n).or_default(), key, field, value);
        }
    };
    *list = parse_cpulist(value)?;
    Ok(())
}

/// Parses console output; `Ok(None)` if it holds no complete report block.
///
/// Lines in the block without `=` (stray console noise) are skipped; unknown keys
/// and unparsable values are errors, so the init script and this parser stay in step.
pub fn parse_report(raw: &str) -> Result<Option<GuestReport>, JudgeError> {
    let mut lines = raw.split(['\n', '\r']).map(str::trim_end);
    if !lines.any(|l| l.ends_with(BEGIN)) {
        return Ok(None);
    }
    let mut report = GuestReport {
        raw: raw.to_string(),
        ..GuestReport::default()
    };
    for line in lines {
        if line.ends_with(END) {
            return Ok(Some(report));
        }
        if let Some(msg) = line.strip_prefix("dmesg: ") {
            report.dmesg.push(msg.to_string());
        } else if let Some((key, value)) = line.split_once('=') {
            set_key(&mut report, key.trim(), value.trim())?;
        }
    }
    Ok(None)
}

const DEVICES_BEGIN: &str = "TESSERA-DEVICES-BEGIN";
const DEVICES_END: &str = "TESSERA-DEVICES-END";

/// How a device-report field's value must look.
#[derive(Clone, Copy)]
enum FieldKind {
    /// Free text (a driver name, a tty list, a register value that may be an error).
    Text,
    /// A decimal number.
    Number,
    /// `ok` or `fail`.
    Verdict,
    /// Comma-separated decimal numbers, possibly none.
    Numbers,
}

/// The fields `scripts/judge-init.sh` prints for each device kind.
fn device_field(kind: &str, field: &str) -> Option<FieldKind> {
    use FieldKind::{Number, Numbers, Text, Verdict};
    Some(match (kind, field) {
        ("nvme", "driver" | "namespace") => Text,
        ("nvme", "rw") => Verdict,
        ("nvme", "msix_vectors" | "msix_interrupts") => Number,
        ("nvme", "msix_irqs") => Numbers,
        ("edu", "id") => Text,
        ("edu", "liveness") => Verdict,
        ("mtty", "tty") => Text,
        ("mtty", "loopback") => Verdict,
        _ => return None,
    })
}

/// What the guest could do with its PCI devices: the `TESSERA-DEVICES-BEGIN`/`END`
/// block `scripts/judge-init.sh` prints with `judge.devices=1` on the kernel command line.
///
/// Keys are `KIND.BDF.FIELD` (KIND `nvme`, `edu` or `mtty`; BDF as in sysfs,
/// `0000:00:03.0`) and `irq.BDF`:
///
/// | Key | Value |
/// |---|---|
/// | `nvme.BDF.driver` | driver bound to the controller (`nvme`), or `none` |
/// | `nvme.BDF.namespace` | its block device (`nvme0n1`), empty if none appeared |
/// | `nvme.BDF.rw` | `ok` if 1 MiB written, caches dropped, read back the same |
/// | `nvme.BDF.msix_vectors` | MSI-X vectors enabled |
/// | `nvme.BDF.msix_irqs` | their Linux irq numbers, comma-separated |
/// | `nvme.BDF.msix_interrupts` | interrupts counted on them in `/proc/interrupts` |
/// | `edu.BDF.id` | BAR0 register 0x00 as `0x%08x` (`0x010000ed`), or pci-bar's error |
/// | `edu.BDF.liveness` | `ok` if register 0x04 read back inverted for every value written |
/// | `mtty.BDF.tty` | the device's serial ports (`ttyS1,ttyS2`) |
/// | `mtty.BDF.loopback` | `ok` if a line written to every port read back the same |
/// | `irq.BDF` | the device's `irq` in sysfs |
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceReport {
    /// Every key=value line of the block.
    pub values: BTreeMap<String, String>,
    /// dmesg lines about the devices (nvme, serial ports, their BDFs), without the prefix.
    pub dmesg: Vec<String>,
}

impl DeviceReport {
    /// The value of `key`, if reported.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The BDFs of the devices of `kind` (`nvme`, `edu`, `mtty`) the guest found, sorted.
    pub fn devices(&self, kind: &str) -> Vec<&str> {
        let bdfs: std::collections::BTreeSet<&str> = self
            .values
            .keys()
            .filter_map(|k| k.strip_prefix(kind)?.strip_prefix('.')?.rsplit_once('.'))
            .map(|(bdf, _)| bdf)
            .collect();
        bdfs.into_iter().collect()
    }

    /// `KIND.BDF.FIELD`, if reported.
    pub fn field(&self, kind: &str, bdf: &str, field: &str) -> Option<&str> {
        self.get(&format!("{kind}.{bdf}.{field}"))
    }

    /// Whether `KIND.BDF.FIELD` is `ok`.
    pub fn is_ok(&self, kind: &str, bdf: &str, field: &str) -> bool {
        self.field(kind, bdf, field) == Some("ok")
    }

    /// `KIND.BDF.FIELD` as a number (decimal, or hex with `0x`).
    pub fn number(&self, kind: &str, bdf: &str, field: &str) -> Option<u64> {
        let v = self.field(kind, bdf, field)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// The device's legacy irq (`irq.BDF`).
    pub fn irq(&self, bdf: &str) -> Option<u32> {
        self.get(&format!("irq.{bdf}"))?.parse().ok()
    }
}

fn check_device_key(key: &str, value: &str) -> Result<(), JudgeError> {
    let unknown = || JudgeError::UnknownKey(key.to_string());
    let (kind, rest) = key.split_once('.').ok_or_else(unknown)?;
    let field_kind = if kind == "irq" {
        FieldKind::Number
    } else {
        let (_bdf, field) = rest.rsplit_once('.').ok_or_else(unknown)?;
        device_field(kind, field).ok_or_else(unknown)?
    };
    let valid = match field_kind {
        FieldKind::Text => true,
        FieldKind::Number => value.parse::<u64>().is_ok(),
        FieldKind::Verdict => matches!(value, "ok" | "fail"),
        FieldKind::Numbers => value
            .split(',')
            .filter(|v| !v.is_empty())
            .all(|v| v.parse::<u32>().is_ok()),
    };
    if valid {
        Ok(())
    } else {
        Err(bad(key, value))
    }
}

/// Parses console output for the device block; `Ok(None)` if it holds no complete one.
///
/// As with [`parse_report`], lines without `=` are skipped, and unknown keys or values of
/// the wrong shape (a non-number count, a verdict other than `ok`/`fail`) are errors.
pub fn parse_device_report(console: &str) -> Result<Option<DeviceReport>, JudgeError> {
    let mut lines = console.split(['\n', '\r']).map(str::trim_end);
    if !lines.any(|l| l.ends_with(DEVICES_BEGIN)) {
        return Ok(None);
    }
    let mut report = DeviceReport::default();
    for line in lines {
        if line.ends_with(DEVICES_END) {
            return Ok(Some(report));
        }
        if let Some(msg) = line.strip_prefix("dmesg: ") {
            report.dmesg.push(msg.to_string());
        } else if let Some((key, value)) = line.split_once('=') {
            let (key, value) = (key.trim(), value.trim());
            check_device_key(key, value)?;
            report.values.insert(key.to_string(), value.to_string());
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("").unwrap(), Vec::<u32>::new());
        assert_eq!(
            parse_cpulist("0-3,5,7-8\n").unwrap(),
            vec![0, 1, 2, 3, 5, 7, 8]
        );
        assert_eq!(parse_cpulist("4").unwrap(), vec![4]);
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
    }

    const CANNED: &str = "SeaBIOS\r\nProbing EDD... o\x1bc\x1b[?7lk\rTESSERA-JUDGE-BEGIN\r\n\
possible=0-2\r\nonline=0-2\r\nhas_cpu=0-1\r\nhas_memory=0,2\r\nhas_normal_memory=0,2\r\n\
has_generic_initiator=\r\nnode0.cpulist=0-1\r\nnode0.distance=10,20,30\r\n\
node0.memtotal_kb=256588\r\nnode0.access0.initiators=node0\r\n\
node0.access0.targets=node0,node2\r\nnode0.access0.read_latency=10\r\n\
node0.access0.read_bandwidth=10240\r\nnode0.cache1.size=16777216\r\nnode0.cache1.line_size=64\r\n\
node0.cache1.indexing=0\r\nnode0.cache1.write_policy=0\r\nnode1.cpulist=\r\nnode1.distance=20,10,25\r\n\
node1.memtotal_kb=0\r\nnode10.cpulist=\r\nnode10.distance=30,25,10\r\nnode10.memtotal_kb=5\r\n\
pci=0000:00:00.0:-1,0000:00:03.0:2\r\ndmesg: [    0.1] SRAT: PXM 0 -> APIC 0x00 -> Node 0\r\n\
TESSERA-JUDGE-END\r\n[    2.0] reboot: Power down\r\n";

    #[test]
    fn report_block() {
        let r = parse_report(CANNED).unwrap().unwrap();
        assert_eq!(r.possible, vec![0, 1, 2]);
        assert_eq!(r.has_cpu, vec![0, 1]);
        assert_eq!(r.has_memory, vec![0, 2]);
        assert!(r.has_generic_initiator.is_empty());
        assert_eq!(r.nodes.keys().copied().collect::<Vec<_>>(), vec![0, 1, 10]);
        let n0 = &r.nodes[&0];
        assert_eq!(n0.cpus, vec![0, 1]);
        assert_eq!(n0.distances, vec![10, 20, 30]);
        assert_eq!(n0.memtotal_kb, 256_588);
        let a0 = n0.access0.as_ref().unwrap();
        assert_eq!(a0.initiators, vec![0]);
        assert_eq!(a0.targets, vec![0, 2]);
        assert_eq!(a0.read_latency, Some(10));
        assert_eq!(a0.write_latency, None);
        assert_eq!(a0.read_bandwidth, Some(10240));
        assert!(n0.access1.is_none());
        assert_eq!(
            n0.caches[&1],
            MemorySideCache {
                size: Some(16 << 20),
                line_size: Some(64),
                indexing: Some(0),
                write_policy: Some(0),
            }
        );
        assert!(r.nodes[&1].cpus.is_empty());
        assert!(r.nodes[&1].caches.is_empty());
        assert_eq!(r.nodes[&10].distances, vec![30, 25, 10]);
        assert_eq!(r.pci_numa.get("0000:00:00.0"), Some(&-1));
        assert_eq!(r.pci_numa.get("0000:00:03.0"), Some(&2));
        assert_eq!(
            r.dmesg,
            vec!["[    0.1] SRAT: PXM 0 -> APIC 0x00 -> Node 0"]
        );
        assert_eq!(r.raw, CANNED);
    }

    const DEVICES: &str = "TESSERA-JUDGE-END\r\nTESSERA-DEVICES-BEGIN\r\n\
nvme.0000:00:05.0.driver=nvme\r\nnvme.0000:00:05.0.namespace=nvme0n1\r\n\
nvme.0000:00:05.0.rw=ok\r\nnvme.0000:00:05.0.msix_vectors=2\r\n\
nvme.0000:00:05.0.msix_irqs=24,25\r\nnvme.0000:00:05.0.msix_interrupts=137\r\n\
irq.0000:00:05.0=11\r\nedu.0000:00:06.0.id=0x010000ed\r\nedu.0000:00:06.0.liveness=ok\r\n\
irq.0000:00:06.0=10\r\nmtty.0000:00:07.0.tty=ttyS1,ttyS2\r\nmtty.0000:00:07.0.loopback=fail\r\n\
irq.0000:00:07.0=11\r\n\
dmesg: [    1.2] 0000:00:07.0: ttyS1 at I/O 0xc000 (irq = 11, base_baud = 115200) is a 16550A\r\n\
TESSERA-DEVICES-END\r\n[    9.0] reboot: Power down\r\n";

    #[test]
    fn device_block() {
        let r = parse_device_report(DEVICES).unwrap().unwrap();
        assert_eq!(r.devices("nvme"), vec!["0000:00:05.0"]);
        assert_eq!(r.devices("edu"), vec!["0000:00:06.0"]);
        assert_eq!(r.devices("mtty"), vec!["0000:00:07.0"]);
        assert!(r.devices("virtio").is_empty());
        let nvme = "0000:00:05.0";
        assert_eq!(r.field("nvme", nvme, "driver"), Some("nvme"));
        assert!(r.is_ok("nvme", nvme, "rw"));
        assert_eq!(r.number("nvme", nvme, "msix_vectors"), Some(2));
        assert_eq!(r.number("nvme", nvme, "msix_interrupts"), Some(137));
        assert_eq!(r.field("nvme", nvme, "msix_irqs"), Some("24,25"));
        assert_eq!(r.number("edu", "0000:00:06.0", "id"), Some(0x0100_00ed));
        assert!(r.is_ok("edu", "0000:00:06.0", "liveness"));
        assert_eq!(r.field("mtty", "0000:00:07.0", "tty"), Some("ttyS1,ttyS2"));
        assert!(!r.is_ok("mtty", "0000:00:07.0", "loopback"));
        assert!(!r.is_ok("mtty", "0000:00:07.0", "missing"));
        assert_eq!(r.irq("0000:00:07.0"), Some(11));
        assert_eq!(r.irq("0000:00:08.0"), None);
        // The value holds '=' and '(': dmesg lines are taken whole.
        assert_eq!(r.dmesg.len(), 1);
        assert!(r.dmesg[0].ends_with("is a 16550A"), "{:?}", r.dmesg);
        assert_eq!(r.values.len(), 13);
        // The NUMA block's parser ignores the device block and vice versa.
        assert!(parse_report(DEVICES).unwrap().is_none());
        assert!(parse_device_report(CANNED).unwrap().is_none());
    }

    #[test]
    fn bad_device_blocks() {
        let block = |body: &str| format!("TESSERA-DEVICES-BEGIN\n{body}\nTESSERA-DEVICES-END\n");
        // Incomplete, or empty.
        assert!(
            parse_device_report("TESSERA-DEVICES-BEGIN\nirq.0000:00:03.0=5\n")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse_device_report(&block("")).unwrap(),
            Some(DeviceReport::default())
        );
        // pci-bar's error text is a legitimate edu id; number() just does not parse it.
        let r = parse_device_report(&block("edu.0000:00:04.0.id=pci-bar: mmap failed"))
            .unwrap()
            .unwrap();
        assert_eq!(r.number("edu", "0000:00:04.0", "id"), None);
        for bad_value in [
            "nvme.0000:00:03.0.rw=maybe",
            "nvme.0000:00:03.0.msix_vectors=two",
            "nvme.0000:00:03.0.msix_irqs=24,x",
            "irq.0000:00:03.0=",
        ] {
            assert!(
                matches!(
                    parse_device_report(&block(bad_value)),
                    Err(JudgeError::BadValue { .. })
                ),
                "{bad_value}"
            );
        }
        for unknown in [
            "nvme.0000:00:03.0.speed=fast",
            "gpu.0000:00:03.0.driver=x",
            "nvme=1",
            "edu.liveness=ok",
        ] {
            assert!(
                matches!(
                    parse_device_report(&block(unknown)),
                    Err(JudgeError::UnknownKey(_))
                ),
                "{unknown}"
            );
        }
    }

    #[test]
    fn incomplete_or_bad_blocks() {
        assert!(parse_report("kernel panic\n").unwrap().is_none());
        assert!(parse_report("TESSERA-JUDGE-BEGIN\npossible=0\n")
            .unwrap()
            .is_none());
        let bad = "TESSERA-JUDGE-BEGIN\nnode0.distance=10,x\nTESSERA-JUDGE-END\n";
        assert!(matches!(
            parse_report(bad),
            Err(JudgeError::BadValue { .. })
        ));
        let unknown = "TESSERA-JUDGE-BEGIN\nnode0.access2.targets=\nTESSERA-JUDGE-END\n";
        assert!(matches!(
            parse_report(unknown),
            Err(JudgeError::UnknownKey(_))
        ));
    }
}
