//! The real `hostplanectl` binary against an in-process fake AdminService on 127.0.0.1:0.
//! The fake keeps objects in a map and implements just what these tests call.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use hostplane_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hostplane_proto::v1::{
    CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse, CreateRequest, DeleteRequest,
    DeleteResponse, Deployment, Dpu, DpuPhase, DpuReadiness, DpuRef, DpuSpec, DpuStatus, EventType,
    GetRequest, Kind, ListRequest, ListResponse, Node, NodeRebootStatus, NodeRef, ObjectMeta, Resource,
    SetDeploymentImageRequest, UpdateRequest, WatchEvent, WatchRequest, resource,
};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    objects: BTreeMap<(i32, String), Resource>,
    version: u64,
    /// `authorization` metadata of the last call.
    last_auth: Option<String>,
    /// Sent by Watch after the current objects.
    watch_script: Vec<WatchEvent>,
    /// Watch streams end after the script (else they stay open).
    watch_ends: bool,
}

#[derive(Clone, Default)]
struct Fake {
    state: Arc<Mutex<State>>,
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

    fn insert(&self, mut r: Resource) {
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
        let st = self.seen(&req);
        let req = req.into_inner();
        let items = st
            .objects
            .values()
            .filter(|r| r.kind() == req.kind())
            .filter(|r| {
                let labels = &r.metadata().unwrap().labels;
                req.label_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        Ok(Response::new(ListResponse {
            items,
            resource_version: st.version,
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
        _req: Request<CreateNodeWithDevicesRequest>,
    ) -> Result<Response<CreateNodeWithDevicesResponse>, Status> {
        Err(Status::unimplemented("fake"))
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

    async fn mark_rebooted(&self, _req: Request<NodeRef>) -> Result<Response<Node>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reprovision(&self, _req: Request<DpuRef>) -> Result<Response<Dpu>, Status> {
        Err(Status::unimplemented("fake"))
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
        _req: Request<SetDeploymentImageRequest>,
    ) -> Result<Response<Deployment>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serve `fake` on 127.0.0.1:0; returns the URL to pass as --server.
async fn serve(fake: Fake) -> String {
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

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ctl_with(server: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
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

async fn ctl(server: &str, args: &[&str]) -> Run {
    ctl_with(server, args, &[], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_delete() {
    let server = serve(Fake::default()).await;

    let r = ctl(
        &server,
        &[
            "node",
            "create",
            "n1",
            "--reboot-method",
            "agent",
            "-l",
            "rack=r1",
        ],
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 created\n"),
        "{}",
        r.stderr
    );

    let r = ctl(&server, &["node", "get", "n1", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: Resource = serde_json::from_str(&r.stdout).unwrap();
    let Some(resource::Kind::Node(n)) = got.kind else {
        panic!("{}", r.stdout)
    };
    assert_eq!(n.metadata.as_ref().unwrap().labels["rack"], "r1");
    assert_eq!(
        n.spec.unwrap().reboot_method(),
        hostplane_proto::v1::RebootMethod::Agent
    );

    let r = ctl(&server, &["node", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", r.stdout);
    assert!(
        lines.iter().any(|l| l.split_whitespace().next() == Some("n1")),
        "{}",
        r.stdout
    );

    let r = ctl(&server, &["node", "list", "-l", "rack=r2", "-o", "name"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "selector filters");

    let r = ctl(&server, &["node", "create", "n1"]).await;
    assert_eq!(r.code, 5);
    assert_eq!(r.stderr, "error: node \"n1\" already exists\n");

    let r = ctl(&server, &["node", "delete", "n1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 deleted\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["node", "get", "n1"]).await;
    assert_eq!(r.code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_object_exits_4_with_the_server_message() {
    let server = serve(Fake::default()).await;
    let r = ctl(&server, &["device", "get", "nope"]).await;
    assert_eq!(r.code, 4);
    assert_eq!(r.stderr, "error: device \"nope\" not found\n");
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_maintenance() {
    let server = serve(Fake::default()).await;
    assert_eq!(ctl(&server, &["node", "create", "n1"]).await.code, 0);
    let r = ctl(&server, &["node", "approve", "n1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 maintenance approved\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["node", "get", "n1", "-o", "yaml"]).await;
    let got: Resource = serde_norway::from_str(&r.stdout).unwrap();
    let Some(resource::Kind::Node(n)) = got.kind else {
        panic!()
    };
    assert!(n.status.unwrap().maintenance_approved);
    assert_eq!(ctl(&server, &["node", "approve", "ghost"]).await.code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_then_leaves_unchanged_then_configures() {
    let server = serve(Fake::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("setup.yaml");
    let v1 = "node:\n  metadata: {name: n1}\n---\ndevice:\n  metadata: {name: a, labels: {model: bf3}}\n  \
              spec: {node: n1, rshim: rshim0}\n";
    std::fs::write(&file, v1).unwrap();
    let path = file.to_str().unwrap();

    let r = ctl(&server, &["apply", "-f", path]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 created\ndevice/a created\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["apply", "-f", path]).await;
    assert_eq!(
        r.stdout, "node/n1 unchanged\ndevice/a unchanged\n",
        "{}",
        r.stderr
    );

    let v2 = "device:\n  metadata: {name: a, labels: {model: bf2}}\n  spec: {node: n1, rshim: rshim0}\n";
    let r = ctl_with(&server, &["device", "apply", "-f", "-"], &[], Some(v2)).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "device/a configured\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["device", "list", "-l", "model=bf2", "-o", "name"]).await;
    assert_eq!(r.stdout, "device/a\n");

    let r = ctl_with(&server, &["node", "apply", "-f", "-"], &[], Some(v2)).await;
    assert_eq!(r.code, 6, "a device in `node apply`");
    assert!(r.stderr.contains("expected only node resources"), "{}", r.stderr);

    let r = ctl_with(
        &server,
        &["bfb", "create", "-f", "-"],
        &[],
        Some("bfb: {spec: {url: x}}\n"),
    )
    .await;
    assert_eq!(r.code, 6);
    assert_eq!(r.stderr, "error: <stdin> (resource 1): metadata.name: required\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_exits_69() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = ctl(&format!("http://127.0.0.1:{port}"), &["node", "list"]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with(&format!("error: cannot reach http://127.0.0.1:{port}: ")),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_sent_as_bearer_metadata() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let r = ctl_with(
        &server,
        &["node", "get", "x"],
        &[("HOSTPLANE_TOKEN", "t0k")],
        None,
    )
    .await;
    assert_eq!(r.code, 4);
    assert_eq!(
        fake.state.lock().unwrap().last_auth.as_deref(),
        Some("Bearer t0k")
    );
    let r = ctl(&server, &["node", "get", "x"]).await;
    assert_eq!(r.code, 4);
    assert_eq!(fake.state.lock().unwrap().last_auth, None);
}

fn dpu(phase: DpuPhase, message: &str) -> Resource {
    Dpu {
        metadata: Some(ObjectMeta {
            name: "d1".into(),
            ..Default::default()
        }),
        spec: Some(DpuSpec {
            node: "n1".into(),
            device: "a".into(),
            ..Default::default()
        }),
        status: Some(DpuStatus {
            phase: phase as i32,
            message: message.into(),
            ..Default::default()
        }),
    }
    .into()
}

fn modified(r: Resource) -> WatchEvent {
    WatchEvent {
        r#type: EventType::Modified as i32,
        resource_version: 100,
        resource: Some(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_ready_wait_exit_codes() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    fake.insert(dpu(DpuPhase::OsInstalling, "pushing"));

    let r = ctl(&server, &["dpu", "ready", "d1"]).await;
    assert_eq!(r.code, 0, "without --wait or --check it only prints");
    assert!(
        r.stdout.contains("d1     false   OSInstalling   pushing"),
        "{}",
        r.stdout
    );
    assert_eq!(ctl(&server, &["dpu", "ready", "d1", "--check"]).await.code, 3);

    fake.state.lock().unwrap().watch_script = vec![modified(dpu(DpuPhase::Ready, "installed"))];
    let r = ctl(&server, &["dpu", "ready", "d1", "--wait", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["phase"], "DPU_PHASE_READY");

    fake.state.lock().unwrap().watch_script = vec![modified(dpu(DpuPhase::Error, "bl2 timeout"))];
    let r = ctl(&server, &["dpu", "ready", "d1", "--wait"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "error: dpu d1 is in Error: bl2 timeout\n");

    fake.state.lock().unwrap().watch_script = vec![];
    let r = ctl(&server, &["dpu", "ready", "d1", "--wait", "--timeout", "300ms"]).await;
    assert_eq!(r.code, 124);
    assert_eq!(r.stderr, "error: timed out after 300ms\n");

    assert_eq!(ctl(&server, &["dpu", "ready", "ghost", "--wait"]).await.code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_lists_then_streams_changes() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    fake.insert(dpu(DpuPhase::Pending, ""));
    {
        let mut st = fake.state.lock().unwrap();
        st.watch_script = vec![modified(dpu(DpuPhase::OsInstalling, "pushing"))];
        st.watch_ends = true;
    }
    let r = ctl(&server, &["dpu", "watch"]).await;
    let lines: Vec<Vec<&str>> = r.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..3], ["EVENT", "NAME", "NODE"], "{}", r.stdout);
    assert_eq!(lines[1][..2], ["ADDED", "d1"], "{}", r.stdout);
    assert!(lines[1].contains(&"Pending"), "{}", r.stdout);
    assert_eq!(lines[2][..2], ["MODIFIED", "d1"], "{}", r.stdout);
    assert!(lines[2].contains(&"OSInstalling"), "{}", r.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(r.code, 69, "the server ended the stream");
    assert_eq!(r.stderr, "error: the server closed the watch on dpu objects\n");

    let r = ctl(
        &server,
        &[
            "dpu",
            "watch",
            "--from-version",
            "0",
            "-o",
            "json",
            "--node",
            "n2",
        ],
    )
    .await;
    assert_eq!(r.stdout, "", "events for other nodes are filtered out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_status_check_and_usage_errors() {
    let server = serve(Fake::default()).await;
    assert_eq!(ctl(&server, &["node", "create", "n1"]).await.code, 0);
    let r = ctl(&server, &["node", "reboot-status", "n1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "NODE   WAITING-REBOOT   DPUS\nn1     false            -\n")
    );
    assert_eq!(
        ctl(&server, &["node", "reboot-status", "n1", "--check"])
            .await
            .code,
        3
    );

    let r = ctl(&server, &["node", "list", "-l", "k"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("expected KEY=VALUE"), "{}", r.stderr);
    assert_eq!(ctl(&server, &["bfb", "list", "--node", "n1"]).await.code, 2);

    let r = ctl(&server, &["completion", "bash"]).await;
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("hostplanectl") && r.stdout.contains("reboot-status"),
        "completion script"
    );
}
