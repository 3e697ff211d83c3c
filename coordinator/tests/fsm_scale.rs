//! 1,000 Dpus through the whole machine with a fake agent (answers through the
//! store). Checks that every Dpu gets there and reports how long it took; run
//! with `cargo test -p hostplane-coordinator --release --test fsm_scale -- --ignored --nocapture`.
mod backend;

use std::time::{Duration, Instant};

use hostplane_coordinator::fsm::testing::{self, FakeAgent, seed, succeed_all};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_proto::v1::{DpuPhase, Kind, NodeEffect, RebootMethod, resource};
use tokio_util::sync::CancellationToken;

async fn run(nodes: usize, per_node: usize, max_unavailable: u32) -> Duration {
    let store = backend::store();
    let mut objs = vec![testing::bfb("b1"), testing::flavor("f1")];
    for n in 0..nodes {
        objs.push(testing::node(&format!("n{n}"), RebootMethod::Agent));
        for d in 0..per_node {
            objs.push(testing::device(
                &format!("n{n}-d{d}"),
                &format!("n{n}"),
                &format!("rshim{d}"),
                &[],
            ));
        }
    }
    objs.push(testing::deployment(
        "dep",
        "b1",
        "f1",
        &[],
        max_unavailable,
        NodeEffect::Auto,
    ));
    seed(&store, objs).await;
    let stop = CancellationToken::new();
    let started = Instant::now();
    tokio::spawn(Reconciler::new(store.clone(), FsmConfig::default()).run(stop.clone()));
    FakeAgent::spawn(store.clone(), succeed_all(), stop.clone());
    let total = (nodes * per_node) as u32;
    loop {
        let r = store
            .read(|t| t.get(Kind::Deployment, "dep"))
            .await
            .unwrap()
            .unwrap();
        let Some(resource::Kind::Deployment(d)) = r.kind else {
            unreachable!()
        };
        let s = d.status.unwrap_or_default();
        assert_eq!(s.failed, 0);
        if s.ready == total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "stuck at {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let dpus = store.read(|t| t.list(Kind::Dpu)).await.unwrap();
    assert_eq!(dpus.len(), total as usize);
    for r in dpus {
        let Some(resource::Kind::Dpu(d)) = r.kind else {
            unreachable!()
        };
        assert_eq!(testing::phase(&d), DpuPhase::Ready);
    }
    stop.cancel();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale check: 1,000 Dpus; run explicitly (release)"]
async fn a_thousand_dpus_reach_ready() {
    let took = run(125, 8, 1000).await;
    println!("1000 dpus (125 nodes x 8) to Ready in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_dpus_reach_ready() {
    run(25, 4, 100).await;
}
