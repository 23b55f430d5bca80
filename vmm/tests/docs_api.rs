//! `docs/api.md`'s examples, run: every ```` ```sh ```` block of the page, in order, as one
//! `bash -euo pipefail` session against a fresh `tessera --api-socket $SOCK`, each
//! block's output compared with the ```` ```json ```` or ```` ```text ```` block that
//! follows it.
//!
//! The rules the page follows:
//!
//! - A fenced block whose info string is exactly `sh` is part of the session. Other
//!   blocks (`console`, `json`, `text`, ...) are not run.
//! - A `sh` block's expected output is the next fenced block of the page if that is a
//!   `json` or `text` block. `json`: the output must be the same JSON values (compared
//!   as values with serde_json, so spacing and layout are free). `text`: the output must
//!   be the same text once both are trimmed. A `sh` block followed by any other block
//!   must print nothing.
//! - The session gets `SOCK` (the API socket), `KERNEL` (the Linux judge's bzImage) and
//!   `tessera` on `PATH`; it runs in a fresh temporary directory.
//!
//! Any block failing (a command's non-zero status ends the session) or printing
//! something else than the page shows fails the test, naming the block by its line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const PAGE: &str = include_str!("../../docs/api.md");
const PAGE_NAME: &str = "docs/api.md";
/// The whole session's time limit.
const SESSION_TIMEOUT: Duration = Duration::from_secs(180);
/// Printed between blocks to split the session's output; no example prints it.
const MARKER: &str = "@@docs-api-block@@";

/// A fenced block of the page.
#[derive(Debug)]
struct Fence {
    /// The info string (`sh`, `json`, ...).
    lang: String,
    /// The block's lines, joined.
    body: String,
    /// The 1-based line of the opening fence.
    line: usize,
}

/// A `sh` block and what it must print.
#[derive(Debug)]
struct Example {
    script: String,
    line: usize,
    expected: Expected,
}

#[derive(Debug)]
enum Expected {
    Json(String),
    Text(String),
    Nothing,
}

fn fences(page: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (i, line) in page.lines().enumerate() {
        match open.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Fence {
                        lang: info.trim().to_owned(),
                        body: String::new(),
                        line: i + 1,
                    });
                }
            }
            Some(fence) => {
                if line.trim_end() == "```" {
                    out.extend(open.take());
                } else {
                    fence.body.push_str(line);
                    fence.body.push('\n');
                }
            }
        }
    }
    if let Some(fence) = open {
        panic!(
            "{PAGE_NAME}:{}: the {} block is never closed",
            fence.line, fence.lang
        );
    }
    out
}

fn examples(page: &str) -> Vec<Example> {
    let fences = fences(page);
    fences
        .iter()
        .enumerate()
        .filter(|(_, f)| f.lang == "sh")
        .map(|(i, f)| {
            let expected = match fences.get(i + 1) {
                Some(next) if next.lang == "json" => Expected::Json(next.body.clone()),
                Some(next) if next.lang == "text" => Expected::Text(next.body.clone()),
                _ => Expected::Nothing,
            };
            Example {
                script: f.body.clone(),
                line: f.line,
                expected,
            }
        })
        .collect()
}

/// Every JSON value in `text`, in order.
fn json_values(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect()
}

/// Why `output` is not what `expected` says, or `None` if it is.
fn mismatch(expected: &Expected, output: &str) -> Option<String> {
    match expected {
        Expected::Json(want) => {
            let want = json_values(want)
                .unwrap_or_else(|e| panic!("the expected json block is not JSON: {e}"));
            match json_values(output) {
                Ok(got) if got == want => None,
                Ok(got) => Some(format!(
                    "expected JSON:\n{}\ngot JSON:\n{}",
                    pretty(&want),
                    pretty(&got)
                )),
                Err(e) => Some(format!("the output is not JSON ({e}):\n{output}")),
            }
        }
        Expected::Text(want) => (want.trim() != output.trim()).then(|| {
            format!(
                "expected text:\n{}\ngot text:\n{}",
                want.trim(),
                output.trim()
            )
        }),
        Expected::Nothing => (!output.trim().is_empty())
            .then(|| format!("expected no output (no json/text block follows), got:\n{output}")),
    }
}

fn pretty(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The session: the blocks, each after a marker line.
fn session(examples: &[Example]) -> String {
    let mut script = String::new();
    for example in examples {
        script.push_str(&format!("printf '\\n%s\\n' '{MARKER}'\n"));
        script.push_str(&example.script);
        script.push('\n');
    }
    script.push_str(&format!("printf '\\n%s\\n' '{MARKER}'\n"));
    script
}

/// The text after each marker line of the session's output: one part per block that
/// started (the last one's partial if the session stopped in it), plus what follows
/// the closing marker (nothing) if the session finished.
fn split_output(stdout: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line == MARKER {
            parts.push(String::new());
        } else if let Some(text) = parts.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    parts
}

fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `tessera --api-socket SOCK`, killed (if still running) when dropped.
struct Tessera {
    child: Child,
    output: Vec<JoinHandle<String>>,
}

impl Tessera {
    fn start(socket: &Path) -> Self {
        let mut child = Command::new(TESSERA)
            .arg("--api-socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = vec![
            drain(child.stdout.take().unwrap()),
            drain(child.stderr.take().unwrap()),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tessera exited ({status}) before creating its socket");
            }
            assert!(Instant::now() < deadline, "tessera made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Tessera { child, output }
    }

    /// Stops tessera and returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output
            .drain(..)
            .map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }
}

impl Drop for Tessera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_has_examples_with_outputs() {
    let examples = examples(PAGE);
    assert!(examples.len() >= 20, "{} sh blocks", examples.len());
    let checked = examples
        .iter()
        .filter(|e| !matches!(e.expected, Expected::Nothing))
        .count();
    assert!(checked >= 20, "{checked} sh blocks with an output block");
    for e in &examples {
        if let Expected::Json(want) = &e.expected {
            assert!(
                json_values(want).is_ok(),
                "{PAGE_NAME}: the json block after line {} is not JSON",
                e.line
            );
        }
    }
}

#[test]
fn every_example_of_the_api_page_runs_as_shown() {
    let examples = examples(PAGE);
    let kernel = tessera_tests::linux_judge::images().unwrap().vmlinuz;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let script = dir.path().join("session.sh");
    std::fs::write(&script, session(&examples)).unwrap();
    let bin_dir = Path::new(TESSERA).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();

    let tessera = Tessera::start(&socket);
    let mut bash = Command::new("bash")
        .args(["-euo", "pipefail"])
        .arg(&script)
        .current_dir(dir.path())
        .env("SOCK", &socket)
        .env("KERNEL", &kernel)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let stdout = drain(bash.stdout.take().unwrap());
    let stderr = drain(bash.stderr.take().unwrap());
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let status = loop {
        if let Some(status) = bash.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = bash.kill();
            let _ = bash.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let tessera_log = tessera.stop();

    let outputs = split_output(&stdout);
    let mut failures = Vec::new();
    for (example, output) in examples.iter().zip(&outputs) {
        if let Some(why) = mismatch(&example.expected, output) {
            failures.push(format!(
                "{PAGE_NAME}:{}: the sh block's output differs from the page\n{why}",
                example.line
            ));
        }
    }
    // A finished session printed one marker per block and the closing one.
    let finished = status.is_some_and(|s| s.success()) && outputs.len() == examples.len() + 1;
    if !finished {
        let stopped_in = outputs
            .len()
            .checked_sub(1)
            .and_then(|i| examples.get(i))
            .map_or("before the first block".to_owned(), |e| {
                format!("in the sh block at {PAGE_NAME}:{}", e.line)
            });
        let how = status.map_or(format!("timed out after {SESSION_TIMEOUT:?}"), |s| {
            s.to_string()
        });
        failures.push(format!("the session stopped ({how}) {stopped_in}"));
    }
    assert!(
        failures.is_empty(),
        "{}\n\n--- session stderr:\n{stderr}\n--- tessera's output:\n{tessera_log}",
        failures.join("\n\n")
    );
}

#[test]
fn outputs_are_split_per_block_and_compared() {
    let out = format!("{MARKER}\n{{\"a\": 1}}\n\n{MARKER}\n204\n{MARKER}\n");
    let parts = split_output(&out);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2], "");
    assert_eq!(
        mismatch(&Expected::Json("{\"a\":1}".into()), &parts[0]),
        None
    );
    assert!(mismatch(&Expected::Json("{\"a\":2}".into()), &parts[0]).is_some());
    assert_eq!(mismatch(&Expected::Text("204\n".into()), &parts[1]), None);
    assert!(mismatch(&Expected::Text("200".into()), &parts[1]).is_some());
    assert!(mismatch(&Expected::Nothing, &parts[1]).is_some());
    // A block that did not finish: its partial output is its part.
    assert_eq!(split_output(&format!("{MARKER}\nhalf")), vec!["half\n"]);
    assert_eq!(split_output(&format!("{MARKER}\n")), vec![""]);
}
