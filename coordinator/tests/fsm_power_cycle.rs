//! NIC firmware that needs a host power cycle (issue 14): the node's reboot
//! step becomes a power cycle, through the agent's BMC (RebootHost
//! power_cycle) or, when the agent has none or the node reboots externally,
//! through the upstream system (MarkRebooted with power_cycled). The walk runs
//! in a real coordinator (API and reconciler) with the fake agent answering
//! commands through the store.
mod api_common;

use std::sync::Arc;
use std::time::Duration;

use api_common::{Client, TestServer, start_with};
use hostplane_coordinator::fsm::testing::{
    self, Answer, FakeAgent, action_name, get_dpu, get_node, phase, result, seed, wait_dpu, wait_phase,
};
use hostplane_proto::v1::{
    Command, CommandOutcome, Condition, Dpu, DpuPhase, FlavorSpec, Inventory, MarkRebootedRequest,
    NicFirmwareConfig, Node, NodeEffect, NodeRef, RebootKind, RebootMethod, Resource, RshimInfo, command,
    resource,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

struct Env {
    srv: Option<TestServer>,
    c: Client,
    agent: FakeAgent,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn stop(mut self) {
        self.stop.cancel();
        self.srv.take().unwrap().stop().await;
    }
}

fn entry(device: &str, params: &[&str], power_cycle: bool) -> NicFirmwareConfig {
    NicFirmwareConfig {
        device: device.into(),
        parameters: params.iter().map(|s| s.to_string()).collect(),
        host_power_cycle_required: power_cycle,
    }
}

/// Flavor f1 with these nvconfig entries (and no host network).
fn flavor(nvconfig: Vec<NicFirmwareConfig>) -> Resource {
    let mut r = testing::flavor("f1");
    if let Some(resource::Kind::Flavor(f)) = &mut r.kind {
        f.spec = Some(FlavorSpec {
            nvconfig,
            ..Default::default()
        });
    }
    r
}

/// How the fake agent answers ConfigFWParameters.
#[derive(Clone, Copy)]
enum Fw {
    /// SUCCEEDED, the values set pending a power cycle when the command asked for one (an agent
    /// that set them through the fake mstconfig, whose running values change only at reboot).
    AsAsked,
    /// SUCCEEDED with nothing pending (the values were already in effect).
    NothingPending,
    /// SKIPPED (`nic_firmware.enabled: false`, or an agent without NIC firmware support).
    Skipped,
}

/// Node n1 (`reboot`) reporting d1 (rshim0) as a BlueField-3 and d2 (rshim1) as a BlueField-2;
/// `devices` of them in deployment dep (AUTO, all at once) of flavor f1 with `nvconfig`. The fake
/// agent answers RebootHost with `reboot`, ConfigFWParameters as [`Fw::AsAsked`] and every other
/// command SUCCEEDED.
async fn env(
    method: RebootMethod,
    devices: &[&str],
    nvconfig: Vec<NicFirmwareConfig>,
    reboot: impl Fn(&Command) -> Option<hostplane_proto::v1::CommandResult> + Send + Sync + 'static,
) -> Env {
    env_fw(method, devices, nvconfig, Fw::AsAsked, reboot).await
}

async fn env_fw(
    method: RebootMethod,
    devices: &[&str],
    nvconfig: Vec<NicFirmwareConfig>,
    fw: Fw,
    reboot: impl Fn(&Command) -> Option<hostplane_proto::v1::CommandResult> + Send + Sync + 'static,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_with(&dir.path().join("c.db"), true).await;
    let c = srv.client().await;
    let mut n = testing::node("n1", method);
    if let Some(resource::Kind::Node(Node { status: Some(st), .. })) = &mut n.kind {
        let rshim = |name: &str, info: &str| RshimInfo {
            name: name.into(),
            dev_info: info.into(),
            ..Default::default()
        };
        st.inventory = Some(Inventory {
            rshims: vec![
                rshim("rshim0", "BlueField-3(Rev 1)"),
                rshim("rshim1", "BlueField-2(Rev 1)"),
            ],
        });
    }
    let mut objs = vec![n];
    for (i, d) in devices.iter().enumerate() {
        objs.push(testing::device(d, "n1", &format!("rshim{i}"), &[("pool", "a")]));
    }
    objs.extend([
        testing::bfb("b1"),
        flavor(nvconfig),
        testing::deployment("dep", "b1", "f1", &[("pool", "a")], 2, NodeEffect::Auto),
    ]);
    seed(&srv.store, objs).await;
    let stop = CancellationToken::new();
    let answer: Answer = Arc::new(move |c: &Command| match (action_name(c), &c.action) {
        ("reboot_host", _) => reboot(c),
        ("config_fw_parameters", Some(command::Action::ConfigFwParameters(x))) => Some(match fw {
            Fw::AsAsked => hostplane_proto::v1::CommandResult {
                power_cycle_required: x.host_power_cycle_required,
                ..result(
                    CommandOutcome::Succeeded,
                    "NIC firmware parameters set and verified",
                )
            },
            Fw::NothingPending => result(
                CommandOutcome::Succeeded,
                "NIC firmware already as asked, nothing changed; every running value already matches",
            ),
            Fw::Skipped => result(
                CommandOutcome::Skipped,
                "NIC firmware configuration is disabled on this agent (nic_firmware.enabled: false)",
            ),
        }),
        _ => Some(result(CommandOutcome::Succeeded, "done")),
    });
    let agent = FakeAgent::spawn(srv.store.clone(), answer, stop.clone());
    Env {
        srv: Some(srv),
        c,
        agent,
        stop,
        _dir: dir,
    }
}

fn seen(e: &Env, kind: &str) -> Vec<Command> {
    let seen = e.agent.seen.lock().unwrap();
    seen.iter().filter(|c| action_name(c) == kind).cloned().collect()
}

/// The commands of `kind` the fake agent has seen, once it has seen at least one (it reads them
/// from the store on its own schedule, after the Dpu shows the command).
async fn seen_some(e: &Env, kind: &str) -> Vec<Command> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = seen(e, kind);
        if !s.is_empty() || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn power_cycle_of(c: &Command) -> bool {
    match &c.action {
        Some(command::Action::RebootHost(r)) => r.power_cycle,
        other => panic!("not a RebootHost: {other:?}"),
    }
}

fn cond<'a>(d: &'a Dpu, ty: &str) -> Option<&'a Condition> {
    d.status.as_ref()?.conditions.iter().find(|c| c.r#type == ty)
}

fn mark(power_cycled: bool) -> MarkRebootedRequest {
    MarkRebootedRequest {
        name: "n1".into(),
        power_cycled,
    }
}

/// Poll until node n1's status satisfies `pred`.
async fn wait_node(e: &Env, what: &str, pred: impl Fn(&Node) -> bool) -> Node {
    let until = tokio::time::Instant::now() + T;
    loop {
        let n = get_node(&e.srv.as_ref().unwrap().store, "n1").await.unwrap();
        if pred(&n) {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "node n1 never {what}: {:#?}",
            n.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status(n: &Node) -> hostplane_proto::v1::NodeStatus {
    n.status.clone().unwrap_or_default()
}

fn store(e: &Env) -> &hostplane_coordinator::store::Store {
    &e.srv.as_ref().unwrap().store
}

#[tokio::test]
async fn an_agent_node_power_cycles_through_its_bmc_for_every_dpu_of_the_round() {
    // d1 (a BlueField-3) needs a power cycle; d2 (a BlueField-2) matches only "*".
    let e = env(
        RebootMethod::Agent,
        &["d1", "d2"],
        vec![
            entry("*", &["PF_BAR2_ENABLE=0"], false),
            entry("BlueField-3", &["PF_TOTAL_SF=20"], true),
        ],
        |_| {
            Some(result(
                CommandOutcome::Succeeded,
                "power cycle requested from the BMC",
            ))
        },
    )
    .await;
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    wait_phase(store(&e), "d2", DpuPhase::Ready).await;

    // ConfigFWParameters carries each DPU's own parameters.
    let fw = seen(&e, "config_fw_parameters");
    let of = |dpu: &str| match &fw.iter().find(|c| c.dpu == dpu).unwrap().action {
        Some(command::Action::ConfigFwParameters(x)) => x.clone(),
        _ => unreachable!(),
    };
    let (f1, f2) = (of("d1"), of("d2"));
    assert_eq!(f1.nic_firmware.len(), 2, "{f1:?}");
    assert_eq!(f1.nic_firmware["PF_TOTAL_SF"], "20");
    assert!(f1.host_power_cycle_required);
    assert_eq!(f2.nic_firmware.len(), 1, "{f2:?}");
    assert!(!f2.host_power_cycle_required);

    // One RebootHost for the node, a power cycle (d1 needs it, whoever issued it).
    let reboots = seen_some(&e, "reboot_host").await;
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    assert!(power_cycle_of(&reboots[0]), "{reboots:?}");
    let st = d1.status.as_ref().unwrap();
    let into = st
        .history
        .iter()
        .find(|t| t.to == DpuPhase::Rebooting as i32)
        .unwrap();
    assert!(
        into.message
            .contains("the agent on node n1 power-cycles the host through its BMC; flavor f1's NIC firmware"),
        "{}",
        into.message
    );
    let out = st
        .history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .unwrap();
    assert!(
        out.message.ends_with("after a power cycle through its BMC"),
        "{}",
        out.message
    );

    // The power cycle is the node's last reboot.
    let n = wait_node(&e, "recorded the power cycle", |n| {
        status(n).last_reboot_kind == RebootKind::PowerCycle as i32
    })
    .await;
    assert!(status(&n).rebooted_at_ms > 0);
    assert!(!status(&n).power_cycle_required && !status(&n).waiting_for_reboot);
    e.stop().await;
}

#[tokio::test]
async fn without_a_bmc_the_node_waits_for_an_external_power_cycle() {
    let e = env(
        RebootMethod::Agent,
        &["d1"],
        vec![entry("d1", &["PF_BAR2_ENABLE=0"], true)],
        |_| {
            Some(result(
                CommandOutcome::Skipped,
                "no BMC is configured for this host; it cannot be power-cycled by the agent",
            ))
        },
    )
    .await;
    let mut c = e.c.clone();
    let d1 = wait_dpu(store(&e), "d1", T, |d| {
        cond(d, "ExternalPowerCycle").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(phase(&d1), DpuPhase::Rebooting);
    let msg = &d1.status.as_ref().unwrap().message;
    assert!(
        msg.starts_with("the agent on node n1 did not power-cycle the host (no BMC is configured")
            && msg.contains("MarkRebooted with power_cycled"),
        "{msg}"
    );
    let reboots = seen_some(&e, "reboot_host").await;
    assert_eq!(reboots.len(), 1);
    assert!(power_cycle_of(&reboots[0]));

    // The node now waits for the upstream system, and says it needs a power cycle.
    wait_node(&e, "asked for a power cycle", |n| {
        status(n).waiting_for_reboot && status(n).power_cycle_required
    })
    .await;
    let rs = c
        .get_node_reboot_status(NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(rs.waiting_for_reboot && rs.power_cycle_required, "{rs:?}");
    assert_eq!(rs.dpus, ["d1"]);

    // A warm reboot is refused and changes nothing.
    let before = get_node(store(&e), "n1").await.unwrap();
    let err = c.mark_rebooted(mark(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().starts_with(
            "node n1 must be power-cycled, not only rebooted: the NIC firmware of d1 (flavor f1)"
        ),
        "{}",
        err.message()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_node(store(&e), "n1").await.unwrap(), before);
    assert_eq!(
        phase(&get_dpu(store(&e), "d1").await.unwrap()),
        DpuPhase::Rebooting
    );

    // A power cycle moves it on; no second RebootHost was sent.
    let n = c.mark_rebooted(mark(true)).await.unwrap().into_inner();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::PowerCycle as i32);
    assert!(status(&n).rebooted_at_ms > 0);
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    let out = d1
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .cloned()
        .unwrap();
    assert!(
        out.message
            .starts_with("node n1 was power-cycled (MarkRebooted at"),
        "{}",
        out.message
    );
    assert_eq!(seen(&e, "reboot_host").len(), 1);
    wait_node(&e, "stopped waiting", |n| {
        !status(n).waiting_for_reboot && !status(n).power_cycle_required
    })
    .await;
    // Nothing is waiting now: the agent-rebooted node is not the upstream's to mark again.
    let err = c.mark_rebooted(mark(true)).await.unwrap_err();
    assert!(err.message().contains("reboot_method AGENT"), "{}", err.message());
    e.stop().await;
}

#[tokio::test]
async fn an_external_node_says_power_cycle_and_refuses_a_warm_reboot() {
    let e = env(
        RebootMethod::External,
        &["d1"],
        vec![
            entry("MT-none", &["A=1"], false),
            entry("*", &["PF_BAR2_ENABLE=0"], true),
        ],
        |_| {
            Some(result(
                CommandOutcome::Failed,
                "an external node gets no RebootHost",
            ))
        },
    )
    .await;
    let mut c = e.c.clone();
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Rebooting).await;
    let msg = &d1.status.as_ref().unwrap().message;
    assert!(
        msg.contains("waiting for node n1 to be power-cycled, not only rebooted")
            && msg.contains("MarkRebooted with power_cycled"),
        "{msg}"
    );
    let n = wait_node(&e, "asked for a power cycle", |n| {
        status(n).waiting_for_reboot && status(n).power_cycle_required
    })
    .await;
    assert_eq!(status(&n).last_reboot_kind, RebootKind::Unspecified as i32);
    let rs = c
        .get_node_reboot_status(NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        rs.waiting_for_reboot && rs.power_cycle_required && rs.dpus == ["d1"],
        "{rs:?}"
    );
    let err = c.mark_rebooted(mark(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("d1 (flavor f1)"), "{}", err.message());
    assert_eq!(
        status(&get_node(store(&e), "n1").await.unwrap()).rebooted_at_ms,
        0
    );

    let n = c.mark_rebooted(mark(true)).await.unwrap().into_inner();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::PowerCycle as i32);
    wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    wait_node(&e, "stopped waiting", |n| {
        !status(n).waiting_for_reboot && !status(n).power_cycle_required
    })
    .await;
    e.stop().await;
}

#[tokio::test]
async fn a_flavor_without_a_power_cycle_reboots_as_before() {
    // External: a warm reboot is enough and is recorded as one.
    let e = env(
        RebootMethod::External,
        &["d1"],
        vec![
            entry("*", &["PF_BAR2_ENABLE=0"], false),
            entry("d2", &["X=1"], true),
        ],
        |_| {
            Some(result(
                CommandOutcome::Failed,
                "an external node gets no RebootHost",
            ))
        },
    )
    .await;
    let mut c = e.c.clone();
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Rebooting).await;
    assert!(
        d1.status
            .unwrap()
            .message
            .ends_with("waiting for node n1 to be rebooted (reboot it, then MarkRebooted)")
    );
    wait_node(&e, "waiting", |n| status(n).waiting_for_reboot).await;
    let rs = c
        .get_node_reboot_status(NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(rs.waiting_for_reboot && !rs.power_cycle_required, "{rs:?}");
    assert!(!status(&get_node(store(&e), "n1").await.unwrap()).power_cycle_required);
    let n = c.mark_rebooted(mark(false)).await.unwrap().into_inner();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::Reboot as i32);
    wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    e.stop().await;

    // Agent: a plain RebootHost.
    let e = env(
        RebootMethod::Agent,
        &["d1"],
        vec![entry("*", &["PF_BAR2_ENABLE=0"], false)],
        |_| Some(result(CommandOutcome::Succeeded, "rebooting")),
    )
    .await;
    wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    let reboots = seen_some(&e, "reboot_host").await;
    assert_eq!(reboots.len(), 1);
    assert!(!power_cycle_of(&reboots[0]));
    let n = get_node(store(&e), "n1").await.unwrap();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::Unspecified as i32);
    e.stop().await;
}

#[tokio::test]
async fn a_power_cycle_that_cuts_the_agent_off_waits_for_its_word_and_is_recorded_when_interrupted() {
    // The agent never answers the RebootHost itself: the power went before it could.
    let e = env(
        RebootMethod::Agent,
        &["d1"],
        vec![entry("*", &["PF_TOTAL_SF=20"], true)],
        |_| None,
    )
    .await;
    wait_dpu(store(&e), "d1", T, |d| {
        phase(d) == DpuPhase::Rebooting && !d.status.as_ref().unwrap().command_id.is_empty()
    })
    .await;
    let reboots = seen_some(&e, "reboot_host").await;
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    assert!(power_cycle_of(&reboots[0]));

    // The host is back with a new boot id, but nothing is known of the power cycle yet: the Dpu
    // waits for the agent's report instead of moving on.
    testing::modify(store(&e), hostplane_proto::v1::Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().boot_id = "boot-after-power-cut".into();
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d1 = get_dpu(store(&e), "d1").await.unwrap();
    assert_eq!(phase(&d1), DpuPhase::Rebooting, "{:?}", d1.status);
    assert_eq!(
        status(&get_node(store(&e), "n1").await.unwrap()).last_reboot_kind,
        RebootKind::Unspecified as i32
    );

    // Back up, the agent reports the command it had started as INTERRUPTED (its journal): that
    // was the power cycle.
    let (id, finished) = (reboots[0].id.clone(), 1_796_000_000_000);
    store(&e)
        .write(move |t| {
            t.finish_command(
                &id,
                &hostplane_proto::v1::CommandResult {
                    outcome: CommandOutcome::Interrupted as i32,
                    message: "the agent restarted while it ran".into(),
                    finished_at_ms: finished,
                    power_cycle_required: false,
                },
            )
        })
        .await
        .unwrap();
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    let out = d1
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .unwrap()
        .clone();
    assert!(
        out.message.contains("boot-after-power-cut")
            && out
                .message
                .ends_with("after a power cycle through its BMC (the agent lost power before it could confirm it: INTERRUPTED)"),
        "{}",
        out.message
    );
    let n = wait_node(&e, "recorded the power cycle", |n| {
        status(n).last_reboot_kind == RebootKind::PowerCycle as i32
    })
    .await;
    assert_eq!(status(&n).rebooted_at_ms, finished);
    assert_eq!(seen(&e, "reboot_host").len(), 1, "not power-cycled twice");
    e.stop().await;
}

#[tokio::test]
async fn a_skipped_config_fw_with_a_power_cycle_flavor_reboots_plainly() {
    // The Flavor asks for a power cycle, but the agent applied nothing: a warm reboot will do.
    let e = env_fw(
        RebootMethod::External,
        &["d1"],
        vec![entry("*", &["PF_TOTAL_SF=20"], true)],
        Fw::Skipped,
        |_| {
            Some(result(
                CommandOutcome::Failed,
                "an external node gets no RebootHost",
            ))
        },
    )
    .await;
    let mut c = e.c.clone();
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Rebooting).await;
    let pc = cond(&d1, "PowerCycleRequired").expect("PowerCycleRequired is set");
    assert_eq!(
        (pc.status.as_str(), pc.reason.as_str()),
        ("False", "NotNeeded"),
        "{pc:?}"
    );
    assert!(pc.message.contains("flavor f1"), "{}", pc.message);
    let msg = &d1.status.as_ref().unwrap().message;
    assert!(
        msg.ends_with("waiting for node n1 to be rebooted (reboot it, then MarkRebooted)"),
        "{msg}"
    );
    wait_node(&e, "waiting", |n| status(n).waiting_for_reboot).await;
    assert!(!status(&get_node(store(&e), "n1").await.unwrap()).power_cycle_required);
    let rs = c
        .get_node_reboot_status(NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(rs.waiting_for_reboot && !rs.power_cycle_required, "{rs:?}");
    // A warm MarkRebooted is accepted and recorded as a reboot.
    let n = c.mark_rebooted(mark(false)).await.unwrap().into_inner();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::Reboot as i32);
    wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    e.stop().await;
}

#[tokio::test]
async fn a_config_fw_that_left_nothing_pending_reboots_plainly() {
    // The agent node's values were already in effect: a plain RebootHost, not a power cycle.
    let e = env_fw(
        RebootMethod::Agent,
        &["d1"],
        vec![entry("BlueField-3", &["PF_TOTAL_SF=20"], true)],
        Fw::NothingPending,
        |_| Some(result(CommandOutcome::Succeeded, "rebooting")),
    )
    .await;
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    let fw = seen(&e, "config_fw_parameters");
    assert!(
        matches!(&fw[0].action, Some(command::Action::ConfigFwParameters(x)) if x.host_power_cycle_required),
        "the command still tells the agent the Flavor's word: {fw:?}"
    );
    let pc = cond(&d1, "PowerCycleRequired").expect("PowerCycleRequired is set");
    assert_eq!((pc.status.as_str(), pc.reason.as_str()), ("False", "NotNeeded"));
    let reboots = seen_some(&e, "reboot_host").await;
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    assert!(!power_cycle_of(&reboots[0]), "{reboots:?}");
    let into = d1
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .find(|t| t.to == DpuPhase::Rebooting as i32)
        .unwrap()
        .clone();
    assert!(
        into.message.contains("the agent on node n1 reboots the host"),
        "{}",
        into.message
    );
    e.stop().await;
}

#[tokio::test]
async fn an_empty_inventory_hello_while_waiting_keeps_the_power_cycle() {
    // The entry matches d1 by its model, which only the node's inventory tells.
    let e = env(
        RebootMethod::External,
        &["d1"],
        vec![entry("BlueField-3", &["PF_TOTAL_SF=20"], true)],
        |_| {
            Some(result(
                CommandOutcome::Failed,
                "an external node gets no RebootHost",
            ))
        },
    )
    .await;
    let mut c = e.c.clone();
    let d1 = wait_phase(store(&e), "d1", DpuPhase::Rebooting).await;
    let pc = cond(&d1, "PowerCycleRequired").expect("PowerCycleRequired is set");
    assert_eq!(
        (pc.status.as_str(), pc.reason.as_str()),
        ("True", "NicFirmwarePending")
    );
    assert!(
        pc.message.contains("flavor f1") && pc.message.contains("pending a host power cycle"),
        "{}",
        pc.message
    );
    wait_node(&e, "asked for a power cycle", |n| {
        status(n).waiting_for_reboot && status(n).power_cycle_required
    })
    .await;

    // The agent says hello again with no rshim in its inventory (the driver is restarting).
    testing::modify(store(&e), hostplane_proto::v1::Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().inventory = Some(Inventory::default());
        }
    })
    .await;
    // Passes run on the node's change; the node's flags and the Dpu stay as they were.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = get_node(store(&e), "n1").await.unwrap();
    assert!(
        status(&n).inventory.as_ref().is_some_and(|i| i.rshims.is_empty()),
        "{:?}",
        status(&n).inventory
    );
    assert!(
        status(&n).waiting_for_reboot && status(&n).power_cycle_required,
        "{:?}",
        n.status
    );
    let rs = c
        .get_node_reboot_status(NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(rs.power_cycle_required, "{rs:?}");
    let err = c.mark_rebooted(mark(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("d1 (flavor f1)"), "{}", err.message());
    assert_eq!(
        phase(&get_dpu(store(&e), "d1").await.unwrap()),
        DpuPhase::Rebooting
    );
    let n = c.mark_rebooted(mark(true)).await.unwrap().into_inner();
    assert_eq!(status(&n).last_reboot_kind, RebootKind::PowerCycle as i32);
    wait_phase(store(&e), "d1", DpuPhase::Ready).await;
    e.stop().await;
}
