//! Shared by the `power_*` tests: the admin API over an in-memory store
//! (called directly, no gRPC), the power hub, and fixtures.
#![allow(dead_code)]

use hostplane_coordinator::api::AdminApi;
use hostplane_coordinator::power::PowerHub;
use hostplane_coordinator::store::{Store, StoreError};
use hostplane_proto::v1::admin_service_server::AdminService;
use hostplane_proto::v1::{
    Bfb, BfbSpec, CreateRequest, DeleteRequest, Deployment, DeploymentSpec, Dpu, DpuSpec, Flavor, FlavorSpec,
    GetRequest, Kind, Node, NodeSpec, ObjectMeta, PowerLimit, PowerPolicy, PowerPolicySpec, Resource,
    Topology, TopologyElement, TopologyLevel, TopologySpec, UpdateRequest, power_limit,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

pub struct Env {
    pub store: Store,
    pub hub: PowerHub,
    pub api: AdminApi,
}

pub fn env() -> Env {
    let store = Store::in_memory().expect("in-memory store");
    let hub = PowerHub::new();
    let api = AdminApi::new(store.clone(), CancellationToken::new()).with_power(hub.clone());
    Env { store, hub, api }
}

impl Env {
    pub async fn create(&self, r: impl Into<Resource>) -> Result<Resource, Status> {
        let req = CreateRequest {
            resource: Some(r.into()),
        };
        self.api.create(Request::new(req)).await.map(|r| r.into_inner())
    }

    pub async fn update(&self, r: impl Into<Resource>) -> Result<Resource, Status> {
        let req = UpdateRequest {
            resource: Some(r.into()),
            update_mask: None,
        };
        self.api.update(Request::new(req)).await.map(|r| r.into_inner())
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Resource, Status> {
        let req = GetRequest {
            kind: kind as i32,
            name: name.into(),
        };
        self.api.get(Request::new(req)).await.map(|r| r.into_inner())
    }

    pub async fn delete(&self, kind: Kind, name: &str) {
        let req = DeleteRequest {
            kind: kind as i32,
            name: name.into(),
            force: false,
            resource_version: 0,
        };
        self.api.delete(Request::new(req)).await.expect("delete");
    }

    pub async fn revision(&self) -> u64 {
        self.store.read(|t| t.revision()).await.unwrap()
    }

    pub async fn desired_version(&self, node: &str) -> u64 {
        let node = node.to_string();
        self.store.read(move |t| t.desired_version(&node)).await.unwrap()
    }

    /// A Dpu as the reconciler would write it (straight into the store).
    pub async fn insert_dpu(&self, name: &str, node: &str, deployment: &str) {
        let dpu = Dpu {
            metadata: meta(name),
            spec: Some(DpuSpec {
                device: name.into(),
                node: node.into(),
                deployment: deployment.into(),
                bfb: "b1".into(),
                flavor: "f1".into(),
            }),
            status: None,
        };
        self.store
            .write(move |t| t.insert(dpu.into()).map(|_| ()))
            .await
            .map_err(|e: StoreError| e)
            .unwrap();
    }

    /// Bfb b1, Flavor f1 and a Deployment `name` using them.
    pub async fn deployment(&self, name: &str) {
        if self.get(Kind::Bfb, "b1").await.is_err() {
            self.create(Bfb {
                metadata: meta("b1"),
                spec: Some(BfbSpec {
                    url: "https://images.example/b1.bfb".into(),
                    sha256: "0123456789abcdef".repeat(4),
                    version: "2.9.0".into(),
                    size_bytes: 0,
                }),
            })
            .await
            .unwrap();
            self.create(Flavor {
                metadata: meta("f1"),
                spec: Some(FlavorSpec::default()),
            })
            .await
            .unwrap();
        }
        self.create(Deployment {
            metadata: meta(name),
            spec: Some(DeploymentSpec {
                bfb: "b1".into(),
                flavor: "f1".into(),
                ..Default::default()
            }),
            status: None,
        })
        .await
        .unwrap();
    }

    pub async fn nodes(&self, names: &[&str]) {
        for n in names {
            self.create(node(n)).await.expect("create node");
        }
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

pub fn el(name: &str, level: TopologyLevel, parent: &str, budget: f64, min: f64) -> TopologyElement {
    TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: min,
    }
}

pub fn topology(name: &str, elements: Vec<TopologyElement>) -> Topology {
    Topology {
        metadata: meta(name),
        spec: Some(TopologySpec { elements }),
        status: None,
    }
}

pub fn policy(name: &str, spec: PowerPolicySpec) -> PowerPolicy {
    PowerPolicy {
        metadata: meta(name),
        spec: Some(spec),
        status: None,
    }
}

pub fn watts(element: hostplane_proto::v1::PowerElement, w: f64) -> PowerLimit {
    PowerLimit {
        element: element as i32,
        value: Some(power_limit::Value::Watts(w)),
    }
}

pub fn percent(element: hostplane_proto::v1::PowerElement, p: f64) -> PowerLimit {
    PowerLimit {
        element: element as i32,
        value: Some(power_limit::Value::Percent(p)),
    }
}
