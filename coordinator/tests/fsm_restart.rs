//! A coordinator restart mid-OSInstalling: the Dpu stays where it was, its
//! flash command stays open (the agent still runs it), and its result, when
//! it comes, moves the Dpu on.
mod backend;

use std::sync::Arc;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    Answer, FakeAgent, action_name, get_dpu, one_dpu, phase, result, seed, succeed_all, wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_proto::v1::{Command, CommandOutcome, DpuPhase, NodeEffect, RebootMethod, command};
use tokio_util::sync::CancellationToken;

fn cfg() -> FsmConfig {
    FsmConfig {
        resync: Duration::from_millis(200),
        batch_delay: Duration::from_millis(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_restarted_reconciler_resumes_mid_os_installing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.db");

    let flash_id = {
        let store = backend::store_at(&path);
        seed(&store, one_dpu(RebootMethod::Agent, "b1", NodeEffect::Auto)).await;
        let stop = CancellationToken::new();
        let no_flash: Answer = Arc::new(|c: &Command| {
            (action_name(c) != "flash_bfb").then(|| result(CommandOutcome::Succeeded, "ok"))
        });
        let agent = FakeAgent::spawn(store.clone(), no_flash, stop.clone());
        let run = tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
        let d = wait_phase(&store, "d1", DpuPhase::OsInstalling).await;
        stop.cancel();
        run.await.unwrap();
        agent.abort();
        d.status.unwrap().command_id
    };

    // A new process: same file (or database), new store, new reconciler.
    let store = backend::store_at(&path);
    let d = get_dpu(&store, "d1").await.unwrap();
    assert_eq!(phase(&d), DpuPhase::OsInstalling);
    assert_eq!(d.status.as_ref().unwrap().command_id, flash_id);
    let stop = CancellationToken::new();
    tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = get_dpu(&store, "d1").await.unwrap();
    assert_eq!(phase(&d), DpuPhase::OsInstalling, "nothing restarts the phase");
    assert_eq!(
        d.status.as_ref().unwrap().command_id,
        flash_id,
        "the same command is still awaited"
    );
    let open = store.read(|t| t.open_commands("n1")).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, flash_id);
    assert!(matches!(open[0].action, Some(command::Action::FlashBfb(_))));

    // The agent (which kept flashing) reports the result; the walk goes on.
    let agent = FakeAgent::spawn(store.clone(), succeed_all(), stop.clone());
    let d = wait_phase(&store, "d1", DpuPhase::Ready).await;
    let flashes = agent
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|c| action_name(c) == "flash_bfb")
        .count();
    assert_eq!(flashes, 1, "the flash was not issued again");
    assert_eq!(d.status.unwrap().installed_bfb, "b1");
    stop.cancel();
}
