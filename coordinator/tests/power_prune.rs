//! The policy engine makes the power hub forget deleted nodes: their
//! telemetry, cap reports and caps go, and `power top` no longer lists them.
mod power_common;

use hostplane_coordinator::power::{PowerConfig, PowerEngine};
use hostplane_coordinator::store::now_ms;
use hostplane_proto::v1::{Kind, PowerCapReport, PowerSample, PowerSummaryRequest, TelemetryBatch};
use power_common::*;

#[tokio::test]
async fn a_deleted_node_leaves_the_hub_at_the_next_pass() {
    let e = env();
    e.nodes(&["n1", "n2"]).await;
    for n in ["n1", "n2"] {
        e.hub.record_telemetry(
            n,
            TelemetryBatch {
                epoch: 1,
                samples: vec![PowerSample {
                    seq: 1,
                    at_ms: now_ms(),
                    readings: vec![],
                    node_watts: Some(500.0),
                }],
                dropped: 0,
            },
        );
        e.hub.record_cap_report(n, PowerCapReport::default());
    }
    let mut engine = PowerEngine::new(e.store.clone(), e.hub.clone(), PowerConfig::default());
    engine.recompute().await.unwrap();
    let listed = |e: &Env| -> Vec<String> {
        e.hub
            .summary(&PowerSummaryRequest::default())
            .nodes
            .into_iter()
            .map(|n| n.node)
            .collect()
    };
    assert_eq!(listed(&e), ["n1", "n2"], "existing nodes are kept");

    e.delete(Kind::Node, "n2").await;
    engine.recompute().await.unwrap();
    assert_eq!(listed(&e), ["n1"]);
    assert!(e.hub.telemetry("n2").is_none());
    assert!(e.hub.cap_report("n2").is_none());
    assert!(!e.hub.node_draws().contains_key("n2"));
    assert!(e.hub.telemetry("n1").is_some() && e.hub.cap_report("n1").is_some());
}
