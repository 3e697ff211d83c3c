//! The power half of the agent session against a scripted coordinator:
//! telemetry batches with sequence numbers, acks, replay after a reconnect,
//! caps from the desired state enforced and reported.
mod session_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hostplane_agent::power::caps::{self, CapsConfig, Enforcer, LimitError, Limiter};
use hostplane_agent::power::telemetry::{Telemetry, TelemetryBuffer, TelemetryConfig};
use hostplane_agent::power::{Method, Reading, Scope};
use hostplane_agent::session::PowerSession;
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{
    CoordinatorMessage, PowerCaps, PowerElement, TelemetryAck, TelemetryBatch, coordinator_message,
};
use session_support::*;
use tokio_util::sync::CancellationToken;

struct NodeLimit(Arc<Mutex<Option<f64>>>);

impl Limiter for NodeLimit {
    fn element(&self) -> PowerElement {
        PowerElement::Node
    }
    fn device(&self) -> &str {
        "node"
    }
    fn method(&self) -> &'static str {
        "test"
    }
    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        Box::pin(async { Some((1000.0, 10000.0)) })
    }
    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        Box::pin(async move {
            *self.0.lock().unwrap() = watts;
            Ok(watts)
        })
    }
}

fn node_reading(w: f64) -> Reading {
    Reading {
        source: "redfish",
        scope: Scope::Node,
        device: "DGX".into(),
        watts: Some(w),
        energy_joules: None,
        method: Method::Measured,
        window: None,
        age: None,
        error: None,
    }
}

async fn next_batch(coord: &mut FakeCoordinator) -> (usize, TelemetryBatch) {
    loop {
        match coord.recv().await {
            (conn, Msg::Telemetry(b)) => return (conn, b),
            _ => continue,
        }
    }
}

fn seqs(b: &TelemetryBatch) -> Vec<u64> {
    b.samples.iter().map(|s| s.seq).collect()
}

#[tokio::test]
async fn telemetry_is_batched_acked_and_replayed_after_a_reconnect() {
    let mut coord = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &coord.url());
    cfg.session.backoff_initial = Duration::from_millis(20);
    cfg.session.backoff_max = Duration::from_millis(50);
    let telemetry = Telemetry::new(TelemetryBuffer::new(77, &TelemetryConfig::default()));
    let power = PowerSession::new(Some((telemetry.clone(), Duration::from_millis(50))), None);
    let agent = start_agent_with_power(cfg, FakeExecutor::new(), power);
    let (conn, _) = coord.expect_hello().await;
    for w in [100.0, 200.0, 300.0] {
        telemetry.lock().push(&[node_reading(w)], 1);
    }
    let (_, b) = next_batch(&mut coord).await;
    assert_eq!((b.epoch, seqs(&b)), (77, vec![1, 2, 3]));
    assert_eq!(b.samples[2].node_watts, Some(300.0));
    // The coordinator stored up to 2, then the connection breaks.
    coord.send_msg(
        conn,
        CoordinatorMessage {
            msg: Some(coordinator_message::Msg::TelemetryAck(TelemetryAck {
                epoch: 77,
                seq: 2,
            })),
        },
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(telemetry.lock().len(), 1, "acknowledged samples are freed");
    coord.drop_conn(conn);
    telemetry.lock().push(&[node_reading(400.0)], 2);
    // A batch the old connection sent before it broke may still be queued.
    let conn2 = loop {
        match coord.recv().await {
            (c, Msg::Hello(_)) => break c,
            (c, _) if c == conn => continue,
            other => panic!("expected Hello on a new connection, got {other:?}"),
        }
    };
    assert_ne!(conn, conn2);
    let (c, b) = next_batch(&mut coord).await;
    assert_eq!(c, conn2);
    assert_eq!(
        seqs(&b),
        vec![3, 4],
        "3 was sent but never acknowledged: replayed"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn caps_in_the_desired_state_are_enforced_and_reported() {
    let mut coord = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &coord.url());
    let limit = Arc::new(Mutex::new(None));
    let handle = caps::spawn(
        Enforcer::new(vec![Box::new(NodeLimit(limit.clone()))]),
        CapsConfig::default(),
        &tokio_util::task::TaskTracker::new(),
        CancellationToken::new(),
    );
    let agent = start_agent_with_power(cfg, FakeExecutor::new(), PowerSession::new(None, Some(handle)));
    let (conn, _) = coord.expect_hello().await;
    let mut state = ds(3, vec![]);
    state.power = Some(PowerCaps {
        node_watts: 6500.0,
        lease_seconds: 60,
        safe_node_watts: 3000.0,
        policy: "p".into(),
        topology: "t".into(),
        ..Default::default()
    });
    coord.send(conn, state);
    let seen = coord.recv_until(|m| matches!(m, Msg::CapReport(_))).await;
    assert!(
        seen.iter()
            .any(|(_, m)| matches!(m, Msg::Ack(a) if a.version == 3)),
        "the state is ACKed: {seen:?}"
    );
    let Some((_, Msg::CapReport(r))) = seen.last() else {
        unreachable!()
    };
    assert_eq!(r.version, 3);
    assert!(!r.safe_mode);
    let c = &r.caps[0];
    assert_eq!(
        (c.requested_watts, c.effective_watts, c.method.as_str()),
        (6500.0, 6500.0, "test")
    );
    assert_eq!(*limit.lock().unwrap(), Some(6500.0));
    // Caps withdrawn: the limit is lifted.
    coord.send(conn, ds(4, vec![]));
    let seen = coord
        .recv_until(|m| matches!(m, Msg::CapReport(r) if r.version == 4))
        .await;
    let Some((_, Msg::CapReport(r))) = seen.last() else {
        unreachable!()
    };
    assert_eq!(r.caps[0].effective_watts, 0.0);
    assert_eq!(*limit.lock().unwrap(), None);
    agent.stop().await.unwrap();
}
