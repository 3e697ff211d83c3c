//! Phase timeouts, and what an Unreachable node does to them.
mod backend;

use std::sync::Arc;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    Answer, FakeAgent, action_name, get_dpu, modify, one_dpu, phase, result, seed, wait_dpu, wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, PhaseTimeouts, Reconciler};
use hostplane_coordinator::store::Store;
use hostplane_proto::v1::{
    Command, CommandOutcome, Dpu, DpuPhase, FlashProgress, Kind, NodeEffect, RebootMethod, resource,
};
use tokio_util::sync::CancellationToken;

/// Every command succeeds except flash_bfb, which is never answered.
fn no_flash() -> Answer {
    Arc::new(|c: &Command| (action_name(c) != "flash_bfb").then(|| result(CommandOutcome::Succeeded, "ok")))
}

async fn start(cfg: FsmConfig, bfb: &str, effect: NodeEffect, answer: Answer) -> (Store, CancellationToken) {
    let store = backend::store();
    seed(&store, one_dpu(RebootMethod::External, bfb, effect)).await;
    let stop = CancellationToken::new();
    tokio::spawn(Reconciler::new(store.clone(), cfg).run(stop.clone()));
    FakeAgent::spawn(store.clone(), answer, stop.clone());
    (store, stop)
}

fn cfg(timeouts: PhaseTimeouts, grace: Duration) -> FsmConfig {
    FsmConfig {
        resync: Duration::from_millis(100),
        batch_delay: Duration::from_millis(2),
        phase_timeouts: timeouts,
        unreachable_grace: grace,
        ..Default::default()
    }
}

fn cond<'a>(d: &'a Dpu, ty: &str) -> Option<&'a hostplane_proto::v1::Condition> {
    d.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == ty)
}

async fn set_reachable(store: &Store, reachable: bool) {
    modify(store, Kind::Node, "n1", move |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().reachable = reachable;
        }
    })
    .await;
}

#[tokio::test]
async fn os_installing_times_out_into_an_actionable_error_and_withdraws_the_flash() {
    let t = PhaseTimeouts {
        os_installing: Duration::from_millis(800),
        ..Default::default()
    };
    let (store, stop) = start(
        cfg(t, Duration::from_secs(600)),
        "b1",
        NodeEffect::Auto,
        no_flash(),
    )
    .await;
    let d = wait_phase(&store, "d1", DpuPhase::OsInstalling).await;
    let flash_id = d.status.as_ref().unwrap().command_id.clone();
    // The agent reported progress (the stream server writes it like this).
    modify(&store, Kind::Dpu, "d1", |r| {
        if let Some(resource::Kind::Dpu(d)) = &mut r.kind {
            d.status.get_or_insert_default().progress = Some(FlashProgress {
                stage: "installer".into(),
                last_log_line: "INFO[MISC]: Installing OS image".into(),
                ..Default::default()
            });
        }
    })
    .await;
    let d = wait_phase(&store, "d1", DpuPhase::Error).await;
    let st = d.status.unwrap();
    assert_eq!(st.history.last().unwrap().reason, "Timeout");
    assert_eq!(
        st.message,
        "OSInstalling timed out after 800ms on node n1 (rshim0): last stage 'installer', last DPU log line \
         'INFO[MISC]: Installing OS image'; check the DPU console, then reprovision"
    );
    let row = store.read(move |t| t.command(&flash_id)).await.unwrap().unwrap();
    assert_eq!(
        row.result.unwrap().outcome,
        CommandOutcome::Cancelled as i32,
        "the flash is withdrawn"
    );
    assert!(store.read(|t| t.open_commands("n1")).await.unwrap().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_node_pauses_the_timeout_and_says_so() {
    let t = PhaseTimeouts {
        os_installing: Duration::from_secs(1),
        ..Default::default()
    };
    let (store, stop) = start(cfg(t, Duration::from_secs(2)), "b1", NodeEffect::Auto, no_flash()).await;
    wait_phase(&store, "d1", DpuPhase::OsInstalling).await;
    set_reachable(&store, false).await;
    let d = wait_dpu(&store, "d1", Duration::from_secs(10), |d| {
        cond(d, "NodeUnreachable").is_some()
    })
    .await;
    let c = cond(&d, "NodeUnreachable").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "LeaseExpired"));
    assert!(c.message.contains("does not time out"), "{}", c.message);
    // Well past the 1s limit: still waiting, not failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        phase(&get_dpu(&store, "d1").await.unwrap()),
        DpuPhase::OsInstalling
    );

    // Back: the condition clears, and the phase gets the grace period before timing out.
    set_reachable(&store, true).await;
    let d = wait_dpu(&store, "d1", Duration::from_secs(10), |d| {
        cond(d, "NodeUnreachable").is_some_and(|c| c.status == "False")
    })
    .await;
    assert_eq!(
        phase(&d),
        DpuPhase::OsInstalling,
        "the grace period has just started"
    );
    let d = wait_phase(&store, "d1", DpuPhase::Error).await;
    let st = d.status.unwrap();
    assert!(
        st.message
            .starts_with("OSInstalling timed out after 1s on node n1"),
        "{}",
        st.message
    );
    let back = st
        .conditions
        .iter()
        .find(|c| c.r#type == "NodeUnreachable")
        .unwrap()
        .last_transition_time_ms;
    let failed = st.history.last().unwrap().at_ms;
    assert!(
        failed >= back + 2000,
        "the timeout waited for the grace period ({back} -> {failed})"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_pending_dpu_waits_for_an_unreachable_node() {
    let store = backend::store();
    let mut fleet = one_dpu(RebootMethod::External, "b1", NodeEffect::Auto);
    if let Some(resource::Kind::Node(n)) = &mut fleet[0].kind {
        n.status.get_or_insert_default().reachable = false;
    }
    seed(&store, fleet).await;
    let stop = CancellationToken::new();
    tokio::spawn(
        Reconciler::new(store.clone(), cfg(PhaseTimeouts::default(), Duration::ZERO)).run(stop.clone()),
    );
    FakeAgent::spawn(store.clone(), no_flash(), stop.clone());
    let d = wait_dpu(&store, "d1", Duration::from_secs(10), |d| {
        cond(d, "NodeUnreachable").is_some()
    })
    .await;
    assert_eq!(phase(&d), DpuPhase::Pending);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        phase(&get_dpu(&store, "d1").await.unwrap()),
        DpuPhase::Pending,
        "no slot while unreachable"
    );
    set_reachable(&store, true).await;
    let d = wait_phase(&store, "d1", DpuPhase::OsInstalling).await;
    assert_eq!(cond(&d, "NodeUnreachable").unwrap().status, "False");
    stop.cancel();
}

#[tokio::test]
async fn a_missing_bfb_holds_initializing_with_a_condition_then_times_out() {
    let t = PhaseTimeouts {
        initializing: Duration::from_millis(500),
        ..Default::default()
    };
    let (store, stop) = start(cfg(t, Duration::ZERO), "nope", NodeEffect::Auto, no_flash()).await;
    let d = wait_dpu(&store, "d1", Duration::from_secs(10), |d| {
        cond(d, "ReferencesResolved").is_some()
    })
    .await;
    let c = cond(&d, "ReferencesResolved").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(c.message.contains("bfb \"nope\" does not exist"), "{}", c.message);
    let d = wait_phase(&store, "d1", DpuPhase::Error).await;
    let msg = d.status.unwrap().message;
    assert!(
        msg.starts_with("Initializing timed out after 500ms on node n1 (rshim0): bfb \"nope\""),
        "{msg}"
    );
    stop.cancel();
}

#[tokio::test]
async fn an_unapproved_hold_times_out_with_a_hint() {
    let t = PhaseTimeouts {
        node_effect: Duration::from_millis(300),
        ..Default::default()
    };
    let (store, stop) = start(cfg(t, Duration::ZERO), "b1", NodeEffect::Hold, no_flash()).await;
    let d = wait_phase(&store, "d1", DpuPhase::Error).await;
    let msg = d.status.unwrap().message;
    assert!(
        msg.contains("NodeEffect timed out after 300ms") && msg.contains("approve node n1"),
        "{msg}"
    );
    stop.cancel();
}
