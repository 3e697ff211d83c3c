//! Power over the agent stream (in-process gRPC on 127.0.0.1:0): telemetry
//! batches are stored once and acknowledged with the highest seq (a replay is
//! harmless), caps the policy engine publishes reach the agent in its desired
//! state, and the agent's cap report shows in the power summary.
use std::collections::HashMap;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, seed};
use hostplane_coordinator::power::PowerHub;
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::{AgentStream, StreamConfig};
use hostplane_proto::v1::{
    CapStatus, Hello, PowerCapReport, PowerCaps, PowerElement, PowerSample, PowerSummaryRequest,
    RebootMethod, TelemetryBatch, agent_message, coordinator_message,
};
use tokio_util::sync::CancellationToken;

mod stream_common;
use stream_common::{msg, open, serve};

const PATIENCE: Duration = Duration::from_secs(15);

fn batch(epoch: u64, seqs: std::ops::RangeInclusive<u64>) -> agent_message::Msg {
    agent_message::Msg::Telemetry(TelemetryBatch {
        epoch,
        samples: seqs
            .map(|seq| PowerSample {
                seq,
                at_ms: 1000 * seq as i64,
                readings: vec![],
                node_watts: Some(100.0 * seq as f64),
            })
            .collect(),
        dropped: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_acks_caps_in_desired_state_and_cap_reports() {
    let store = Store::in_memory().unwrap();
    seed(&store, vec![testing::node("n1", RebootMethod::External)]).await;
    let hub = PowerHub::new();
    let stop = CancellationToken::new();
    let stream = AgentStream::new(store.clone(), StreamConfig::default()).with_power(hub.clone());
    let addr = serve(stream, &stop).await;

    let hello = msg(agent_message::Msg::Hello(Hello {
        node_name: "n1".into(),
        agent_version: "power-test".into(),
        ..Default::default()
    }));
    let mut agent = open(addr, hello).await.unwrap();
    let tx = agent.tx.clone();
    let mut next = async || agent.next_message(PATIENCE).await;
    let coordinator_message::Msg::Desired(first) = next().await else {
        panic!("desired state first")
    };
    assert_eq!(first.power, None, "no caps yet");

    tx.send(msg(batch(5, 1..=3))).await.unwrap();
    let coordinator_message::Msg::TelemetryAck(a) = next().await else {
        panic!("expected an ack")
    };
    assert_eq!((a.epoch, a.seq), (5, 3));
    // A replay overlapping what was stored: only 4 is new.
    tx.send(msg(batch(5, 2..=4))).await.unwrap();
    let coordinator_message::Msg::TelemetryAck(a) = next().await else {
        panic!("expected an ack")
    };
    assert_eq!(a.seq, 4);
    let t = hub.telemetry("n1").unwrap();
    assert_eq!((t.accepted, t.seq), (4, 4), "each sample stored once");
    assert_eq!(hub.node_draws()["n1"].0, 400.0);

    // The policy engine publishes a cap and bumps the node's desired version.
    let caps = PowerCaps {
        node_watts: 6000.0,
        lease_seconds: 30,
        safe_node_watts: 3000.0,
        policy: "p1".into(),
        topology: "t1".into(),
        ..Default::default()
    };
    assert_eq!(
        hub.set_caps(HashMap::from([("n1".to_string(), caps.clone())])),
        vec!["n1"]
    );
    store.write(|t| t.touch_desired("n1")).await.unwrap();
    let coordinator_message::Msg::Desired(d) = next().await else {
        panic!("expected a desired state")
    };
    assert!(d.version > first.version);
    assert_eq!(d.power, Some(caps));

    tx.send(msg(agent_message::Msg::CapReport(PowerCapReport {
        version: d.version,
        caps: vec![CapStatus {
            element: PowerElement::Node as i32,
            device: "DGX".into(),
            requested_watts: 6000.0,
            effective_watts: 6000.0,
            method: "redfish".into(),
            error: String::new(),
        }],
        safe_mode: false,
    })))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = hub.summary(&PowerSummaryRequest::default());
        if let Some(n) = s.nodes.iter().find(|n| n.node == "n1" && n.effective_watts > 0.0) {
            assert_eq!(
                (n.draw_watts, n.cap_watts, n.method.as_str()),
                (Some(400.0), 6000.0, "redfish")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cap report never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}
