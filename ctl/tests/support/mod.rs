//! An in-process fake AdminService (objects in a map, just what the CLI tests
//! call) and a runner for the real `hostplanectl` binary.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use hostplane_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hostplane_proto::v1::{
    CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse, CreateRequest, DeleteRequest,
    DeleteResponse, Deployment, Dpu, DpuPhase, DpuReadiness, DpuRef, EventType, GetRequest, Kind,
    ListRequest, ListResponse, MarkRebootedRequest, Node, NodeRebootStatus, NodeRef, Resource,
    SetDeploymentImageRequest, UpdateRequest, WatchEvent, WatchRequest, resource,
};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

/// Items in one page of the fake's List.
pub const FAKE_PAGE_SIZE: usize = 2;

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<(i32, String), Resource>,
    pub version: u64,
    /// `authorization` metadata of the last call.
    pub last_auth: Option<String>,
    /// Sent by Watch after the current objects.
    pub watch_script: Vec<WatchEvent>,
    /// Watch streams end after the script (else they stay open).
    pub watch_ends: bool,
    /// What GetPowerSummary answers (nodes filtered by the request).
    pub power: hostplane_proto::v1::PowerSummary,
    /// List answers this many requests for a later page with ABORTED (the
    /// listing's snapshot expired), then pages normally.
    pub abort_pages: u32,
    /// List requests answered (every page counts).
    pub list_calls: u32,
    /// What GetClusterStatus answers; `None`: UNAVAILABLE (the store cannot be read).
    pub cluster: Option<hostplane_proto::v1::ClusterStatus>,
}

#[derive(Clone, Default)]
pub struct Fake {
    pub state: Arc<Mutex<State>>,
}

fn key(kind: Kind, name: &str) -> (i32, String) {
    (kind as i32, name.to_string())
}

fn not_found(kind: Kind, name: &str) -> Status {
    Status::not_found(format!("{} {name:?} not found", kind.noun()))
}

impl Fake {
    fn seen<T>(&self, req: &Request<T>) -> std::sync::MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap();
        st.last_auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        st
    }

    pub fn insert(&self, mut r: Resource) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let v = st.version;
        r.metadata_mut().unwrap().resource_version = v;
        st.objects.insert(key(r.kind(), r.name()), r);
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for Fake {
    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Resource>, Status> {
        let mut st = self.seen(&req);
        let mut r = req
            .into_inner()
            .resource
            .ok_or_else(|| Status::invalid_argument("resource: required"))?;
        let (kind, name) = (r.kind(), r.name().to_string());
        if name.is_empty() {
            return Err(Status::invalid_argument("metadata.name: required"));
        }
        if r.resource_version() != 0 {
            return Err(Status::invalid_argument(
                "metadata.resource_version: must be 0 on create",
            ));
        }
        if st.objects.contains_key(&key(kind, &name)) {
            return Err(Status::already_exists(format!(
                "{} {name:?} already exists",
                kind.noun()
            )));
        }
        st.version += 1;
        let m = r.metadata_mut().unwrap();
        m.resource_version = st.version;
        m.created_at_ms = 1;
        st.objects.insert(key(kind, &name), r.clone());
        Ok(Response::new(r))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<Resource>, Status> {
        let st = self.seen(&req);
        let req = req.into_inner();
        let found = st.objects.get(&key(req.kind(), &req.name)).cloned();
        found
            .map(Response::new)
            .ok_or_else(|| not_found(req.kind(), &req.name))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let mut st = self.seen(&req);
        let req = req.into_inner();
        st.list_calls += 1;
        if !req.page_token.is_empty() && st.abort_pages > 0 {
            st.abort_pages -= 1;
            return Err(Status::aborted(
                "the listing's snapshot (store revision 3) is no longer kept (history is kept after revision 9); list again from the first page",
            ));
        }
        // Pages of FAKE_PAGE_SIZE, so every CLI test that lists follows page
        // tokens (here simply the last name sent).
        let mut items: Vec<Resource> = st
            .objects
            .values()
            .filter(|r| r.kind() == req.kind())
            .filter(|r| r.name() > req.page_token.as_str())
            .filter(|r| {
                let labels = &r.metadata().unwrap().labels;
                req.label_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .take(FAKE_PAGE_SIZE + 1)
            .cloned()
            .collect();
        let next_page_token = if items.len() > FAKE_PAGE_SIZE {
            items.truncate(FAKE_PAGE_SIZE);
            items.last().unwrap().name().to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListResponse {
            items,
            resource_version: st.version,
            next_page_token,
        }))
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Result<Response<Resource>, Status> {
        let mut st = self.seen(&req);
        let mut r = req
            .into_inner()
            .resource
            .ok_or_else(|| Status::invalid_argument("resource: required"))?;
        let k = key(r.kind(), r.name());
        let stored = st.objects.get(&k).ok_or_else(|| not_found(r.kind(), r.name()))?;
        if r.resource_version() != 0 && r.resource_version() != stored.resource_version() {
            return Err(Status::aborted(
                "metadata.resource_version: stale, re-read and retry",
            ));
        }
        st.version += 1;
        r.metadata_mut().unwrap().resource_version = st.version;
        st.objects.insert(k, r.clone());
        Ok(Response::new(r))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let mut st = self.seen(&req);
        let req = req.into_inner();
        match st.objects.remove(&key(req.kind(), &req.name)) {
            Some(_) => Ok(Response::new(DeleteResponse {
                deleted: true,
                resource: None,
            })),
            None => Err(not_found(req.kind(), &req.name)),
        }
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        let st = self.seen(&req);
        let req = req.into_inner();
        let wanted = |r: &Resource| {
            (req.kinds.is_empty() || req.kinds.contains(&(r.kind() as i32)))
                && (req.name.is_empty() || r.name() == req.name)
        };
        let mut events: Vec<Result<WatchEvent, Status>> = Vec::new();
        if req.from_version == 0 {
            for r in st.objects.values().filter(|r| wanted(r)) {
                events.push(Ok(WatchEvent {
                    r#type: EventType::Added as i32,
                    resource_version: r.resource_version(),
                    resource: Some(r.clone()),
                }));
            }
        }
        for ev in &st.watch_script {
            if ev.resource.as_ref().is_some_and(wanted) {
                events.push(Ok(ev.clone()));
            }
        }
        let stream = futures::stream::iter(events);
        if st.watch_ends {
            Ok(Response::new(Box::pin(stream)))
        } else {
            Ok(Response::new(Box::pin(stream.chain(futures::stream::pending()))))
        }
    }

    async fn create_node_with_devices(
        &self,
        req: Request<CreateNodeWithDevicesRequest>,
    ) -> Result<Response<CreateNodeWithDevicesResponse>, Status> {
        drop(self.seen(&req));
        let req = req.into_inner();
        let node = req
            .node
            .ok_or_else(|| Status::invalid_argument("node: required"))?;
        let node_name = node.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        self.insert(node.clone().into());
        let mut devices = Vec::new();
        for mut d in req.devices {
            let spec = d.spec.get_or_insert_default();
            if spec.node.is_empty() {
                spec.node = node_name.clone();
            }
            self.insert(d.clone().into());
            devices.push(d);
        }
        Ok(Response::new(CreateNodeWithDevicesResponse {
            node: Some(node),
            devices,
        }))
    }

    async fn approve_maintenance(&self, req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        let mut st = self.seen(&req);
        let name = req.into_inner().name;
        st.version += 1;
        let v = st.version;
        let Some(Resource {
            kind: Some(resource::Kind::Node(node)),
        }) = st.objects.get_mut(&key(Kind::Node, &name))
        else {
            return Err(not_found(Kind::Node, &name));
        };
        node.status.get_or_insert_default().maintenance_approved = true;
        node.metadata.get_or_insert_default().resource_version = v;
        Ok(Response::new(node.clone()))
    }

    async fn mark_rebooted(&self, req: Request<MarkRebootedRequest>) -> Result<Response<Node>, Status> {
        let mut st = self.seen(&req);
        let MarkRebootedRequest { name, power_cycled } = req.into_inner();
        let Some(Resource {
            kind: Some(resource::Kind::Node(node)),
        }) = st.objects.get_mut(&key(Kind::Node, &name))
        else {
            return Err(not_found(Kind::Node, &name));
        };
        // As the coordinator: a warm reboot is refused while a power cycle is required.
        let status = node.status.get_or_insert_default();
        if status.power_cycle_required && !power_cycled {
            return Err(Status::failed_precondition(format!(
                "node {name} must be power-cycled, not only rebooted"
            )));
        }
        status.rebooted_at_ms = 1;
        status.last_reboot_kind = if power_cycled {
            hostplane_proto::v1::RebootKind::PowerCycle
        } else {
            hostplane_proto::v1::RebootKind::Reboot
        } as i32;
        Ok(Response::new(node.clone()))
    }

    async fn reprovision(&self, req: Request<DpuRef>) -> Result<Response<Dpu>, Status> {
        let mut st = self.seen(&req);
        let name = req.into_inner().name;
        let Some(Resource {
            kind: Some(resource::Kind::Dpu(dpu)),
        }) = st.objects.get_mut(&key(Kind::Dpu, &name))
        else {
            return Err(not_found(Kind::Dpu, &name));
        };
        dpu.status.get_or_insert_default().phase = DpuPhase::Initializing as i32;
        Ok(Response::new(dpu.clone()))
    }

    async fn get_node_reboot_status(
        &self,
        req: Request<NodeRef>,
    ) -> Result<Response<NodeRebootStatus>, Status> {
        let st = self.seen(&req);
        let name = req.into_inner().name;
        match st.objects.get(&key(Kind::Node, &name)) {
            Some(Resource {
                kind: Some(resource::Kind::Node(n)),
            }) => Ok(Response::new(NodeRebootStatus {
                waiting_for_reboot: n.status.as_ref().is_some_and(|s| s.waiting_for_reboot),
                dpus: vec![],
                power_cycle_required: n.status.as_ref().is_some_and(|s| s.power_cycle_required),
            })),
            _ => Err(not_found(Kind::Node, &name)),
        }
    }

    async fn get_dpu_readiness(&self, req: Request<DpuRef>) -> Result<Response<DpuReadiness>, Status> {
        let st = self.seen(&req);
        let name = req.into_inner().name;
        match st.objects.get(&key(Kind::Dpu, &name)) {
            Some(Resource {
                kind: Some(resource::Kind::Dpu(d)),
            }) => {
                let s = d.status.clone().unwrap_or_default();
                Ok(Response::new(DpuReadiness {
                    ready: s.phase() == DpuPhase::Ready,
                    phase: s.phase,
                    message: s.message,
                }))
            }
            _ => Err(not_found(Kind::Dpu, &name)),
        }
    }

    async fn set_deployment_image(
        &self,
        req: Request<SetDeploymentImageRequest>,
    ) -> Result<Response<Deployment>, Status> {
        let mut st = self.seen(&req);
        let req = req.into_inner();
        let Some(Resource {
            kind: Some(resource::Kind::Deployment(d)),
        }) = st.objects.get_mut(&key(Kind::Deployment, &req.deployment))
        else {
            return Err(not_found(Kind::Deployment, &req.deployment));
        };
        let spec = d.spec.get_or_insert_default();
        if !req.bfb.is_empty() {
            spec.bfb = req.bfb;
        }
        if !req.flavor.is_empty() {
            spec.flavor = req.flavor;
        }
        Ok(Response::new(d.clone()))
    }

    async fn get_power_summary(
        &self,
        req: Request<hostplane_proto::v1::PowerSummaryRequest>,
    ) -> Result<Response<hostplane_proto::v1::PowerSummary>, Status> {
        let st = self.seen(&req);
        let want = req.into_inner().nodes;
        let mut s = st.power.clone();
        s.nodes.retain(|n| want.is_empty() || want.contains(&n.node));
        Ok(Response::new(s))
    }

    async fn get_cluster_status(
        &self,
        req: Request<hostplane_proto::v1::ClusterStatusRequest>,
    ) -> Result<Response<hostplane_proto::v1::ClusterStatus>, Status> {
        let st = self.seen(&req);
        st.cluster.clone().map(Response::new).ok_or_else(|| {
            Status::unavailable(
                "cannot read the cluster status from PostgreSQL (hostplane@db:5432/hostplane): connection refused",
            )
        })
    }
}

/// Serve `fake` on 127.0.0.1:0; returns the URL to pass as --server.
pub async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServiceServer::new(fake))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn ctl_with(server: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hostplanectl"));
    cmd.arg("--server").arg(server).args(args);
    cmd.env_remove("HOSTPLANE_TOKEN").env_remove("HOSTPLANE_SERVER");
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

pub async fn ctl(server: &str, args: &[&str]) -> Run {
    ctl_with(server, args, &[], None).await
}
