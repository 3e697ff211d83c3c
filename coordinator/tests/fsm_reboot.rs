//! One host reboot per node, never while a sibling DPU is mid-install.
mod backend;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{
    self, Answer, FakeAgent, action_name, get_dpu, get_node, modify, phase, result, seed, wait_dpu,
    wait_phase,
};
use hostplane_coordinator::fsm::{FsmConfig, PhaseTimeouts, Reconciler};
use hostplane_coordinator::store::{Store, StoreError, now_ms};
use hostplane_proto::v1::{
    CommandOutcome, CommandResult, Condition, Dpu, DpuPhase, Kind, NodeEffect, PhaseTransition, RebootMethod,
    command, resource,
};
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

/// How the fake agent of [`env_with`] behaves.
struct Opts {
    reboot: RebootMethod,
    /// Leave d2's flash open (the test finishes it with [`finish_d2_flash`]).
    hold_d2_flash: bool,
    /// The answer to the n-th RebootHost (0-based); None: never answered.
    reboot_answer: Arc<dyn Fn(usize) -> Option<CommandResult> + Send + Sync>,
    timeouts: PhaseTimeouts,
}

impl Opts {
    fn new(reboot: RebootMethod) -> Opts {
        Opts {
            reboot,
            hold_d2_flash: true,
            reboot_answer: Arc::new(|_| Some(result(CommandOutcome::Succeeded, "rebooting"))),
            timeouts: PhaseTimeouts::default(),
        }
    }
}

/// Node n1 with d1 (rshim0) and d2 (rshim1), both in one deployment with room
/// for both. The fake agent answers everything except d2's flash, which the
/// test finishes by hand to control when d2 leaves OSInstalling.
async fn env(reboot: RebootMethod) -> Env {
    env_with(Opts::new(reboot)).await
}

async fn env_with(o: Opts) -> Env {
    let store = backend::store();
    seed(
        &store,
        vec![
            testing::node("n1", o.reboot),
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
        phase_timeouts: o.timeouts,
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), cfg).run(stop.clone()));
    let nth_reboot = AtomicUsize::new(0);
    let (hold, reboot_answer) = (o.hold_d2_flash, o.reboot_answer);
    let answer: Answer = Arc::new(move |c: &hostplane_proto::v1::Command| match action_name(c) {
        "flash_bfb" if hold && c.dpu == "d2" => None,
        "reboot_host" => reboot_answer(nth_reboot.fetch_add(1, Ordering::SeqCst)),
        _ => Some(result(CommandOutcome::Succeeded, "done")),
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

/// The transition out of Rebooting.
fn left_rebooting(d: &Dpu) -> PhaseTransition {
    let st = d.status.as_ref().expect("status");
    st.history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .cloned()
        .unwrap_or_else(|| panic!("left Rebooting: {:?}", st.history))
}

fn cond<'a>(d: &'a Dpu, ty: &str) -> Option<&'a Condition> {
    d.status.as_ref()?.conditions.iter().find(|c| c.r#type == ty)
}

/// The RebootHost commands the agent saw, in order.
fn reboot_cmds(e: &Env) -> Vec<hostplane_proto::v1::Command> {
    let seen = e.agent.seen.lock().unwrap();
    seen.iter()
        .filter(|c| matches!(c.action, Some(command::Action::RebootHost(_))))
        .cloned()
        .collect()
}

/// Poll until the node's `waiting_for_reboot` is `want`.
async fn wait_waiting(store: &Store, want: bool) {
    for _ in 0..1000 {
        let n = get_node(store, "n1").await.unwrap();
        if n.status.unwrap_or_default().waiting_for_reboot == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node n1 never had waiting_for_reboot = {want}");
}

async fn mark_rebooted(store: &Store) {
    modify(store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().rebooted_at_ms = now_ms() + 1;
        }
    })
    .await;
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
    assert!(
        why.contains("waits for sibling(s) d2 to finish installing before node n1 can be rebooted"),
        "{why}"
    );
    let msg = &d1.status.as_ref().unwrap().message;
    assert_eq!(msg, &why, "GetDpuReadiness shows why d1 waits");
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
    // Both left Rebooting on the same, single boot id change.
    let d2 = get_dpu(&e.store, "d2").await.unwrap();
    let (t1, t2) = (left_rebooting(&d1), left_rebooting(&d2));
    assert_eq!(
        (t1.reason.as_str(), t2.reason.as_str()),
        ("HostRebooted", "HostRebooted")
    );
    assert!(t1.message.contains("(was \"boot-1\")"), "{}", t1.message);
    assert_eq!(t1.message, t2.message);
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

#[tokio::test]
async fn a_failed_reboot_puts_every_dpu_waiting_on_it_into_error() {
    let mut o = Opts::new(RebootMethod::Agent);
    o.reboot_answer = Arc::new(|_| Some(result(CommandOutcome::Failed, "systemctl reboot: Access denied")));
    let e = env_with(o).await;
    d1_held_while_d2_installs(&e).await;
    finish_d2_flash(&e.store).await;
    for name in ["d1", "d2"] {
        let st = wait_phase(&e.store, name, DpuPhase::Error).await.status.unwrap();
        assert_eq!(st.history.last().unwrap().reason, "RebootFailed", "{name}");
        assert!(
            st.message.contains("FAILED: systemctl reboot: Access denied"),
            "{name}: {}",
            st.message
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reboots(&e), 1, "one RebootHost, not retried by the sibling");
}

#[tokio::test]
async fn the_rebooting_clock_starts_when_the_last_sibling_is_installed() {
    let mut o = Opts::new(RebootMethod::Agent);
    o.reboot_answer = Arc::new(|_| None); // the host never comes back
    o.timeouts = PhaseTimeouts {
        rebooting: Duration::from_millis(300),
        ..Default::default()
    };
    let e = env_with(o).await;
    let d1 = wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    let entered = d1.status.unwrap().phase_entered_at_ms;
    wait_phase(&e.store, "d2", DpuPhase::OsInstalling).await;
    // Three times the Rebooting timeout while d2 is still being flashed: not late.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let d1 = get_dpu(&e.store, "d1").await.unwrap();
    assert_eq!(phase(&d1), DpuPhase::Rebooting, "{:?}", d1.status);
    assert!(held(&d1).is_some());
    finish_d2_flash(&e.store).await;
    for name in ["d1", "d2"] {
        let d = wait_phase(&e.store, name, DpuPhase::Error).await;
        let st = d.status.as_ref().unwrap();
        let failed = st.history.last().unwrap();
        assert_eq!(failed.reason, "Timeout", "{name}: {}", failed.message);
        assert!(
            failed.message.contains("did not come back with a new boot_id"),
            "{name}: {}",
            failed.message
        );
        if name == "d1" {
            let released = cond(&d, "RebootHeld").expect("d1 was held");
            assert_eq!(released.status, "False");
            assert!(released.last_transition_time_ms >= entered + 900);
            assert!(
                failed.at_ms >= released.last_transition_time_ms + 300,
                "the timeout counts from the release"
            );
        }
    }
    assert_eq!(reboots(&e), 1);
}

#[tokio::test]
async fn a_dpu_does_not_start_installing_while_its_node_waits_for_a_reboot() {
    let mut o = Opts::new(RebootMethod::External);
    o.hold_d2_flash = false;
    let e = env_with(o).await;
    wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    wait_phase(&e.store, "d2", DpuPhase::Rebooting).await;
    wait_waiting(&e.store, true).await;
    // A third DPU of the node, in another deployment, comes along now.
    seed(
        &e.store,
        vec![
            testing::device("d3", "n1", "rshim2", &[("rack", "r2")]),
            testing::deployment("dep2", "b1", "f1", &[("rack", "r2")], 1, NodeEffect::Auto),
        ],
    )
    .await;
    let pending = |d: &Dpu| cond(d, "NodeRebootPending").is_some_and(|c| c.status == "True");
    let d3 = wait_dpu(&e.store, "d3", Duration::from_secs(10), pending).await;
    let why = &cond(&d3, "NodeRebootPending").unwrap().message;
    assert!(
        why.contains("node n1 is about to be rebooted for d1, d2"),
        "{why}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d3 = get_dpu(&e.store, "d3").await.unwrap();
    assert_eq!(phase(&d3), DpuPhase::NodeEffect, "d3 waits for the reboot");
    assert!(
        get_node(&e.store, "n1")
            .await
            .unwrap()
            .status
            .unwrap()
            .waiting_for_reboot
    );

    // One MarkRebooted moves both; then d3 walks, and the node waits for d3's own reboot.
    mark_rebooted(&e.store).await;
    wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    wait_phase(&e.store, "d2", DpuPhase::Ready).await;
    let d3 = wait_phase(&e.store, "d3", DpuPhase::Rebooting).await;
    assert_eq!(cond(&d3, "NodeRebootPending").unwrap().status, "False");
    wait_waiting(&e.store, true).await;
    mark_rebooted(&e.store).await;
    wait_phase(&e.store, "d3", DpuPhase::Ready).await;
    wait_waiting(&e.store, false).await;
}

#[tokio::test]
async fn a_sibling_takes_over_the_reboot_when_the_dpu_that_issued_it_is_reprovisioned() {
    let mut o = Opts::new(RebootMethod::Agent);
    o.hold_d2_flash = false;
    // The first RebootHost is never answered; later ones are.
    o.reboot_answer = Arc::new(|n| (n > 0).then(|| result(CommandOutcome::Succeeded, "rebooting")));
    let e = env_with(o).await;
    wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    wait_phase(&e.store, "d2", DpuPhase::Rebooting).await;
    let mut first = None;
    for _ in 0..1000 {
        first = reboot_cmds(&e).into_iter().next();
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = first.expect("one RebootHost");
    let issuer = first.dpu.clone();
    let other = if issuer == "d1" { "d2" } else { "d1" };
    // Both wait on the same command.
    let id = first.id.clone();
    wait_dpu(&e.store, other, Duration::from_secs(10), move |d| {
        d.status.as_ref().is_some_and(|s| s.command_id == id)
    })
    .await;
    assert_eq!(reboot_cmds(&e).len(), 1);

    modify(&e.store, Kind::Dpu, &issuer, |r| {
        r.metadata_mut().unwrap().deletion_requested_at_ms = now_ms();
    })
    .await;
    let d = wait_phase(&e.store, other, DpuPhase::Ready).await;
    assert_eq!(left_rebooting(&d).reason, "HostRebooted");
    let cmds = reboot_cmds(&e);
    assert_eq!(cmds[1].dpu, other, "the sibling issued the next reboot: {cmds:?}");
    // The recreated Dpu walks again and gets its own reboot.
    wait_dpu(&e.store, &issuer, Duration::from_secs(10), |d| {
        phase(d) == DpuPhase::Ready && d.metadata.as_ref().unwrap().deletion_requested_at_ms == 0
    })
    .await;
    assert_eq!(reboot_cmds(&e).len(), 3);
}
