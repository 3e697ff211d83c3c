//! `hostplanectl ... list` against the real coordinator's AdminService
//! serving small pages (3 objects): every format returns every object, in
//! the same order and with the same text as one page would give, and
//! `list --watch` lists every page before it follows changes.
// Only its CLI runner is used here (the fake server is for the other tests).
#[allow(dead_code)]
mod support;

use std::time::Duration;

use hostplane_coordinator::api::{AdminApi, PageSizes};
use hostplane_coordinator::store::Store;
use hostplane_proto::v1::{CreateRequest, Device, DeviceSpec, Kind, Node, NodeSpec, ObjectMeta, Resource};
use support::ctl;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Serve the store's AdminService with pages of at most `page` objects.
async fn serve(store: Store, page: usize) -> String {
    let api = AdminApi::new(store, CancellationToken::new()).with_page_sizes(PageSizes {
        default_items: page,
        max_items: page,
        ..PageSizes::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api.into_server())
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn meta(name: &str, labels: &[(&str, &str)]) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// 11 nodes (racks r0/r1 in turn) and 7 devices on n00, through the API.
async fn seed(api: &AdminApi) {
    use hostplane_proto::v1::admin_service_server::AdminService;
    let create = |r: Resource| async move {
        api.create(tonic::Request::new(CreateRequest { resource: Some(r) }))
            .await
            .unwrap();
    };
    for i in 0..11 {
        let rack = format!("r{}", i % 2);
        create(
            Node {
                metadata: meta(&format!("n{i:02}"), &[("rack", &rack)]),
                spec: Some(NodeSpec { reboot_method: 2 }),
                status: None,
            }
            .into(),
        )
        .await;
    }
    for i in 0..7 {
        create(
            Device {
                metadata: meta(&format!("d{i}"), &[]),
                spec: Some(DeviceSpec {
                    node: "n00".into(),
                    serial: format!("SN{i}"),
                    rshim: format!("rshim{i}"),
                    ..Default::default()
                }),
                status: None,
            }
            .into(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_every_page_and_the_output_of_one_page() {
    let store = Store::in_memory().unwrap();
    seed(&AdminApi::new(store.clone(), CancellationToken::new())).await;
    // The same store behind pages of 3 and behind one page for everything.
    let paged = serve(store.clone(), 3).await;
    let whole = serve(store.clone(), 1000).await;

    let all_nodes: Vec<String> = (0..11).map(|i| format!("node/n{i:02}\n")).collect();
    let r = ctl(&paged, &["node", "list", "-o", "name"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, all_nodes.concat().as_str()),
        "{}",
        r.stderr
    );

    for args in [
        &["node", "list", "-o", "json"][..],
        &["node", "list", "-o", "yaml"],
        &["node", "list", "-l", "rack=r1", "-o", "json"],
        &["device", "list", "--node", "n00", "-o", "name"],
        &["device", "list", "-o", "yaml"],
        &["bfb", "list", "-o", "json"],
    ] {
        let p = ctl(&paged, args).await;
        let w = ctl(&whole, args).await;
        assert_eq!(p.code, 0, "{args:?}: {}", p.stderr);
        assert_eq!(p.stdout, w.stdout, "{args:?}: paged output differs from one page");
    }
    let r = ctl(&paged, &["node", "list", "-l", "rack=r1", "-o", "name"]).await;
    assert_eq!(r.stdout, "node/n01\nnode/n03\nnode/n05\nnode/n07\nnode/n09\n");

    // JSON read back: exactly what the store holds.
    let r = ctl(&paged, &["device", "list", "-o", "json"]).await;
    let got: Vec<Resource> = serde_json::from_str(&r.stdout).unwrap();
    let want = store.read(|t| t.list(Kind::Device)).await.unwrap();
    assert_eq!(got, want);

    // Tables: the same rows (the AGE column aside), one header.
    let p = ctl(&paged, &["node", "list"]).await;
    let w = ctl(&whole, &["node", "list"]).await;
    let first = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(first(&p.stdout), first(&w.stdout));
    assert_eq!(p.stdout.lines().count(), 12, "{}", p.stdout);
    let r = ctl(&paged, &["bfb", "list"]).await;
    assert_eq!(r.stdout, "no bfbs found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_lists_every_page_first() {
    let store = Store::in_memory().unwrap();
    seed(&AdminApi::new(store.clone(), CancellationToken::new())).await;
    let server = serve(store, 2).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hostplanectl"))
        .args(["--server", &server, "node", "list", "--watch", "-o", "name"])
        .env_remove("HOSTPLANE_TOKEN")
        .env_remove("HOSTPLANE_SERVER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 11 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the listing before the watch")
            .unwrap()
            .expect("hostplanectl ended early");
        seen.push(line);
    }
    let want: Vec<String> = (0..11).map(|i| format!("node/n{i:02}")).collect();
    assert_eq!(seen, want);
    child.kill().await.unwrap();
}
