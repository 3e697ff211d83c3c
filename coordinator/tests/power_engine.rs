//! The policy engine against a real store: topology + policy + telemetry in
//! the hub -> caps under the budget, new desired versions for the nodes whose
//! caps changed and for no other, statuses written only when they change,
//! and deleting the policy or the topology takes the caps away.
mod power_common;

use std::time::Duration;

use hostplane_coordinator::power::engine::{COND_OVERSUBSCRIBED, PassReport};
use hostplane_coordinator::power::{PowerConfig, PowerEngine, PowerHub};
use hostplane_coordinator::store::now_ms;
use hostplane_proto::v1::{
    Kind, PowerElement, PowerPolicySpec, PowerSample, Resource, TelemetryBatch, TopologyLevel, resource,
};
use power_common::*;
use tokio_util::sync::CancellationToken;

use TopologyLevel::{Feed, Node, Rack};

fn draw(hub: &PowerHub, node: &str, seq: u64, watts: f64) {
    hub.record_telemetry(
        node,
        TelemetryBatch {
            epoch: 1,
            samples: vec![PowerSample {
                seq,
                at_ms: now_ms(),
                readings: vec![],
                node_watts: Some(watts),
            }],
            dropped: 0,
        },
    );
}

fn cap(hub: &PowerHub, node: &str) -> f64 {
    hub.caps(node).map_or(0.0, |c| c.node_watts)
}

async fn versions(e: &Env, nodes: &[&str]) -> Vec<u64> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(e.desired_version(n).await);
    }
    v
}

/// Feed 1800 W > three 1000 W nodes: oversubscribed.
async fn hall(e: &Env) {
    e.create(topology(
        "hall",
        vec![
            el("feed", Feed, "", 1_800.0, 0.0),
            el("rack", Rack, "feed", 5_000.0, 0.0),
            el("n1", Node, "rack", 1_000.0, 0.0),
            el("n2", Node, "rack", 1_000.0, 100.0),
            el("n3", Node, "rack", 1_000.0, 0.0),
        ],
    ))
    .await
    .unwrap();
}

fn status_of(r: Resource) -> (Vec<String>, Vec<hostplane_proto::v1::Condition>) {
    match r.kind {
        Some(resource::Kind::PowerPolicy(p)) => {
            let s = p.status.unwrap_or_default();
            (s.nodes, s.conditions)
        }
        Some(resource::Kind::Topology(t)) => {
            let s = t.status.unwrap_or_default();
            (
                s.allocations
                    .iter()
                    .map(|a| format!("{}={}", a.name, a.allocated_watts))
                    .collect(),
                s.conditions,
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn caps_follow_topology_policy_and_telemetry() {
    let e = env();
    e.nodes(&["n1", "n2", "n3", "n4"]).await;
    hall(&e).await;
    e.create(policy(
        "p1",
        PowerPolicySpec {
            nodes: vec!["n1".into()],
            limits: vec![watts(PowerElement::Node, 400.0), percent(PowerElement::Gpu, 80.0)],
            safe_node_watts: 300.0,
            cap_lease_seconds: 20,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    draw(&e.hub, "n2", 1, 100.0);
    let all = ["n1", "n2", "n3", "n4"];
    let mut engine = PowerEngine::new(e.store.clone(), e.hub.clone(), PowerConfig::default());

    let before = versions(&e, &all).await;
    let report = engine.recompute().await.unwrap();
    assert_eq!(report.changed, ["n1", "n2", "n3"]);
    // n1: its policy's 400 W. n2 draws 100 W (target 160 W), n3 is unknown
    // (target: its 1000 W ceiling); the 240 W left go to n2.
    assert_eq!(
        (cap(&e.hub, "n1"), cap(&e.hub, "n2"), cap(&e.hub, "n3")),
        (400.0, 400.0, 1_000.0)
    );
    let n1 = e.hub.caps("n1").unwrap();
    assert_eq!((n1.policy.as_str(), n1.topology.as_str()), ("p1", "hall"));
    assert_eq!(n1.device_limits, vec![percent(PowerElement::Gpu, 80.0)]);
    assert_eq!((n1.lease_seconds, n1.safe_node_watts), (20, 300.0));
    assert!(e.hub.caps("n4").is_none(), "n4 has no topology and no policy");
    let after = versions(&e, &all).await;
    for (i, n) in all.iter().enumerate() {
        if *n == "n4" {
            assert_eq!(after[i], before[i], "{n} untouched");
        } else {
            assert!(after[i] > before[i], "{n} got a new desired version");
        }
    }
    let (allocs, conds) = status_of(e.get(Kind::Topology, "hall").await.unwrap());
    assert_eq!(allocs, ["feed=1800", "rack=1800", "n1=400", "n2=400", "n3=1000"]);
    let over = conds.iter().find(|c| c.r#type == COND_OVERSUBSCRIBED).unwrap();
    assert_eq!(over.status, "True", "{over:?}");
    assert_eq!(status_of(e.get(Kind::PowerPolicy, "p1").await.unwrap()).0, ["n1"]);
    let summary = e.hub.summary(&Default::default());
    assert_eq!(summary.elements.len(), 5);

    // Nothing changed: nothing is written, no version moves.
    let rev = e.revision().await;
    assert_eq!(engine.recompute().await.unwrap(), PassReport::default());
    assert_eq!(e.revision().await, rev, "an idle recompute writes nothing");

    // n3 turns out to draw 200 W (target 270 W): n2 and n3 now share what n1 leaves.
    draw(&e.hub, "n3", 1, 200.0);
    let before = versions(&e, &all).await;
    let report = engine.recompute().await.unwrap();
    assert_eq!(report.changed, ["n2", "n3"]);
    assert_eq!((cap(&e.hub, "n2"), cap(&e.hub, "n3")), (700.0, 700.0));
    let after = versions(&e, &all).await;
    assert_eq!(
        (after[0], after[3]),
        (before[0], before[3]),
        "n1 and n4 keep their versions"
    );
    assert!(after[1] > before[1] && after[2] > before[2]);
    assert_eq!(
        report.statuses_written,
        ["topology/hall"],
        "the allocation changed; the policy's status did not"
    );

    // Targets that do not all fit: n2 wants 600 W, n3 820 W, 1800 W - 400 W for both.
    draw(&e.hub, "n2", 2, 500.0);
    draw(&e.hub, "n3", 2, 700.0);
    assert_eq!(engine.recompute().await.unwrap().changed, ["n2", "n3"]);
    assert_eq!((cap(&e.hub, "n2"), cap(&e.hub, "n3")), (600.0, 800.0));
    // n2 wants 2.2 W more: both caps would move by 2.2 W, under 5 W, and the
    // feed has room to leave n3 where it is. Nothing is republished.
    draw(&e.hub, "n2", 3, 502.0);
    assert!(engine.recompute().await.unwrap().changed.is_empty());
    assert_eq!((cap(&e.hub, "n2"), cap(&e.hub, "n3")), (600.0, 800.0));

    // Without the policy n1 takes a share of the feed like the others.
    e.delete(Kind::PowerPolicy, "p1").await;
    let report = engine.recompute().await.unwrap();
    assert!(report.changed.contains(&"n1".to_string()), "{report:?}");
    let n1 = e.hub.caps("n1").unwrap();
    assert_eq!((n1.policy.as_str(), n1.device_limits.len()), ("", 0));
    assert!(n1.node_watts > 400.0, "{n1:?}");
    let total: f64 = ["n1", "n2", "n3"].iter().map(|n| cap(&e.hub, n)).sum();
    assert!(total <= 1_800.0, "{total}");

    // Without the topology nothing is capped, and every node that was hears it.
    let before = versions(&e, &all).await;
    e.delete(Kind::Topology, "hall").await;
    let report = engine.recompute().await.unwrap();
    assert_eq!(report.changed, ["n1", "n2", "n3"]);
    for n in ["n1", "n2", "n3"] {
        assert!(e.hub.caps(n).is_none(), "{n} uncapped");
    }
    let after = versions(&e, &all).await;
    assert!(after[..3].iter().zip(&before[..3]).all(|(a, b)| a > b));
    assert!(e.hub.summary(&Default::default()).elements.is_empty());
}

#[tokio::test]
async fn a_policy_reaches_nodes_through_a_deployments_dpus() {
    let e = env();
    e.nodes(&["n1", "n2"]).await;
    e.deployment("dep1").await;
    e.create(policy(
        "gpus",
        PowerPolicySpec {
            deployments: vec!["dep1".into()],
            limits: vec![
                watts(PowerElement::Node, 5_000.0),
                watts(PowerElement::Gpu, 500.0),
            ],
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let mut engine = PowerEngine::new(e.store.clone(), e.hub.clone(), PowerConfig::default());
    assert!(
        engine.recompute().await.unwrap().changed.is_empty(),
        "no Dpu yet: no node"
    );
    e.insert_dpu("dpu-a", "n2", "dep1").await;
    let report = engine.recompute().await.unwrap();
    assert_eq!(report.changed, ["n2"]);
    let c = e.hub.caps("n2").unwrap();
    assert_eq!(
        (c.node_watts, c.topology.as_str(), c.policy.as_str()),
        (5_000.0, "", "gpus")
    );
    assert_eq!(c.lease_seconds, 60, "the default lease");
}

#[tokio::test]
async fn the_running_engine_reacts_to_changes_and_stops() {
    let e = env();
    e.nodes(&["n1", "n2", "n3"]).await;
    let engine = PowerEngine::new(e.store.clone(), e.hub.clone(), PowerConfig::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    hall(&e).await;
    // Liveness only (no timing asserted): the caps appear after the change.
    let mut waited = Duration::ZERO;
    while e.hub.caps("n3").is_none() {
        assert!(
            waited < Duration::from_secs(20),
            "the engine never published caps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(cap(&e.hub, "n1") + cap(&e.hub, "n2") + cap(&e.hub, "n3"), 1_800.0);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the engine stops when cancelled")
        .unwrap();
}
