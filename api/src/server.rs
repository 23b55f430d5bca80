//! The HTTP API server: [`VmAction`], the typed requests it hands the VMM over a channel,
//! [`Published`], the answers to read-only requests the VMM keeps up to date for it,
//! [`bind`] for the Unix socket and [`serve`], which answers HTTP on it. It never touches
//! KVM; the VMM decides every answer except parse errors (400/404/405/413) and an absent
//! VMM (503).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{DeviceConfig, GenericInitiatorConfig, NumaConfig, VmConfig};
pub use crate::error::{ApiError, BindError};
pub use crate::socket::bind;
pub use crate::types::RemoveGenericInitiator;
/// The bytes of a pre-serialized answer ([`ApiReply::JsonText`]).
pub use axum::body::Bytes;

/// Every endpoint's path starts with this.
pub const API_PREFIX: &str = "/api/v1";

/// The largest request body accepted; larger ones get 413.
pub const MAX_BODY: usize = 1 << 20;

/// How long [`serve`] waits, once told to shut down, for open requests to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A request for the VMM, parsed and typed. Each names the endpoint it comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum VmAction {
    /// `GET /vmm.ping`: answer [`crate::types::VmmPingResponse`].
    Ping,
    /// `PUT /vmm.shutdown`: stop the VM if any, then the VMM.
    VmmShutdown,
    /// `PUT /vm.create`. Parsed only: the VMM validates it ([`VmConfig::validate`]; a
    /// [`crate::config::ConfigError`] converts into a 400 [`ApiError`] naming the field).
    Create(Box<VmConfig>),
    /// `PUT /vm.boot`.
    Boot,
    /// `GET /vm.info`: answer [`crate::types::VmInfo`].
    Info,
    /// `GET /vm.counters`: answer [`crate::types::VmCounters`].
    Counters,
    /// `PUT /vm.shutdown`.
    Shutdown,
    /// `PUT /vm.reboot`.
    Reboot,
    /// `PUT /vm.pause`.
    Pause,
    /// `PUT /vm.resume`.
    Resume,
    /// `PUT /vm.delete`.
    Delete,
    /// `PUT /vm.power-button`.
    PowerButton,
    /// `PUT /vm.add-device`: add the device to the configuration of a VM not booted (204,
    /// a cold add), or hot-plug it into a running VM (200 with a
    /// [`crate::types::PciDeviceInfo`]), as Cloud Hypervisor does.
    AddDevice(DeviceConfig),
    /// `PUT /vm.remove-device` `{"id": ...}`.
    RemoveDevice {
        /// The device's id.
        id: String,
    },
    /// `PUT /vm.add-numa-node`.
    AddNumaNode(NumaConfig),
    /// `PUT /vm.remove-numa-node` `{"guest_numa_id": N}`.
    RemoveNumaNode {
        /// The node's id.
        guest_numa_id: u32,
    },
    /// `PUT /vm.add-generic-initiator`; exactly one of `node`/`nodes` is set and `nodes`
    /// parses ([`GenericInitiatorConfig::node_list`] succeeds).
    AddGenericInitiator(GenericInitiatorConfig),
    /// `PUT /vm.remove-generic-initiator`; [`RemoveGenericInitiator::check`] succeeds.
    RemoveGenericInitiator(RemoveGenericInitiator),
    /// `GET /vm.acpi`: answer [`crate::types::AcpiInfo`].
    Acpi,
    /// `GET /vmm.host-devices`: answer [`crate::types::HostDevices`], read from the
    /// host's sysfs now (never published: the host changes under the VMM), in every VM
    /// state.
    HostDevices,
    /// `PUT /vmm.topology-mirror`: answer a [`VmConfig`] mirroring the host's topology
    /// around the devices named, made from the host's sysfs now, in every VM state.
    TopologyMirror(crate::types::TopologyMirror),
}

/// An action and where to send its answer. The VMM must answer every request (dropping
/// `reply` is answered as 503) and must ignore a failed `reply.send`: the client left.
#[derive(Debug)]
pub struct ApiRequest {
    /// What to do.
    pub action: VmAction,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ApiReply, ApiError>>,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiReply {
    /// 204 No Content.
    NoContent,
    /// 200 OK with this JSON body.
    Json(serde_json::Value),
    /// 200 OK with this body, JSON already serialized: an answer made once and given
    /// many times ([`Snapshot`]) costs no serialization per request.
    JsonText(Bytes),
}

impl ApiReply {
    /// 200 with `value` as JSON (500 if it cannot be serialized).
    pub fn json<T: Serialize>(value: &T) -> Result<Self, ApiError> {
        serde_json::to_value(value)
            .map(ApiReply::Json)
            .map_err(serialize_error)
    }

    /// 200 with `value` as JSON, serialized now ([`ApiReply::JsonText`]): the same bytes
    /// [`ApiReply::json`] would send (object keys sorted), made once.
    pub fn json_text<T: Serialize>(value: &T) -> Result<Self, ApiError> {
        // Through a Value, whose maps are sorted, so that the text does not depend on
        // which of the two constructors made it.
        serde_json::to_value(value)
            .and_then(|v| serde_json::to_vec(&v))
            .map(|text| ApiReply::JsonText(Bytes::from(text)))
            .map_err(serialize_error)
    }
}

fn serialize_error(e: serde_json::Error) -> ApiError {
    ApiError::new(500, format!("cannot serialize the answer: {e}"), None)
}

/// The answers to the read-only requests that do not need the VMM at the time they are
/// asked, as of the VMM's last change. The server gives them without a round trip to
/// the VMM; `None` sends the request to the VMM as usual.
///
/// `vm.counters` is not here: its values change with every VM exit, so it is always
/// asked of the VMM.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// `GET /vmm.ping`'s answer.
    pub ping: Option<Result<ApiReply, ApiError>>,
    /// `GET /vm.info`'s answer.
    pub info: Option<Result<ApiReply, ApiError>>,
    /// `GET /vm.acpi`'s answer.
    pub acpi: Option<Result<ApiReply, ApiError>>,
}

impl Snapshot {
    /// Every answer is 503: the VMM has stopped taking requests.
    pub fn closed() -> Self {
        Snapshot {
            ping: Some(Err(ApiError::unavailable())),
            info: Some(Err(ApiError::unavailable())),
            acpi: Some(Err(ApiError::unavailable())),
        }
    }
}

/// Where the VMM publishes its [`Snapshot`] for [`serve`]: one writer, the VMM, and any
/// number of readers, the connections. Starts empty (every request goes to the VMM).
///
/// Read-your-writes: the VMM publishes the snapshot a change gives *before* it answers
/// the request that made the change, so a request sent after that answer sees it.
#[derive(Debug, Default)]
pub struct Published {
    // A lock held only to swap or clone an Arc: readers never wait on a snapshot being
    // made, and a snapshot is never seen half-made.
    current: RwLock<Arc<Snapshot>>,
}

impl Published {
    /// An empty one: every request goes to the VMM until the first [`Published::publish`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the snapshot; requests that start after this returns see `snapshot`.
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        // A poisoned lock still holds a whole Arc: a panic cannot leave it half-written.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Every endpoint as (method, full path), in the order the router takes them.
pub fn routes() -> impl Iterator<Item = (&'static str, String)> {
    crate::routes::ROUTES
        .iter()
        .map(|r| (r.verb.as_str(), format!("{API_PREFIX}{}", r.path)))
}

/// The OpenAPI 3 document of the whole API, as served at `GET /api/v1/openapi.json`.
pub fn openapi_json() -> &'static str {
    crate::routes::OPENAPI
}

/// Serves HTTP on `listener` until `shutdown` resolves, answering read-only requests
/// from `published` where it has their answer, and forwarding every other request to
/// `vmm` and answering from its reply. After `shutdown`, open requests get up to
/// [`SHUTDOWN_GRACE`] to finish. Removes nothing (the caller removes the socket file).
///
/// Must run on a tokio runtime with IO and time enabled (`enable_all`). After it returns,
/// drop the runtime: connections cut off by the grace period hold `vmm` senders until then.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use tessera_api::server::{bind, serve, ApiReply, ApiRequest, Published, Snapshot};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::path::Path::new("/run/tessera/api.sock");
/// let listener = bind(path)?; // on the main thread: errors before anything starts
/// let (tx, mut rx) = tokio::sync::mpsc::channel::<ApiRequest>(64);
/// let published = Arc::new(Published::new());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let view = Arc::clone(&published);
/// let api = std::thread::spawn(move || {
///     rt.block_on(serve(listener, tx, view, async { let _ = stopped.await; }))
/// });
/// // The VMM's control loop (blocking_recv, or poll rx alongside its other events):
/// while let Some(req) = rx.blocking_recv() {
///     // Apply the request, publish what changed, and only then answer.
///     published.publish(Snapshot::default());
///     let _ = req.reply.send(Ok(ApiReply::NoContent)); // ignore: the client may be gone
///     # break;
/// }
/// published.publish(Snapshot::closed());
/// let _ = stop.send(()); // on vmm.shutdown, after replying
/// api.join().ok();
/// std::fs::remove_file(path)?;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: UnixListener,
    vmm: mpsc::Sender<ApiRequest>,
    published: Arc<Published>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let shared = crate::routes::shared(vmm, published);
    let connections = GracefulShutdown::new();
    // Cloud Hypervisor's client finds the body length only under the header name
    // `Content-Length`, so header names go out title-cased (still valid HTTP/1.1).
    let mut http = http1::Builder::new();
    http.title_case_headers(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let shared = Arc::clone(&shared);
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let shared = Arc::clone(&shared);
            async move {
                let response = crate::routes::dispatch(&shared, request.map(Body::new)).await;
                Ok::<_, Infallible>(without_reason_phrase(response))
            }
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection's errors (a client that left mid-request) concern only it.
            let _ = connection.await;
        });
    }
    drop(listener);
    // Idle keep-alive connections close at once; open requests get the grace period.
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
    Ok(())
}

/// Cloud Hypervisor's client reads the status line as `HTTP/1.1 ` and a code followed
/// by nothing but spaces, as CH's own server writes it (`HTTP/1.1 200 `); a reason phrase
/// such as `OK` makes it fail. The phrase is optional in HTTP/1.1 (RFC 9112, 4), so
/// every answer goes out with an empty one.
fn without_reason_phrase(mut response: Response) -> Response {
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(b""));
    response
}

/// An `accept` that failed: a connection that died before it was accepted is skipped;
/// anything else (out of descriptors) is retried after a pause rather than spun on.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
