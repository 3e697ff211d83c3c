//! Power across two coordinator replicas on one PostgreSQL database
//! (docs/ha.md §5), each an in-process gRPC server with the agent stream and
//! the Peer service, its role driven by a `watch` channel the test holds:
//!
//! - an agent's telemetry sent to the follower reaches the leader's hub (the
//!   forwarder), and the cap the leader's engine computes from it reaches the
//!   agent connected to the follower (power_caps, the caps feed), with the
//!   desired-state version that announced it; the agent's cap report
//!   reaches the leader too, and `GetPowerSummary` on the follower answers
//!   the leader's;
//! - a leader change (the watch flipped) moves the forwarding to the new
//!   leader, and the new leader's caps reach an agent on the old one;
//! - over mTLS only the replicas' certificate may call the Peer service (no
//!   PostgreSQL needed).
//!
//! The PostgreSQL tests are skipped, with the reason printed, where
//! PostgreSQL is not installed.
mod stream_common;

use std::net::SocketAddr;
use std::time::Duration;

use hostplane_common::testing::pg::PgCluster;
use hostplane_coordinator::api::AdminApi;
use hostplane_coordinator::ha::{LeaderInfo, Role};
use hostplane_coordinator::peer::{LeaderPower, PeerAuth, PeerConnect, PeerService, spawn_forwarder};
use hostplane_coordinator::power::{PowerConfig, PowerEngine, PowerHub, spawn_caps_feed};
use hostplane_coordinator::store::{HistoryConfig, PgOptions, Store, now_ms};
use hostplane_coordinator::stream::AgentStream;
use hostplane_proto::v1::admin_service_server::AdminService;
use hostplane_proto::v1::{
    CapStatus, CreateRequest, DesiredState, Node, NodeSpec, ObjectMeta, PowerCapReport, PowerCaps,
    PowerElement, PowerPolicy, PowerPolicySpec, PowerSample, PowerSummaryRequest, Resource, TelemetryBatch,
    Topology, TopologyElement, TopologyLevel, TopologySpec, agent_message, coordinator_message,
};
use stream_common::{Agent, hello, open, session_cfg};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Request;

const PATIENCE: Duration = Duration::from_secs(15);

struct Replica {
    name: String,
    store: Store,
    hub: PowerHub,
    role: tokio::sync::watch::Sender<Role>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Replica {
    fn info(&self, epoch: i64) -> LeaderInfo {
        LeaderInfo {
            holder: self.name.clone(),
            addr: self.addr.to_string(),
            epoch,
        }
    }

    /// A power summary as `hostplanectl power top` asked of this replica gets it.
    async fn summary(&self) -> Result<hostplane_proto::v1::PowerSummary, tonic::Status> {
        LeaderPower::new(self.hub.clone(), self.role.subscribe(), PeerConnect::plain())
            .summary(PowerSummaryRequest::default())
            .await
    }
}

/// A replica named `name` on `store`: agent stream and Peer service on
/// 127.0.0.1:0 (plain TCP), its caps feed and forwarder running, following
/// no one until the test sets its role.
async fn replica(name: &str, store: Store) -> Replica {
    let hub = PowerHub::new();
    let (role, role_rx) = tokio::sync::watch::channel(Role::Follower { leader: None });
    let stop = CancellationToken::new();
    let agents = AgentStream::new(store.clone(), session_cfg())
        .with_power(hub.clone())
        .with_shutdown(&stop)
        .into_server();
    let peer = PeerService::new(hub.clone(), role_rx.clone(), PeerAuth::plain()).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(agents)
            .add_service(peer)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            ),
    );
    spawn_caps_feed(store.clone(), hub.clone(), role_rx.clone(), stop.clone());
    spawn_forwarder(
        hub.clone(),
        role_rx,
        name.into(),
        PeerConnect::plain(),
        stop.clone(),
    );
    Replica {
        name: name.into(),
        store,
        hub,
        role,
        addr,
        stop,
    }
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

async fn create(api: &AdminApi, r: impl Into<Resource>) {
    api.create(Request::new(CreateRequest {
        resource: Some(r.into()),
    }))
    .await
    .unwrap();
}

/// Nodes n1 and n2 under one 1500 W feed, each node at most 1000 W, and a
/// policy on both: a node's cap follows its draw.
async fn seed(store: &Store) {
    let api = AdminApi::new(store.clone(), CancellationToken::new());
    for n in ["n1", "n2"] {
        create(
            &api,
            Node {
                metadata: meta(n),
                spec: Some(NodeSpec { reboot_method: 1 }),
                status: None,
            },
        )
        .await;
    }
    let el = |name: &str, level: TopologyLevel, parent: &str, budget: f64| TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: 0.0,
    };
    create(
        &api,
        Topology {
            metadata: meta("hall"),
            spec: Some(TopologySpec {
                elements: vec![
                    el("feed", TopologyLevel::Feed, "", 1_500.0),
                    el("n1", TopologyLevel::Node, "feed", 1_000.0),
                    el("n2", TopologyLevel::Node, "feed", 1_000.0),
                ],
            }),
            status: None,
        },
    )
    .await;
    create(
        &api,
        PowerPolicy {
            metadata: meta("p1"),
            spec: Some(PowerPolicySpec {
                nodes: vec!["n1".into(), "n2".into()],
                safe_node_watts: 300.0,
                cap_lease_seconds: 20,
                ..Default::default()
            }),
            status: None,
        },
    )
    .await;
}

fn batch(seq: u64, watts: f64) -> agent_message::Msg {
    agent_message::Msg::Telemetry(TelemetryBatch {
        epoch: 7,
        samples: vec![PowerSample {
            seq,
            at_ms: now_ms(),
            readings: vec![],
            node_watts: Some(watts),
        }],
        dropped: 0,
    })
}

/// Send telemetry of `node` (as its agent, connected to some replica) with a
/// new seq every 100 ms until `leader`'s hub has a sample of it at `watts`:
/// a forwarder that is still connecting drops what comes before, as a real
/// agent's next batch would bring it again. Returns the seq that arrived.
async fn telemetry_reaches(agent: &Agent, node: &str, watts: f64, leader: &PowerHub, mut seq: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        seq += 1;
        agent.send(batch(seq, watts)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if leader
            .telemetry(node)
            .and_then(|t| t.latest)
            .is_some_and(|s| s.node_watts == Some(watts))
        {
            return seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "telemetry of {node} at {watts} W never reached the leader's hub (it has {:?})",
            leader.telemetry(node)
        );
    }
}

/// The next desired state whose caps are `want` (acks and states with
/// other caps skipped).
async fn desired_with(agent: &mut Agent, want: &PowerCaps) -> DesiredState {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            match agent.rx.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(coordinator_message::Msg::Desired(d)) if d.power.as_ref() == Some(want) => {
                        return Some(d);
                    }
                    Some(coordinator_message::Msg::Desired(d)) => {
                        seen.push((d.version, d.power.map(|p| p.node_watts)))
                    }
                    _ => {}
                },
                _ => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(d)) => d,
        Ok(None) => panic!("the session ended before a desired state with caps {want:?}"),
        Err(_) => panic!(
            "no desired state with a {} W cap within {PATIENCE:?}; (version, cap) sent: {seen:?}",
            want.node_watts
        ),
    }
}

async fn first_desired(agent: &mut Agent) -> DesiredState {
    match agent.next_message(PATIENCE).await {
        coordinator_message::Msg::Desired(d) => d,
        other => panic!("the session's first message is its desired state, not {other:?}"),
    }
}

/// Wait for `f` to hold (polling), or fail with `what`.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cluster() -> Option<PgCluster> {
    let pg = PgCluster::start().expect("start the throwaway PostgreSQL cluster");
    if pg.is_none() {
        eprintln!("skipped: PostgreSQL is not installed here (scripts/setup installs it)");
    }
    pg
}

fn open_store(pg: &PgCluster) -> Store {
    Store::open_postgres(&PgOptions::from_url(pg.url()), HistoryConfig::default())
        .unwrap_or_else(|e| panic!("open the PostgreSQL store: {e}\n{}", pg.log()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn telemetry_on_a_follower_reaches_the_leader_and_its_caps_come_back() {
    let Some(pg) = cluster() else { return };
    // Opened outside the runtime: the synchronous client must not run inside it.
    let (store_a, store_b) = (open_store(&pg), open_store(&pg));
    runtime().block_on(async move {
        let a = replica("a", store_a).await;
        let b = replica("b", store_b).await;
        a.role.send_replace(Role::Leader { epoch: 1 });
        b.role.send_replace(Role::Follower {
            leader: Some(a.info(1)),
        });
        seed(&a.store).await;
        let cfg = PowerConfig::default();
        let mut engine = PowerEngine::new(a.store.clone(), a.hub.clone(), cfg);
        let first = engine.recompute().await.unwrap();
        assert_eq!(first.changed, ["n1", "n2"], "both nodes get caps without telemetry");
        let blind = a.hub.caps("n1").expect("n1 capped");

        // The agent of n1 connects to the follower.
        let mut agent = open(b.addr, hello("n1", "power-replicas", "boot-1")).await.unwrap();
        // The follower sends the caps the leader stored (its view may trail
        // for a moment: then a first state without them, then theirs).
        let d0 = desired_with(&mut agent, &blind).await;
        assert!(b.hub.is_store_fed() && !a.hub.is_store_fed());

        // Its telemetry goes to the follower, which forwards it to the leader.
        let seq = telemetry_reaches(&agent, "n1", 100.0, &a.hub, 0).await;
        let on_b = b.hub.telemetry("n1").unwrap();
        assert_eq!((on_b.epoch, on_b.seq), (7, seq), "the follower keeps what it accepted");
        let on_a = a.hub.telemetry("n1").unwrap();
        assert_eq!((on_a.epoch, on_a.seq), (7, seq));
        assert!(
            (1..=seq).contains(&on_a.accepted),
            "the leader took each forwarded sample once (those sent before the forwarder connected are lost): {} of {seq}",
            on_a.accepted
        );

        // The leader's engine caps n1 to its draw; the cap reaches the agent on the follower.
        let report = engine.recompute().await.unwrap();
        assert!(report.changed.contains(&"n1".to_string()), "{report:?}");
        let capped = a.hub.caps("n1").unwrap();
        assert!(
            capped.node_watts < blind.node_watts,
            "a 100 W draw lowers n1's cap from {} W (it is {} W)",
            blind.node_watts,
            capped.node_watts
        );
        let d1 = desired_with(&mut agent, &capped).await;
        assert!(d1.version > d0.version);
        assert_eq!(
            d1.version,
            a.store.view().desired_version("n1"),
            "sent with the version that announced the cap"
        );
        assert_eq!(b.hub.caps("n1").as_ref(), Some(&capped));

        // The agent's cap report reaches the leader; power top on the follower is the leader's.
        agent
            .send(agent_message::Msg::CapReport(PowerCapReport {
                version: d1.version,
                caps: vec![CapStatus {
                    element: PowerElement::Node as i32,
                    device: "node".into(),
                    requested_watts: capped.node_watts,
                    effective_watts: capped.node_watts,
                    method: "redfish".into(),
                    error: String::new(),
                }],
                safe_mode: false,
            }))
            .await;
        eventually("the cap report never reached the leader", || {
            a.hub.cap_report("n1").is_some_and(|r| r.version == d1.version)
        })
        .await;
        let s = b.summary().await.unwrap();
        let n1 = s.nodes.iter().find(|n| n.node == "n1").expect("n1 in the summary");
        assert_eq!(
            (n1.draw_watts, n1.cap_watts, n1.effective_watts, n1.method.as_str()),
            (Some(100.0), capped.node_watts, capped.node_watts, "redfish")
        );
        assert_eq!(s.elements.len(), 3, "the leader's allocation of the hall");
        assert!(b.hub.summary(&Default::default()).elements.is_empty(), "the follower computes none");
        assert_eq!(b.hub.forward_dropped(), 0);
        a.stop.cancel();
        b.stop.cancel();
    });
}

#[test]
fn a_leader_change_moves_the_forwarding_and_the_caps() {
    let Some(pg) = cluster() else { return };
    let (store_a, store_b) = (open_store(&pg), open_store(&pg));
    runtime().block_on(async move {
        let a = replica("a", store_a).await;
        let b = replica("b", store_b).await;
        a.role.send_replace(Role::Leader { epoch: 1 });
        b.role.send_replace(Role::Follower {
            leader: Some(a.info(1)),
        });
        seed(&a.store).await;
        let mut engine_a = PowerEngine::new(a.store.clone(), a.hub.clone(), PowerConfig::default());
        engine_a.recompute().await.unwrap();

        // n2's agent on a, the leader: its telemetry stays there.
        let mut agent = open(a.addr, hello("n2", "power-replicas", "boot-1"))
            .await
            .unwrap();
        first_desired(&mut agent).await;
        let seq = telemetry_reaches(&agent, "n2", 200.0, &a.hub, 0).await;
        assert!(b.hub.telemetry("n2").is_none(), "a leader forwards nothing");

        // b takes over; a follows b.
        drop(engine_a);
        b.role.send_replace(Role::Leader { epoch: 2 });
        a.role.send_replace(Role::Follower {
            leader: Some(b.info(2)),
        });
        eventually("a's caps come from the store once it follows", || {
            a.hub.is_store_fed()
        })
        .await;
        eventually("b's caps are its engine's once it leads", || {
            !b.hub.is_store_fed()
        })
        .await;
        // The forwarder on a reconnects to b: n2's telemetry reaches b.
        telemetry_reaches(&agent, "n2", 250.0, &b.hub, seq).await;
        assert_eq!(
            b.hub.telemetry("n2").unwrap().epoch,
            7,
            "the agent's epoch carries over to the new leader"
        );

        // b's engine caps n2 to that draw; a (now a follower) sends it to the agent.
        let mut engine_b = PowerEngine::new(b.store.clone(), b.hub.clone(), PowerConfig::default());
        let report = engine_b.recompute().await.unwrap();
        assert!(report.changed.contains(&"n2".to_string()), "{report:?}");
        let capped = b.hub.caps("n2").unwrap();
        let d = desired_with(&mut agent, &capped).await;
        assert_eq!(d.version, b.store.view().desired_version("n2"));

        // And back: a leads again (epoch 3), b forwards to it.
        a.role.send_replace(Role::Leader { epoch: 3 });
        b.role.send_replace(Role::Follower {
            leader: Some(a.info(3)),
        });
        let mut on_b = open(b.addr, hello("n1", "power-replicas", "boot-1"))
            .await
            .unwrap();
        first_desired(&mut on_b).await;
        telemetry_reaches(&on_b, "n1", 120.0, &a.hub, 0).await;
        a.stop.cancel();
        b.stop.cancel();
    });
}

/// A test CA (rcgen) and the certificates it signs.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hostplane test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `(cert, key)` PEM named `cn` for `localhost`, for server and client
    /// authentication (what a replica's certificate needs, docs/ha.md §5).
    fn issue(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }
}

/// Over mTLS the Peer service answers a caller presenting the replicas'
/// certificate (the server's own) and refuses an agent's certificate and a
/// caller without one (the server allows those for admins with
/// `tls.client_auth_optional`). No PostgreSQL needed.
#[test]
fn over_tls_only_the_replicas_certificate_may_call_the_peer_service() {
    use hostplane_coordinator::config::LoadedTls;
    use hostplane_coordinator::tls::{TlsSettings, incoming};
    use hostplane_proto::internal::v1::peer_client::PeerClient;
    use std::sync::{Arc, RwLock};

    let ca = Ca::new();
    let (cert, key) = ca.issue("coordinator");
    let (agent_cert, agent_key) = ca.issue("n1");
    runtime().block_on(async move {
        let hub = PowerHub::new();
        hub.record_telemetry(
            "n1",
            TelemetryBatch {
                epoch: 1,
                samples: vec![PowerSample {
                    seq: 1,
                    at_ms: now_ms(),
                    readings: vec![],
                    node_watts: Some(640.0),
                }],
                dropped: 0,
            },
        );
        let (_role, role_rx) = tokio::sync::watch::channel(Role::Leader { epoch: 1 });
        let files = LoadedTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.pem.clone().into_bytes(),
        };
        let settings = TlsSettings::new(&files, true).unwrap();
        let auth = PeerAuth::same_certificate(&cert).unwrap();
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = incoming(
            listener,
            Arc::new(RwLock::new(Arc::new(settings))),
            Default::default(),
            stop.clone(),
        );
        let s = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerService::new(hub, role_rx, auth).into_server())
                .serve_with_incoming_shutdown(stream, async move { s.cancelled().await }),
        );
        let addr = format!("localhost:{port}");
        let call = |connect: PeerConnect| {
            let addr = addr.clone();
            async move {
                let ch = connect.connect(&addr).await.unwrap();
                PeerClient::new(ch)
                    .get_power_summary(PowerSummaryRequest::default())
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let ca_pem = ca.pem.as_bytes();
        let s = call(PeerConnect::tls(ca_pem, &cert, &key)).await.unwrap();
        assert_eq!(
            s.nodes[0].draw_watts,
            Some(640.0),
            "a replica gets the leader's summary"
        );
        let e = call(PeerConnect::tls(ca_pem, &agent_cert, &agent_key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("\"n1\" is not a replica's"),
            "{}",
            e.message()
        );
        // No client certificate at all (allowed by the TLS layer for admins).
        let bare = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(bare)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = PeerClient::new(ch)
            .get_power_summary(PowerSummaryRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        stop.cancel();
    });
}

/// Only the leader takes forwarded reports: a follower refuses the stream
/// naming the leader it knows, and a leader ends an open stream when it
/// steps down (the follower then reconnects to the new one). No PostgreSQL
/// needed.
#[test]
fn only_the_leader_takes_forwarded_reports() {
    use hostplane_proto::internal::v1::peer_client::PeerClient;
    use hostplane_proto::internal::v1::{PowerReport, power_report};

    runtime().block_on(async {
        let hub = PowerHub::new();
        let (role, role_rx) = tokio::sync::watch::channel(Role::Follower {
            leader: Some(LeaderInfo {
                holder: "c-0".into(),
                addr: "c-0.example:7443".into(),
                epoch: 3,
            }),
        });
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerService::new(hub.clone(), role_rx, PeerAuth::plain()).into_server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    s.cancelled().await
                }),
        );
        let ch = PeerConnect::plain().connect(&addr.to_string()).await.unwrap();
        let report = |seq: u64| PowerReport {
            node: "n1".into(),
            report: Some(power_report::Report::Telemetry(TelemetryBatch {
                epoch: 1,
                samples: vec![PowerSample {
                    seq,
                    at_ms: now_ms(),
                    readings: vec![],
                    node_watts: Some(10.0 * seq as f64),
                }],
                dropped: 0,
            })),
        };

        let e = PeerClient::new(ch.clone())
            .forward(tokio_stream::iter(vec![report(1)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message()
                .contains("the leader is c-0 at c-0.example:7443 (epoch 3)"),
            "{}",
            e.message()
        );
        assert!(hub.telemetry("n1").is_none(), "a follower takes nothing");

        role.send_replace(Role::Leader { epoch: 4 });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = tokio::spawn({
            let ch = ch.clone();
            async move {
                PeerClient::new(ch)
                    .forward(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            }
        });
        tx.send(report(1)).await.unwrap();
        tx.send(report(2)).await.unwrap();
        eventually("the leader never took the forwarded samples", || {
            hub.telemetry("n1").is_some_and(|t| t.seq == 2)
        })
        .await;
        // Stepping down ends the open stream; the sender sees why.
        role.send_replace(Role::Follower { leader: None });
        let e = tokio::time::timeout(PATIENCE, call)
            .await
            .expect("the stream ends when the leader steps down")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("no leader holds the lease"),
            "{}",
            e.message()
        );
        drop(tx);
        stop.cancel();
    });
}
