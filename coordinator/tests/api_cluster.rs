//! GetClusterStatus (`hostplanectl status`) and the store-following gRPC
//! health (issue 13, Operations; docs/ha.md §4, §6), through real servers:
//!
//! - on SQLite (the server `serve_with` builds): one replica, its own leader
//!   with epoch 0 and no lease, the view's revision; a viewer token may call it;
//! - on a throwaway PostgreSQL cluster (hostplane_common::testing::pg) with
//!   two replicas, each an elector with short leases and its own store and
//!   API: both name the same leader and epoch and list both replicas; the
//!   leader stopped, the other takes over with epoch 2 and the stopped one's
//!   row is gone; the database refusing connections is UNAVAILABLE naming it;
//! - health: NOT_SERVING while the PostgreSQL store refuses connections or
//!   while its reads wait past the limit (a transaction holds the revision
//!   lock), SERVING again once it answers.
//!
//! The PostgreSQL tests skip, printing why, only when the binaries are missing.
mod api_common;

use std::time::Duration;

use hostplane_common::testing::pg::{DATABASE, PgCluster, USER};
use hostplane_coordinator::api::auth::{AuthConfig, Guard, GuardedAdmin, hash_token};
use hostplane_coordinator::api::health::{StoreProbe, watch_store_with};
use hostplane_coordinator::api::{AdminApi, ClusterSource};
use hostplane_coordinator::audit::Audit;
use hostplane_coordinator::ha::{Elector, LeaseConfig, Replica, Role};
use hostplane_coordinator::store::{HistoryConfig, PG_SCHEMA_VERSION, PgOptions, SCHEMA_VERSION, Store};
use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use hostplane_proto::v1::{ClusterStatus, ClusterStatusRequest, CreateRequest, Node, NodeSpec, ObjectMeta};
use postgres::NoTls;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CFG: LeaseConfig = LeaseConfig {
    lease: Duration::from_secs(2),
    renew_every: Duration::from_millis(300),
    renew_deadline: Duration::from_millis(1200),
};

fn node(name: &str) -> CreateRequest {
    CreateRequest {
        resource: Some(
            Node {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                spec: Some(NodeSpec { reboot_method: 2 }),
                status: None,
            }
            .into(),
        ),
    }
}

async fn status(c: &mut AdminServiceClient<Channel>) -> Result<ClusterStatus, tonic::Status> {
    c.get_cluster_status(ClusterStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn sqlite_server_is_one_replica_leading_with_epoch_0() {
    // About the SQLite coordinator itself (backend "sqlite", its schema
    // version): SQLite whatever HOSTPLANE_TEST_STORE says; the PostgreSQL
    // replicas are the tests below.
    let dir = tempfile::tempdir().unwrap();
    let srv = api_common::start_sqlite(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    c.create(node("n1")).await.unwrap();
    c.create(node("n2")).await.unwrap();
    let s = status(&mut c).await.unwrap();
    assert_eq!(s.backend, "sqlite");
    assert_eq!(s.schema_version, SCHEMA_VERSION);
    assert_eq!(s.role, "leader");
    assert!(!s.replica.is_empty(), "{s:?}");
    let leader = s.leader.clone().unwrap();
    assert_eq!(
        (leader.holder.as_str(), leader.epoch, leader.expires_in_ms),
        (s.replica.as_str(), 0, None)
    );
    assert_eq!(s.replicas.len(), 1, "{s:?}");
    assert_eq!(s.replicas[0].name, s.replica);
    assert_eq!(s.replicas[0].version, env!("CARGO_PKG_VERSION"));
    assert!(s.replicas[0].started_at_ms > 0, "{s:?}");
    // Two creates: the view is at revision 2 at least, and the answer is the view's.
    assert!(s.store_revision >= 2, "{s:?}");
    assert_eq!(s.store_revision, srv.store.view().revision());
    srv.stop().await;
}

#[tokio::test]
async fn a_viewer_may_read_the_cluster_status_an_unknown_token_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: vera, role: viewer, sha256: {}}}\n",
            hash_token("viewer-secret")
        ),
    )
    .unwrap();
    let cfg = AuthConfig {
        tokens_file: Some(tokens),
        ..AuthConfig::default()
    };
    let guard = Guard::from_config(&cfg, false, Audit::default()).unwrap();
    // The single SQLite coordinator's answer (ClusterSource::sqlite), so
    // its store is SQLite whatever HOSTPLANE_TEST_STORE says.
    let store = Store::in_memory().unwrap();
    let api = AdminApi::new(store, CancellationToken::new())
        .with_cluster(ClusterSource::sqlite("solo", "solo:50051"));
    let url = serve(Routes::new(GuardedAdmin::new(api, guard).into_server())).await;
    let mut c = AdminServiceClient::new(channel(&url).await);
    let call = |token: &str| {
        let mut req = tonic::Request::new(ClusterStatusRequest {});
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let s = c
        .get_cluster_status(call("viewer-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.replica.as_str(), s.role.as_str()), ("solo", "leader"));
    assert_eq!(s.replicas[0].addr, "solo:50051");
    let refused = c.get_cluster_status(call("nope")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

/// Serves `routes` on 127.0.0.1:0; returns the URL.
async fn serve(routes: Routes) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

async fn channel(url: &str) -> Channel {
    for _ in 0..50 {
        if let Ok(ch) = Channel::from_shared(url.to_string()).unwrap().connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not connect to {url}");
}

/// A throwaway cluster and a runtime for the servers and electors (the
/// test's own SQL runs on the test thread: a synchronous postgres client
/// must not run inside the runtime).
struct Fixture {
    pg: PgCluster,
    rt: Runtime,
}

fn setup() -> Option<Fixture> {
    let pg = PgCluster::start().expect("start the throwaway PostgreSQL cluster")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Some(Fixture { pg, rt })
}

/// One replica: its store, elector and API server.
struct ReplicaUnderTest {
    name: String,
    elector: Option<Elector>,
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    client: AdminServiceClient<Channel>,
}

impl Fixture {
    fn opts(&self) -> PgOptions {
        PgOptions::from_url(self.pg.url())
    }

    /// Runs `sql` as the superuser from the `postgres` database (so that
    /// the test database can refuse connections meanwhile).
    fn superuser(&self, sql: &str) {
        let url = format!(
            "postgres://{USER}:{}@127.0.0.1:{}/postgres",
            self.pg.password(),
            self.pg.port()
        );
        let mut c = postgres::Client::connect(&url, NoTls).unwrap();
        c.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{}", self.pg.log()));
    }

    /// Cuts every session to the test database and refuses new ones.
    fn refuse_connections(&self) {
        self.superuser(&format!(
            "ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DATABASE}';"
        ));
    }

    fn allow_connections(&self) {
        self.superuser(&format!("ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true"));
    }

    fn start_replica(&self, name: &str) -> ReplicaUnderTest {
        let opts = self.opts();
        let store = Store::open_postgres(&opts, HistoryConfig::default()).unwrap();
        let stop = CancellationToken::new();
        let replica = Replica {
            name: name.into(),
            addr: format!("{name}.coordinators.example:50051"),
        };
        let _rt = self.rt.enter();
        let elector = Elector::start(opts.clone(), replica, CFG, stop.clone()).unwrap();
        let role = elector.role();
        let api = AdminApi::new(store, stop.child_token()).with_cluster(ClusterSource::postgres(
            name,
            role.clone(),
            opts,
        ));
        let client = self.rt.block_on(async {
            let url = serve(Routes::new(api.into_server())).await;
            AdminServiceClient::new(channel(&url).await)
        });
        ReplicaUnderTest {
            name: name.into(),
            elector: Some(elector),
            role,
            stop,
            client,
        }
    }

    fn status(&self, r: &mut ReplicaUnderTest) -> Result<ClusterStatus, tonic::Status> {
        self.rt.block_on(status(&mut r.client))
    }

    /// Waits up to `within` until `r`'s answer satisfies `pred`; returns it.
    fn wait_status(
        &self,
        r: &mut ReplicaUnderTest,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            let s = self.status(r);
            if let Ok(s) = &s
                && pred(s)
            {
                return s.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: not {what} within {within:?}; last answer {s:?}\n{}",
                r.name,
                self.pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn two_postgres_replicas_show_each_other_and_the_leader() {
    let Some(fx) = setup() else {
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    };
    let mut a = fx.start_replica("a");
    let mut b = fx.start_replica("b");
    let both = |s: &ClusterStatus| {
        s.replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>() == ["a", "b"]
            && s.leader.as_ref().is_some_and(|l| l.expires_in_ms.is_some())
            // Its own role (its elector's) agrees with the row: the row is
            // written a moment before the elector publishes the role.
            && (s.role == "leader") == s.leader.as_ref().is_some_and(|l| l.holder == s.replica)
    };
    let sa = fx.wait_status(
        &mut a,
        Duration::from_secs(10),
        "showing both replicas and a live lease",
        both,
    );
    // b's role is its elector's: wait until it has seen the lease too.
    let sb = fx.wait_status(&mut b, Duration::from_secs(10), "showing both replicas", |s| {
        both(s)
            && s.leader.as_ref().map(|l| (&l.holder, l.epoch))
                == sa.leader.as_ref().map(|l| (&l.holder, l.epoch))
    });
    let leader = sa.leader.clone().unwrap();
    assert_eq!(leader.epoch, 1, "{sa:?}");
    assert!(leader.holder == "a" || leader.holder == "b", "{sa:?}");
    assert_eq!(
        leader.addr,
        format!("{}.coordinators.example:50051", leader.holder)
    );
    assert!(leader.expires_in_ms.unwrap() <= 2_000, "{sa:?}");
    for s in [&sa, &sb] {
        assert_eq!(s.backend, "postgres");
        assert_eq!(s.schema_version, PG_SCHEMA_VERSION);
        for r in &s.replicas {
            assert_eq!(r.addr, format!("{}.coordinators.example:50051", r.name));
            assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
            assert!(r.started_at_ms > 0, "{s:?}");
            // Heartbeats every 300 ms.
            assert!(r.seen_ago_ms < 2_000, "{s:?}");
        }
        let me_leads = s.replica == leader.holder;
        assert_eq!(s.role, if me_leads { "leader" } else { "follower" }, "{s:?}");
    }
    assert_eq!((sa.replica.as_str(), sb.replica.as_str()), ("a", "b"));

    // The leader stops (releasing the lease, removing its row): the other
    // takes over with epoch 2 and lists itself alone.
    let (gone, mut stays) = if leader.holder == "a" { (a, b) } else { (b, a) };
    gone.stop.cancel();
    fx.rt.block_on(gone.elector.unwrap().stopped());
    let after = fx.wait_status(&mut stays, Duration::from_secs(10), "leading alone", |s| {
        s.role == "leader" && s.replicas.len() == 1
    });
    let l = after.leader.clone().unwrap();
    assert_eq!(
        (l.holder.as_str(), l.epoch),
        (stays.name.as_str(), 2),
        "{after:?}"
    );
    assert_eq!(after.replicas[0].name, stays.name);
    assert!(stays.role.borrow().is_leader());

    // The database refuses connections: UNAVAILABLE naming PostgreSQL and why.
    fx.refuse_connections();
    let err = fx.status(&mut stays).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with(&format!(
            "cannot read the cluster status from PostgreSQL ({USER}@127.0.0.1:{}/{DATABASE}): ",
            fx.pg.port()
        )),
        "{err:?}"
    );
    assert!(
        err.message().contains("is not currently accepting connections"),
        "{err:?}"
    );
    // Back: the next call reconnects.
    fx.allow_connections();
    let back = fx.wait_status(&mut stays, Duration::from_secs(10), "answering again", |s| {
        s.replicas.len() == 1
    });
    assert_eq!(back.backend, "postgres");
    stays.stop.cancel();
    fx.rt.block_on(stays.elector.unwrap().stopped());
}

/// The health of "" and the admin service as a client sees it.
async fn serving(h: &mut HealthClient<Channel>) -> Vec<ServingStatus> {
    let mut out = Vec::new();
    for service in ["", "hostplane.v1.AdminService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        out.push(r.status());
    }
    out
}

struct HealthUnderTest {
    client: HealthClient<Channel>,
    stop: CancellationToken,
}

impl Fixture {
    /// A PostgreSQL store, a health service with "" and the admin service
    /// SERVING, and `watch_store_with(probe)` keeping it.
    fn health(&self, probe: StoreProbe) -> HealthUnderTest {
        let store = Store::open_postgres(&self.opts(), HistoryConfig::default()).unwrap();
        let stop = CancellationToken::new();
        let client = self.rt.block_on(async {
            let (reporter, service) = tonic_health::server::health_reporter();
            let names = vec![String::new(), "hostplane.v1.AdminService".to_string()];
            for n in &names {
                reporter
                    .set_service_status(n, tonic_health::ServingStatus::Serving)
                    .await;
            }
            tokio::spawn(watch_store_with(store, reporter, names, probe, stop.clone()));
            HealthClient::new(channel(&serve(Routes::new(service)).await).await)
        });
        HealthUnderTest { client, stop }
    }

    /// Waits up to `within` for every service to be `want`; returns how long it took.
    fn wait_health(&self, h: &mut HealthUnderTest, want: ServingStatus, within: Duration) -> Duration {
        let start = std::time::Instant::now();
        loop {
            let now = self.rt.block_on(serving(&mut h.client));
            if now.iter().all(|s| *s == want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "health not {want:?} within {within:?}: {now:?}\n{}",
                self.pg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn health_is_not_serving_while_the_postgres_store_refuses_connections() {
    let Some(fx) = setup() else {
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    };
    // The coordinator's timing: a read every 1 s, unavailable after 5 s.
    let mut h = fx.health(StoreProbe::default());
    assert_eq!(
        fx.rt.block_on(serving(&mut h.client)),
        [ServingStatus::Serving, ServingStatus::Serving]
    );
    // Stays SERVING while the store answers (several probes).
    std::thread::sleep(Duration::from_millis(2_500));
    fx.wait_health(&mut h, ServingStatus::Serving, Duration::ZERO);

    fx.refuse_connections();
    // A failed read (the connection is refused at once) turns it within a probe or two.
    fx.wait_health(&mut h, ServingStatus::NotServing, Duration::from_secs(4));
    // And it stays so while the database refuses.
    std::thread::sleep(Duration::from_millis(2_500));
    fx.wait_health(&mut h, ServingStatus::NotServing, Duration::ZERO);

    fx.allow_connections();
    fx.wait_health(&mut h, ServingStatus::Serving, Duration::from_secs(8));
    h.stop.cancel();
}

#[test]
fn health_is_not_serving_while_store_reads_wait_past_the_limit() {
    let Some(fx) = setup() else {
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    };
    let probe = StoreProbe {
        every: Duration::from_millis(200),
        unavailable_after: Duration::from_secs(1),
    };
    let mut h = fx.health(probe);
    fx.wait_health(&mut h, ServingStatus::Serving, Duration::ZERO);

    // Another session holds the revision lock: every store transaction
    // (reads too) waits behind it without failing.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let url = fx.pg.url();
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.query_one("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
            .unwrap();
        held.send(()).unwrap();
        released.recv().unwrap();
        tx.rollback().unwrap();
    });
    is_held.recv().unwrap();
    let took = fx.wait_health(&mut h, ServingStatus::NotServing, Duration::from_secs(4));
    // Not before the limit: the read only waits, it never fails.
    assert!(took >= Duration::from_millis(700), "NOT_SERVING after {took:?}");
    release.send(()).unwrap();
    holder.join().unwrap();
    fx.wait_health(&mut h, ServingStatus::Serving, Duration::from_secs(3));
    h.stop.cancel();
}
