//! `hostplanectl status` (alias `cluster`), the real binary:
//!
//! - against the real coordinator AdminService on a SQLite store (in
//!   process): the one coordinator leading with epoch 0, its view's
//!   revision, as a table and as `-o json`;
//! - against the fake AdminService answering as a PostgreSQL replica of two
//!   (the PostgreSQL answer itself is tested in the coordinator's
//!   api_cluster): the leader marked, the lease and epoch shown; and the
//!   store unreadable: exit 69 with the server's reason.
#[allow(dead_code)]
mod support;

use hostplane_coordinator::api::{AdminApi, ClusterSource};
use hostplane_coordinator::store::{SCHEMA_VERSION, Store};
use hostplane_proto::v1::admin_service_server::AdminService;
use hostplane_proto::v1::{
    ClusterStatus, CreateRequest, LeaderStatus, Node, NodeSpec, ObjectMeta, ReplicaStatus,
};
use support::{Fake, ctl};
use tokio_util::sync::CancellationToken;

async fn serve_real(api: AdminApi) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_sqlite_coordinator() {
    let store = Store::in_memory().unwrap();
    let api = AdminApi::new(store.clone(), CancellationToken::new())
        .with_cluster(ClusterSource::sqlite("coord-1", "10.0.0.5:50051"));
    for n in ["n1", "n2"] {
        let node = Node {
            metadata: Some(ObjectMeta {
                name: n.into(),
                ..Default::default()
            }),
            spec: Some(NodeSpec { reboot_method: 2 }),
            status: None,
        };
        api.create(tonic::Request::new(CreateRequest {
            resource: Some(node.into()),
        }))
        .await
        .unwrap();
    }
    let revision = store.view().revision();
    assert_eq!(revision, 2);
    let server = serve_real(api).await;

    let r = ctl(&server, &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = format!(
        "Backend:  sqlite (schema {SCHEMA_VERSION})\n\
         Leader:   coord-1 at 10.0.0.5:50051 (a single coordinator: no lease)\n\
         Epoch:    0\n\
         Answered: coord-1 (leader), store revision 2\n\
         \n\
         REPLICA   ADDR             VERSION   SEEN   LEADER\n\
         coord-1   10.0.0.5:50051   {v}     0.0s   yes\n",
        v = env!("CARGO_PKG_VERSION")
    );
    assert_eq!(r.stdout, want);

    // The alias prints the same.
    let r = ctl(&server, &["cluster"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, want.as_str()), "{}", r.stderr);

    let r = ctl(&server, &["status", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: ClusterStatus = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (got.backend.as_str(), got.role.as_str(), got.store_revision),
        ("sqlite", "leader", 2)
    );
    assert_eq!(got.schema_version, SCHEMA_VERSION);
    let leader = got.leader.unwrap();
    assert_eq!(
        (leader.holder.as_str(), leader.epoch, leader.expires_in_ms),
        ("coord-1", 0, None)
    );
    assert_eq!(got.replicas.len(), 1);
    // proto3 JSON: camelCase names.
    assert!(r.stdout.contains("\"storeRevision\""), "{}", r.stdout);

    let r = ctl(&server, &["status", "-o", "name"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "replica/coord-1\n"),
        "{}",
        r.stderr
    );
}

fn replica(name: &str, seen_ago_ms: i64) -> ReplicaStatus {
    ReplicaStatus {
        name: name.into(),
        addr: format!("{name}.coordinators.example:50051"),
        version: "0.1.0".into(),
        started_at_ms: 1_700_000_000_000,
        seen_ago_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_two_postgres_replicas_and_of_an_unreadable_store() {
    let fake = Fake::default();
    fake.state.lock().unwrap().cluster = Some(ClusterStatus {
        backend: "postgres".into(),
        schema_version: 5,
        replica: "coord-b".into(),
        role: "follower".into(),
        leader: Some(LeaderStatus {
            holder: "coord-a".into(),
            addr: "coord-a.coordinators.example:50051".into(),
            epoch: 7,
            expires_in_ms: Some(13_200),
        }),
        replicas: vec![replica("coord-a", 400), replica("coord-b", 1_250)],
        store_revision: 981,
    });
    let server = support::serve(fake.clone()).await;
    let r = ctl(&server, &["status", "--token", "t0k"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Backend:  postgres (schema 5)\n\
         Leader:   coord-a at coord-a.coordinators.example:50051, lease expires in 13s\n\
         Epoch:    7\n\
         Answered: coord-b (follower), store revision 981\n\
         \n\
         REPLICA   ADDR                                 VERSION   SEEN   LEADER\n\
         coord-a   coord-a.coordinators.example:50051   0.1.0     0.4s   yes\n\
         coord-b   coord-b.coordinators.example:50051   0.1.0     1.2s   -\n"
    );
    // The token goes with the call (viewers may read the status).
    assert_eq!(
        fake.state.lock().unwrap().last_auth.as_deref(),
        Some("Bearer t0k")
    );

    // The lease lapsed: no leader, the last holder marked.
    fake.state
        .lock()
        .unwrap()
        .cluster
        .as_mut()
        .unwrap()
        .leader
        .as_mut()
        .unwrap()
        .expires_in_ms = None;
    let r = ctl(&server, &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(
            "Leader:   none: the lease of coord-a at coord-a.coordinators.example:50051 expired or was released; a follower takes over at its next poll\n"
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0.4s   expired\n"), "{}", r.stdout);

    // The replica cannot read PostgreSQL: UNAVAILABLE is exit 69, with the reason.
    fake.state.lock().unwrap().cluster = None;
    let r = ctl(&server, &["status"]).await;
    assert_eq!(r.code, 69, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "cannot read the cluster status from PostgreSQL (hostplane@db:5432/hostplane): connection refused"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}
