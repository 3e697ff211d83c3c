//! One host reboot per node, never while a sibling DPU is mid-install.
use std::sync::Arc;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    self, Answer, FakeAgent, action_name, get_dpu, get_node, modify, phase, result, seed, wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::{Store, StoreError, now_ms};
use hostplane_proto::v1::{CommandOutcome, Dpu, DpuPhase, Kind, NodeEffect, RebootMethod, command, resource};
use tokio_util::sync::CancellationToken;

struct Env {
    store: Store,
    agent: FakeAgent,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Node n1 with d1 (rshim0) and d2 (rshim1), both in one deployment with room
/// for both. The fake agent answers everything except d2's flash, which the
/// test finishes by hand to control when d2 leaves OSInstalling.
async fn env(reboot: RebootMethod) -> Env {
    let store = Store::in_memory().unwrap();
    seed(
        &store,
        vec![
            testing::node("n1", reboot),
            testing::device("d1", "n1", "rshim0", &[("rack", "r1")]),
            testing::device("d2", "n1", "rshim1", &[("rack", "r1")]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[("rack", "r1")], 2, NodeEffect::Auto),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let cfg = FsmConfig {
        resync: Duration::from_millis(200),
        batch_delay: Duration::from_millis(2),
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), cfg).run(stop.clone()));
    let answer: Answer = Arc::new(|c: &hostplane_proto::v1::Command| {
        if c.dpu == "d2" && action_name(c) == "flash_bfb" {
            return None;
        }
        Some(result(CommandOutcome::Succeeded, "done"))
    });
    let agent = FakeAgent::spawn(store.clone(), answer, stop.clone());
    Env { store, agent, stop }
}

fn reboots(e: &Env) -> usize {
    let seen = e.agent.seen.lock().unwrap();
    seen.iter()
        .filter(|c| matches!(c.action, Some(command::Action::RebootHost(_))))
        .count()
}

fn held(d: &Dpu) -> Option<String> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "RebootHeld")?;
    (c.status == "True").then(|| c.message.clone())
}

/// Finish d2's open flash command (the "DPU finished installing").
async fn finish_d2_flash(store: &Store) {
    store
        .write(|t| {
            let open = t.open_commands("n1")?;
            let c = open
                .iter()
                .find(|c| c.dpu == "d2" && matches!(c.action, Some(command::Action::FlashBfb(_))))
                .expect("d2's flash is open");
            t.finish_command(&c.id, &result(CommandOutcome::Succeeded, "installed"))?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
}

async fn d1_held_while_d2_installs(e: &Env) {
    wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    wait_phase(&e.store, "d2", DpuPhase::OsInstalling).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d1 = get_dpu(&e.store, "d1").await.unwrap();
    assert_eq!(phase(&d1), DpuPhase::Rebooting);
    let why = held(&d1).expect("d1 says why it waits");
    assert!(why.contains("1 other Dpu(s) on node n1"), "{why}");
    assert_eq!(reboots(e), 0, "no host reboot while d2 is being flashed");
    let n = get_node(&e.store, "n1").await.unwrap();
    assert!(
        !n.status.unwrap().waiting_for_reboot,
        "not waiting for a reboot while d2 is being flashed"
    );
}

#[tokio::test]
async fn agent_reboots_the_host_once_after_every_dpu_is_installed() {
    let e = env(RebootMethod::Agent).await;
    d1_held_while_d2_installs(&e).await;
    finish_d2_flash(&e.store).await;
    let d1 = wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    wait_phase(&e.store, "d2", DpuPhase::Ready).await;
    assert_eq!(reboots(&e), 1, "one RebootHost for the node");
    assert!(held(&d1).is_none(), "the hold was released");
}

#[tokio::test]
async fn external_reboot_is_asked_for_once_every_dpu_is_installed() {
    let e = env(RebootMethod::External).await;
    d1_held_while_d2_installs(&e).await;
    finish_d2_flash(&e.store).await;
    wait_phase(&e.store, "d2", DpuPhase::Rebooting).await;
    let mut waiting = false;
    for _ in 0..200 {
        waiting = get_node(&e.store, "n1")
            .await
            .unwrap()
            .status
            .unwrap()
            .waiting_for_reboot;
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        waiting,
        "the node waits for its reboot once both Dpus are installed"
    );
    modify(&e.store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().rebooted_at_ms = now_ms() + 1;
        }
    })
    .await;
    wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    wait_phase(&e.store, "d2", DpuPhase::Ready).await;
    assert_eq!(reboots(&e), 0, "an external reboot issues no command");
}
