//! The real `hostplanectl` binary against an in-process fake AdminService on
//! 127.0.0.1:0 (see `support/`): output, exit codes, metadata.
mod support;

use hostplane_proto::v1::{
    Dpu, DpuPhase, DpuSpec, DpuStatus, EventType, ObjectMeta, RebootMethod, Resource, WatchEvent, resource,
};
use support::{Fake, ctl, ctl_with, serve};

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
    assert_eq!(n.spec.unwrap().reboot_method(), RebootMethod::Agent);

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
        (
            0,
            "NODE   WAITING-REBOOT   POWER-CYCLE   DPUS\nn1     false            false         -\n"
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_flows() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;

    let req = r#"{"node": {"metadata": {"name": "n1"}},
                  "devices": [{"metadata": {"name": "a"}, "spec": {"rshim": "rshim0"}}]}"#;
    let r = ctl_with(
        &server,
        &["node", "create-with-devices", "-f", "-"],
        &[],
        Some(req),
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 created\ndevice/a created\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["device", "list", "--node", "n1", "-o", "name"]).await;
    assert_eq!(r.stdout, "device/a\n");

    let r = ctl(&server, &["node", "rebooted", "n1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 marked rebooted\n"),
        "{}",
        r.stderr
    );

    fake.insert(dpu(DpuPhase::Ready, ""));
    let r = ctl(&server, &["dpu", "reprovision", "d1", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["dpu"]["status"]["phase"], "DPU_PHASE_INITIALIZING");

    let d = r#"{"deployment": {"metadata": {"name": "d1"}, "spec": {"bfb": "b1", "flavor": "f1"}}}"#;
    assert_eq!(
        ctl_with(&server, &["deployment", "create", "-f", "-"], &[], Some(d))
            .await
            .code,
        0
    );
    let r = ctl(&server, &["deployment", "set-image", "d1", "--bfb", "b2"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "deployment/d1 image set (bfb b2, flavor f1)\n"),
        "{}",
        r.stderr
    );
    assert_eq!(
        ctl(&server, &["deployment", "set-image", "nope", "--flavor", "f2"])
            .await
            .code,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_top_sorts_nodes_and_asks_only_for_the_named_ones() {
    use hostplane_proto::v1::{NodePower, PowerSummary};
    let fake = Fake::default();
    let node = |n: &str, draw: f64, cap: f64| NodePower {
        node: n.into(),
        draw_watts: Some(draw),
        cap_watts: cap,
        effective_watts: cap,
        method: "redfish".into(),
        ..Default::default()
    };
    fake.state.lock().unwrap().power = PowerSummary {
        nodes: vec![node("a", 3000.0, 8000.0), node("b", 7000.0, 8000.0)],
        elements: vec![],
    };
    let server = serve(fake).await;
    let r = ctl(&server, &["power", "top"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<&str> = r.stdout.lines().collect();
    assert!(rows[0].starts_with("NODE"), "{}", r.stdout);
    assert!(
        rows[1].starts_with("b ") && rows[1].contains("88%"),
        "highest draw first: {}",
        r.stdout
    );
    assert!(rows[2].starts_with("a "), "{}", r.stdout);
    let r = ctl(&server, &["power", "top", "a", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(v["nodes"][0]["node"], "a");
}

/// A listing whose snapshot the server no longer holds starts again from
/// the first page (up to 3 times): the output is complete and has no
/// duplicates; beyond that the server's ABORTED is the error (exit 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_starts_again_when_the_snapshot_expired() {
    let fake = Fake::default();
    for i in 0..5 {
        fake.insert(
            hostplane_proto::v1::Node {
                metadata: Some(ObjectMeta {
                    name: format!("n{i}"),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        );
    }
    let server = serve(fake.clone()).await;
    let all = "node/n0\nnode/n1\nnode/n2\nnode/n3\nnode/n4\n";

    fake.state.lock().unwrap().abort_pages = 3;
    let r = ctl(&server, &["node", "list", "-o", "name"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, all), "{}", r.stderr);
    // 3 aborted tries of the second page, each after a first page; then 3 pages.
    assert_eq!(fake.state.lock().unwrap().list_calls, 3 * 2 + 3);

    fake.state.lock().unwrap().abort_pages = 4;
    let r = ctl(&server, &["node", "list", "-o", "name"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (8, ""));
    assert!(
        r.stderr.contains("list again from the first page"),
        "{}",
        r.stderr
    );
}
