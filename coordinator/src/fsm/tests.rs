//! Pure tests of one pass's decisions (no store, no tasks).
use std::collections::HashMap;

use hostplane_proto::v1::{
    Dpu, DpuPhase, DpuSpec, DpuStatus, NodeEffect, ObjectMeta, RebootMethod, Resource,
};

use super::apply::Action;
use super::plan::plan;
use super::testing;
use super::{FsmConfig, util};
use crate::store::{CommandRow, Store, StoreError, View};

/// The store's view after inserting `objs` in order.
fn cache(objs: Vec<Resource>) -> View {
    let store = Store::in_memory().unwrap();
    store
        .write_sync(|t| {
            for r in objs {
                t.insert(r)?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
    store.view().clone()
}

fn dpu(name: &str, node: &str, bfb: &str, phase: DpuPhase, command_id: &str) -> Resource {
    Dpu {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(DpuSpec {
            device: name.into(),
            node: node.into(),
            deployment: "dep".into(),
            bfb: bfb.into(),
            flavor: "f1".into(),
        }),
        status: Some(DpuStatus {
            phase: phase as i32,
            phase_entered_at_ms: crate::store::now_ms(),
            command_id: command_id.into(),
            installed_bfb: bfb.into(),
            installed_flavor: "f1".into(),
            ..Default::default()
        }),
    }
    .into()
}

fn base(max_unavailable: u32, devices: &[&str]) -> Vec<Resource> {
    let mut v = vec![
        testing::node("n1", RebootMethod::Agent),
        testing::bfb("b1"),
        testing::bfb("b2"),
        testing::flavor("f1"),
    ];
    for d in devices {
        v.push(testing::device(d, "n1", "rshim0", &[]));
    }
    v.push(testing::deployment(
        "dep",
        "b2",
        "f1",
        &[],
        max_unavailable,
        NodeEffect::Auto,
    ));
    v
}

fn updates(actions: &[Action]) -> HashMap<String, &Dpu> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateDpu(u) => Some((u.dpu.metadata.as_ref().unwrap().name.clone(), &u.dpu)),
            _ => None,
        })
        .collect()
}

fn phase_of(d: &Dpu) -> DpuPhase {
    util::phase_of(d.status.as_ref().unwrap().phase)
}

#[test]
fn missing_dpus_are_created_and_pending_ones_get_at_most_max_unavailable_slots() {
    let cfg = FsmConfig::default();
    let c = cache(base(2, &["a", "b", "c"]));
    let p = plan(&c, &HashMap::new(), crate::store::now_ms(), &cfg);
    let created = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::CreateDpu(_)))
        .count();
    assert_eq!(created, 3);

    let mut objs = base(2, &["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        objs.push(dpu(n, "n1", "b2", DpuPhase::Pending, ""));
    }
    let c = cache(objs);
    let p = plan(&c, &HashMap::new(), crate::store::now_ms(), &cfg);
    let up = updates(&p.actions);
    let started: Vec<&String> = up
        .iter()
        .filter(|(_, d)| phase_of(d) == DpuPhase::InitializeInterface)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(started.len(), 2, "max_unavailable 2: {up:?}");
    for d in up
        .values()
        .filter(|d| phase_of(d) == DpuPhase::InitializeInterface)
    {
        let st = d.status.as_ref().unwrap();
        assert!(!st.command_id.is_empty());
        let to: Vec<i32> = st.history.iter().map(|t| t.to).collect();
        assert_eq!(
            to,
            [DpuPhase::NodeEffect as i32, DpuPhase::InitializeInterface as i32],
            "each transition is recorded"
        );
    }
    let inserted: usize = p
        .actions
        .iter()
        .map(|a| match a {
            Action::UpdateDpu(u) => u.insert.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(inserted, 2, "one command per Dpu entering a command phase");
}

#[test]
fn maintenance_approval_is_cleared_only_when_no_other_dpu_needs_the_window() {
    let cfg = FsmConfig::default();
    let approved = |mut objs: Vec<Resource>| {
        if let Some(hostplane_proto::v1::resource::Kind::Node(n)) = &mut objs[0].kind {
            n.status.get_or_insert_default().maintenance_approved = true;
        }
        objs
    };
    let mut objs = approved(base(2, &["a", "b"]));
    objs.push(dpu("a", "n1", "b2", DpuPhase::NodeEffectRemoval, ""));
    objs.push(dpu("b", "n1", "b2", DpuPhase::OsInstalling, "flash-b"));
    let cmds = HashMap::from([(
        "flash-b".to_string(),
        Some(CommandRow {
            command: Default::default(),
            node: "n1".into(),
            created_ms: 0,
            result: None,
        }),
    )]);
    let p = plan(&cache(objs), &cmds, crate::store::now_ms(), &cfg);
    assert_eq!(phase_of(updates(&p.actions)["a"]), DpuPhase::Ready);
    assert!(
        !p.actions.iter().any(|a| matches!(
            a,
            Action::PatchNode {
                clear_maintenance: true,
                ..
            }
        )),
        "b still flashes inside the window"
    );

    let mut objs = approved(base(2, &["a", "b"]));
    objs.push(dpu("a", "n1", "b2", DpuPhase::NodeEffectRemoval, ""));
    objs.push(dpu("b", "n1", "b2", DpuPhase::Ready, ""));
    let p = plan(&cache(objs), &HashMap::new(), crate::store::now_ms(), &cfg);
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::PatchNode {
            clear_maintenance: true,
            ..
        }
    )));
}

#[test]
fn a_command_missing_from_the_store_is_an_error() {
    let mut objs = base(1, &["a"]);
    objs.push(dpu("a", "n1", "b2", DpuPhase::PrepareBfb, "gone"));
    let cmds = HashMap::from([("gone".to_string(), None)]);
    let p = plan(&cache(objs), &cmds, crate::store::now_ms(), &FsmConfig::default());
    let d = updates(&p.actions)["a"];
    assert_eq!(phase_of(d), DpuPhase::Error);
    assert!(
        d.status
            .as_ref()
            .unwrap()
            .message
            .contains("command gone is missing")
    );
}

#[test]
fn rollout_budget_counts_dpus_already_unavailable() {
    let mut objs = base(2, &["a", "b", "c", "d"]);
    for n in ["a", "b", "c"] {
        objs.push(dpu(n, "n1", "b1", DpuPhase::Ready, ""));
    }
    // d is mid-walk: it uses one of the two unavailable slots.
    objs.push(dpu("d", "n1", "b2", DpuPhase::OsInstalling, "x"));
    let cmds = HashMap::from([(
        "x".to_string(),
        Some(CommandRow {
            command: Default::default(),
            node: "n1".into(),
            created_ms: 0,
            result: None,
        }),
    )]);
    let p = plan(&cache(objs), &cmds, crate::store::now_ms(), &FsmConfig::default());
    let up = updates(&p.actions);
    let rolled: Vec<&String> = up
        .iter()
        .filter(|(_, d)| phase_of(d) == DpuPhase::Deleting)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(rolled, [&"a".to_string()], "only one more may go down");
    assert_eq!(
        up["a"].status.as_ref().unwrap().history.last().unwrap().reason,
        "Rollout"
    );
}

#[test]
fn pci_address_changes_are_noted() {
    use hostplane_proto::v1::{DeviceSpec, EventType, WatchEvent};
    let device = |pci: &str, serial: &str| -> Resource {
        hostplane_proto::v1::Device {
            metadata: Some(ObjectMeta {
                name: "d1".into(),
                ..Default::default()
            }),
            spec: Some(DeviceSpec {
                pci_address: pci.into(),
                serial: serial.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    };
    let ev = |ty: EventType, r: Resource| WatchEvent {
        r#type: ty as i32,
        resource_version: 0,
        resource: Some(r),
    };
    let mut w = super::PciWatch::load(&View::default());
    w.event(&ev(EventType::Added, device("0000:04:00.0", "a")));
    w.event(&ev(EventType::Modified, device("0000:04:00.0", "b")));
    assert!(
        w.changed.is_empty(),
        "a new device or another field is no PCI change"
    );
    w.event(&ev(EventType::Modified, device("0000:05:00.0", "b")));
    assert_eq!(w.changed.iter().collect::<Vec<_>>(), ["d1"]);
    w.changed.clear();
    w.event(&ev(EventType::Deleted, device("0000:05:00.0", "b")));
    w.event(&ev(EventType::Added, device("0000:09:00.0", "b")));
    assert!(w.changed.is_empty(), "a device created again is new");
}

/// Flavor f1 whose only nvconfig entry, for device `b`, needs a host power cycle, and Dpu `b`'s
/// agent reported values pending one (its ConfigFWParameters result).
fn power_cycle_for_b(objs: &mut [Resource]) {
    for o in objs {
        if let Some(hostplane_proto::v1::resource::Kind::Dpu(d)) = &mut o.kind
            && d.metadata.as_ref().is_some_and(|m| m.name == "b")
        {
            util::set_condition(
                &mut d.status.get_or_insert_default().conditions,
                super::nicfw::COND_POWER_CYCLE_REQUIRED,
                "True",
                "NicFirmwarePending",
                "flavor f1's NIC firmware parameters: pending",
                1,
            );
        }
        if let Some(hostplane_proto::v1::resource::Kind::Flavor(f)) = &mut o.kind {
            f.spec = Some(hostplane_proto::v1::FlavorSpec {
                nvconfig: vec![hostplane_proto::v1::NicFirmwareConfig {
                    device: "b".into(),
                    parameters: vec!["PF_TOTAL_SF=20".into()],
                    host_power_cycle_required: true,
                }],
                ..Default::default()
            });
        }
    }
}

/// A Dpu in Rebooting on node n1 (boot id "boot-1" at entry), waiting on `command_id`.
fn rebooting(name: &str, command_id: &str) -> Resource {
    let mut r = dpu(name, "n1", "b2", DpuPhase::Rebooting, command_id);
    if let Some(hostplane_proto::v1::resource::Kind::Dpu(d)) = &mut r.kind {
        let st = d.status.as_mut().unwrap();
        st.history.push(hostplane_proto::v1::PhaseTransition {
            from: DpuPhase::OsInstalling as i32,
            to: DpuPhase::Rebooting as i32,
            reason: "OsInstalled".into(),
            message: format!("OS installed on rshim0; ... ({}boot-1)", super::BOOT_ID_MARK),
            at_ms: st.phase_entered_at_ms,
        });
    }
    r
}

#[test]
fn one_power_cycle_serves_the_round_and_a_skipped_one_waits_for_the_upstream() {
    use hostplane_proto::v1::{CommandOutcome, RebootHost, command};
    let cfg = FsmConfig::default();
    let mut objs = base(2, &["a", "b"]);
    objs.push(rebooting("a", ""));
    objs.push(rebooting("b", ""));
    power_cycle_for_b(&mut objs);
    let p = plan(
        &cache(objs.clone()),
        &HashMap::new(),
        crate::store::now_ms(),
        &cfg,
    );
    // `a` is stepped first and issues the node's RebootHost; `b` needs the power cycle.
    let issued: Vec<&hostplane_proto::v1::Command> = p
        .actions
        .iter()
        .flat_map(|a| match a {
            Action::UpdateDpu(u) => u.insert.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].dpu, "a");
    assert_eq!(
        issued[0].action,
        Some(command::Action::RebootHost(RebootHost { power_cycle: true }))
    );
    let up = updates(&p.actions);
    let id = &issued[0].id;
    assert_eq!(
        &up["b"].status.as_ref().unwrap().command_id,
        id,
        "b joins the round"
    );

    // The agent has no BMC: both wait for the upstream system, and the node says power cycle.
    let mut objs = base(2, &["a", "b"]);
    objs.push(rebooting("a", "cycle"));
    objs.push(rebooting("b", "cycle"));
    power_cycle_for_b(&mut objs);
    let row = |outcome: CommandOutcome| {
        HashMap::from([(
            "cycle".to_string(),
            Some(CommandRow {
                command: hostplane_proto::v1::Command {
                    id: "cycle".into(),
                    dpu: "a".into(),
                    rshim: "rshim0".into(),
                    action: Some(command::Action::RebootHost(RebootHost { power_cycle: true })),
                },
                node: "n1".into(),
                created_ms: 0,
                result: Some(hostplane_proto::v1::CommandResult {
                    finished_at_ms: 1_000,
                    ..testing::result(outcome, "no BMC is configured for this host")
                }),
            }),
        )])
    };
    let view = cache(objs);
    let p = plan(&view, &row(CommandOutcome::Skipped), crate::store::now_ms(), &cfg);
    let up = updates(&p.actions);
    for n in ["a", "b"] {
        let st = up[n].status.as_ref().unwrap();
        assert_eq!(phase_of(up[n]), DpuPhase::Rebooting, "{n}");
        let c = util::condition(&st.conditions, "ExternalPowerCycle").expect(n);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "AgentCannotPowerCycle")
        );
        assert!(
            st.message.contains("(no BMC is configured for this host)"),
            "{}",
            st.message
        );
    }
    assert!(
        p.actions.iter().any(|a| matches!(
            a,
            Action::PatchNode {
                waiting_for_reboot: Some(true),
                power_cycle_required: Some(true),
                power_cycled_at_ms: None,
                ..
            }
        )),
        "{:#?}",
        p.actions
    );

    // Had it SUCCEEDED, the node would record the power cycle at the result's time.
    let p = plan(
        &view,
        &row(CommandOutcome::Succeeded),
        crate::store::now_ms(),
        &cfg,
    );
    let recorded: Vec<Option<i64>> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::PatchNode {
                power_cycled_at_ms, ..
            } => Some(*power_cycled_at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, [Some(1_000)], "{:#?}", p.actions);
}

/// ConfigFWParameters' result sets PowerCycleRequired: True only when the agent SUCCEEDED with
/// values pending a power cycle, whatever the Flavor says; False when it succeeded without or
/// skipped. A failure leaves the condition alone (the Dpu goes to Error).
#[test]
fn the_config_fw_result_decides_the_power_cycle_not_the_flavor() {
    use hostplane_proto::v1::{CommandOutcome, CommandResult, ConfigFwParameters, command};
    let cfg = FsmConfig::default();
    // The Flavor asks for a power cycle for every device.
    let mut objs = base(2, &["a"]);
    for o in &mut objs {
        if let Some(hostplane_proto::v1::resource::Kind::Flavor(f)) = &mut o.kind {
            f.spec = Some(hostplane_proto::v1::FlavorSpec {
                nvconfig: vec![hostplane_proto::v1::NicFirmwareConfig {
                    device: "*".into(),
                    parameters: vec!["PF_TOTAL_SF=20".into()],
                    host_power_cycle_required: true,
                }],
                ..Default::default()
            });
        }
    }
    objs.push(dpu("a", "n1", "b1", DpuPhase::ConfigFwParameters, "fw"));
    let view = cache(objs);
    let row = |outcome: CommandOutcome, pc: bool| {
        HashMap::from([(
            "fw".to_string(),
            Some(CommandRow {
                command: hostplane_proto::v1::Command {
                    id: "fw".into(),
                    dpu: "a".into(),
                    rshim: "rshim0".into(),
                    action: Some(command::Action::ConfigFwParameters(ConfigFwParameters {
                        nic_firmware: [("PF_TOTAL_SF".to_string(), "20".to_string())].into(),
                        pci_address: String::new(),
                        host_power_cycle_required: true,
                    })),
                },
                node: "n1".into(),
                created_ms: 0,
                result: Some(CommandResult {
                    power_cycle_required: pc,
                    ..testing::result(outcome, "agent words")
                }),
            }),
        )])
    };
    let cases = [
        (
            CommandOutcome::Succeeded,
            true,
            Some(("True", "NicFirmwarePending")),
        ),
        (CommandOutcome::Succeeded, false, Some(("False", "NotNeeded"))),
        (CommandOutcome::Skipped, false, Some(("False", "NotNeeded"))),
        // An agent that says so on a skip is not believed: nothing was applied.
        (CommandOutcome::Skipped, true, Some(("False", "NotNeeded"))),
        (CommandOutcome::Failed, true, None),
    ];
    for (outcome, pc, want) in cases {
        let p = plan(&view, &row(outcome, pc), crate::store::now_ms(), &cfg);
        let up = updates(&p.actions);
        let d = up["a"];
        let got = util::condition(&d.status.as_ref().unwrap().conditions, "PowerCycleRequired")
            .map(|c| (c.status.as_str(), c.reason.as_str()));
        assert_eq!(got, want, "{outcome:?} power_cycle_required={pc}");
        assert_eq!(
            super::nicfw::power_cycle_required(d),
            want.is_some_and(|w| w.0 == "True"),
            "{outcome:?} {pc}"
        );
        if let Some(c) = util::condition(&d.status.as_ref().unwrap().conditions, "PowerCycleRequired")
            && c.status == "True"
        {
            assert!(
                c.message.contains("flavor f1") && c.message.contains("pending a host power cycle"),
                "{}",
                c.message
            );
        }
    }
}
