//! The server around the API: health, reflection, restarts, and the binary
//! (exit codes, config validation, SIGTERM).
mod api_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use api_common::*;
use hostplane_proto::v1::{GetRequest, Kind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Guards against a hang only.
const HANG: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_hostplane-coordinator");

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

#[tokio::test]
async fn health_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut health = HealthClient::new(srv.channel().await);
    for service in ["", "hostplane.v1.AdminService", "hostplane.v1.AgentService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let e = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    srv.stop().await;
}

async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    req: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(req),
    };
    let mut out = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    out.message().await.unwrap().unwrap().message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut client = ServerReflectionClient::new(srv.channel().await);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "hostplane.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // grpcurl's `describe` asks for the file that holds a symbol.
    let r = reflect(
        &mut client,
        MessageRequest::FileContainingSymbol("hostplane.v1.AdminService".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = r else {
        panic!("{r:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn the_store_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let srv = start(&path).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    let before = snapshot(&mut c).await;
    srv.stop().await;

    let srv = start(&path).await;
    let mut c = srv.client().await;
    assert_eq!(snapshot(&mut c).await, before);
    // Versions keep growing after the restart.
    let n2 = create(&mut c, node("n2")).await;
    assert!(n2.resource_version() > before.1);
    srv.stop().await;
}

fn coordinator() -> Command {
    let mut cmd = Command::new(BIN);
    for var in ["HOSTPLANE_LISTEN", "HOSTPLANE_STORE_PATH", "HOSTPLANE_LOG_FORMAT"] {
        cmd.env_remove(var);
    }
    cmd.env("HOSTPLANE_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn exit_code(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(HANG, coordinator().args(args).output())
        .await
        .expect("hang")
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().expect("exited"),
        text(out.stdout),
        text(out.stderr),
    )
}

#[tokio::test]
async fn validate_and_usage_exit_codes() {
    let example = testdata("coordinator.yaml");
    let (code, out, _) = exit_code(&["validate", "--config", example.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("config OK: listen 127.0.0.1:50051"), "{out}");

    let (code, _, err) = exit_code(&[
        "validate",
        "--config",
        testdata("unknown-field.yaml").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 78);
    assert!(err.contains("listen_address"), "{err}");
    let (code, _, err) = exit_code(&[
        "validate",
        "--config",
        testdata("bad-value.yaml").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 78);
    assert!(
        err.contains("config field fsm.resync: must be greater than 0"),
        "{err}"
    );
    let (code, _, err) = exit_code(&["validate", "--config", "/nonexistent/c.yaml"]).await;
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/c.yaml"), "{err}");

    let (code, _, _) = exit_code(&["--no-such-flag"]).await;
    assert_eq!(code, 64);
    let (code, _, _) = exit_code(&["run", "--listen", "not-an-address"]).await;
    assert_eq!(code, 64);
    let (code, out, _) = exit_code(&["version"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("hostplane-coordinator "), "{out}");
}

/// Start the binary and wait for "coordinator serving"; returns the address.
async fn spawn_serving(config: &Path) -> (Child, String) {
    let mut child = coordinator()
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(HANG, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("coordinator serving") {
                let at = line.find("addr=").expect("addr field") + 5;
                return line[at..].split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("the coordinator exited before serving");
    })
    .await
    .expect("hang");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn sigterm(mut child: Child) -> i32 {
    let pid = child.id().unwrap().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(HANG, child.wait())
        .await
        .expect("hang")
        .unwrap();
    status.code().expect("exited, not killed")
}

#[tokio::test]
async fn the_binary_serves_stops_on_sigterm_and_keeps_its_store() {
    // The store in the config (`tests/backend`): SQLite's file, or the
    // PostgreSQL database with its password file, where the restarted
    // binary is elected again.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    let store = dir.path().join("data/c.db");
    std::fs::write(
        &config,
        format!(
            "{}shutdown_grace: 2s\ninsecure: true\n",
            backend::store_yaml(&store)
        ),
    )
    .unwrap();

    let (child, addr) = spawn_serving(&config).await;
    let mut c = Client::connect(format!("http://{addr}")).await.unwrap();
    create(&mut c, node("n1")).await;
    assert_eq!(sigterm(child).await, 0, "SIGTERM is a clean stop");

    let (child, addr) = spawn_serving(&config).await;
    let mut c = Client::connect(format!("http://{addr}")).await.unwrap();
    let got = c
        .get(GetRequest {
            kind: Kind::Node as i32,
            name: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name(), "n1");
    assert_eq!(sigterm(child).await, 0);
}

#[tokio::test]
async fn agents_reach_their_session_on_the_same_server() {
    use hostplane_proto::v1::agent_service_client::AgentServiceClient;
    use hostplane_proto::v1::{AgentMessage, Hello, agent_message, coordinator_message};

    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, node("n1")).await;
    let mut agents = AgentServiceClient::new(srv.channel().await);
    let hello = |node: &str| AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node_name: node.into(),
            ..Default::default()
        })),
    };

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("n1")).await.unwrap();
    let mut inbound = agents
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(HANG, inbound.message())
        .await
        .expect("hang")
        .unwrap()
        .unwrap();
    let Some(coordinator_message::Msg::Desired(desired)) = first.msg else {
        panic!("{first:?}")
    };
    assert_eq!(desired.node, "n1");

    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(hello("n9")).await.unwrap();
    let refused = match agents
        .session(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
    {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::NotFound, "{}", refused.message());

    // Stopping the server ends the open session too.
    srv.stop().await;
    let end = tokio::time::timeout(HANG, inbound.message())
        .await
        .expect("session still open after stop");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    drop(tx);
}
