//! `tessera-ctl`: drives a running `tessera --api-socket PATH` over its HTTP API, as Cloud
//! Hypervisor's `ch-remote` drives CH: one subcommand per endpoint, one request per run.
//!
//! Answers are printed readably, or as the raw JSON body with `--json`; requests that
//! succeed with 204 print nothing. Exit status: 0 on success; 1 on any error, printed to
//! stderr as `tessera-ctl: <status> <error> (field: <field>)` for an API error, and
//! naming the subcommand and key for an option string that does not parse (those fail
//! before anything is sent).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_api::client::{self, Method};
use tessera_api::config::PayloadConfig;
use tessera_api::options::{
    parse_device, parse_generic_initiator, parse_numa, parse_remove_generic_initiator, parse_size,
};
use tessera_api::types::{
    AcpiInfo, AcpiTable, HostDevices, HostMdevType, PciDeviceInfo, TopologyMirror, VmCounters,
    VmInfo, VmRemoveDevice, VmRemoveNumaNode, VmmPingResponse,
};

/// Drives a running tessera VMM over its API socket (like Cloud Hypervisor's ch-remote).
#[derive(Parser, Debug)]
#[command(name = "tessera-ctl", version)]
struct Cli {
    /// The VMM's API socket (`tessera --api-socket PATH`).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Print the API's JSON answer as it came, instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that the VMM answers; print its version (GET /vmm.ping).
    Ping,
    /// Shut the VMM down, and the VM if any (PUT /vmm.shutdown).
    ShutdownVmm,
    /// Create the VM from a JSON VmConfig; it is not booted (PUT /vm.create).
    Create {
        /// The configuration file, `-` for stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Boot the created VM (PUT /vm.boot).
    Boot,
    /// Print the VM's state, vCPUs, memory, NUMA nodes and devices (GET /vm.info).
    Info,
    /// Print the VM's counters (GET /vm.counters).
    Counters,
    /// Shut the VM down (PUT /vm.shutdown).
    Shutdown,
    /// Reboot the VM (PUT /vm.reboot).
    Reboot,
    /// Pause the VM's vCPUs (PUT /vm.pause).
    Pause,
    /// Resume the paused VM (PUT /vm.resume).
    Resume,
    /// Delete the VM (PUT /vm.delete).
    Delete,
    /// Press the VM's ACPI power button (PUT /vm.power-button).
    PowerButton,
    /// Add a VFIO PCI device (PUT /vm.add-device); print where it landed if the VMM says
    /// (a hot-plug's 200; a cold add is a 204, and `info` shows the device's BDF).
    AddDevice {
        /// path=/sys/bus/pci/devices/BDF[,id=ID,pci_segment=N,pci_device_id=N]
        #[arg(value_name = "SPEC", required_unless_present = "file")]
        options: Option<String>,
        /// A JSON DeviceConfig instead of SPEC (`-` for stdin).
        #[arg(long, value_name = "FILE", conflicts_with = "options")]
        file: Option<PathBuf>,
    },
    /// Remove a device by id (PUT /vm.remove-device).
    RemoveDevice {
        /// The device's id.
        id: String,
    },
    /// Add a guest NUMA node (PUT /vm.add-numa-node).
    AddNumaNode {
        // Not a doc comment: rustdoc would read `N@D` as a link.
        #[arg(
            value_name = "SPEC",
            required_unless_present = "file",
            help = "guest_numa_id=N[,cpus=[..],memory_zones=[..],distances=[N@D,..],pci_segments=[..],device_id=ID]"
        )]
        options: Option<String>,
        /// A JSON NumaConfig instead of SPEC (`-` for stdin).
        #[arg(long, value_name = "FILE", conflicts_with = "options")]
        file: Option<PathBuf>,
    },
    /// Remove a guest NUMA node (PUT /vm.remove-numa-node).
    RemoveNumaNode {
        /// The node's guest_numa_id.
        #[arg(value_name = "N")]
        guest_numa_id: String,
    },
    /// Link a device to NUMA nodes as their Generic Initiator (PUT /vm.add-generic-initiator).
    AddGenericInitiator {
        /// device=ID,node=N | device=ID,nodes=SET (2-9, or [2,4-5]), with optional id=NAME
        #[arg(value_name = "SPEC", required_unless_present = "file")]
        options: Option<String>,
        /// A JSON GenericInitiatorConfig instead of SPEC (`-` for stdin).
        #[arg(long, value_name = "FILE", conflicts_with = "options")]
        file: Option<PathBuf>,
    },
    /// Remove Generic Initiator links (PUT /vm.remove-generic-initiator).
    RemoveGenericInitiator {
        /// id=NAME | device=ID,node=N | device=ID,nodes=SET
        #[arg(value_name = "SPEC")]
        options: String,
    },
    /// List the guest's ACPI tables and the SRAT's Generic Initiators (GET /vm.acpi).
    Acpi {
        /// Also write each table to DIR/SIG.dat.
        #[arg(long, value_name = "DIR")]
        dump: Option<PathBuf>,
    },
    /// Print the API's endpoints (GET /openapi.json; `--json` for the document).
    Openapi,
    /// List the host's PCI devices with their IOMMU groups, NUMA nodes, mdev and vGPU
    /// types, the non-PCI mdev parents, and the host's NUMA nodes (GET /vmm.host-devices).
    HostDevices,
    /// Host topology tools.
    #[command(subcommand)]
    Topology(TopologyCommand),
}

#[derive(Subcommand, Debug)]
enum TopologyCommand {
    /// Print a VmConfig (JSON, for vm.create or `tessera --config`) whose NUMA nodes
    /// mirror the host's around the devices given: the host's distances, each device's
    /// GI nodes, memory bound to and vCPUs pinned on the matching host nodes
    /// (PUT /vmm.topology-mirror).
    Mirror {
        /// A host PCI device to pass through (`0000:41:00.0`); repeat for more.
        #[arg(long = "device", value_name = "BDF", required = true)]
        devices: Vec<String>,
        /// GI nodes per device (default: 8 for a GPU, class 0x03; 1 for other classes).
        #[arg(long, value_name = "N")]
        gi_nodes: Option<u32>,
        /// A host node to mirror besides the devices' (default: every node with CPUs);
        /// repeat for more.
        #[arg(long = "host-node", value_name = "N")]
        host_nodes: Vec<u32>,
        /// Mirror only the devices' host nodes (and any --host-node).
        #[arg(long, conflicts_with = "host_nodes")]
        device_nodes_only: bool,
        /// vCPUs per mirrored node with CPUs (default 1).
        #[arg(long, value_name = "N")]
        vcpus_per_node: Option<u32>,
        /// Guest RAM per mirrored node with memory (default 512M).
        #[arg(long, value_name = "SIZE")]
        memory_per_node: Option<String>,
        /// Let tessera bind the devices to vfio-pci for the VM (`managed: true`).
        #[arg(long)]
        managed: bool,
        /// The guest kernel (payload.kernel).
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// The kernel command line (payload.cmdline).
        #[arg(long, value_name = "TEXT")]
        cmdline: Option<String>,
        /// The initramfs (payload.initramfs).
        #[arg(long, value_name = "PATH")]
        initramfs: Option<PathBuf>,
    },
}

/// How to present a successful answer.
#[derive(Debug)]
enum Show {
    /// Nothing (204s).
    Nothing,
    Ping,
    Info,
    Counters,
    AddedDevice,
    Acpi {
        dump: Option<PathBuf>,
    },
    OpenApi,
    HostDevices,
    /// A VmConfig, as indented JSON.
    Config,
}

/// One request, fully formed before the socket is touched.
#[derive(Debug)]
struct Call {
    method: Method,
    endpoint: &'static str,
    body: Option<Vec<u8>>,
    show: Show,
}

fn get(endpoint: &'static str, show: Show) -> Call {
    Call {
        method: Method::GET,
        endpoint,
        body: None,
        show,
    }
}

fn put(endpoint: &'static str) -> Call {
    Call {
        method: Method::PUT,
        endpoint,
        body: None,
        show: Show::Nothing,
    }
}

fn put_body(endpoint: &'static str, body: Vec<u8>, show: Show) -> Call {
    Call {
        method: Method::PUT,
        endpoint,
        body: Some(body),
        show,
    }
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("cannot encode the request")
}

/// A JSON file's bytes (stdin for `-`), checked to be JSON; the server checks the rest
/// and names the field at fault.
fn read_json(file: &Path) -> Result<Vec<u8>> {
    let (name, bytes) = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
        ("stdin".to_owned(), bytes)
    } else {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        (file.display().to_string(), bytes)
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .with_context(|| format!("{name} is not JSON"))?;
    Ok(bytes)
}

/// The body of an `add-*` request: the option string parsed by `parse`, or a JSON file.
fn options_or_file<T: Serialize, E: std::error::Error + Send + Sync + 'static>(
    options: Option<&str>,
    file: Option<&Path>,
    parse: fn(&str) -> Result<T, E>,
) -> Result<Vec<u8>> {
    match (options, file) {
        (_, Some(file)) => read_json(file),
        (Some(options), None) => to_json(&parse(options)?),
        (None, None) => bail!("give SPEC or --file FILE"),
    }
}

/// Turns the subcommand into its request; option strings and files are read here, so
/// a bad one fails before anything is sent.
fn plan(command: &Command) -> Result<Call> {
    Ok(match command {
        Command::Ping => get("/vmm.ping", Show::Ping),
        Command::ShutdownVmm => put("/vmm.shutdown"),
        Command::Create { file } => put_body(
            "/vm.create",
            read_json(file).context("create")?,
            Show::Nothing,
        ),
        Command::Boot => put("/vm.boot"),
        Command::Info => get("/vm.info", Show::Info),
        Command::Counters => get("/vm.counters", Show::Counters),
        Command::Shutdown => put("/vm.shutdown"),
        Command::Reboot => put("/vm.reboot"),
        Command::Pause => put("/vm.pause"),
        Command::Resume => put("/vm.resume"),
        Command::Delete => put("/vm.delete"),
        Command::PowerButton => put("/vm.power-button"),
        Command::AddDevice { options, file } => put_body(
            "/vm.add-device",
            options_or_file(options.as_deref(), file.as_deref(), parse_device)
                .context("add-device")?,
            Show::AddedDevice,
        ),
        Command::RemoveDevice { id } => put_body(
            "/vm.remove-device",
            to_json(&VmRemoveDevice { id: id.clone() })?,
            Show::Nothing,
        ),
        Command::AddNumaNode { options, file } => put_body(
            "/vm.add-numa-node",
            options_or_file(options.as_deref(), file.as_deref(), parse_numa)
                .context("add-numa-node")?,
            Show::Nothing,
        ),
        Command::RemoveNumaNode { guest_numa_id } => {
            let guest_numa_id = guest_numa_id.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "remove-numa-node: guest_numa_id: `{guest_numa_id}` is not a node number"
                )
            })?;
            put_body(
                "/vm.remove-numa-node",
                to_json(&VmRemoveNumaNode { guest_numa_id })?,
                Show::Nothing,
            )
        }
        Command::AddGenericInitiator { options, file } => put_body(
            "/vm.add-generic-initiator",
            options_or_file(options.as_deref(), file.as_deref(), parse_generic_initiator)
                .context("add-generic-initiator")?,
            Show::Nothing,
        ),
        Command::RemoveGenericInitiator { options } => put_body(
            "/vm.remove-generic-initiator",
            to_json(&parse_remove_generic_initiator(options).context("remove-generic-initiator")?)?,
            Show::Nothing,
        ),
        Command::Acpi { dump } => get("/vm.acpi", Show::Acpi { dump: dump.clone() }),
        Command::Openapi => get("/openapi.json", Show::OpenApi),
        Command::HostDevices => get("/vmm.host-devices", Show::HostDevices),
        Command::Topology(TopologyCommand::Mirror {
            devices,
            gi_nodes,
            host_nodes,
            device_nodes_only,
            vcpus_per_node,
            memory_per_node,
            managed,
            kernel,
            cmdline,
            initramfs,
        }) => {
            let memory_per_node = memory_per_node
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| anyhow::anyhow!("topology mirror: --memory-per-node: {e}"))?;
            let request = TopologyMirror {
                devices: devices.clone(),
                gi_nodes: *gi_nodes,
                host_nodes: (*device_nodes_only || !host_nodes.is_empty())
                    .then(|| host_nodes.clone()),
                vcpus_per_node: *vcpus_per_node,
                memory_per_node,
                managed: *managed,
                payload: PayloadConfig {
                    kernel: kernel.clone(),
                    cmdline: cmdline.clone(),
                    initramfs: initramfs.clone(),
                    ..PayloadConfig::default()
                },
            };
            put_body("/vmm.topology-mirror", to_json(&request)?, Show::Config)
        }
    })
}

fn parse<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).with_context(|| {
        format!(
            "unexpected answer from {} (try --json)",
            endpoint.trim_start_matches('/')
        )
    })
}

/// `0-3,6`: sorted, with runs as ranges.
fn node_set(ids: &[u32]) -> String {
    let ids: BTreeSet<u32> = ids.iter().copied().collect();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(id) => *end = id,
            _ => runs.push((id, id)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    runs.join(",")
}

/// `512 MiB`, or bytes when not a whole number of KiB.
fn size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

fn show_ping(p: &VmmPingResponse) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "tessera {} (build {}), pid {}",
        p.version, p.build_version, p.pid
    )?;
    if !p.features.is_empty() {
        writeln!(out, "features: {}", p.features.join(", "))?;
    }
    Ok(out)
}

fn show_info(info: &VmInfo) -> Result<String> {
    let mut out = String::new();
    let c = &info.config;
    writeln!(out, "state: {:?}", info.state)?;
    writeln!(
        out,
        "vcpus: {} (max {})",
        c.cpus.boot_vcpus, c.cpus.max_vcpus
    )?;
    let total = c
        .memory
        .zones
        .iter()
        .fold(c.memory.size, |t, z| t.saturating_add(z.size));
    write!(out, "memory: {}", size(total))?;
    if let Some(actual) = info.memory_actual_size {
        write!(out, ", {} in use", size(actual))?;
    }
    writeln!(out)?;
    for z in &c.memory.zones {
        write!(out, "  zone {}: {}", z.id, size(z.size))?;
        if let Some(host) = z.host_numa_node {
            write!(out, ", host node {host}")?;
        }
        writeln!(out)?;
    }
    if let Some(kernel) = &c.payload.kernel {
        writeln!(out, "kernel: {}", kernel.display())?;
    }

    if c.numa.is_empty() {
        writeln!(out, "numa nodes: none")?;
    } else {
        writeln!(out, "numa nodes:")?;
    }
    for n in &c.numa {
        let mut parts = vec![format!(
            "cpus {}",
            if n.cpus.is_empty() {
                "none".to_owned()
            } else {
                node_set(&n.cpus)
            }
        )];
        parts.push(format!(
            "memory zones {}",
            if n.memory_zones.is_empty() {
                "none".to_owned()
            } else {
                n.memory_zones.join(",")
            }
        ));
        if !n.distances.is_empty() {
            let d: Vec<String> = n
                .distances
                .iter()
                .map(|d| format!("{}@{}", d.destination, d.distance))
                .collect();
            parts.push(format!("distances {}", d.join(",")));
        }
        if !n.pci_segments.is_empty() {
            let s: Vec<String> = n.pci_segments.iter().map(u16::to_string).collect();
            parts.push(format!("pci segments {}", s.join(",")));
        }
        let initiators: Vec<&str> = info
            .devices
            .iter()
            .filter(|d| d.generic_initiator_nodes.contains(&n.guest_numa_id))
            .map(|d| d.id.as_str())
            .collect();
        if !initiators.is_empty() {
            parts.push(format!("initiators {}", initiators.join(",")));
        }
        writeln!(out, "  node {}: {}", n.guest_numa_id, parts.join("; "))?;
    }

    let unplaced: Vec<_> = c
        .devices
        .iter()
        .filter(|d| {
            d.id.as_ref()
                .is_none_or(|id| !info.devices.iter().any(|p| &p.id == id))
        })
        .collect();
    if info.devices.is_empty() && unplaced.is_empty() {
        writeln!(out, "devices: none")?;
    } else {
        writeln!(out, "devices:")?;
    }
    for d in &info.devices {
        write!(out, "  {} {}", d.id, d.bdf)?;
        let path = c.devices.iter().find(|cd| cd.id.as_ref() == Some(&d.id));
        if let Some(path) = path {
            write!(out, " {}", path.path.display())?;
        }
        if d.generic_initiator_nodes.is_empty() {
            writeln!(out)?;
        } else {
            writeln!(out, ", GI nodes {}", node_set(&d.generic_initiator_nodes))?;
        }
    }
    for d in unplaced {
        writeln!(
            out,
            "  {} (not placed) {}",
            d.id.as_deref().unwrap_or("-"),
            d.path.display()
        )?;
    }
    Ok(out)
}

fn show_counters(counters: &VmCounters) -> Result<String> {
    let mut out = String::new();
    if counters.is_empty() {
        writeln!(out, "no counters")?;
    }
    for (device, values) in counters {
        writeln!(out, "{device}:")?;
        for (name, value) in values {
            writeln!(out, "  {name}: {value}")?;
        }
    }
    Ok(out)
}

/// The decoded SRAT's Generic Initiator entries, as the VMM decodes them.
#[derive(Deserialize)]
struct SratView {
    #[serde(default)]
    generic_initiators: Vec<SratInitiator>,
}

#[derive(Deserialize)]
struct SratInitiator {
    node: u32,
    #[serde(default)]
    bdf: Option<String>,
    #[serde(default = "enabled")]
    enabled: bool,
}

fn enabled() -> bool {
    true
}

/// The decoded SLIT.
#[derive(Deserialize)]
struct SlitView {
    #[serde(default)]
    distances: Vec<Vec<u16>>,
}

fn show_acpi(acpi: &AcpiInfo) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "tables:")?;
    for t in &acpi.tables {
        writeln!(
            out,
            "  {:<4} {:>6} bytes  checksum {:#04x}",
            t.signature, t.length, t.checksum
        )?;
    }
    if acpi.srat.is_null() {
        writeln!(out, "no SRAT")?;
    } else {
        let srat: SratView = serde_json::from_value(acpi.srat.clone())
            .context("unexpected decoded SRAT (try --json)")?;
        if srat.generic_initiators.is_empty() {
            writeln!(out, "SRAT generic initiators: none")?;
        } else {
            writeln!(out, "SRAT generic initiators:")?;
        }
        for gi in &srat.generic_initiators {
            write!(
                out,
                "  node {} <- {}",
                gi.node,
                gi.bdf.as_deref().unwrap_or("(ACPI device)")
            )?;
            writeln!(out, "{}", if gi.enabled { "" } else { " (disabled)" })?;
        }
    }
    if !acpi.slit.is_null() {
        let slit: SlitView = serde_json::from_value(acpi.slit.clone())
            .context("unexpected decoded SLIT (try --json)")?;
        writeln!(out, "SLIT distances:")?;
        for (from, row) in slit.distances.iter().enumerate() {
            let row: Vec<String> = row.iter().map(|d| format!("{d:>3}")).collect();
            writeln!(out, "  node {from}: {}", row.join(" "))?;
        }
    }
    Ok(out)
}

/// Decodes every table, then writes each to `dir/SIG.dat` (`SIG-2.dat`, ... for repeated
/// signatures). Returns what was written, for the summary.
fn dump_acpi(dir: &Path, tables: &[AcpiTable]) -> Result<Vec<(PathBuf, usize)>> {
    let mut files = Vec::new();
    let mut seen = Vec::new();
    for t in tables {
        let sig = &t.signature;
        if sig.len() != 4 || !sig.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("acpi: table signature {sig:?} is not four letters or digits");
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&t.base64)
            .with_context(|| format!("acpi: table {sig} is not valid base64"))?;
        if usize::try_from(t.length).ok() != Some(bytes.len()) {
            let _ = writeln!(
                std::io::stderr(),
                "tessera-ctl: warning: {sig} says {} bytes but holds {}",
                t.length,
                bytes.len()
            );
        }
        seen.push(sig.as_str());
        let n = seen.iter().filter(|s| **s == sig.as_str()).count();
        let name = if n == 1 {
            format!("{sig}.dat")
        } else {
            format!("{sig}-{n}.dat")
        };
        files.push((dir.join(name), bytes));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("acpi --dump: cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (path, bytes) in files {
        std::fs::write(&path, &bytes)
            .with_context(|| format!("acpi --dump: cannot write {}", path.display()))?;
        written.push((path, bytes.len()));
    }
    Ok(written)
}

/// The OpenAPI document's endpoints, as `METHOD PATH  summary`.
fn show_openapi(doc: &serde_json::Value) -> Result<String> {
    let mut out = String::new();
    let info = doc.get("info");
    let field = |v: Option<&serde_json::Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    writeln!(out, "{} {}", field(info, "title"), field(info, "version"))?;
    let Some(paths) = doc.get("paths").and_then(serde_json::Value::as_object) else {
        bail!("unexpected answer from openapi.json: no paths (try --json)");
    };
    for (path, item) in paths {
        let Some(methods) = item.as_object() else {
            continue;
        };
        for (method, op) in methods {
            writeln!(
                out,
                "{:<4} {path:<32} {}",
                method.to_uppercase(),
                field(Some(op), "summary")
            )?;
        }
    }
    Ok(out)
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> Result<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            write!(line, "{cell:<width$}  ")?;
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(out)
}

/// A value that may be missing (`-`).
fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// An mdev type as one indented line: id, name, device API, availability, instances.
fn mdev_type_line(out: &mut String, indent: &str, t: &HostMdevType) -> Result<()> {
    write!(
        out,
        "{indent}{}  {:?}  {}  {} available",
        t.id,
        t.name.as_deref().unwrap_or("-"),
        or_dash(t.device_api.as_deref()),
        or_dash(t.available_instances),
    )?;
    if !t.instances.is_empty() {
        write!(out, "  instances {}", t.instances.join(","))?;
    }
    writeln!(out)?;
    Ok(())
}

/// `vmm.host-devices` as an admin reads it: one table row per PCI device, with its
/// group's viability (and what blocks it), then its mdev or vGPU types below it; the
/// non-PCI mdev parents; the host's NUMA nodes as `numactl -H` shows them.
fn show_host_devices(host: &HostDevices) -> Result<String> {
    let mut out = String::new();
    if host.pci_devices.is_empty() {
        writeln!(out, "PCI devices: none")?;
    } else {
        writeln!(out, "PCI devices:")?;
    }
    let header = [
        "BDF",
        "VENDOR:DEVICE",
        "CLASS",
        "DRIVER",
        "NODE",
        "IOMMU GROUP",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    let mut details = Vec::new();
    for d in &host.pci_devices {
        let ids = format!(
            "{}:{}",
            d.vendor.as_deref().unwrap_or("????"),
            d.device.as_deref().unwrap_or("????")
        );
        let group = match &d.iommu_group {
            None => "none".to_owned(),
            Some(g) if g.viable => format!("{} viable", g.id),
            Some(g) => {
                let blocking: Vec<String> = g
                    .blocking
                    .iter()
                    .map(|b| {
                        let driver = g
                            .members
                            .iter()
                            .find(|m| &m.name == b)
                            .and_then(|m| m.driver.as_deref());
                        format!("{b} ({})", driver.unwrap_or("?"))
                    })
                    .collect();
                format!("{} blocked by {}", g.id, blocking.join(", "))
            }
        };
        rows.push(vec![
            d.bdf.clone(),
            ids,
            or_dash(d.class.as_deref()),
            d.driver.clone().unwrap_or_else(|| "none".to_owned()),
            or_dash(d.numa_node),
            group,
        ]);
        let mut more = String::new();
        if let Some(g) = d.iommu_group.as_ref().filter(|g| g.members.len() > 1) {
            let members: Vec<String> = g
                .members
                .iter()
                .map(|m| format!("{} ({})", m.name, m.driver.as_deref().unwrap_or("none")))
                .collect();
            writeln!(more, "  group {} members: {}", g.id, members.join(", "))?;
        }
        if let Some(types) = &d.mdev_types {
            writeln!(more, "  mdev types:")?;
            for t in types {
                mdev_type_line(&mut more, "    ", t)?;
            }
        }
        if let Some(v) = &d.nvidia_vgpu {
            let types: Vec<String> = v
                .creatable_types
                .iter()
                .map(|t| format!("{} {}", t.id, t.name))
                .collect();
            writeln!(
                more,
                "  vGPU types creatable: {}; current type {}",
                if types.is_empty() {
                    "none".to_owned()
                } else {
                    types.join(", ")
                },
                or_dash(v.current_type)
            )?;
        }
        details.push(more);
    }
    // The table, with each device's details under its row.
    let text = table(&rows)?;
    let mut lines = text.lines();
    if let Some(h) = lines.next() {
        writeln!(out, "{h}")?;
    }
    for (line, more) in lines.zip(&details) {
        writeln!(out, "{line}")?;
        out.push_str(more);
    }

    if !host.mdev_parents.is_empty() {
        writeln!(out, "mdev parents (not PCI devices):")?;
        for p in &host.mdev_parents {
            writeln!(out, "  {}:", p.name)?;
            for t in &p.types {
                mdev_type_line(&mut out, "    ", t)?;
            }
        }
    }

    if host.numa_nodes.is_empty() {
        writeln!(out, "NUMA nodes: none")?;
        return Ok(out);
    }
    writeln!(out, "NUMA nodes:")?;
    let mut rows = vec![["NODE", "CPUS", "MEMORY", "DISTANCES"]
        .map(String::from)
        .to_vec()];
    for n in &host.numa_nodes {
        rows.push(vec![
            n.id.to_string(),
            match n.cpus.as_deref() {
                Some("") => "none".to_owned(),
                other => or_dash(other),
            },
            or_dash(n.memory_bytes.map(|b| format!("{} MiB", b >> 20))),
            or_dash(
                n.distances
                    .as_ref()
                    .map(|d| d.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")),
            ),
        ]);
    }
    out.push_str(&table(&rows)?);
    let with_hmat: Vec<_> = host
        .numa_nodes
        .iter()
        .filter(|n| !n.access.is_empty())
        .collect();
    if !with_hmat.is_empty() {
        writeln!(out, "HMAT (memory node, access class, best initiators):")?;
    }
    for n in with_hmat {
        for a in &n.access {
            let value =
                |v: Option<u64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v} {unit}"));
            writeln!(
                out,
                "  node {} access{} from {}: read {}, {}; write {}, {}",
                n.id,
                a.class,
                node_set(&a.initiators),
                value(a.read_latency_ns, "ns"),
                value(a.read_bandwidth_mbps, "MB/s"),
                value(a.write_latency_ns, "ns"),
                value(a.write_bandwidth_mbps, "MB/s"),
            )?;
        }
    }
    Ok(out)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

fn run(cli: &Cli) -> Result<()> {
    let Call {
        method,
        endpoint,
        body,
        show,
    } = plan(&cli.command)?;
    let response = client::request_blocking(&cli.api_socket, method, endpoint, body)?;
    if let Some(e) = response.error() {
        let field = e
            .field
            .map(|f| format!(" (field: {f})"))
            .unwrap_or_default();
        bail!("{} {}{field}", e.status, e.error);
    }
    let body = &response.body;

    // The files first, so that a table that does not decode fails the run in both modes.
    let mut dumped = Vec::new();
    if let Show::Acpi { dump: Some(dir) } = &show {
        let info: AcpiInfo = parse(endpoint, body)?;
        dumped = dump_acpi(dir, &info.tables)?;
    }

    if cli.json {
        let mut out = body.clone();
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        return emit(&out);
    }
    let text = match &show {
        Show::Nothing => String::new(),
        Show::Ping => show_ping(&parse(endpoint, body)?)?,
        Show::Info => show_info(&parse(endpoint, body)?)?,
        Show::Counters => show_counters(&parse(endpoint, body)?)?,
        // 204: the VMM placed nothing yet (e.g. the VM is not running).
        Show::AddedDevice if body.is_empty() => String::new(),
        Show::AddedDevice => {
            let d: PciDeviceInfo = parse(endpoint, body)?;
            format!("{} at {}\n", d.id, d.bdf)
        }
        Show::Acpi { .. } => {
            let mut text = show_acpi(&parse(endpoint, body)?)?;
            for (path, len) in &dumped {
                writeln!(text, "wrote {} ({len} bytes)", path.display())?;
            }
            text
        }
        Show::OpenApi => show_openapi(&parse(endpoint, body)?)?,
        Show::HostDevices => show_host_devices(&parse(endpoint, body)?)?,
        Show::Config => {
            let config: tessera_api::config::VmConfig = parse(endpoint, body)?;
            let mut text = serde_json::to_string_pretty(&config)?;
            text.push('\n');
            text
        }
    };
    emit(text.as_bytes())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; every usage error exits 1.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tessera-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
