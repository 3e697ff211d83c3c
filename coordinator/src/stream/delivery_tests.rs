//! Delivery to each node's session only, over a real in-process gRPC server.
use std::net::SocketAddr;

use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{
    AgentMessage, CoordinatorMessage, DesiredState, Hello, Nack, RebootMethod, agent_message,
    coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::desired::{self, Why};
use crate::fsm::testing::{self, seed};

/// The tests here read the process-wide `agents_connected` gauge: one at a
/// time, each waiting at its end for its sessions to be counted out.
static GAUGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn connected() -> i64 {
    crate::metrics::hub().agents_connected.get()
}

struct Server {
    addr: SocketAddr,
    store: Store,
    stream: AgentStream,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(nodes: &[&str]) -> Server {
    let store = Store::in_memory().unwrap();
    seed(
        &store,
        nodes
            .iter()
            .map(|n| testing::node(n, RebootMethod::Agent))
            .collect(),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let cfg = StreamConfig {
        status_flush: Duration::from_millis(10),
        ..Default::default()
    };
    let stream = AgentStream::new(store.clone(), cfg).with_shutdown(&stop);
    let svc = stream.clone().into_server();
    let s = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            ),
    );
    Server {
        addr,
        store,
        stream,
        stop,
    }
}

struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<CoordinatorMessage>,
}

async fn open(addr: SocketAddr, node: &str) -> Agent {
    let mut client = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        node_name: node.into(),
        boot_id: "b1".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let resp = client.session(ReceiverStream::new(rx)).await.unwrap();
    Agent {
        tx,
        rx: resp.into_inner(),
    }
}

impl Agent {
    async fn next(&mut self) -> DesiredState {
        let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a message from the coordinator")
            .unwrap();
        match m {
            Some(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Desired(d)),
            }) => d,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn touch(store: &Store, node: &'static str) -> u64 {
    store
        .write(move |t| desired::touch(t, node, Why::Reconciler))
        .await
        .unwrap()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_change_to_one_nodes_desired_state_wakes_only_its_session() {
    let _one = GAUGE.lock().await;
    let base = connected();
    let s = serve(&["n1", "n2", "n3"]).await;
    let mut a = open(s.addr, "n1").await;
    let mut b = open(s.addr, "n2").await;
    let _c = open(s.addr, "n3").await;
    a.next().await;
    b.next().await;
    let d = &s.stream.shared.delivery;
    assert_eq!(
        (d.wakes("n1"), d.wakes("n2"), d.wakes("n3")),
        (Some(0), Some(0), Some(0))
    );

    for _ in 0..5 {
        let v = touch(&s.store, "n1").await;
        assert_eq!(a.next().await.version, v);
    }
    // A node without a session wakes nobody.
    touch(&s.store, "n4").await;
    let v = touch(&s.store, "n2").await;
    // n2's session sent nothing between its first desired state and this one.
    assert_eq!(b.next().await.version, v);
    assert_eq!(
        (d.wakes("n1"), d.wakes("n2"), d.wakes("n3")),
        (Some(5), Some(1), Some(0))
    );
    drop(s);
    eventually("the sessions are counted out", || connected() == base).await;
}

#[tokio::test]
async fn sessions_are_counted_in_and_out_once() {
    let _one = GAUGE.lock().await;
    let g = connected;
    let (base, sent, nacks) = (
        g(),
        crate::metrics::hub().desired_states_sent.get(),
        crate::metrics::hub().nacks.get(),
    );
    let s = serve(&["n1", "n2"]).await;
    let mut a = open(s.addr, "n1").await;
    a.next().await;
    let mut b = open(s.addr, "n2").await;
    b.next().await;
    assert_eq!(g(), base + 2);
    assert!(crate::metrics::hub().desired_states_sent.get() >= sent + 2);

    // A newer session of n1 replaces the older: one in, one out.
    let mut a2 = open(s.addr, "n1").await;
    a2.next().await;
    let e = a.rx.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted);
    eventually("the replaced session is counted out", || g() == base + 2).await;
    assert_eq!(s.stream.shared.delivery.len(), 2);

    a2.tx
        .send(AgentMessage {
            msg: Some(agent_message::Msg::Nack(Nack {
                version: 1,
                error: "no".into(),
            })),
        })
        .await
        .unwrap();
    eventually("the NACK is counted", || {
        crate::metrics::hub().nacks.get() > nacks
    })
    .await;

    // The agents go away: both are counted out, and their registrations end.
    drop((a2, b));
    eventually("both sessions are counted out", || g() == base).await;
    assert!(s.stream.shared.delivery.is_empty());
    assert!(s.stream.shared.sessions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn serving_a_hello_costs_the_same_for_100_and_2000_nodes() {
    let _one = GAUGE.lock().await;
    let base = connected();
    let mut costs = Vec::new();
    for nodes in [100, 2_000] {
        let store = crate::desired::tests::fleet(nodes).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        // No flush and no lease lapses while the Hello is measured.
        let cfg = StreamConfig {
            lease: Duration::from_secs(3600),
            status_flush: Duration::from_secs(3600),
            last_seen_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let svc = AgentStream::new(store.clone(), cfg)
            .with_shutdown(&stop)
            .into_server();
        let s = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    s.cancelled().await
                }),
        );
        // A first session starts the service's tasks.
        let mut warm = open(addr, &crate::desired::tests::node_name(0)).await;
        warm.next().await;

        let node = crate::desired::tests::node_name(42);
        let before = store.stats();
        let mut a = open(addr, &node).await;
        let d = a.next().await;
        let after = store.stats();
        assert_eq!((d.commands.len(), d.networks.len()), (1, 1));
        costs.push((
            after.transactions - before.transactions,
            after.rows_read - before.rows_read,
        ));
        stop.cancel();
        eventually("the sessions are counted out", || connected() == base).await;
    }
    assert_eq!(
        costs[0], costs[1],
        "(transactions, rows read) at 100 and 2,000 nodes"
    );
}
