//! `api-bench`: latency and throughput of Tessera's HTTP API on its Unix socket, for
//! `scripts/bench-api.sh`; run by hand, not in CI.
//!
//! ```text
//! api-bench --socket PATH [--path P]... [--clients N]... [--requests R] [--seconds S]
//!           [--warmup W] [--threads T]
//! ```
//!
//! For every path P (`vmm.ping` by default; relative to `/api/v1/`) and every client
//! count N (1 by default), in that order, N clients each open one keep-alive HTTP/1.1
//! connection (hyper) to the socket, send W GETs (10) to warm up, wait for each other,
//! then send GETs one after another, each waiting for the whole answer before the next,
//! until R requests (20 000) have been sent between them or S seconds (5) have passed,
//! whichever comes first. A request's latency runs from just before it is sent to the
//! end of its answer's body, so it includes the time the client's own runtime takes to
//! get to it. The clients run as tasks on a tokio runtime of T threads (1: a
//! current-thread runtime, which leaves the other CPUs to the VMM).
//!
//! Output, one line per configuration:
//!
//! ```text
//! api-bench GET /api/v1/vmm.ping clients=64 requests=20000 errors=0 secs=1.234 p50_us=.. p99_us=.. max_us=.. rps=..
//! ```
//!
//! Percentiles are nearest-rank over every request of the configuration; `rps` is the
//! requests answered divided by the time from the start barrier to the last answer.
//! Exit status: 0 if every request was answered 200, 1 otherwise (the line still says
//! what was measured), 2 for a bad command line.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::Barrier;

/// Every path is under this.
const API_PREFIX: &str = "/api/v1/";

/// The parsed command line.
#[derive(Debug)]
struct Options {
    /// The API socket.
    socket: String,
    /// Paths under [`API_PREFIX`] to GET.
    paths: Vec<String>,
    /// Client counts.
    clients: Vec<u64>,
    /// The most requests per configuration, over all its clients.
    requests: u64,
    /// The longest a configuration runs.
    duration: Duration,
    /// Requests each client sends before measuring.
    warmup: u64,
    /// tokio worker threads; 1 is a current-thread runtime.
    threads: usize,
}

fn usage() -> &'static str {
    "usage: api-bench --socket PATH [--path P]... [--clients N]... [--requests R] \
     [--seconds S] [--warmup W] [--threads T]"
}

fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Options> {
    let mut socket = None;
    let mut paths = Vec::new();
    let mut clients = Vec::new();
    let mut requests = 20_000;
    let mut seconds = 5.0_f64;
    let mut warmup = 10;
    let mut threads = 1;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{}", usage()))
        };
        let number = |v: String| -> Result<u64> {
            v.parse()
                .with_context(|| format!("{flag}: {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--socket" => socket = Some(value()?),
            "--path" => paths.push(value()?.trim_start_matches('/').to_owned()),
            "--clients" => clients.push(number(value()?)?),
            "--requests" => requests = number(value()?)?,
            "--seconds" => {
                let v = value()?;
                seconds = v
                    .parse()
                    .with_context(|| format!("--seconds: {v:?} is not a number"))?;
            }
            "--warmup" => warmup = number(value()?)?,
            "--threads" => threads = usize::try_from(number(value()?)?)?,
            "-h" | "--help" => bail!("{}", usage()),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let socket = socket.with_context(|| format!("--socket is required\n{}", usage()))?;
    if paths.is_empty() {
        paths.push("vmm.ping".to_owned());
    }
    if clients.is_empty() {
        clients.push(1);
    }
    if clients.contains(&0) || requests == 0 || threads == 0 {
        bail!("--clients, --requests and --threads must be at least 1");
    }
    if !(seconds > 0.0 && seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    Ok(Options {
        socket,
        paths,
        clients,
        requests,
        duration: Duration::from_secs_f64(seconds),
        warmup,
        threads,
    })
}

/// What one configuration measured.
struct Outcome {
    /// Every answered request's latency, in nanoseconds.
    latencies_ns: Vec<u64>,
    /// Requests that failed or were not answered 200.
    errors: u64,
    /// From the start barrier to the last answer.
    elapsed: Duration,
}

/// One keep-alive connection to the API.
async fn connect(socket: &str) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {socket}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake")?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One GET on `sender`'s connection, read to the end of its body: whether it was 200.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, uri: &str) -> Result<bool> {
    sender.ready().await.context("connection lost")?;
    let request = Request::get(uri)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let ok = response.status() == hyper::StatusCode::OK;
    response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?;
    Ok(ok)
}

/// One client: connect, warm up, wait at `start`, then GET until the shared budget of
/// requests is spent or `deadline` passes. Returns its latencies and error count.
async fn client(
    socket: Arc<str>,
    uri: Arc<str>,
    warmup: u64,
    start: Arc<Barrier>,
    budget: Arc<AtomicU64>,
    duration: Duration,
) -> (Vec<u64>, u64, Option<Instant>) {
    let mut errors = 0;
    let mut sender = match connect(&socket).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("api-bench: {e:#}");
            errors += 1;
            None
        }
    };
    if let Some(s) = sender.as_mut() {
        for _ in 0..warmup {
            if !matches!(get(s, &uri).await, Ok(true)) {
                errors += 1;
            }
        }
    }
    // Every client waits here, connected or not, so that none waits forever.
    start.wait().await;
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    let mut last = None;
    let Some(mut sender) = sender else {
        return (latencies, errors, last);
    };
    while Instant::now() < deadline && take_one(&budget) {
        let sent = Instant::now();
        match get(&mut sender, &uri).await {
            Ok(ok) => {
                let done = Instant::now();
                latencies.push(u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX));
                last = Some(done);
                if !ok {
                    errors += 1;
                }
            }
            Err(e) => {
                eprintln!("api-bench: {e:#}");
                errors += 1;
                break;
            }
        }
    }
    (latencies, errors, last)
}

/// Takes one request from the shared budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

/// Runs one configuration: `clients` clients GETting `path`.
async fn run(options: &Options, path: &str, clients: u64) -> Result<Outcome> {
    let socket: Arc<str> = Arc::from(options.socket.as_str());
    let uri: Arc<str> = Arc::from(format!("http://localhost{API_PREFIX}{path}"));
    let parties = usize::try_from(clients)?.saturating_add(1);
    let start = Arc::new(Barrier::new(parties));
    let budget = Arc::new(AtomicU64::new(options.requests));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                Arc::clone(&socket),
                Arc::clone(&uri),
                options.warmup,
                Arc::clone(&start),
                Arc::clone(&budget),
                options.duration,
            ))
        })
        .collect();
    start.wait().await;
    let began = Instant::now();
    let mut outcome = Outcome {
        latencies_ns: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    let mut end = began;
    for task in tasks {
        let (latencies, errors, last) = task.await.context("a client task failed")?;
        outcome.latencies_ns.extend(latencies);
        outcome.errors += errors;
        end = end.max(last.unwrap_or(began));
    }
    outcome.elapsed = end - began;
    Ok(outcome)
}

/// The nearest-rank percentile `p` (0 to 100) of sorted `values`, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied().unwrap_or_default() as f64 / 1000.0
}

fn report(path: &str, clients: u64, outcome: &mut Outcome) -> String {
    outcome.latencies_ns.sort_unstable();
    let n = outcome.latencies_ns.len();
    let secs = outcome.elapsed.as_secs_f64();
    let rps = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    format!(
        "api-bench GET {API_PREFIX}{path} clients={clients} requests={n} errors={} \
         secs={secs:.3} p50_us={:.1} p99_us={:.1} max_us={:.1} rps={rps:.0}",
        outcome.errors,
        percentile_us(&outcome.latencies_ns, 50.0),
        percentile_us(&outcome.latencies_ns, 99.0),
        percentile_us(&outcome.latencies_ns, 100.0),
    )
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("api-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("api-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for path in &options.paths {
        for &clients in &options.clients {
            match runtime.block_on(run(&options, path, clients)) {
                Ok(mut outcome) => {
                    failed |= outcome.errors > 0 || outcome.latencies_ns.is_empty();
                    println!("{}", report(path, clients, &mut outcome));
                }
                Err(e) => {
                    eprintln!("api-bench: GET {API_PREFIX}{path} clients={clients}: {e:#}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(percentile_us(&values, 50.0), 50.0);
        assert_eq!(percentile_us(&values, 99.0), 99.0);
        assert_eq!(percentile_us(&values, 100.0), 100.0);
        assert_eq!(percentile_us(&[7000], 99.0), 7.0);
        assert_eq!(percentile_us(&[], 50.0), 0.0);
    }

    #[test]
    fn options_parse_with_defaults() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let o = parse_options(args("--socket s")).unwrap();
        assert_eq!(
            (o.paths, o.clients, o.requests),
            (vec!["vmm.ping".to_owned()], vec![1], 20_000)
        );
        let o = parse_options(args(
            "--socket s --path /vm.info --path vmm.ping --clients 1 --clients 64 --seconds 0.5",
        ))
        .unwrap();
        assert_eq!(o.paths, ["vm.info", "vmm.ping"]);
        assert_eq!(o.clients, [1, 64]);
        assert_eq!(o.duration, Duration::from_millis(500));
        assert!(parse_options(args("--path x")).is_err());
        assert!(parse_options(args("--socket s --clients 0")).is_err());
        assert!(parse_options(args("--socket s --bogus")).is_err());
    }

    #[test]
    fn the_budget_is_shared() {
        let budget = AtomicU64::new(2);
        assert!(take_one(&budget) && take_one(&budget));
        assert!(!take_one(&budget));
    }
}
