//! Passes planned and written by hand against a store, with a hand-driven agent: races between a
//! pass's plan and its write, made deterministic.
use std::collections::HashMap;

use hostplane_proto::v1::{
    Command, CommandOutcome, CommandResult, DpuPhase, FlashProgress, Kind, NodeEffect, RebootMethod,
    Resource, command, resource,
};

use super::FsmConfig;
use super::apply::{self, Action, Applied};
use super::plan::{self, Plan};
use super::testing::{self, get_dpu, modify, phase};
use crate::store::{Store, StoreError, now_ms};

/// Plan one pass on the store as it is now.
pub(super) async fn plan_pass(store: &Store, cfg: &FsmConfig) -> Plan {
    let view = store.view();
    plan::plan(&view, &*view, now_ms(), cfg)
}

pub(super) async fn apply_plan(store: &Store, plan: Plan) -> Applied {
    store
        .write(move |t| apply::apply(t, plan.actions))
        .await
        .expect("applying a pass")
}

/// Passes until one writes nothing.
pub(super) async fn settle(store: &Store, cfg: &FsmConfig) {
    for _ in 0..64 {
        let p = plan_pass(store, cfg).await;
        if p.actions.is_empty() || apply_plan(store, p).await.writes == 0 {
            return;
        }
    }
    panic!("the passes did not settle");
}

/// The agent of `node`: answer every open command `answer` has a result for (a RebootHost that
/// succeeds gives the node a new boot id). Returns the commands answered.
pub(super) async fn answer(
    store: &Store,
    node: &str,
    answer: impl Fn(&Command) -> Option<CommandResult>,
) -> Vec<Command> {
    let n = node.to_string();
    let open = store
        .read(move |t| t.open_commands(&n))
        .await
        .expect("open commands");
    let mut done = Vec::new();
    for c in open {
        let Some(res) = answer(&c) else { continue };
        let reboot = matches!(c.action, Some(command::Action::RebootHost(_)))
            && res.outcome == CommandOutcome::Succeeded as i32;
        let (id, node) = (c.id.clone(), node.to_string());
        store
            .write(move |t| {
                t.finish_command(&id, &res)?;
                if reboot
                    && let Some(Resource {
                        kind: Some(resource::Kind::Node(mut nd)),
                    }) = t.get(Kind::Node, &node)?
                {
                    nd.status.get_or_insert_default().boot_id = format!("boot-after-{id}");
                    t.update(nd.into())?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .expect("recording a result");
        done.push(c);
    }
    done
}

fn ok(c: &Command) -> Option<CommandResult> {
    Some(testing::result(
        CommandOutcome::Succeeded,
        &format!("{} done", testing::action_name(c)),
    ))
}

/// Every Dpu's command id names a stored command.
async fn assert_no_dangling_command(store: &Store) {
    let dangling = store
        .read(|t| {
            let mut out = Vec::new();
            for r in t.list(Kind::Dpu)? {
                let Some(resource::Kind::Dpu(d)) = r.kind else {
                    continue;
                };
                let id = d.status.map(|s| s.command_id).unwrap_or_default();
                if !id.is_empty() && t.command(&id)?.is_none() {
                    out.push((d.metadata.unwrap_or_default().name, id));
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await
        .unwrap();
    assert!(
        dangling.is_empty(),
        "dpus pointing at commands not in the store: {dangling:?}"
    );
}

/// Node n1 (agent reboots) with d1, d2, d3 in one deployment with room for all three.
async fn three_siblings() -> Store {
    let store = Store::in_memory().unwrap();
    testing::seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
            testing::device("d2", "n1", "rshim1", &[]),
            testing::device("d3", "n1", "rshim2", &[]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[], 3, NodeEffect::Auto),
        ],
    )
    .await;
    store
}

/// The bench's CommandMissing: d2 and d3 wait in Rebooting for d1 to finish installing; the pass
/// that sees d1's flash succeed has d1 issue the node's RebootHost and d2, d3 join it. If d1
/// changes between that plan and its write (the agent session flushed its flash progress), d1's
/// update is skipped: its RebootHost must not be referenced by d2's and d3's updates either.
#[tokio::test]
async fn siblings_never_point_at_a_reboot_whose_issuer_was_not_written() {
    let cfg = FsmConfig::default();
    let store = three_siblings().await;
    let d1_flash = |c: &Command| c.dpu == "d1" && matches!(c.action, Some(command::Action::FlashBfb(_)));
    for _ in 0..16 {
        settle(&store, &cfg).await;
        answer(&store, "n1", |c| if d1_flash(c) { None } else { ok(c) }).await;
    }
    settle(&store, &cfg).await;
    for (name, want) in [
        ("d1", DpuPhase::OsInstalling),
        ("d2", DpuPhase::Rebooting),
        ("d3", DpuPhase::Rebooting),
    ] {
        let d = get_dpu(&store, name).await.unwrap();
        assert_eq!(phase(&d), want, "{name}: {d:#?}");
    }
    assert!(
        get_dpu(&store, "d2")
            .await
            .unwrap()
            .status
            .unwrap()
            .command_id
            .is_empty(),
        "d2 is held for d1: no reboot issued yet"
    );
    answer(&store, "n1", ok).await;

    let p = plan_pass(&store, &cfg).await;
    let ups: HashMap<String, &apply::DpuUpdate> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateDpu(u) => Some((u.dpu.metadata.as_ref().unwrap().name.clone(), &**u)),
            _ => None,
        })
        .collect();
    let reboot = &ups["d1"].insert;
    assert!(
        reboot.len() == 1 && matches!(reboot[0].action, Some(command::Action::RebootHost(_))),
        "d1 issues the node's reboot: {reboot:?}"
    );
    for sib in ["d2", "d3"] {
        let u = ups[sib];
        assert_eq!(
            u.dpu.status.as_ref().unwrap().command_id,
            reboot[0].id,
            "{sib} joins it"
        );
        assert!(u.insert.is_empty());
    }

    // The session flushes d1's last flash progress between the plan and its write.
    modify(&store, Kind::Dpu, "d1", |r| {
        if let Some(resource::Kind::Dpu(d)) = &mut r.kind {
            d.status.get_or_insert_default().progress = Some(FlashProgress {
                stage: "installed".into(),
                ..Default::default()
            });
        }
    })
    .await;
    let applied = apply_plan(&store, p).await;
    assert_eq!(applied.conflicts, 3, "d1 changed; d2 and d3 joined d1's reboot");
    assert_no_dangling_command(&store).await;

    // The next passes take all three through one reboot round.
    let mut reboots = 0;
    for _ in 0..16 {
        settle(&store, &cfg).await;
        assert_no_dangling_command(&store).await;
        let done = answer(&store, "n1", ok).await;
        reboots += done
            .iter()
            .filter(|c| matches!(c.action, Some(command::Action::RebootHost(_))))
            .count();
    }
    for name in ["d1", "d2", "d3"] {
        let d = get_dpu(&store, name).await.unwrap();
        assert_eq!(phase(&d), DpuPhase::Ready, "{name}: {d:#?}");
        let st = d.status.unwrap();
        assert!(
            !st.history.iter().any(|t| t.to == DpuPhase::Error as i32),
            "{name} never failed: {:#?}",
            st.history
        );
    }
    assert_eq!(reboots, 1, "one host reboot for the three");
}

/// Node n1 with d1 and d2 each waiting on its InitializeInterface command; returns the node's
/// desired version (the state carrying both commands).
async fn two_waiting(cfg: &FsmConfig) -> (Store, u64) {
    let store = Store::in_memory().unwrap();
    testing::seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
            testing::device("d2", "n1", "rshim1", &[]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[], 2, NodeEffect::Auto),
        ],
    )
    .await;
    settle(&store, cfg).await;
    for name in ["d1", "d2"] {
        let d = get_dpu(&store, name).await.unwrap();
        assert_eq!(phase(&d), DpuPhase::InitializeInterface, "{name}: {d:#?}");
    }
    let v = store.read(|t| t.desired_version("n1")).await.unwrap();
    (store, v)
}

/// What the stream's `record_nack` writes (tests/fsm_nack.rs drives the real one through the
/// agent stream): the refused version, its error, and the open commands it carried if the node's
/// desired state is still that version.
async fn nack(store: &Store, version: u64, error: &str) {
    let error = error.to_string();
    store
        .write(move |t| {
            let carried = if t.desired_version("n1")? == version {
                t.open_commands("n1")?.into_iter().map(|c| c.id).collect()
            } else {
                Vec::new()
            };
            let Some(Resource {
                kind: Some(resource::Kind::Node(mut n)),
            }) = t.get(Kind::Node, "n1")?
            else {
                panic!("n1 exists")
            };
            let st = n.status.get_or_insert_default();
            st.nack_error = error;
            st.nacked_version = version;
            st.nacked_commands = carried;
            t.update(n.into())
        })
        .await
        .unwrap();
}

const REFUSED: &str = "host network refused, nothing changed: ens1f0 has no VF 9";

#[tokio::test]
async fn a_nack_fails_the_dpus_waiting_on_the_refused_version() {
    let cfg = FsmConfig::default();
    let (store, v) = two_waiting(&cfg).await;
    nack(&store, v, REFUSED).await;
    settle(&store, &cfg).await;
    for name in ["d1", "d2"] {
        let d = get_dpu(&store, name).await.unwrap();
        assert_eq!(phase(&d), DpuPhase::Error, "{name}: {d:#?}");
        let tr = d.status.as_ref().unwrap().history.last().unwrap().clone();
        assert_eq!(tr.reason, "Nacked");
        assert_eq!(
            tr.message,
            format!(
                "the agent on node n1 rejected desired state version {v}: {REFUSED}; fix it and reprovision"
            )
        );
    }
    let open = store.read(|t| t.open_commands("n1")).await.unwrap();
    assert!(open.is_empty(), "their commands are withdrawn: {open:?}");
}

#[tokio::test]
async fn a_nack_spares_later_commands_and_versions_the_agent_acked() {
    let cfg = FsmConfig::default();

    // The agent ACKed a later version after refusing this one: nothing fails.
    let (store, v) = two_waiting(&cfg).await;
    nack(&store, v, REFUSED).await;
    modify(&store, Kind::Node, "n1", move |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            let st = n.status.get_or_insert_default();
            st.acked_version = v + 1;
            st.nack_error.clear();
        }
    })
    .await;
    settle(&store, &cfg).await;
    for name in ["d1", "d2"] {
        assert_eq!(
            phase(&get_dpu(&store, name).await.unwrap()),
            DpuPhase::InitializeInterface
        );
    }

    // A refused version older than the node's desired state: the agent answers the newer one.
    let (store, v) = two_waiting(&cfg).await;
    answer(&store, "n1", |c| if c.dpu == "d1" { ok(c) } else { None }).await;
    nack(&store, v, REFUSED).await;
    settle(&store, &cfg).await;
    assert_eq!(
        phase(&get_dpu(&store, "d1").await.unwrap()),
        DpuPhase::ConfigFwParameters,
        "d1's next command came after the refused version"
    );
    assert_eq!(
        phase(&get_dpu(&store, "d2").await.unwrap()),
        DpuPhase::InitializeInterface
    );

    // A refused version fails only the commands it carried.
    let newer = store.read(|t| t.desired_version("n1")).await.unwrap();
    nack(&store, newer, REFUSED).await;
    answer(&store, "n1", |c| if c.dpu == "d1" { ok(c) } else { None }).await;
    settle(&store, &cfg).await;
    let d1 = get_dpu(&store, "d1").await.unwrap();
    assert_eq!(
        phase(&d1),
        DpuPhase::PrepareBfb,
        "d1's ConfigFwParameters finished: {d1:#?}"
    );
    let d2 = get_dpu(&store, "d2").await.unwrap();
    assert_eq!(phase(&d2), DpuPhase::Error);
    assert_eq!(d2.status.unwrap().history.last().unwrap().reason, "Nacked");
}
