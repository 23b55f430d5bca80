//! `vmm-bootbench`: measures one VMM run for the boot comparison of
//! `scripts/bench-boot.sh` (issue 3's "Measure"): the time from spawning the VMM to the
//! guest's `/init` printing `TESSERA-INIT`, and the VMM's peak RSS outside guest memory.
//!
//! ```text
//! vmm-bootbench --name NAME --guest-ram-mib N [--exclude-min-mib M] [--interval-ms MS]
//!               [--max-duty-pct P] [--timeout-secs S] -- CMD ARGS...
//! ```
//!
//! CMD runs with stdout piped (stderr inherited); its stdout lines are forwarded to ours
//! as `NAME| LINE`. While it runs, `/proc/PID/smaps` is read every MS ms (20 by default;
//! 0: only at the spawn, to time a run undisturbed) and once more when the marker is
//! seen; "RSS outside guest memory" is the sum of the `Rss:` of every mapping smaller
//! than the smaller of N MiB (the guest's RAM) and M MiB (64 by default: QEMU may split
//! guest RAM, e.g. below and above 4 GiB, and one backend per NUMA node). smaps covers every thread of the process. The child must
//! exit by itself (the guest powers off); after S seconds (120) it is killed.
//!
//! Reading smaps is not free: the kernel walks every mapping's page tables and formats
//! ~20 lines per mapping, and a VMM with many mappings (QEMU) costs several times what
//! one with few costs. So that sampling takes the same share of a CPU whatever the VMM,
//! the pause after a sample is stretched to keep the time spent sampling at most P% (5)
//! of the wall time; the marker's own sample is always taken.
//!
//! Output, after the child exits:
//!
//! ```text
//! bootbench name=NAME to_init_ms=X peak_rss_outside_guest_kib=Y exit=Z lifetime_ms=L guest_uptime_at_init_ms=U
//! bootbench-detail name=NAME peak_at_ms=.. peak_rss_total_kib=.. guest_rss_at_peak_kib=.. ...
//! bootbench-excluded name=NAME size_kib=.. count=.. rss_kib=.. perms=.. path=..
//! bootbench-kvm name=NAME exits=.. io_exits=.. mmio_exits=.. halt_exits=.. ...
//! bootbench-phases name=NAME vm_created_ms=.. first_exit_ms=.. guest_clock_start_ms=.. exit_after_last_line_ms=..
//! ```
//!
//! The kvm line gives the VM's exit counters when the marker was seen, from KVM's
//! debugfs (`/sys/kernel/debug/kvm/PID-FD/`, summed over its vCPUs; left out when
//! debugfs is not mounted): counts, unlike times, do not move with the host's load, so
//! they show what a VMM's platform makes the guest's boot trap on.
//!
//! The phases line splits the time before the guest runs, the same way for every VMM:
//! when KVM's debugfs showed the VM's directory appear (`KVM_CREATE_VM`, seen with
//! inotify), when the VM's first exit was counted (its first `KVM_RUN`, within a
//! millisecond: the counter is polled until then), and when the guest's clock started
//! (`X - U`: the VMM's start plus the guest's earliest boot); and, at the other end, the
//! time from the guest's last line of output to the VMM's exit (the guest's poweroff
//! and the VMM's teardown). Each is `none` when it cannot be known (no debugfs, or the
//! marker never came).
//!
//! The detail line adds when the peak was sampled, the peak's total and guest RSS, the
//! peak of the anonymous part of the RSS outside guest memory (`Anonymous:`: what is
//! not shared-library text or other file pages), the RSS outside guest memory when the
//! marker was seen, and what sampling cost. The excluded lines list the mappings left
//! out as guest memory at the peak, grouped by size, permissions and path.
//!
//! `L` is the time from the spawn to the child's exit (the guest's whole life plus the
//! VMM's start and teardown). `U` is the guest kernel's own uptime when `/init` ran, from
//! the marker line (`TESSERA-INIT uptime=SECONDS`, /proc/uptime), `none` if it had none:
//! the guest's boot time free of the VMM's own start-up.
//!
//! `X` is `none` if the marker never appeared; `Z` is the exit code, `signal-N` or
//! `timeout`. Exit status: 0 if the marker was seen and the child exited with 0, else 1.
//! Wall-clock numbers are for people: nothing asserts them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What `/init` prints first (scripts/judge-init.sh).
const MARKER: &[u8] = b"TESSERA-INIT";
/// How often, at most, the child's exit is looked for.
const POLL: Duration = Duration::from_millis(20);

/// The parsed command line.
#[derive(Debug)]
struct Options {
    /// Label for the output lines.
    name: String,
    /// The guest's RAM, MiB: no mapping this large or larger counts.
    guest_ram_mib: u64,
    /// No mapping this large or larger counts either (QEMU splits guest RAM).
    exclude_min_mib: u64,
    /// How often to read smaps, at most; `None`: only when the marker is seen.
    interval: Option<Duration>,
    /// The largest share of wall time, in percent (1 to 100), spent reading smaps.
    max_duty_pct: u32,
    /// When to give up on the child and kill it.
    timeout: Duration,
    /// The VMM and its arguments.
    command: Vec<String>,
}

fn usage() -> String {
    "usage: vmm-bootbench --name NAME --guest-ram-mib N [--exclude-min-mib M] \
     [--interval-ms MS] [--max-duty-pct P] [--timeout-secs S] -- CMD ARGS..."
        .to_string()
}

fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Options> {
    let mut name = None;
    let mut guest_ram_mib = None;
    let mut exclude_min_mib = 64;
    let mut interval_ms = 20;
    let mut max_duty_pct = 5;
    let mut timeout_secs = 120;
    let mut args = args.into_iter();
    let number = |flag: &str, value: Option<String>| -> Result<u64> {
        let value = value.with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        value
            .parse()
            .with_context(|| format!("{flag}: {value:?} is not a whole number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => {
                name = Some(
                    args.next()
                        .with_context(|| format!("--name needs a value\n{}", usage()))?,
                )
            }
            "--guest-ram-mib" => guest_ram_mib = Some(number(&arg, args.next())?),
            "--exclude-min-mib" => exclude_min_mib = number(&arg, args.next())?,
            "--interval-ms" => interval_ms = number(&arg, args.next())?,
            "--max-duty-pct" => max_duty_pct = number(&arg, args.next())?,
            "--timeout-secs" => timeout_secs = number(&arg, args.next())?,
            "--" => break,
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let command: Vec<String> = args.collect();
    if !(1..=100).contains(&max_duty_pct) {
        bail!("--max-duty-pct must be 1 to 100, not {max_duty_pct}");
    }
    if command.is_empty() {
        bail!("no command after --\n{}", usage());
    }
    Ok(Options {
        name: name.with_context(|| format!("--name is required\n{}", usage()))?,
        guest_ram_mib: guest_ram_mib
            .with_context(|| format!("--guest-ram-mib is required\n{}", usage()))?,
        exclude_min_mib,
        interval: (interval_ms > 0).then(|| Duration::from_millis(interval_ms)),
        max_duty_pct: u32::try_from(max_duty_pct)?,
        timeout: Duration::from_secs(timeout_secs),
        command,
    })
}

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    /// Its length in bytes, from the address range.
    size: u64,
    /// Its `Rss:` in KiB.
    rss_kib: u64,
    /// Its `Anonymous:` in KiB.
    anon_kib: u64,
    /// The permissions column (`rw-p`).
    perms: String,
    /// The path or `[heap]`-style name, empty for anonymous mappings.
    path: String,
}

/// Parses the text of `/proc/PID/smaps` into its mappings.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first == "Rss:" || first == "Anonymous:" {
            if let (Some(m), Some(kib)) = (
                out.last_mut(),
                fields.next().and_then(|v| v.parse::<u64>().ok()),
            ) {
                if first == "Rss:" {
                    m.rss_kib = kib;
                } else {
                    m.anon_kib = kib;
                }
            }
            continue;
        }
        if first.ends_with(':') {
            continue;
        }
        // A header: `start-end perms offset dev inode [path]`.
        let Some((start, end)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let perms = fields.next().unwrap_or_default().to_string();
        let path = fields.skip(3).collect::<Vec<_>>().join(" ");
        out.push(Mapping {
            size: end.saturating_sub(start),
            rss_kib: 0,
            anon_kib: 0,
            perms,
            path,
        });
    }
    out
}

/// One reading of the process's memory.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// When it was taken, from the spawn.
    at: Duration,
    /// RSS of the mappings that count (outside guest memory), KiB.
    outside_kib: u64,
    /// The anonymous part of `outside_kib`, KiB.
    outside_anon_kib: u64,
    /// RSS of every mapping, KiB.
    total_kib: u64,
    /// The mappings left out as guest memory.
    excluded: Vec<Mapping>,
}

fn measure(mappings: Vec<Mapping>, limit_bytes: u64) -> Sample {
    let mut s = Sample::default();
    for m in mappings {
        s.total_kib += m.rss_kib;
        if m.size >= limit_bytes {
            s.excluded.push(m);
        } else {
            s.outside_kib += m.rss_kib;
            s.outside_anon_kib += m.anon_kib;
        }
    }
    s
}

/// Reads `/proc/PID/smaps`; `None` once the process is gone (or a zombie: no mappings).
fn sample(pid: u32, limit_bytes: u64) -> Option<Sample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mappings = parse_smaps(&text);
    if mappings.is_empty() {
        return None;
    }
    Some(measure(mappings, limit_bytes))
}

/// KVM's debugfs, where each VM has a directory `PID-FD` of counters.
const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";
/// The counters reported, in this order: every exit, and the kinds a VMM's platform
/// decides (port and MMIO accesses it emulates, halts, interrupt windows, emulated
/// instructions, hypercalls).
const KVM_COUNTERS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "irq_injections",
    "insn_emulation",
    "hypercalls",
    "signal_exits",
    "request_irq_exits",
];

/// The VM counters of process `pid` (its first VM), if debugfs shows them. KVM names a
/// VM's directory after the thread that created it (CH creates its VM on a thread of its
/// own), so any of the process's threads counts.
fn kvm_counters(pid: u32) -> Option<Vec<(&'static str, u64)>> {
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| format!("{}-", e.file_name().to_string_lossy()))
        .collect();
    let dir = std::fs::read_dir(KVM_DEBUGFS)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            threads.iter().any(|t| name.starts_with(t.as_str()))
        })?
        .path();
    Some(
        KVM_COUNTERS
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(dir.join(name)).ok()?;
                Some((*name, text.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// When KVM's debugfs showed the VM appear, and when its first exit was counted: the VM
/// is watched for with inotify from before the spawn, so the first VM created is the
/// child's (one VMM runs at a time); then its `exits` counter is read every millisecond
/// until it moves.
#[derive(Default, Clone, Copy)]
struct KvmPhases {
    vm_created: Option<Instant>,
    first_exit: Option<Instant>,
}

/// Starts the watcher; `None` if debugfs or inotify is not there. The thread reports on
/// the returned channel and is left blocked reading when the child never makes a VM.
fn watch_kvm_debugfs() -> Option<mpsc::Receiver<KvmPhases>> {
    use inotify::{Inotify, WatchMask};
    let root = std::path::Path::new(KVM_DEBUGFS);
    let mut inotify = Inotify::init().ok()?;
    inotify.watches().add(root, WatchMask::CREATE).ok()?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let vm = loop {
            let Ok(mut events) = inotify.read_events_blocking(&mut buf) else {
                return;
            };
            let created = events.find_map(|e| {
                let name = e.name?.to_string_lossy().into_owned();
                name.contains('-').then(|| root.join(name))
            });
            if let Some(dir) = created {
                break dir;
            }
        };
        let mut phases = KvmPhases {
            vm_created: Some(Instant::now()),
            first_exit: None,
        };
        if tx.send(phases).is_err() {
            return;
        }
        let exits = vm.join("exits");
        // Until the VM is gone (the child exited) or the counter moves.
        while let Ok(text) = std::fs::read_to_string(&exits) {
            if text.trim().parse::<u64>().is_ok_and(|n| n > 0) {
                phases.first_exit = Some(Instant::now());
                let _ = tx.send(phases);
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    });
    Some(rx)
}

/// The last phases the watcher reported.
fn kvm_phases(rx: Option<&mpsc::Receiver<KvmPhases>>) -> KvmPhases {
    rx.map(|rx| rx.try_iter().last().unwrap_or_default())
        .unwrap_or_default()
}

/// What the stdout reader reports.
enum Event {
    /// The marker was seen, at this instant, with the guest's uptime it gave, if any.
    Marker(Instant, Option<Duration>),
}

/// Forwards the child's stdout as `NAME| LINE` and reports the first marker; returns
/// when the last line came.
fn forward(
    stdout: impl std::io::Read,
    name: &str,
    events: &mpsc::Sender<Event>,
) -> std::io::Result<Option<Instant>> {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut seen = false;
    let mut last = None;
    let out = std::io::stdout();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(last);
        }
        last = Some(Instant::now());
        if !seen && line.windows(MARKER.len()).any(|w| w == MARKER) {
            seen = true;
            // The receiver may be gone (timeout); the line is still forwarded.
            let _ = events.send(Event::Marker(Instant::now(), guest_uptime(&line)));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let mut out = out.lock();
        out.write_all(name.as_bytes())?;
        out.write_all(b"| ")?;
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
}

/// The `uptime=SECONDS` (from /proc/uptime, e.g. `3.49`) of a marker line.
fn guest_uptime(line: &[u8]) -> Option<Duration> {
    let text = String::from_utf8_lossy(line);
    let value = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))?;
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "timeout".to_string(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => format!("signal-{sig}"),
            (None, None) => "unknown".to_string(),
        },
    }
}

/// The run's results.
struct Outcome {
    /// From the spawn to the marker, if it came.
    to_init: Option<Duration>,
    /// The guest's uptime the marker line gave.
    guest_uptime: Option<Duration>,
    /// The VM's KVM exit counters when the marker was seen.
    kvm_at_init: Option<Vec<(&'static str, u64)>>,
    /// The sample with the most RSS outside guest memory.
    peak: Sample,
    /// The most anonymous RSS outside guest memory any sample saw, KiB.
    peak_anon_kib: u64,
    /// The sample taken when the marker was seen.
    at_marker: Option<Sample>,
    /// How many samples were taken, and the time they took.
    samples: u64,
    sampling_time: Duration,
    /// The child's exit status; `None` if it was killed at the timeout.
    status: Option<ExitStatus>,
    /// From the spawn to the child's exit.
    elapsed: Duration,
    /// When the child's last line of output came.
    last_output: Option<Instant>,
}

/// Samples smaps while the child runs, and notes when the marker comes.
struct Sampler {
    pid: u32,
    limit_bytes: u64,
    start: Instant,
    peak: Sample,
    peak_anon_kib: u64,
    samples: u64,
    sampling_time: Duration,
}

impl Sampler {
    /// Takes one sample; returns it (if the process still had mappings) and its cost.
    fn take(&mut self) -> (Option<Sample>, Duration) {
        let t = Instant::now();
        let s = sample(self.pid, self.limit_bytes).map(|mut s| {
            s.at = t.duration_since(self.start);
            s
        });
        let cost = t.elapsed();
        self.sampling_time += cost;
        if let Some(s) = &s {
            self.samples += 1;
            self.peak_anon_kib = self.peak_anon_kib.max(s.outside_anon_kib);
            if s.outside_kib > self.peak.outside_kib {
                self.peak = s.clone();
            }
        }
        (s, cost)
    }
}

fn supervise(opts: &Options, child: &mut Child, start: Instant) -> Result<Outcome> {
    let stdout = child
        .stdout
        .take()
        .context("the child's stdout was not piped")?;
    let (tx, rx) = mpsc::channel();
    let name = opts.name.clone();
    let reader = thread::spawn(move || forward(stdout, &name, &tx));

    let mut sampler = Sampler {
        pid: child.id(),
        limit_bytes: opts
            .guest_ram_mib
            .min(opts.exclude_min_mib)
            .saturating_mul(1 << 20),
        start,
        peak: Sample::default(),
        peak_anon_kib: 0,
        samples: 0,
        sampling_time: Duration::ZERO,
    };
    let mut to_init = None;
    let mut guest_uptime = None;
    let mut kvm_at_init = None;
    let mut at_marker = None;
    let mut next_sample = Some(start);
    let status = loop {
        if let Some(due) = next_sample.filter(|due| Instant::now() >= *due) {
            let (_, cost) = sampler.take();
            next_sample = opts.interval.map(|interval| {
                // Sampling may take at most max_duty_pct of the time: pause long enough.
                let duty = opts.max_duty_pct.clamp(1, 100);
                let stretched = cost.checked_mul(100 - duty).unwrap_or(opts.timeout) / duty;
                due.max(Instant::now()) + interval.max(stretched)
            });
        }
        if let Some(status) = child.try_wait().context("waiting for the child")? {
            break Some(status);
        }
        if start.elapsed() >= opts.timeout {
            eprintln!(
                "vmm-bootbench: {} still running after {:?}: killing it",
                opts.name, opts.timeout
            );
            // It may have exited in between; the wait below tells.
            let _ = child.kill();
            child.wait().context("waiting for the killed child")?;
            break None;
        }
        // Wake for the marker at once, and at least every POLL to see the child exit.
        let wait = next_sample.map_or(POLL, |due| {
            due.saturating_duration_since(Instant::now()).min(POLL)
        });
        match rx.recv_timeout(wait) {
            Ok(Event::Marker(at, uptime)) => {
                if to_init.is_none() {
                    to_init = Some(at.duration_since(start));
                    guest_uptime = uptime;
                    kvm_at_init = kvm_counters(sampler.pid);
                    at_marker = sampler.take().0;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Stdout is closed but the child runs on: keep polling at the same pace.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(wait),
        }
    };
    let elapsed = start.elapsed();
    // The child is gone, so the reader meets EOF unless something the child started
    // still holds the pipe: give it a moment, then leave it.
    let give_up = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(10));
    }
    let mut last_output = None;
    if reader.is_finished() {
        match reader.join() {
            Ok(Ok(last)) => last_output = last,
            Ok(Err(e)) => eprintln!("vmm-bootbench: forwarding stdout: {e}"),
            Err(_) => eprintln!("vmm-bootbench: the stdout reader failed"),
        }
    } else {
        eprintln!("vmm-bootbench: stdout still open after the child exited; not waiting");
    }
    // A marker seen just before the exit is still in the channel.
    if let Ok(Event::Marker(at, uptime)) = rx.try_recv() {
        if to_init.is_none() {
            to_init = Some(at.duration_since(start));
            guest_uptime = uptime;
        }
    }
    Ok(Outcome {
        to_init,
        guest_uptime,
        kvm_at_init,
        peak_anon_kib: sampler.peak_anon_kib,
        peak: sampler.peak,
        at_marker,
        samples: sampler.samples,
        sampling_time: sampler.sampling_time,
        status,
        elapsed,
        last_output,
    })
}

fn run() -> Result<bool> {
    let opts = parse_options(std::env::args().skip(1))?;
    let (program, args) = opts.command.split_first().context("no command after --")?;
    let phases = watch_kvm_debugfs();
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let o = supervise(&opts, &mut child, start)?;

    let to_init = o
        .to_init
        .map_or_else(|| "none".to_string(), |d| d.as_millis().to_string());
    let uptime = o
        .guest_uptime
        .map_or_else(|| "none".to_string(), |d| d.as_millis().to_string());
    let exit = describe(o.status);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bootbench name={} to_init_ms={to_init} peak_rss_outside_guest_kib={} exit={exit} \
         lifetime_ms={} guest_uptime_at_init_ms={uptime}",
        opts.name,
        o.peak.outside_kib,
        o.elapsed.as_millis()
    )?;
    let guest_kib: u64 = o.peak.excluded.iter().map(|m| m.rss_kib).sum();
    let at_marker = o
        .at_marker
        .as_ref()
        .map_or_else(|| "none".to_string(), |s| s.outside_kib.to_string());
    writeln!(
        out,
        "bootbench-detail name={} peak_at_ms={} peak_rss_total_kib={} \
         guest_rss_at_peak_kib={guest_kib} peak_anon_outside_guest_kib={} \
         rss_outside_guest_at_init_kib={at_marker} excluded_mappings={} limit_mib={} \
         samples={} sampling_ms={} run_ms={}",
        opts.name,
        o.peak.at.as_millis(),
        o.peak.total_kib,
        o.peak_anon_kib,
        o.peak.excluded.len(),
        opts.guest_ram_mib.min(opts.exclude_min_mib),
        o.samples,
        o.sampling_time.as_millis(),
        o.elapsed.as_millis(),
    )?;
    // Group identical excluded mappings so the output stays short.
    let mut excluded: BTreeMap<(u64, String, String), (u64, u64)> = BTreeMap::new();
    for m in &o.peak.excluded {
        let e = excluded
            .entry((m.size >> 10, m.perms.clone(), m.path.clone()))
            .or_default();
        e.0 += 1;
        e.1 += m.rss_kib;
    }
    for ((size_kib, perms, path), (count, rss)) in excluded {
        writeln!(
            out,
            "bootbench-excluded name={} size_kib={size_kib} count={count} rss_kib={rss} \
             perms={perms} path={}",
            opts.name,
            if path.is_empty() { "[anon]" } else { &path }
        )?;
    }
    if let Some(counters) = &o.kvm_at_init {
        let fields: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "bootbench-kvm name={} {}", opts.name, fields.join(" "))?;
    }
    let since_start = |at: Option<Instant>| {
        at.map_or_else(
            || "none".to_string(),
            |t| t.saturating_duration_since(start).as_millis().to_string(),
        )
    };
    let phases = kvm_phases(phases.as_ref());
    let clock_start = match (o.to_init, o.guest_uptime) {
        (Some(init), Some(up)) => init.saturating_sub(up).as_millis().to_string(),
        _ => "none".to_string(),
    };
    writeln!(
        out,
        "bootbench-phases name={} vm_created_ms={} first_exit_ms={} \
         guest_clock_start_ms={clock_start} exit_after_last_line_ms={}",
        opts.name,
        since_start(phases.vm_created),
        since_start(phases.first_exit),
        o.last_output.map_or_else(
            || "none".to_string(),
            |t| o
                .elapsed
                .saturating_sub(t.saturating_duration_since(start))
                .as_millis()
                .to_string()
        ),
    )?;
    Ok(o.to_init.is_some() && o.status.is_some_and(|s| s.success()))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vmm-bootbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const SMAPS: &str = "\
5581e0a00000-5581e0a2c000 r--p 00000000 08:01 1234                       /usr/bin/qemu-system-x86_64
Size:                176 kB
Rss:                 176 kB
Pss:                 176 kB
Anonymous:             0 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:               20480 kB
Anonymous:         20480 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  12 kB
Anonymous:             8 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn smaps_mappings_are_parsed_with_their_rss() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/qemu-system-x86_64");
        assert_eq!(m[0].rss_kib, 176);
        assert_eq!(m[1].anon_kib, 20480);
        assert_eq!(m[1].size, 256 << 20);
        assert_eq!(m[1].path, "");
        assert_eq!(m[3].path, "[stack]");
    }

    #[test]
    fn mappings_of_the_limit_or_larger_are_guest_memory() {
        let s = measure(parse_smaps(SMAPS), 64 << 20);
        assert_eq!(s.outside_kib, 176 + 12 + 16);
        assert_eq!(s.outside_anon_kib, 8);
        assert_eq!(s.total_kib, 176 + 20480 + 12 + 16);
        assert_eq!(s.excluded.len(), 1);
    }

    #[test]
    fn the_guest_uptime_comes_from_the_marker_line() {
        assert_eq!(
            guest_uptime(b"TESSERA-INIT uptime=3.49\r\n"),
            Some(Duration::from_millis(3490))
        );
        assert_eq!(guest_uptime(b"TESSERA-INIT\n"), None);
        assert_eq!(guest_uptime(b"TESSERA-INIT uptime=x\n"), None);
        assert_eq!(guest_uptime(b"TESSERA-INIT uptime=-1\n"), None);
    }

    #[test]
    fn options_need_a_name_a_ram_size_and_a_command() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let o = parse_options(args("--name q --guest-ram-mib 512 -- qemu -m 512")).unwrap();
        assert_eq!(o.command, vec!["qemu", "-m", "512"]);
        assert_eq!(o.exclude_min_mib, 64);
        assert!(parse_options(args("--name q --guest-ram-mib 512 --")).is_err());
        assert!(parse_options(args("--guest-ram-mib 512 -- x")).is_err());
        assert!(parse_options(args("--name q --guest-ram-mib x -- y")).is_err());
        assert!(parse_options(args("--name q --guest-ram-mib 1 --max-duty-pct 0 -- y")).is_err());
    }
}
