//! A test harness: `serve` on a temporary socket with a fake VMM that answers from a
//! script, and a hyper HTTP/1 client over a Unix stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tessera_api::server::{bind, serve, ApiError, ApiReply, ApiRequest, Published, VmAction};
use tokio::sync::{mpsc, oneshot};

/// How the fake VMM answers an action.
pub type Script = fn(&VmAction) -> Result<ApiReply, ApiError>;

/// A running server and its fake VMM.
pub struct Harness {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Every action the fake VMM received, in order.
    pub actions: Arc<Mutex<Vec<VmAction>>>,
    /// The server's snapshot of read-only answers: empty unless a test publishes one,
    /// so that every request reaches the fake VMM.
    pub published: Arc<Published>,
    stop: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Harness {
    /// Serves with a VMM that answers every request with `script`.
    pub fn start(script: Script) -> Self {
        let (tx, mut rx) = mpsc::channel::<ApiRequest>(16);
        let actions = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&actions);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                log.lock().unwrap().push(req.action.clone());
                let _ = req.reply.send(script(&req.action));
            }
        });
        Self::with_channel(tx, actions)
    }

    /// Serves, forwarding requests to `tx`.
    pub fn with_channel(tx: mpsc::Sender<ApiRequest>, actions: Arc<Mutex<Vec<VmAction>>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let published = Arc::new(Published::new());
        let server = tokio::spawn(serve(listener, tx, Arc::clone(&published), async move {
            let _ = stopped.await;
        }));
        Harness {
            _dir: dir,
            socket,
            actions,
            published,
            stop: Some(stop),
            server,
        }
    }

    /// Tells the server to shut down.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The actions received so far.
    pub fn actions(&self) -> Vec<VmAction> {
        self.actions.lock().unwrap().clone()
    }

    /// One request on a new connection.
    pub async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        Client::connect(&self.socket)
            .await
            .call(method, path, body)
            .await
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub allow: Option<String>,
    pub content_type: Option<String>,
    pub error_field: Option<String>,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: status, a body that is Cloud Hypervisor's error chain (a
    /// JSON array of one string, the message, which it returns), and the field header.
    pub fn assert_error(&self, status: u16, field: Option<&str>) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
        let chain: Vec<String> = serde_json::from_value(self.json()).unwrap();
        assert_eq!(chain.len(), 1, "{chain:?}");
        assert_eq!(self.error_field.as_deref(), field, "{self:?}");
        chain.into_iter().next().unwrap()
    }
}

/// An HTTP/1 connection to the API socket (kept alive across calls).
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(socket: &Path) -> Self {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn call(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        self.sender.ready().await.unwrap();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = Full::new(Bytes::copy_from_slice(body.unwrap_or_default()));
        let resp = self
            .sender
            .send_request(req.body(body).unwrap())
            .await
            .unwrap();
        let header = |name| {
            resp.headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (status, allow, content_type, error_field) = (
            resp.status().as_u16(),
            header("allow"),
            header("content-type"),
            header(tessera_api::error::ERROR_FIELD_HEADER),
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            allow,
            content_type,
            error_field,
            body,
        }
    }
}

/// A `vmm.host-devices` answer with every field set (and every list holding an item):
/// a GPU that is an mdev parent, on host node 1, in a group it blocks; an NVIDIA VF;
/// a device with no driver and no node; the mtty sample parent; two host nodes.
pub fn host_devices() -> tessera_api::types::HostDevices {
    use tessera_api::types::*;
    let mdev_type = |id: &str, name: &str, instances: &[&str]| HostMdevType {
        id: id.into(),
        name: Some(name.into()),
        description: Some(format!("{name}, described")),
        device_api: Some("vfio-pci".into()),
        available_instances: Some(2),
        instances: instances.iter().map(|s| s.to_string()).collect(),
    };
    HostDevices {
        pci_devices: vec![
            HostPciDevice {
                bdf: "0000:41:00.0".into(),
                path: "/sys/bus/pci/devices/0000:41:00.0".into(),
                vendor: Some("10de".into()),
                device: Some("13f2".into()),
                class: Some("030000".into()),
                driver: Some("nvidia".into()),
                numa_node: Some(1),
                iommu_group: Some(HostIommuGroup {
                    id: 40,
                    viable: false,
                    members: vec![HostIommuGroupMember {
                        name: "0000:41:00.0".into(),
                        driver: Some("nvidia".into()),
                    }],
                    blocking: vec!["0000:41:00.0".into()],
                }),
                mdev_types: Some(vec![mdev_type(
                    "nvidia-35",
                    "GRID M60-2Q",
                    &["a1b2c3d4-0000-4000-8000-000000000001"],
                )]),
                nvidia_vgpu: Some(HostNvidiaVgpu {
                    creatable_types: vec![HostVgpuType {
                        id: 1414,
                        name: "NVIDIA H200X-1-18C".into(),
                    }],
                    creatable_raw: Some("1414 : NVIDIA H200X-1-18C".into()),
                    current_type: Some(0),
                }),
            },
            HostPciDevice {
                bdf: "0000:00:03.0".into(),
                path: "/sys/bus/pci/devices/0000:00:03.0".into(),
                vendor: Some("1b36".into()),
                device: Some("0010".into()),
                class: Some("010802".into()),
                driver: None,
                numa_node: None,
                iommu_group: None,
                mdev_types: None,
                nvidia_vgpu: None,
            },
        ],
        mdev_parents: vec![HostMdevParent {
            name: "mtty".into(),
            types: vec![mdev_type(
                "mtty-2",
                "Dual-port-serial",
                &["83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"],
            )],
        }],
        numa_nodes: vec![
            HostNumaNode {
                id: 0,
                cpus: Some("0-1".into()),
                memory_bytes: Some(2 << 30),
                distances: Some(vec![10, 21]),
                access: vec![tessera_api::types::HostNumaAccess {
                    class: 1,
                    initiators: vec![0],
                    read_latency_ns: Some(80),
                    write_latency_ns: Some(90),
                    read_bandwidth_mbps: Some(40000),
                    write_bandwidth_mbps: Some(30000),
                }],
            },
            HostNumaNode {
                id: 1,
                cpus: Some(String::new()),
                memory_bytes: Some(1 << 30),
                distances: Some(vec![21, 10]),
                access: vec![tessera_api::types::HostNumaAccess {
                    class: 0,
                    initiators: vec![0],
                    read_latency_ns: Some(120),
                    write_latency_ns: Some(130),
                    read_bandwidth_mbps: Some(20000),
                    write_bandwidth_mbps: None,
                }],
            },
        ],
    }
}
