//! The API's errors: [`ApiError`], the JSON error body every failed request gets, and
//! [`BindError`], why the API socket could not be bound.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::ConfigError;

/// A failed request: the HTTP status, what went wrong, and which field of the request.
///
/// On the wire (as Cloud Hypervisor answers, so that its clients decode it) the body is a
/// JSON array of strings, the error chain from the top to the root cause; Tessera's chain
/// has one link, [`ApiError::error`]. The field, for programs, is in the
/// [`ERROR_FIELD_HEADER`] header.
///
/// The API layer makes these for requests it cannot parse (400, 404, 405, 413) or cannot
/// deliver (503); the VMM makes them for requests it refuses (404, 409, 500, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    /// The HTTP status (4xx or 5xx; anything else is answered as 500).
    pub status: u16,
    /// What went wrong, for a human.
    pub error: String,
    /// The offending field as a JSON path into the request body (`cpus.boot_vcpus`).
    pub field: Option<String>,
}

/// The response header that names an error's offending field ([`ApiError::field`]) as a
/// JSON path into the request body, when there is one.
pub const ERROR_FIELD_HEADER: &str = "tessera-error-field";

impl ApiError {
    /// An error with `status`, message and optional field.
    pub fn new(status: u16, error: impl Into<String>, field: Option<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(error: impl Into<String>, field: Option<String>) -> Self {
        Self::new(400, error, field)
    }

    /// 503 Service Unavailable: the VMM is not taking requests.
    pub fn unavailable() -> Self {
        Self::new(503, "the VMM is not answering requests", None)
    }
}

/// A configuration refused by [`crate::config::VmConfig::validate`] is a 400 naming its field.
impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        Self::bad_request(e.message, Some(e.field))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&[&self.error])
            .unwrap_or_else(|_| r#"["unprintable error"]"#.to_owned());
        let mut response = json_response(status, body);
        // A field that cannot be a header value (control characters from a client's
        // JSON key) is left out: the message names it anyway.
        if let Some(value) = self
            .field
            .as_deref()
            .and_then(|f| HeaderValue::from_bytes(f.as_bytes()).ok())
        {
            response.headers_mut().insert(ERROR_FIELD_HEADER, value);
        }
        response
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Why [`crate::server::bind`] could not bind the API socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The directory the socket would go in does not exist.
    #[error("cannot create the API socket {path}: directory {dir} does not exist")]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// A live server already answers on the socket.
    #[error("another process is listening on {path}")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is at the path; it is left alone.
    #[error("{path} exists and is not a socket; not replacing it")]
    NotSocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done (`bind`, `remove stale socket`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
