//! A minimal client for the API socket, as `tessera-ctl` uses it: one HTTP/1 request on
//! a fresh Unix-stream connection (hyper), answered with the status and the whole body.
//! [`Response::error`] turns a failed answer back into the [`ApiError`] the server sent.

use std::path::{Path, PathBuf};

use crate::error::{ApiError, ERROR_FIELD_HEADER};
use crate::server::API_PREFIX;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
pub use hyper::Method;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// An answer from the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body, as sent (empty for 204).
    pub body: Vec<u8>,
    /// The [`ERROR_FIELD_HEADER`] of a failed answer.
    pub error_field: Option<String>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error a non-2xx answer carries: the server's error chain (a JSON array of
    /// strings, joined with `: `) and field, or, when the body is not a chain, its text
    /// (or the status's reason phrase if empty).
    pub fn error(&self) -> Option<ApiError> {
        if self.is_success() {
            return None;
        }
        if let Ok(chain) = serde_json::from_slice::<Vec<String>>(&self.body) {
            return Some(ApiError::new(
                self.status,
                chain.join(": "),
                self.error_field.clone(),
            ));
        }
        let text = String::from_utf8_lossy(&self.body).trim().to_owned();
        let text = if text.is_empty() {
            hyper::StatusCode::from_u16(self.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("request failed")
                .to_owned()
        } else {
            text
        };
        Some(ApiError::new(self.status, text, None))
    }
}

/// Why a request got no answer. The message says what failed; `source()` says why.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to (missing, refused, no permission).
    #[error("cannot connect to the API socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the server closed the connection, sent garbage, ...).
    #[error("no answer on the API socket {}", path.display())]
    Http {
        /// The socket path.
        path: PathBuf,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (an endpoint that is not a valid URI path).
    #[error("cannot build the request for {endpoint}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// The error.
        #[source]
        source: hyper::http::Error,
    },
    /// The runtime for [`request_blocking`] could not be started.
    #[error("cannot start the client's runtime")]
    Runtime(#[source] std::io::Error),
}

/// Sends one request to `endpoint` (a path under [`API_PREFIX`], e.g. `/vm.info`) on the
/// API socket at `socket`, with `body` as JSON if given, and reads the whole answer.
/// Must run on a tokio runtime with IO enabled.
pub async fn request(
    socket: &Path,
    method: Method,
    endpoint: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, ClientError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{API_PREFIX}{endpoint}"))
        .header(HOST, "localhost")
        .header(ACCEPT, "application/json");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|source| ClientError::Request {
            endpoint: endpoint.to_owned(),
            source,
        })?;

    let http = |source| ClientError::Http {
        path: socket.to_owned(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let exchange = async move {
        let answer = sender.send_request(request).await?;
        let status = answer.status().as_u16();
        let error_field = answer
            .headers()
            .get(ERROR_FIELD_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = answer.into_body().collect().await?.to_bytes();
        // With the sender gone the connection closes once idle, so the join ends.
        drop(sender);
        Ok::<_, hyper::Error>(Response {
            status,
            body: body.to_vec(),
            error_field,
        })
    };
    // Once the answer is in, how the connection ends does not matter.
    let (_, exchange) = tokio::join!(connection, exchange);
    exchange.map_err(http)
}

/// [`request`] on a current-thread runtime of its own, for callers without one.
pub fn request_blocking(
    socket: &Path,
    method: Method,
    endpoint: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?
        .block_on(request(socket, method, endpoint, body))
}
