//! The HTTP API as a client reaches it: raw or structured requests (method, a real route or
//! junk, headers, Content-Length right or wrong, chunked, pipelined) with JSON bodies made
//! from the field names of `openapi.json`, sent to the real server on a real Unix socket.
//! The fake VMM behind it answers as the real one's checks do (`VmConfig::validate`).
//!
//! Invariant beyond "no panic": no 5xx but 501 (an unsupported Cloud Hypervisor endpoint),
//! and an answer is a well-formed HTTP/1.1 status line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Result as ArbResult, Unstructured};
use serde_json::{Map, Number, Value};
use tessera_api::server::{serve, ApiError, ApiReply, ApiRequest, Published, VmAction};
use tokio::sync::mpsc;

/// Field names from the OpenAPI document, and some that are not there.
pub fn keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = std::collections::BTreeSet::new();
        if let Ok(doc) = serde_json::from_str::<Value>(tessera_api::server::openapi_json()) {
            collect_keys(&doc, &mut keys);
        }
        keys.extend(["unknown", "", "x"].map(String::from));
        keys.into_iter().collect()
    })
}

fn collect_keys(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "properties" {
                    if let Value::Object(props) = v {
                        out.extend(props.keys().cloned());
                    }
                }
                collect_keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_keys(v, out)),
        _ => {}
    }
}

/// Strings that mean something to some field.
const STRINGS: &[&str] = &[
    "",
    "0",
    "1",
    "1G",
    "512M",
    "4K",
    "0x1000",
    "18446744073709551616",
    "0000:00:01.0",
    "ffff:ff:1f.7",
    "00:20.0",
    "0-3",
    "1,3-5",
    "3-1",
    "/dev/null",
    "/sys/bus/pci/devices/0000:01:00.0",
    "dev0",
    "_dev",
    "4b20d080-1b54-4048-85b3-a6a62d165c01",
    "on",
    "off",
    "tty",
    "null",
    "pty",
    "socket=/tmp/x",
    "file=/tmp/x",
    "1.5",
    "-1",
    "é",
];

/// A JSON value at most `depth` deep, with object keys from [`keys`].
pub fn json(u: &mut Unstructured<'_>, depth: u32) -> ArbResult<Value> {
    let pick = if depth == 0 {
        u.int_in_range(0..=5)?
    } else {
        u.int_in_range(0..=8)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(*u.choose(&[
            0u64,
            1,
            2,
            3,
            7,
            8,
            31,
            32,
            255,
            256,
            65535,
            65536,
            1 << 20,
            1 << 30,
            u32::MAX as u64,
            u64::MAX,
        ])?),
        3 => Value::from(u.arbitrary::<i64>()?),
        4 => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
        5 => Value::String(if u.ratio(3, 4)? {
            (*u.choose(STRINGS)?).to_string()
        } else {
            u.arbitrary::<String>()?
        }),
        6 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| json(u, depth - 1))
                    .collect::<ArbResult<_>>()?,
            )
        }
        _ => {
            let n = u.int_in_range(0..=6)?;
            let mut map = Map::new();
            for _ in 0..n {
                let key = u.choose(keys())?.clone();
                map.insert(key, json(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}

/// The server, started once per process on its own thread, and its fake VMM.
fn socket() -> Option<&'static PathBuf> {
    static SOCKET: OnceLock<Option<PathBuf>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let dir = tempfile::tempdir().ok()?.keep();
            let path = dir.join("api.sock");
            let listener = tessera_api::server::bind(&path).ok()?;
            let (tx, mut rx) = mpsc::channel::<ApiRequest>(16);
            std::thread::spawn(move || {
                while let Some(req) = rx.blocking_recv() {
                    let _ = req.reply.send(answer(&req.action));
                }
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            std::thread::spawn(move || {
                let published = std::sync::Arc::new(Published::new());
                let _ = rt.block_on(serve(listener, tx, published, std::future::pending()));
            });
            Some(path)
        })
        .as_ref()
}

/// What the VMM's own checks would answer.
fn answer(action: &VmAction) -> Result<ApiReply, ApiError> {
    match action {
        VmAction::Create(config) => {
            config.validate()?;
            // What was parsed serializes and parses back the same (vm.info shows it).
            let text = serde_json::to_string(config)
                .map_err(|e| ApiError::new(500, e.to_string(), None))?;
            let again: tessera_api::config::VmConfig = serde_json::from_str(&text)
                .map_err(|e| ApiError::new(500, format!("{e}: {text}"), None))?;
            if &again != config.as_ref() {
                return Err(ApiError::new(500, format!("round trip: {text}"), None));
            }
            Ok(ApiReply::NoContent)
        }
        _ => Ok(ApiReply::NoContent),
    }
}

#[derive(Debug)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
    None,
}

#[derive(Debug)]
struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Body,
    /// Content-Length: right (`None`), wrong, or absent with chunked encoding.
    length: Option<Length>,
}

#[derive(Arbitrary, Debug)]
enum Length {
    Wrong(u32),
    Missing,
    Chunked,
    Twice,
}

fn request(u: &mut Unstructured<'_>) -> ArbResult<HttpRequest> {
    let routes: Vec<(&str, String)> = tessera_api::server::routes().collect();
    let method = match u.int_in_range(0..=4)? {
        0 | 1 => "PUT".to_string(),
        2 => "GET".to_string(),
        3 => {
            (*u.choose(&["POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "put", "G ET"])?).to_string()
        }
        _ => u.arbitrary::<String>()?,
    };
    let path = match u.int_in_range(0..=5)? {
        0..=3 => u.choose(&routes)?.1.clone(),
        4 => format!(
            "{}{}",
            u.choose(&routes)?.1,
            *u.choose(&["/", "?x=1", "%00", "//", "/..", "#"])?
        ),
        _ => u.arbitrary::<String>()?,
    };
    let mut headers = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name = (*u.choose(&[
            "Content-Type",
            "Accept",
            "Host",
            "Connection",
            "Expect",
            "Transfer-Encoding",
            "X-Junk",
        ])?)
        .to_string();
        let value = if u.ratio(1, 2)? {
            (*u.choose(&[
                "application/json",
                "close",
                "keep-alive",
                "100-continue",
                "chunked",
                "*/*",
                "",
            ])?)
            .to_string()
        } else {
            u.arbitrary::<String>()?
        };
        headers.push((name, value));
    }
    let body = match u.int_in_range(0..=4)? {
        0..=2 => Body::Json(json(u, 4)?),
        3 => Body::Raw(u.arbitrary()?),
        _ => Body::None,
    };
    let length = if u.ratio(1, 4)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    Ok(HttpRequest {
        method,
        path,
        headers,
        body,
        length,
    })
}

fn bytes(r: &HttpRequest) -> Vec<u8> {
    let body = match &r.body {
        Body::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
        Body::Raw(b) => b.clone(),
        Body::None => Vec::new(),
    };
    let mut out = format!("{} {} HTTP/1.1\r\nHost: localhost\r\n", r.method, r.path).into_bytes();
    for (name, value) in &r.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    match r.length {
        None => out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()),
        Some(Length::Wrong(n)) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes())
        }
        Some(Length::Missing) => out.extend_from_slice(b"\r\n"),
        Some(Length::Twice) => out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
                body.len(),
                body.len() + 1
            )
            .as_bytes(),
        ),
        Some(Length::Chunked) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(7) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            return out;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let Some(socket) = socket() else { return };
    let mut u = Unstructured::new(data);
    // A raw byte stream one time in eight, else one to three structured requests.
    let payload = if data.first().is_some_and(|b| b % 8 == 0) {
        data.get(1..).unwrap_or_default().to_vec()
    } else {
        let _ = u.bytes(1);
        let mut out = Vec::new();
        let count = u.int_in_range(1..=3u8).unwrap_or(1);
        for _ in 0..count {
            match request(&mut u) {
                Ok(r) => out.extend(bytes(&r)),
                Err(_) => break,
            }
        }
        out
    };
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // The server may answer and close before it has read everything (an oversized body):
    // a write error then is fine.
    let _ = stream.write_all(&payload);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if let Err(e) = &read {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no answer within 5 s"
        );
    }
    check_answers(&answer);
}

/// The answer starts with an HTTP/1.1 status line, and no status line in it (several
/// when requests were pipelined) is a 5xx other than 501. Status lines are found by
/// scanning, not by framing: a HEAD answer has a Content-Length and no body.
fn check_answers(answer: &[u8]) {
    if answer.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(answer);
    assert!(text.starts_with("HTTP/1.1 "), "not a status line: {text:?}");
    for (i, _) in text.match_indices("HTTP/1.1 ") {
        let Some(status) = text.get(i + 9..i + 12).and_then(|s| s.parse::<u16>().ok()) else {
            continue;
        };
        assert!(
            (100..600).contains(&status) && (status < 500 || status == 501),
            "bad answer {text:?}"
        );
    }
}
