//! Deployment controller: rollout within max_unavailable, reprovisioning,
//! conflicts between Deployments, and graceful deletion.
mod backend;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    self, Answer, FakeAgent, action_name, get_dpu, modify, phase, result, seed, succeed_all, wait_dpu,
    wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::{Store, now_ms};
use hostplane_proto::v1::{
    Command, CommandOutcome, Deployment, DpuPhase, EventType, Kind, NodeEffect, RebootMethod, WatchEvent,
    resource,
};
use tokio_util::sync::CancellationToken;

fn cfg() -> FsmConfig {
    FsmConfig {
        resync: Duration::from_millis(200),
        batch_delay: Duration::from_millis(2),
        ..Default::default()
    }
}

/// Records every committed Dpu event.
fn record(store: &Store, stop: CancellationToken) -> Arc<Mutex<Vec<WatchEvent>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (log2, mut rx) = (log.clone(), store.subscribe());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.resource.as_ref().is_some_and(|r| r.kind() == Kind::Dpu) => log2.lock().unwrap().push(ev),
                    Ok(_) => {}
                    Err(e) => panic!("event recorder lagged: {e}"),
                },
            }
        }
    });
    log
}

/// Replays the events; for each one after `from_rev`, counts the names not Ready
/// (absent counts as not Ready). Returns the maximum, and the maximum number
/// of Dpus holding a rollout slot (NodeEffect ..= NodeEffectRemoval) at once.
fn replay(events: &[WatchEvent], names: &[&str], from_rev: u64) -> (usize, usize) {
    let mut state: HashMap<String, Option<DpuPhase>> = HashMap::new();
    let (mut max_unavail, mut max_slots) = (0, 0);
    for ev in events {
        let r = ev.resource.as_ref().unwrap();
        let Some(resource::Kind::Dpu(d)) = &r.kind else {
            continue;
        };
        let p = (ev.r#type != EventType::Deleted as i32).then(|| phase(d));
        state.insert(r.name().to_string(), p);
        let slots = state
            .values()
            .filter(|p| {
                p.is_some_and(|p| {
                    (DpuPhase::NodeEffect as i32..=DpuPhase::NodeEffectRemoval as i32).contains(&(p as i32))
                })
            })
            .count();
        max_slots = max_slots.max(slots);
        if ev.resource_version > from_rev {
            let unavail = names
                .iter()
                .filter(|n| state.get(**n).cloned().flatten() != Some(DpuPhase::Ready))
                .count();
            max_unavail = max_unavail.max(unavail);
        }
    }
    (max_unavail, max_slots)
}

async fn three_dpus(answer: Answer) -> (Store, CancellationToken, Arc<Mutex<Vec<WatchEvent>>>) {
    let store = backend::store();
    let stop = CancellationToken::new();
    let log = record(&store, stop.clone());
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::node("n2", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
            testing::device("d2", "n1", "rshim1", &[]),
            testing::device("d3", "n2", "rshim0", &[]),
            testing::bfb("b1"),
            testing::bfb("b2"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[], 1, NodeEffect::Auto),
        ],
    )
    .await;
    tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
    FakeAgent::spawn(store.clone(), answer, stop.clone());
    (store, stop, log)
}

async fn deployment(store: &Store, name: &str) -> Deployment {
    let name = name.to_string();
    let r = store
        .read(move |t| t.get(Kind::Deployment, &name))
        .await
        .unwrap()
        .unwrap();
    let Some(resource::Kind::Deployment(d)) = r.kind else {
        unreachable!()
    };
    d
}

async fn set_bfb(store: &Store, bfb: &'static str) -> u64 {
    modify(store, Kind::Deployment, "dep", move |r| {
        if let Some(resource::Kind::Deployment(d)) = &mut r.kind {
            d.spec.get_or_insert_default().bfb = bfb.into();
            d.metadata.get_or_insert_default().generation += 1;
        }
    })
    .await;
    store.read(|t| t.revision()).await.unwrap()
}

#[tokio::test]
async fn rollout_of_a_new_bfb_keeps_at_most_max_unavailable_down() {
    let (store, stop, log) = three_dpus(succeed_all()).await;
    for n in ["d1", "d2", "d3"] {
        wait_phase(&store, n, DpuPhase::Ready).await;
    }
    let (_, max_slots) = replay(&log.lock().unwrap(), &[], 0);
    assert_eq!(max_slots, 1, "first provisioning hands out one slot at a time");

    let from = set_bfb(&store, "b2").await;
    for n in ["d1", "d2", "d3"] {
        wait_dpu(&store, n, Duration::from_secs(20), |d| {
            phase(d) == DpuPhase::Ready && d.status.as_ref().unwrap().installed_bfb == "b2"
        })
        .await;
    }
    let events = log.lock().unwrap().clone();
    let (max_unavail, _) = replay(&events, &["d1", "d2", "d3"], from);
    assert_eq!(
        max_unavail, 1,
        "never more than max_unavailable=1 not Ready during the rollout"
    );
    let deleted: Vec<&str> = events
        .iter()
        .filter(|e| e.r#type == EventType::Deleted as i32)
        .map(|e| e.resource.as_ref().unwrap().name())
        .collect();
    assert_eq!(deleted.len(), 3, "each dpu was reprovisioned once: {deleted:?}");
    let d1 = get_dpu(&store, "d1").await.unwrap();
    let deleting = events
        .iter()
        .find_map(|e| match &e.resource.as_ref().unwrap().kind {
            Some(resource::Kind::Dpu(d)) if phase(d) == DpuPhase::Deleting => Some(d.clone()),
            _ => None,
        });
    assert_eq!(
        deleting.unwrap().status.unwrap().history.last().unwrap().reason,
        "Rollout"
    );
    assert_eq!(d1.spec.unwrap().bfb, "b2");
    let s = wait_deployment(&store, |s| s.updated == 3).await;
    assert_eq!((s.dpus, s.ready, s.failed), (3, 3, 0));
    stop.cancel();
}

async fn wait_deployment(
    store: &Store,
    pred: impl Fn(&hostplane_proto::v1::DeploymentStatus) -> bool,
) -> hostplane_proto::v1::DeploymentStatus {
    for _ in 0..500 {
        let s = deployment(store, "dep").await.status.unwrap_or_default();
        if pred(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "deployment status never matched: {:?}",
        deployment(store, "dep").await.status
    );
}

#[tokio::test]
async fn an_error_dpu_pauses_the_rollout_until_it_is_reprovisioned() {
    let fail_d2 = Arc::new(AtomicBool::new(true));
    let f = fail_d2.clone();
    let answer: Answer = Arc::new(move |c: &Command| {
        if c.dpu == "d2" && action_name(c) == "flash_bfb" && f.load(Ordering::SeqCst) {
            Some(result(CommandOutcome::Failed, "ERR[MISC]: Installation failed"))
        } else {
            Some(result(CommandOutcome::Succeeded, "ok"))
        }
    });
    let (store, stop, _log) = three_dpus(answer).await;
    wait_phase(&store, "d2", DpuPhase::Error).await;
    wait_phase(&store, "d1", DpuPhase::Ready).await;
    wait_phase(&store, "d3", DpuPhase::Ready).await;

    set_bfb(&store, "b2").await;
    let s = wait_deployment(&store, |s| {
        s.conditions.iter().any(|c| c.r#type == "RolloutProgressing")
    })
    .await;
    let c = s
        .conditions
        .iter()
        .find(|c| c.r#type == "RolloutProgressing")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "BlockedByFailedDpus")
    );
    assert!(c.message.contains("d2"), "{}", c.message);
    assert_eq!(s.failed, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in ["d1", "d3"] {
        let d = get_dpu(&store, n).await.unwrap();
        assert_eq!(
            (phase(&d), d.spec.unwrap().bfb.as_str()),
            (DpuPhase::Ready, "b1"),
            "{n} must not roll yet"
        );
    }

    // Reprovision the failed one (what the Reprovision call does); it comes back with b2.
    fail_d2.store(false, Ordering::SeqCst);
    modify(&store, Kind::Dpu, "d2", |r| {
        r.metadata_mut().unwrap().deletion_requested_at_ms = now_ms();
    })
    .await;
    for n in ["d1", "d2", "d3"] {
        wait_dpu(&store, n, Duration::from_secs(20), |d| {
            phase(d) == DpuPhase::Ready && d.status.as_ref().unwrap().installed_bfb == "b2"
        })
        .await;
    }
    let s = wait_deployment(&store, |s| s.updated == 3).await;
    let c = s
        .conditions
        .iter()
        .find(|c| c.r#type == "RolloutProgressing")
        .unwrap();
    assert_eq!(c.status, "True");
    stop.cancel();
}

#[tokio::test]
async fn reprovision_deletes_and_recreates_the_dpu_which_walks_again() {
    let (store, stop, log) = three_dpus(succeed_all()).await;
    let before = wait_phase(&store, "d1", DpuPhase::Ready).await;
    let from = store.read(|t| t.revision()).await.unwrap();
    modify(&store, Kind::Dpu, "d1", |r| {
        r.metadata_mut().unwrap().deletion_requested_at_ms = now_ms();
    })
    .await;
    let after = wait_dpu(&store, "d1", Duration::from_secs(20), |d| {
        phase(d) == DpuPhase::Ready
            && d.metadata.as_ref().unwrap().resource_version > from
            && d.status.as_ref().unwrap().history.first().unwrap().reason == "Created"
            && d.metadata.as_ref().unwrap().created_at_ms >= before.metadata.as_ref().unwrap().created_at_ms
            && d.metadata.as_ref().unwrap().deletion_requested_at_ms == 0
    })
    .await;
    let types: Vec<(i32, Option<DpuPhase>)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.resource_version > from && e.resource.as_ref().unwrap().name() == "d1")
        .map(|e| match &e.resource.as_ref().unwrap().kind {
            Some(resource::Kind::Dpu(d)) => (e.r#type, Some(phase(d))),
            _ => (e.r#type, None),
        })
        .collect();
    let deleting = types
        .iter()
        .position(|t| t.1 == Some(DpuPhase::Deleting))
        .expect("went through Deleting");
    let deleted = types
        .iter()
        .position(|t| t.0 == EventType::Deleted as i32)
        .expect("was removed");
    let added = types
        .iter()
        .position(|t| t.0 == EventType::Added as i32)
        .expect("came back");
    assert!(deleting < deleted && deleted < added, "{types:?}");
    assert_eq!(after.status.unwrap().history.len(), 11, "a fresh walk");
    stop.cancel();
}

#[tokio::test]
async fn the_older_deployment_owns_a_contested_device() {
    let store = backend::store();
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[("rack", "r1")]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("zz-old", "b1", "f1", &[("rack", "r1")], 1, NodeEffect::Hold),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    seed(
        &store,
        vec![testing::deployment(
            "aa-new",
            "b1",
            "f1",
            &[],
            1,
            NodeEffect::Hold,
        )],
    )
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
    let d = wait_phase(&store, "d1", DpuPhase::NodeEffect).await;
    assert_eq!(d.spec.unwrap().deployment, "zz-old");
    let mut found = None;
    for _ in 0..500 {
        let dep = deployment(&store, "aa-new").await;
        if let Some(c) = dep
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "DeviceConflict")
        {
            found = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = found.expect("the younger deployment says why it does not get the device");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "MatchedByOlderDeployment")
    );
    assert!(c.message.contains("d1 (owned by zz-old)"), "{}", c.message);
    stop.cancel();
}

#[tokio::test]
async fn graceful_deletion_removes_dpu_then_device_then_node_then_deployment() {
    let (store, stop, _log) = three_dpus(succeed_all()).await;
    for n in ["d1", "d2", "d3"] {
        wait_phase(&store, n, DpuPhase::Ready).await;
    }
    // What a graceful node delete marks: the node and its devices (the Dpus follow).
    let t = now_ms();
    for (kind, name) in [(Kind::Node, "n1"), (Kind::Device, "d1"), (Kind::Device, "d2")] {
        modify(&store, kind, name, move |r| {
            r.metadata_mut().unwrap().deletion_requested_at_ms = t
        })
        .await;
    }
    for _ in 0..1000 {
        if store.read(|t| t.get(Kind::Node, "n1")).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.read(|t| t.get(Kind::Node, "n1")).await.unwrap().is_none(),
        "node n1 removed"
    );
    for name in ["d1", "d2"] {
        assert!(get_dpu(&store, name).await.is_none());
        let n = name.to_string();
        assert!(
            store
                .read(move |t| t.get(Kind::Device, &n))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        phase(&get_dpu(&store, "d3").await.unwrap()),
        DpuPhase::Ready,
        "other nodes are untouched"
    );

    modify(&store, Kind::Deployment, "dep", move |r| {
        r.metadata_mut().unwrap().deletion_requested_at_ms = t
    })
    .await;
    for _ in 0..1000 {
        if store
            .read(|t| t.get(Kind::Deployment, "dep"))
            .await
            .unwrap()
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store
            .read(|t| t.get(Kind::Deployment, "dep"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(get_dpu(&store, "d3").await.is_none());
    assert!(
        store.read(|t| t.get(Kind::Device, "d3")).await.unwrap().is_some(),
        "devices stay"
    );
    stop.cancel();
}
