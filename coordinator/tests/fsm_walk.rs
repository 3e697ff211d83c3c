//! The Dpu state machine end to end against a fresh store (`tests/backend`), with a fake
//! agent answering commands through the store.
mod backend;

use std::sync::Arc;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    self, Answer, FakeAgent, action_name, get_dpu, get_node, modify, phase, result, seed, succeed_all,
    wait_dpu, wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::{Store, now_ms};
use hostplane_proto::v1::{
    Command, CommandOutcome, DpuPhase, Kind, NodeEffect, RebootMethod, command, resource,
};
use tokio_util::sync::CancellationToken;

struct Env {
    store: Store,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn cfg() -> FsmConfig {
    FsmConfig {
        resync: Duration::from_millis(200),
        batch_delay: Duration::from_millis(2),
        ..Default::default()
    }
}

/// One node n1 with one device d1 (rshim0), bfb b1, flavor f1, deployment dep.
async fn env(reboot: RebootMethod, effect: NodeEffect, answer: Answer) -> Env {
    let store = backend::store();
    seed(
        &store,
        vec![
            testing::node("n1", reboot),
            testing::device("d1", "n1", "rshim0", &[("rack", "r1")]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[("rack", "r1")], 1, effect),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
    FakeAgent::spawn(store.clone(), answer, stop.clone());
    Env { store, stop }
}

const WALK: [DpuPhase; 11] = [
    DpuPhase::Initializing,
    DpuPhase::Pending,
    DpuPhase::NodeEffect,
    DpuPhase::InitializeInterface,
    DpuPhase::ConfigFwParameters,
    DpuPhase::PrepareBfb,
    DpuPhase::OsInstalling,
    DpuPhase::Rebooting,
    DpuPhase::DpuClusterConfig,
    DpuPhase::NodeEffectRemoval,
    DpuPhase::Ready,
];

fn phases(d: &hostplane_proto::v1::Dpu) -> Vec<DpuPhase> {
    d.status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .map(|t| DpuPhase::try_from(t.to).unwrap())
        .collect()
}

fn cond<'a>(d: &'a hostplane_proto::v1::Dpu, ty: &str) -> Option<&'a hostplane_proto::v1::Condition> {
    d.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == ty)
}

/// Answers every command except those whose action is named in `except`, which get `outcome`.
fn answer_except(except: &'static str, outcome: Option<(CommandOutcome, &'static str)>) -> Answer {
    Arc::new(move |c: &Command| {
        if action_name(c) == except {
            outcome.map(|(o, m)| result(o, m))
        } else {
            Some(result(CommandOutcome::Succeeded, "ok"))
        }
    })
}

#[tokio::test]
async fn walks_to_ready_with_auto_and_issues_the_right_commands() {
    let store = backend::store();
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[("rack", "r1")]),
            testing::device("other", "n1", "rshim1", &[("rack", "r2")]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[("rack", "r1")], 1, NodeEffect::Auto),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(Reconciler::new(store.clone(), cfg()).run(stop.clone()));
    let agent = FakeAgent::spawn(store.clone(), succeed_all(), stop.clone());

    let d = wait_phase(&store, "d1", DpuPhase::Ready).await;
    assert_eq!(phases(&d), WALK);
    let st = d.status.as_ref().unwrap();
    assert_eq!(
        (st.installed_bfb.as_str(), st.installed_flavor.as_str()),
        ("b1", "f1")
    );
    assert!(st.command_id.is_empty());
    assert_eq!(st.message, "provisioned with bfb b1 and flavor f1");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(
        (spec.device.as_str(), spec.node.as_str(), spec.deployment.as_str()),
        ("d1", "n1", "dep")
    );
    assert!(
        get_dpu(&store, "other").await.is_none(),
        "a device the selector does not match gets no dpu"
    );

    let seen = agent.seen.lock().unwrap().clone();
    let names: Vec<&str> = seen.iter().map(action_name).collect();
    assert_eq!(
        names,
        [
            "initialize_interface",
            "config_fw_parameters",
            "prepare_bfb",
            "flash_bfb",
            "reboot_host",
            "dpu_cluster_config"
        ]
    );
    assert!(seen.iter().all(|c| c.dpu == "d1" && c.rshim == "rshim0"));
    match &seen[0].action {
        Some(command::Action::InitializeInterface(i)) => {
            assert_eq!(i.host_network.as_ref().unwrap().num_vfs, 8)
        }
        other => panic!("{other:?}"),
    }
    match &seen[3].action {
        Some(command::Action::FlashBfb(f)) => {
            let b = f.bfb.as_ref().unwrap();
            assert_eq!(
                (b.name.as_str(), b.url.as_str()),
                ("b1", "http://images.invalid/b1.bfb")
            );
            assert_eq!(f.bf_cfg.get("ENABLE_SFC_HBN").map(String::as_str), Some("no"));
        }
        other => panic!("{other:?}"),
    }
    // The reboot was seen through the new boot id, recorded when Rebooting was entered.
    let into_reboot = st
        .history
        .iter()
        .find(|t| t.to == DpuPhase::Rebooting as i32)
        .unwrap();
    assert!(
        into_reboot.message.contains("boot_id before reboot: boot-1"),
        "{}",
        into_reboot.message
    );
    assert!(store.read(|t| t.open_commands("n1")).await.unwrap().is_empty());

    // Deployment status follows.
    let mut dep = None;
    for _ in 0..200 {
        let r = store
            .read(|t| t.get(Kind::Deployment, "dep"))
            .await
            .unwrap()
            .unwrap();
        let Some(resource::Kind::Deployment(x)) = r.kind else {
            unreachable!()
        };
        if x.status.as_ref().is_some_and(|s| s.ready == 1) {
            dep = Some(x);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = dep
        .expect("deployment status counts the ready dpu")
        .status
        .unwrap();
    assert_eq!((s.dpus, s.ready, s.updated, s.failed), (1, 1, 1, 0));
    stop.cancel();
}

#[tokio::test]
async fn hold_waits_for_maintenance_approval_and_clears_it_afterwards() {
    let e = env(RebootMethod::Agent, NodeEffect::Hold, succeed_all()).await;
    let d = wait_phase(&e.store, "d1", DpuPhase::NodeEffect).await;
    let c = cond(&d, "MaintenanceApproved").expect("a condition says what it waits for");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "WaitingForApproval")
    );
    assert!(c.message.contains("approve"), "{}", c.message);
    // The Dpu's own message says what it waits for and who must act, not how it got here.
    let message = d.status.as_ref().unwrap().message.clone();
    assert!(
        message.starts_with("waiting for maintenance approval on node n1")
            && message.contains("an operator or admin, or the upstream system")
            && message.contains("hostplanectl node approve n1")
            && !message.contains("rollout slot"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        phase(&get_dpu(&e.store, "d1").await.unwrap()),
        DpuPhase::NodeEffect,
        "HOLD must wait"
    );

    modify(&e.store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            let st = n.status.get_or_insert_default();
            st.maintenance_approved = true;
            st.maintenance_approved_at_ms = now_ms();
        }
    })
    .await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    assert_eq!(cond(&d, "MaintenanceApproved").unwrap().status, "True");
    let n = get_node(&e.store, "n1").await.unwrap();
    assert!(
        !n.status.unwrap().maintenance_approved,
        "the next rollout must ask again"
    );
}

#[tokio::test]
async fn external_reboot_waits_for_mark_rebooted() {
    let e = env(RebootMethod::External, NodeEffect::Auto, succeed_all()).await;
    wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
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
    assert!(waiting, "node.status.waiting_for_reboot is set while a dpu waits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = get_dpu(&e.store, "d1").await.unwrap();
    assert_eq!(phase(&d), DpuPhase::Rebooting);
    assert!(
        d.status.unwrap().command_id.is_empty(),
        "an external reboot issues no command"
    );

    modify(&e.store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().rebooted_at_ms = now_ms() + 1;
        }
    })
    .await;
    wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    let n = get_node(&e.store, "n1").await.unwrap();
    assert!(!n.status.unwrap().waiting_for_reboot);
}

#[tokio::test]
async fn agent_reboot_completes_only_when_the_boot_id_changes() {
    // The agent never answers reboot_host: the node reboots "by itself" below.
    let e = env(
        RebootMethod::Agent,
        NodeEffect::Auto,
        answer_except("reboot_host", None),
    )
    .await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    assert!(
        !d.status.as_ref().unwrap().command_id.is_empty(),
        "a RebootHost command is issued"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        phase(&get_dpu(&e.store, "d1").await.unwrap()),
        DpuPhase::Rebooting
    );
    assert!(
        !get_node(&e.store, "n1")
            .await
            .unwrap()
            .status
            .unwrap()
            .waiting_for_reboot
    );

    // The agent reconnects from a new boot.
    modify(&e.store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().boot_id = "boot-2".into();
        }
    })
    .await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    let st = d.status.unwrap();
    let out = st
        .history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .unwrap();
    assert_eq!(out.reason, "HostRebooted");
    assert!(out.message.contains("boot-2"), "{}", out.message);
    // The unanswered RebootHost was withdrawn from the desired state.
    assert!(e.store.read(|t| t.open_commands("n1")).await.unwrap().is_empty());
}

#[tokio::test]
async fn skipped_command_moves_on_with_a_condition() {
    let answer = answer_except(
        "initialize_interface",
        Some((CommandOutcome::Skipped, "agent has no host-network support")),
    );
    let e = env(RebootMethod::Agent, NodeEffect::Auto, answer).await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    let c = cond(&d, "InterfaceInitialized").expect("a skipped step is never silent");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Skipped"));
    assert_eq!(c.message, "agent has no host-network support");
    let tr = d
        .status
        .unwrap()
        .history
        .into_iter()
        .find(|t| t.from == DpuPhase::InitializeInterface as i32)
        .unwrap();
    assert_eq!(tr.reason, "Skipped");
}

#[tokio::test]
async fn failed_flash_is_an_error_with_the_dpus_message() {
    let answer = answer_except(
        "flash_bfb",
        Some((CommandOutcome::Failed, "ERR[MISC]: Installation failed")),
    );
    let e = env(RebootMethod::Agent, NodeEffect::Auto, answer).await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Error).await;
    let st = d.status.unwrap();
    assert!(
        st.message
            .starts_with("OSInstalling failed on node n1 (rshim0): ERR[MISC]: Installation failed"),
        "{}",
        st.message
    );
    assert_eq!(st.history.last().unwrap().reason, "CommandFailed");
    assert!(st.installed_bfb.is_empty(), "a failed flash installs nothing");
    // Error stays Error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(phase(&get_dpu(&e.store, "d1").await.unwrap()), DpuPhase::Error);
}

#[tokio::test]
async fn interrupted_and_cancelled_commands_are_errors_that_say_how_to_retry() {
    let answer = answer_except(
        "prepare_bfb",
        Some((CommandOutcome::Interrupted, "agent restarted mid-download")),
    );
    let e = env(RebootMethod::Agent, NodeEffect::Auto, answer).await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Error).await;
    let msg = d.status.unwrap().message;
    assert!(
        msg.contains("restarted during PrepareBFB") && msg.contains("reprovision"),
        "{msg}"
    );

    let answer = answer_except(
        "config_fw_parameters",
        Some((CommandOutcome::Cancelled, "agent shutting down")),
    );
    let e = env(RebootMethod::Agent, NodeEffect::Auto, answer).await;
    let d = wait_phase(&e.store, "d1", DpuPhase::Error).await;
    let st = d.status.unwrap();
    assert_eq!(st.history.last().unwrap().reason, "CommandCancelled");
    assert!(
        st.message.contains("agent shutting down") && st.message.contains("reprovision"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn failed_agent_reboot_is_an_error() {
    let answer = answer_except(
        "reboot_host",
        Some((CommandOutcome::Failed, "reboot command not configured")),
    );
    let e = env(RebootMethod::Agent, NodeEffect::Auto, answer).await;
    let d = wait_dpu(&e.store, "d1", Duration::from_secs(10), |d| {
        phase(d) == DpuPhase::Error
    })
    .await;
    let msg = d.status.unwrap().message;
    assert!(msg.contains("reboot command not configured"), "{msg}");
}
