//! Shared by the `api_*` integration tests: a real coordinator server on
//! 127.0.0.1:0 over a store at a tempdir path (on the engine
//! `HOSTPLANE_TEST_STORE` picks: `tests/backend`, here as
//! `api_common::backend`, so a test and its servers share one map of paths
//! to databases), a client, and fixtures.
#![allow(dead_code)]

#[path = "../backend/mod.rs"]
pub mod backend;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostplane_coordinator::config::Config;
use hostplane_coordinator::server::{self, ServeOptions, ServerError};
use hostplane_coordinator::store::Store;
use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use hostplane_proto::v1::{
    Bfb, BfbSpec, CreateRequest, Deployment, DeploymentSpec, Device, DeviceSpec, Dpu, DpuPhase, DpuSpec,
    DpuStatus, Flavor, FlavorSpec, Kind, ListRequest, Node, NodeSpec, ObjectMeta, Resource,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub type Client = AdminServiceClient<Channel>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    pub path: PathBuf,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ServerError>>,
}

/// A server on `path` with the reconciler off, so tests see only what the API writes.
pub async fn start(path: &Path) -> TestServer {
    start_with(path, false).await
}

/// A server on the store at `path` (`backend::store_at`: the same path
/// again is a restart on the same data, on either engine).
/// On PostgreSQL the server is elected leader as a coordinator there is.
pub async fn start_with(path: &Path, run_reconciler: bool) -> TestServer {
    start_on(backend::store_at(path), true, path, run_reconciler).await
}

/// A server on the SQLite file at `path` whatever the engine, for tests
/// about the single SQLite coordinator itself.
pub async fn start_sqlite(path: &Path) -> TestServer {
    let store = server::open_store(path.to_path_buf()).await.expect("open store");
    start_on(store, false, path, false).await
}

/// A server on `store`; `path` is the config's `store.path`; `elect`: on
/// PostgreSQL, take part in the election (`backend::ha_at`).
async fn start_on(store: Store, elect: bool, path: &Path, run_reconciler: bool) -> TestServer {
    // Logs show with the output of a failing test (or with --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let mut cfg = Config::default();
    cfg.store.path = path.to_path_buf();
    cfg.shutdown_grace = Duration::from_secs(5);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let opts = ServeOptions {
        store: Some(store.clone()),
        run_reconciler,
        reload: None,
        ha: if elect { backend::ha_at(path, addr) } else { None },
    };
    let handle = tokio::spawn(server::serve_with(cfg, listener, shutdown.clone(), opts));
    TestServer {
        addr,
        store,
        path: path.to_path_buf(),
        shutdown,
        handle,
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        // The listener is bound before the server starts, so this connects at once.
        for _ in 0..50 {
            if let Ok(ch) = Channel::from_shared(self.url()).unwrap().connect().await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not connect to {}", self.url());
    }

    pub async fn client(&self) -> Client {
        AdminServiceClient::new(self.channel().await)
    }

    /// Cancel and wait for a clean stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

pub fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

pub fn node(name: &str) -> Node {
    Node {
        metadata: meta(name),
        spec: Some(NodeSpec { reboot_method: 1 }),
        status: None,
    }
}

pub fn device(name: &str, node: &str, rshim: &str) -> Device {
    Device {
        metadata: meta(name),
        spec: Some(DeviceSpec {
            node: node.into(),
            serial: format!("SN-{name}"),
            pci_address: "0000:04:00.0".into(),
            rshim: rshim.into(),
            bmc_address: String::new(),
        }),
        status: None,
    }
}

pub fn bfb(name: &str) -> Bfb {
    Bfb {
        metadata: meta(name),
        spec: Some(BfbSpec {
            url: format!("https://images.example/{name}.bfb"),
            sha256: "0123456789abcdef".repeat(4),
            version: "2.9.0".into(),
            size_bytes: 1024,
        }),
    }
}

pub fn flavor(name: &str) -> Flavor {
    Flavor {
        metadata: meta(name),
        spec: Some(FlavorSpec {
            bf_cfg: [("UPDATE_DPU_OS".to_string(), "yes".to_string())].into(),
            ..Default::default()
        }),
    }
}

pub fn deployment(name: &str, bfb: &str, flavor: &str) -> Deployment {
    Deployment {
        metadata: meta(name),
        spec: Some(DeploymentSpec {
            bfb: bfb.into(),
            flavor: flavor.into(),
            max_unavailable: 1,
            ..Default::default()
        }),
        status: None,
    }
}

/// A Dpu as the reconciler would write it (straight into the store).
pub async fn insert_dpu(
    store: &Store,
    device: &str,
    node: &str,
    deployment: &str,
    phase: DpuPhase,
) -> Resource {
    let dpu = Dpu {
        metadata: meta(device),
        spec: Some(DpuSpec {
            device: device.into(),
            node: node.into(),
            deployment: deployment.into(),
            bfb: "b1".into(),
            flavor: "f1".into(),
        }),
        status: Some(DpuStatus {
            phase: phase as i32,
            message: format!("in {}", phase.display_name()),
            ..Default::default()
        }),
    };
    store.write(move |t| t.insert(dpu.into())).await.unwrap()
}

pub async fn create(c: &mut Client, r: impl Into<Resource>) -> Resource {
    c.create(CreateRequest {
        resource: Some(r.into()),
    })
    .await
    .expect("create")
    .into_inner()
}

/// Node n1 with devices d1 (rshim0) and d2 (rshim1), Bfb b1, Flavor f1, Deployment dep1.
pub async fn seed(c: &mut Client) {
    create(c, node("n1")).await;
    create(c, device("d1", "n1", "rshim0")).await;
    create(c, device("d2", "n1", "rshim1")).await;
    create(c, bfb("b1")).await;
    create(c, flavor("f1")).await;
    create(c, deployment("dep1", "b1", "f1")).await;
}

/// Every object of every kind, and the store revision: equal before and
/// after a refused call when it changed nothing.
pub async fn snapshot(c: &mut Client) -> (Vec<Resource>, u64) {
    let mut all = Vec::new();
    let mut rev = 0;
    for k in Kind::ALL {
        let r = c
            .list(ListRequest {
                kind: k as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(r.items);
        rev = rev.max(r.resource_version);
    }
    (all, rev)
}

pub fn names(items: &[Resource]) -> Vec<&str> {
    items.iter().map(|r| r.name()).collect()
}
