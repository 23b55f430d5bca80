//! Fuzz targets for every input surface, and the deterministic runner that drives them.
//!
//! Each target is a plain `fn(&[u8])`, written once: the bytes are decoded (with
//! `arbitrary` where structure helps) into operations on one surface, which run against the
//! product code and check its invariants with `assert!`. A panic is a finding; so is a case
//! that does not finish within the runner's timeout (a hang).
//!
//! Two engines drive the same targets: [`run`], a seeded structured-random runner in plain
//! Rust (the `fuzz-run` binary, and the smoke tests `cargo test` runs), and honggfuzz
//! (`tests/hfuzz/`, coverage-guided, stable Rust), which calls [`find`]`(name).run`.

// Harness code: an out-of-range index here is a harness bug, which the runner reports as
// it reports any panic.
#![allow(clippy::indexing_slicing)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub mod acpi;
pub mod api;
pub mod bus;
pub mod cli;
pub mod config;
pub mod platform;
pub mod vfio;

/// A list of at most 16 items whose length is one byte of input. `Vec`'s own
/// `Arbitrary` (and its `arbitrary_take_rest`) decides after each item on a coin flip
/// whether to go on, so lists made from random bytes average one item; the operations
/// of a case are decoded with [`rest`] instead.
#[derive(Clone, Debug)]
pub struct Many<T>(pub Vec<T>);

impl<'a, T: arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for Many<T> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = u.int_in_range(0..=16u8)?;
        (0..n)
            .map(|_| T::arbitrary(u))
            .collect::<arbitrary::Result<_>>()
            .map(Many)
    }
}

/// Items decoded from all the bytes left in `u`, at most `max`.
pub fn rest<'a, T: arbitrary::Arbitrary<'a>>(
    u: &mut arbitrary::Unstructured<'a>,
    max: usize,
) -> Vec<T> {
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < max {
        match T::arbitrary(u) {
            Ok(item) => out.push(item),
            Err(_) => break,
        }
    }
    out
}

/// One fuzz target.
pub struct Target {
    /// Its name, for `fuzz-run TARGET` and the reports.
    pub name: &'static str,
    /// The surface it drives.
    pub surface: &'static str,
    /// Runs one case; panics on a finding.
    pub run: fn(&[u8]),
    /// The longest input the structured runner generates for it.
    pub max_len: usize,
}

/// Every target, guest-facing ones first.
pub const TARGETS: &[Target] = &[
    Target {
        name: "vfio_config",
        surface: "VFIO PCI device: config space, BAR sizing and moves, capabilities, MSI/MSI-X, \
                  MSI-X table and PBA, trapped BAR accesses",
        run: vfio::run,
        max_len: 2048,
    },
    Target {
        name: "pci_config_access",
        surface: "PIO and MMIO buses, 0xCF8/0xCFC and ECAM to the PCI root, host bridge and \
                  functions",
        run: bus::run_config_access,
        max_len: 2048,
    },
    Target {
        name: "bus_ranges",
        surface: "the Bus: insert, remove, relocate and dispatch against a model",
        run: bus::run_ranges,
        max_len: 1024,
    },
    Target {
        name: "serial",
        surface: "16550 UART registers and input",
        run: platform::run_serial,
        max_len: 1024,
    },
    Target {
        name: "cmos",
        surface: "CMOS RTC index/data ports",
        run: platform::run_cmos,
        max_len: 1024,
    },
    Target {
        name: "ged",
        surface: "ACPI Generic Event Device register",
        run: platform::run_ged,
        max_len: 512,
    },
    Target {
        name: "acpi_power",
        surface: "ACPI sleep control/status and reset port",
        run: platform::run_power,
        max_len: 512,
    },
    Target {
        name: "pci_hotplug",
        surface: "ACPI PCI hotplug controller registers (PCIU, PCID, B0EJ, PSEG)",
        run: platform::run_pci_hotplug,
        max_len: 1024,
    },
    Target {
        name: "api_http",
        surface: "HTTP framing, routing and every JSON body, on the real server and socket",
        run: api::run,
        max_len: 4096,
    },
    Target {
        name: "cli_options",
        surface: "command-line option strings (--cpus, --memory, --memory-zone, --device, \
                  --numa, --pci-slot, --platform, ...) and the tessera command line",
        run: cli::run,
        max_len: 1024,
    },
    Target {
        name: "config_json",
        surface: "--config files: VmConfig JSON and its validation",
        run: config::run,
        max_len: 4096,
    },
    Target {
        name: "acpi_roundtrip",
        surface: "topology -> tessera_acpi::build -> decode gives back what went in; decoders \
                  on raw bytes",
        run: acpi::run,
        max_len: 2048,
    },
];

/// The target named `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// SplitMix64: small, fast, and the same sequence on every machine for a given seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Bytes that matter at register boundaries; sprinkled into generated inputs because
/// uniform bytes almost never hit them.
const INTERESTING: &[u8] = &[
    0, 1, 2, 3, 4, 7, 8, 0x0f, 0x10, 0x3f, 0x40, 0x7f, 0x80, 0xfe, 0xff,
];

/// Fills `out` with one generated input of at most `max_len` bytes: mostly short inputs
/// (most structure decodes from the first bytes), runs of 0x00/0xff, interesting bytes.
pub fn generate(rng: &mut Rng, max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    let cap = match rng.below(4) {
        0 => 64,
        1 => 256,
        _ => max_len,
    }
    .min(max_len);
    let len = rng.below(cap as u64 + 1) as usize;
    while out.len() < len {
        match rng.below(8) {
            0 => {
                let b = if rng.below(2) == 0 { 0 } else { 0xff };
                let run = 1 + rng.below(8) as usize;
                out.extend(std::iter::repeat_n(b, run));
            }
            1 | 2 => out.push(INTERESTING[rng.below(INTERESTING.len() as u64) as usize]),
            _ => out.extend_from_slice(&rng.next_u64().to_le_bytes()),
        }
    }
    out.truncate(len);
}

/// What a run found.
#[derive(Debug)]
pub enum FindingKind {
    /// The target panicked, with this message.
    Panic(String),
    /// A case ran longer than the timeout.
    Hang(Duration),
}

/// A case that failed, with what is needed to replay it.
#[derive(Debug)]
pub struct Finding {
    /// The target.
    pub target: &'static str,
    /// The seed of the run.
    pub seed: u64,
    /// The case number within the run.
    pub case: u64,
    /// The input bytes.
    pub input: Vec<u8>,
    /// Panic or hang.
    pub kind: FindingKind,
}

/// A run that found nothing.
#[derive(Debug)]
pub struct Summary {
    /// Cases run.
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `cases` generated inputs through `target` from `seed`, stopping at the first
/// panic. A case running past `timeout` is a hang: there is no way to stop a thread, so
/// `on_hang` is called from a watchdog thread with the finding (to report and save it)
/// and the process then exits with status 3.
pub fn run(
    target: &'static Target,
    cases: u64,
    seed: u64,
    timeout: Duration,
    on_hang: fn(&Finding),
) -> Result<Summary, Box<Finding>> {
    let start = Instant::now();
    let current = Arc::new(Mutex::new(Vec::new()));
    // Case number + 1 of the case running (0: none), and when it started (ms since start).
    let running = Arc::new(AtomicU64::new(0));
    let started_ms = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, running, started_ms, done) = (
            current.clone(),
            running.clone(),
            started_ms.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
            while !done.load(Ordering::Relaxed) {
                // Woken early by `unpark` when the run ends.
                std::thread::park_timeout(tick);
                let case = running.load(Ordering::Acquire);
                let since = (start.elapsed().as_millis() as u64)
                    .saturating_sub(started_ms.load(Ordering::Acquire));
                if case != 0 && Duration::from_millis(since) > timeout {
                    // Still the same case? Then it hangs.
                    if running.load(Ordering::Acquire) == case {
                        let input = current
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone();
                        on_hang(&Finding {
                            target: target.name,
                            seed,
                            case: case - 1,
                            input,
                            kind: FindingKind::Hang(Duration::from_millis(since)),
                        });
                        std::process::exit(3);
                    }
                }
            }
        })
    };
    let mut rng = Rng::new(seed);
    let mut input = Vec::with_capacity(target.max_len);
    let mut result = Ok(());
    for case in 0..cases {
        generate(&mut rng, target.max_len, &mut input);
        current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&input);
        started_ms.store(start.elapsed().as_millis() as u64, Ordering::Release);
        running.store(case + 1, Ordering::Release);
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        running.store(0, Ordering::Release);
        if let Err(payload) = outcome {
            result = Err(Box::new(Finding {
                target: target.name,
                seed,
                case,
                input: input.clone(),
                kind: FindingKind::Panic(panic_message(&*payload)),
            }));
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    result.map(|()| Summary {
        cases,
        elapsed: start.elapsed(),
    })
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Runs `target` on each input in `inputs` (a corpus, or saved findings), stopping at
/// the first panic.
pub fn replay(target: &'static Target, inputs: &[Vec<u8>]) -> Result<(), Box<Finding>> {
    for (case, input) in inputs.iter().enumerate() {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
            return Err(Box::new(Finding {
                target: target.name,
                seed: 0,
                case: case as u64,
                input: input.clone(),
                kind: FindingKind::Panic(panic_message(&*payload)),
            }));
        }
    }
    Ok(())
}

/// The first line of the panic `target` gives on `input`, if it panics.
fn panics_with(target: &Target, input: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input)))
        .err()
        .map(|p| {
            panic_message(&*p)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
}

/// Shrinks `input` while `target` still panics with the same first line: removes chunks
/// of halving size, then lowers bytes. For regression tests that say what matters.
pub fn minimize(target: &Target, input: &[u8]) -> Vec<u8> {
    let Some(want) = panics_with(target, input) else {
        return input.to_vec();
    };
    // Only the panics that matter are printed while shrinking.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut best = input.to_vec();
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        while at < best.len() {
            let mut shorter = best.clone();
            shorter.drain(at..(at + chunk).min(best.len()));
            if panics_with(target, &shorter).as_ref() == Some(&want) {
                best = shorter;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    for i in 0..best.len() {
        for value in [0u8, 1] {
            if best[i] > value {
                let mut lower = best.clone();
                lower[i] = value;
                if panics_with(target, &lower).as_ref() == Some(&want) {
                    best = lower;
                    break;
                }
            }
        }
    }
    std::panic::set_hook(hook);
    best
}

/// Prints a finding to stderr with its input in hex, for a regression test.
pub fn report(finding: &Finding) {
    eprintln!(
        "FINDING in {} (seed {}, case {}): {:?}\ninput ({} bytes): {}",
        finding.target,
        finding.seed,
        finding.case,
        finding.kind,
        finding.input.len(),
        hex(&finding.input)
    );
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (as [`hex`] writes it); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// The smoke each `cargo test` runs of one target: `cases` cases from a fixed seed, with
/// a 10 s per-case timeout. Panics with the finding (hex input included) if there is one.
#[allow(clippy::panic)] // a test helper: failing the test is its job
pub fn smoke(name: &str, cases: u64) {
    let Some(target) = find(name) else {
        panic!("no fuzz target {name}");
    };
    if let Err(finding) = run(target, cases, 0x07e5_5e7a, Duration::from_secs(10), report) {
        report(&finding);
        panic!("fuzz target {name} found a crash: {:?}", finding.kind);
    }
}
