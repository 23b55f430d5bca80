//! The endpoint table, from which both the dispatch and the OpenAPI test are derived, and
//! the request handling: body to typed [`VmAction`], action to the VMM (or, for the
//! read-only requests, the VMM's published [`Snapshot`]), reply to HTTP.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use tokio::sync::{mpsc, oneshot};

use crate::config::{DeviceConfig, GenericInitiatorConfig};
use crate::error::{json_response, ApiError};
use crate::server::{ApiReply, ApiRequest, Published, Snapshot, VmAction, API_PREFIX, MAX_BODY};
use crate::types::{RemoveGenericInitiator, VmRemoveDevice, VmRemoveNumaNode};

/// How much of an oversized body is read (and dropped) before answering 413.
const DRAIN_LIMIT: usize = 16 * MAX_BODY;

/// The OpenAPI document served at `GET /api/v1/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// An endpoint's HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Put,
}

type Parse = fn(&[u8]) -> Result<VmAction, ApiError>;

/// A read-only request's answer in the VMM's [`Snapshot`].
type Read = fn(&Snapshot) -> &Option<Result<ApiReply, ApiError>>;

/// What an endpoint does.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// Parse the body into an action for the VMM.
    Vmm(Parse),
    /// Answer from the VMM's snapshot when it has the answer, else as [`Handler::Vmm`].
    Published(Read, Parse),
    /// Answer with [`OPENAPI`].
    OpenApi,
    /// A Cloud Hypervisor endpoint for a feature Tessera does not have: 501, with this
    /// message saying which feature, so CH's clients tell their users why.
    Unsupported(&'static str),
}

/// One endpoint: a path under [`API_PREFIX`], its method, and what it does.
pub(crate) struct Route {
    pub(crate) path: &'static str,
    pub(crate) verb: Verb,
    pub(crate) handler: Handler,
}

const fn vmm(path: &'static str, verb: Verb, parse: Parse) -> Route {
    Route {
        path,
        verb,
        handler: Handler::Vmm(parse),
    }
}

const fn published(path: &'static str, read: Read, parse: Parse) -> Route {
    Route {
        path,
        verb: Verb::Get,
        handler: Handler::Published(read, parse),
    }
}

use Verb::{Get, Put};

/// Every endpoint. [`dispatch`] serves exactly these; a test holds `openapi.json` to them.
pub(crate) const ROUTES: &[Route] = &[
    published("/vmm.ping", |s| &s.ping, |_| Ok(VmAction::Ping)),
    vmm("/vmm.shutdown", Put, |_| Ok(VmAction::VmmShutdown)),
    vmm("/vmm.host-devices", Get, |_| Ok(VmAction::HostDevices)),
    vmm("/vmm.topology-mirror", Put, |b| {
        Ok(VmAction::TopologyMirror(json(b)?))
    }),
    vmm("/vm.create", Put, |b| Ok(VmAction::Create(json(b)?))),
    vmm("/vm.boot", Put, |_| Ok(VmAction::Boot)),
    published("/vm.info", |s| &s.info, |_| Ok(VmAction::Info)),
    vmm("/vm.counters", Get, |_| Ok(VmAction::Counters)),
    vmm("/vm.shutdown", Put, |_| Ok(VmAction::Shutdown)),
    vmm("/vm.reboot", Put, |_| Ok(VmAction::Reboot)),
    vmm("/vm.pause", Put, |_| Ok(VmAction::Pause)),
    vmm("/vm.resume", Put, |_| Ok(VmAction::Resume)),
    vmm("/vm.delete", Put, |_| Ok(VmAction::Delete)),
    vmm("/vm.power-button", Put, |_| Ok(VmAction::PowerButton)),
    vmm("/vm.add-device", Put, |b| {
        let device: DeviceConfig = json(b)?;
        // Which way the device is given (path, mdev_parent, uuid) is the body's own
        // business: refused here, naming the field, as a missing `path` was before.
        device.check_source("").map_err(|e| {
            let field = e.field.trim_start_matches('.');
            ApiError::bad_request(
                format!("{field}: {}", e.message),
                (!field.is_empty()).then(|| field.to_owned()),
            )
        })?;
        Ok(VmAction::AddDevice(device))
    }),
    vmm("/vm.remove-device", Put, |b| {
        let VmRemoveDevice { id } = json(b)?;
        Ok(VmAction::RemoveDevice { id })
    }),
    vmm("/vm.add-numa-node", Put, |b| {
        Ok(VmAction::AddNumaNode(json(b)?))
    }),
    vmm("/vm.remove-numa-node", Put, |b| {
        let VmRemoveNumaNode { guest_numa_id } = json(b)?;
        Ok(VmAction::RemoveNumaNode { guest_numa_id })
    }),
    vmm("/vm.add-generic-initiator", Put, |b| {
        let gi: GenericInitiatorConfig = json(b)?;
        gi.node_list("").map_err(|e| {
            let field = e.field.trim_start_matches('.');
            ApiError::bad_request(e.message, (!field.is_empty()).then(|| field.to_owned()))
        })?;
        Ok(VmAction::AddGenericInitiator(gi))
    }),
    vmm("/vm.remove-generic-initiator", Put, |b| {
        let r: RemoveGenericInitiator = json(b)?;
        r.check()?;
        Ok(VmAction::RemoveGenericInitiator(r))
    }),
    published("/vm.acpi", |s| &s.acpi, |_| Ok(VmAction::Acpi)),
    Route {
        path: "/openapi.json",
        verb: Get,
        handler: Handler::OpenApi,
    },
    unsupported(
        "/vm.resize",
        "resizing vCPUs or memory is not supported: Tessera fixes them at boot",
    ),
    unsupported(
        "/vm.resize-zone",
        "resizing a memory zone is not supported: Tessera has no memory hotplug",
    ),
    unsupported("/vm.resize-disk", "Tessera has no virtio-block disks"),
    unsupported(
        "/vm.add-disk",
        "Tessera has no virtio-block disks; pass a storage controller through with vm.add-device",
    ),
    unsupported("/vm.add-fs", "Tessera has no virtio-fs devices"),
    unsupported(
        "/vm.add-generic-vhost-user",
        "Tessera has no vhost-user devices",
    ),
    unsupported("/vm.add-pmem", "Tessera has no virtio-pmem devices"),
    unsupported(
        "/vm.add-net",
        "Tessera has no virtio-net devices; pass a NIC through with vm.add-device",
    ),
    unsupported("/vm.add-vsock", "Tessera has no virtio-vsock device"),
    unsupported("/vm.add-vdpa", "Tessera has no vDPA devices"),
    unsupported("/vm.add-user-device", "Tessera has no vfio-user devices"),
    unsupported("/vm.snapshot", "Tessera has no snapshots"),
    unsupported("/vm.restore", "Tessera has no snapshots to restore"),
    unsupported("/vm.coredump", "Tessera has no guest core dumps"),
    unsupported("/vm.nmi", "Tessera cannot inject NMIs"),
    unsupported("/vm.send-migration", "Tessera has no live migration"),
    unsupported("/vm.receive-migration", "Tessera has no live migration"),
];

const fn unsupported(path: &'static str, why: &'static str) -> Route {
    Route {
        path,
        verb: Put,
        handler: Handler::Unsupported(why),
    }
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Get => "GET",
            Put => "PUT",
        }
    }
}

/// Parses a JSON body into `T`; errors name the field as a JSON path where serde can.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "this request needs a JSON body",
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut path = String::new();
        for segment in e.path() {
            match segment {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Segment::Unknown => break,
            }
        }
        let message = e.into_inner().to_string();
        let mut field = (!path.is_empty()).then_some(path);
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            field = Some(match field {
                Some(parent) => format!("{parent}.{missing}"),
                None => missing.to_owned(),
            });
        }
        ApiError::bad_request(format!("invalid request body: {message}"), field)
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))?;
    Ok(value)
}

/// What every request's handler shares.
pub(crate) struct Shared {
    vmm: mpsc::Sender<ApiRequest>,
    published: Arc<Published>,
}

/// What [`dispatch`] shares between requests.
pub(crate) fn shared(vmm: mpsc::Sender<ApiRequest>, published: Arc<Published>) -> Arc<Shared> {
    Arc::new(Shared { vmm, published })
}

/// Answers a request: every route in [`ROUTES`] under [`API_PREFIX`], 405 for other
/// methods on them, 404 for everything else.
///
/// One handler that finds the route itself, rather than an axum `Router` of one handler
/// per route: with twenty fixed paths a scan costs less than the router's per-request
/// service clone and boxing, which were a tenth of what a published answer cost.
pub(crate) async fn dispatch(shared: &Shared, request: Request) -> Response {
    let Some(route) = request
        .uri()
        .path()
        .strip_prefix(API_PREFIX)
        .and_then(|path| ROUTES.iter().find(|r| r.path == path))
    else {
        return ApiError::new(
            404,
            format!("no such endpoint: {}", request.uri().path()),
            None,
        )
        .into_response();
    };
    let method = request.method();
    // HEAD is a GET whose answer hyper sends without its body.
    let allowed = match route.verb {
        Get => method == Method::GET || method == Method::HEAD,
        Put => method == Method::PUT,
    };
    if !allowed {
        return method_not_allowed(route, method);
    }
    handle(shared, route, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(shared: &Shared, route: &Route, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let parse = match route.handler {
        Handler::OpenApi => return Ok(json_response(StatusCode::OK, OPENAPI)),
        Handler::Unsupported(why) => {
            return Err(ApiError::new(
                501,
                format!("{}: {why}", route.path.trim_start_matches('/')),
                None,
            ))
        }
        Handler::Vmm(parse) => parse,
        Handler::Published(read, parse) => {
            if let Some(answer) = read(&shared.published.current()) {
                return Ok(response(answer.clone()?));
            }
            parse
        }
    };
    let (reply, answer) = oneshot::channel();
    let request = ApiRequest {
        action: parse(&body)?,
        reply,
    };
    shared
        .vmm
        .send(request)
        .await
        .map_err(|_| ApiError::unavailable())?;
    Ok(response(
        answer.await.map_err(|_| ApiError::unavailable())??,
    ))
}

fn response(reply: ApiReply) -> Response {
    match reply {
        ApiReply::NoContent => StatusCode::NO_CONTENT.into_response(),
        ApiReply::Json(v) => json_response(StatusCode::OK, v.to_string()),
        ApiReply::JsonText(text) => json_response(StatusCode::OK, text),
    }
}

/// Reads at most [`MAX_BODY`] bytes of body. A larger body is still read to its end, up
/// to [`DRAIN_LIMIT`], before the 413, so that a client writing all of it before reading
/// gets the 413 rather than a broken pipe.
async fn read_body(request: Request) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            format!("the request body is larger than the limit of {MAX_BODY} bytes"),
            None,
        )
    };
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(format!("cannot read the request body: {e}"), None)
        })?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                return Err(too_large());
            }
            if seen <= MAX_BODY {
                bytes.extend_from_slice(&data);
            }
        }
    }
    if seen > MAX_BODY {
        return Err(too_large());
    }
    Ok(bytes)
}

fn method_not_allowed(route: &Route, method: &Method) -> Response {
    let allowed = route.verb.as_str();
    let mut response = ApiError::new(
        405,
        format!(
            "{method} is not allowed on {API_PREFIX}{}; use {allowed}",
            route.path
        ),
        None,
    )
    .into_response();
    let allow = if route.verb == Get {
        "GET, HEAD"
    } else {
        allowed
    };
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
