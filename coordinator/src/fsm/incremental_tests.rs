//! Incremental passes: the work a pass for one change does does not grow with the fleet, and
//! an incremental pass decides what a full pass over the same view decides.
use std::time::Duration;

use hostplane_proto::v1::{
    CommandOutcome, CommandResult, DpuPhase, Kind, NodeEffect, RebootMethod, Resource, WatchEvent, resource,
};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

use super::apply::{self, Action};
use super::dirty::Tracker;
use super::incremental::plan_changes;
use super::plan::{Plan, plan};
use super::{FsmConfig, PhaseTimeouts, testing};
use crate::store::{DesiredChanged, Store, StoreError};

/// The Reconciler's loop, one pass at a time, on a fake clock.
struct Harness {
    store: Store,
    events: Receiver<WatchEvent>,
    desired: Receiver<DesiredChanged>,
    tracker: Tracker,
    cfg: FsmConfig,
    /// Incremental passes checked against a full pass.
    checked: usize,
}

/// The actions, with the ids of the commands they issue numbered in order (a pass draws new ids).
fn normalized(actions: &[Action]) -> String {
    let mut text = format!("{actions:#?}");
    let mut n = 0;
    for a in actions {
        if let Action::UpdateDpu(u) = a {
            for c in &u.insert {
                text = text.replace(&c.id, &format!("new-command-{n}"));
                n += 1;
            }
        }
    }
    text
}

impl Harness {
    fn new(objs: Vec<Resource>, cfg: FsmConfig) -> Harness {
        let store = Store::in_memory().unwrap();
        let (events, desired) = (store.subscribe(), store.subscribe_desired());
        store
            .write_sync(|t| {
                for r in objs {
                    t.insert(r)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        Harness {
            store,
            events,
            desired,
            tracker: Tracker::new(),
            cfg,
            checked: 0,
        }
    }

    fn drain(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(ev) => self.tracker.event(&ev),
                Err(TryRecvError::Lagged(_)) => self.tracker.resync(),
                Err(_) => break,
            }
        }
        loop {
            match self.desired.try_recv() {
                Ok(d) => self.tracker.desired(&d.node),
                Err(TryRecvError::Lagged(_)) => self.tracker.resync(),
                Err(_) => break,
            }
        }
    }

    /// One pass; returns its plan (already written) and whether it was full. With `check`, an
    /// incremental pass's actions must equal a full pass's over the same view.
    fn pass(&mut self, now: i64, check: bool) -> (Plan, bool) {
        self.drain();
        let (p, full) = {
            let view = self.store.view();
            match self.tracker.begin(&view, now) {
                None => (plan(&view, &*view, now, &self.cfg), true),
                Some(work) => {
                    let p = plan_changes(&view, &*view, now, &self.cfg, &work, self.tracker.aggregates());
                    if check {
                        let all = plan(&view, &*view, now, &self.cfg);
                        assert_eq!(
                            normalized(&p.actions),
                            normalized(&all.actions),
                            "an incremental pass for {work:?} decided otherwise than a full pass"
                        );
                        self.checked += 1;
                    }
                    (p, false)
                }
            }
        };
        self.tracker.end(&p, full);
        let actions = p.actions.clone();
        let applied = self.store.write_sync(move |t| apply::apply(t, actions)).unwrap();
        assert_eq!(applied.conflicts, 0);
        (p, full)
    }

    /// Passes until one plans nothing; then a full pass must plan nothing either.
    fn settle(&mut self, now: i64, check: bool) {
        for _ in 0..40 {
            if self.pass(now, check).0.actions.is_empty() {
                let view = self.store.view();
                let all = plan(&view, &*view, now, &self.cfg);
                assert!(
                    all.actions.is_empty(),
                    "incremental passes settled, a full pass still plans {:#?}",
                    all.actions
                );
                return;
            }
        }
        panic!("passes did not settle");
    }

    fn write(&self, f: impl FnOnce(&mut crate::store::Txn<'_>) -> Result<(), StoreError> + Send + 'static) {
        self.store.write_sync(f).unwrap();
    }

    fn modify(&self, kind: Kind, name: &str, f: impl FnOnce(&mut Resource) + Send + 'static) {
        let name = name.to_string();
        self.write(move |t| {
            let Some(mut r) = t.get(kind, &name)? else {
                return Ok(());
            };
            f(&mut r);
            t.update(r).map(|_| ())
        });
    }

    fn open_commands(&self) -> Vec<(String, hostplane_proto::v1::Command)> {
        let view = self.store.view();
        view.nodes
            .keys()
            .flat_map(|n| view.open_commands(n).into_iter().map(|c| (n.clone(), c.clone())))
            .collect()
    }
}

fn fleet(nodes: usize, devices_per_node: usize, max_unavailable: u32, effect: NodeEffect) -> Vec<Resource> {
    // Two devices' NIC firmware needs a host power cycle: their nodes' reboots become power cycles.
    // (The entries repeat the flavor's one nic_firmware parameter: a command's parameters are a
    // map, whose Debug order would differ between passes.)
    let mut flavor = testing::flavor("f1");
    if let Some(resource::Kind::Flavor(f)) = &mut flavor.kind {
        let entry = |device: &str| hostplane_proto::v1::NicFirmwareConfig {
            device: device.into(),
            parameters: vec!["NUM_OF_VFS=8".into()],
            host_power_cycle_required: true,
        };
        f.spec.get_or_insert_default().nvconfig = vec![entry("d00001-0"), entry("d00002-1")];
    }
    let mut v = vec![testing::bfb("b1"), flavor];
    for n in 0..nodes {
        let reboot = if n % 3 == 2 {
            RebootMethod::External
        } else {
            RebootMethod::Agent
        };
        v.push(testing::node(&format!("n{n:05}"), reboot));
        for d in 0..devices_per_node {
            v.push(testing::device(
                &format!("d{n:05}-{d}"),
                &format!("n{n:05}"),
                &format!("rshim{d}"),
                &[],
            ));
        }
    }
    v.push(testing::deployment(
        "dep",
        "b1",
        "f1",
        &[],
        max_unavailable,
        effect,
    ));
    v
}

fn done(outcome: CommandOutcome) -> CommandResult {
    testing::result(outcome, "done")
}

/// The work of a pass for one command result: Dpus stepped and store rows read.
fn one_result(nodes: usize) -> (usize, u64, u64) {
    let mut h = Harness::new(
        fleet(nodes, 1, nodes as u32, NodeEffect::Auto),
        FsmConfig::default(),
    );
    let now = crate::store::now_ms();
    h.settle(now, false);
    let view = h.store.view().clone();
    assert!(
        view.dpus
            .values()
            .all(|d| testing::phase(d) == DpuPhase::InitializeInterface),
        "every Dpu waits on its first command"
    );
    let id = view.dpus["d00000-0"].status.as_ref().unwrap().command_id.clone();
    h.write(move |t| {
        t.finish_command(&id, &done(CommandOutcome::Succeeded))
            .map(|_| ())
    });
    let before = h.store.stats();
    let (p, full) = h.pass(now, false);
    let after = h.store.stats();
    assert!(!full, "a command result is planned incrementally");
    assert_eq!(p.actions.len(), 1, "{:#?}", p.actions);
    assert_eq!(
        testing::phase(&h.store.view().dpus["d00000-0"]),
        DpuPhase::ConfigFwParameters
    );
    (
        p.stepped,
        after.rows_read - before.rows_read,
        after.transactions - before.transactions,
    )
}

#[test]
fn a_pass_for_one_command_result_does_the_same_work_at_100_and_2000_nodes() {
    let small = one_result(100);
    let large = one_result(2000);
    assert_eq!(small, large, "(Dpus stepped, store rows read, transactions)");
    assert_eq!(small.0, 1, "one Dpu on its node: one step");
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn node_status(
    h: &Harness,
    node: &str,
    f: impl FnOnce(&mut hostplane_proto::v1::NodeStatus) + Send + 'static,
) {
    h.modify(Kind::Node, node, move |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            f(n.status.get_or_insert_default());
        }
    });
}

/// One random change, as agents, operators and time make them.
fn random_change(h: &Harness, rng: &mut Rng, now: &mut i64, nodes: usize) {
    let node = format!("n{:05}", rng.below(nodes));
    match rng.below(10) {
        0..=3 => {
            let open = h.open_commands();
            if open.is_empty() {
                return;
            }
            let (node, c) = open[rng.below(open.len())].clone();
            let outcome = match rng.below(12) {
                0 => CommandOutcome::Failed,
                1 => CommandOutcome::Skipped,
                2 => CommandOutcome::Interrupted,
                _ => CommandOutcome::Succeeded,
            };
            let reboot = matches!(
                c.action,
                Some(hostplane_proto::v1::command::Action::RebootHost(_))
            );
            // An agent without a BMC skips a power cycle: the node waits for an external one.
            let outcome = match &c.action {
                Some(hostplane_proto::v1::command::Action::RebootHost(r))
                    if r.power_cycle && rng.below(3) == 0 =>
                {
                    CommandOutcome::Skipped
                }
                _ => outcome,
            };
            // An agent that applied firmware needing a power cycle mostly reports values pending
            // one (not when they were already in effect).
            let pending = matches!(
                &c.action,
                Some(hostplane_proto::v1::command::Action::ConfigFwParameters(x))
                    if x.host_power_cycle_required
            ) && outcome == CommandOutcome::Succeeded
                && rng.below(4) > 0;
            let result = CommandResult {
                power_cycle_required: pending,
                ..done(outcome)
            };
            let boot = format!("boot-{}", rng.next());
            h.write(move |t| {
                t.finish_command(&c.id, &result)?;
                if reboot
                    && outcome == CommandOutcome::Succeeded
                    && let Some(mut r) = t.get(Kind::Node, &node)?
                {
                    if let Some(resource::Kind::Node(n)) = &mut r.kind {
                        n.status.get_or_insert_default().boot_id = boot;
                    }
                    t.update(r)?;
                }
                Ok(())
            });
        }
        4 => {
            let reachable = rng.below(3) > 0;
            // A Hello may report no inventory, or another model: it changes no Dpu's power cycle.
            let inventory = match rng.below(3) {
                0 => Some(hostplane_proto::v1::Inventory::default()),
                1 => Some(hostplane_proto::v1::Inventory {
                    rshims: vec![hostplane_proto::v1::RshimInfo {
                        name: "rshim0".into(),
                        dev_info: "BlueField-3(Rev 1)".into(),
                        ..Default::default()
                    }],
                }),
                _ => None,
            };
            node_status(h, &node, move |s| {
                s.reachable = reachable;
                if let Some(inv) = inventory {
                    s.inventory = Some(inv);
                }
            });
        }
        5 => {
            let at = *now;
            node_status(h, &node, move |s| {
                s.maintenance_approved = true;
                s.maintenance_approved_at_ms = at;
            });
        }
        6 => {
            let at = *now + 1;
            let kind = if rng.below(2) == 0 {
                hostplane_proto::v1::RebootKind::Reboot
            } else {
                hostplane_proto::v1::RebootKind::PowerCycle
            };
            node_status(h, &node, move |s| {
                s.rebooted_at_ms = at;
                s.last_reboot_kind = kind as i32;
            });
        }
        7 => {
            // Reprovision a Dpu.
            let names: Vec<String> = h.store.view().dpus.keys().cloned().collect();
            if names.is_empty() {
                return;
            }
            let at = *now;
            h.modify(Kind::Dpu, &names[rng.below(names.len())], move |r| {
                if let Some(resource::Kind::Dpu(d)) = &mut r.kind {
                    d.metadata.get_or_insert_default().deletion_requested_at_ms = at;
                }
            });
        }
        8 => {
            // A Device's status or rshim (not what decides ownership).
            let names: Vec<String> = h.store.view().devices.keys().cloned().collect();
            let rshim = format!("rshim{}", rng.below(4));
            h.modify(Kind::Device, &names[rng.below(names.len())], move |r| {
                if let Some(resource::Kind::Device(d)) = &mut r.kind {
                    d.spec.get_or_insert_default().rshim = rshim;
                }
            });
        }
        _ => *now += rng.below(90_000) as i64,
    }
}

#[test]
fn incremental_passes_decide_what_full_passes_decide_after_random_changes() {
    let mut cfg = FsmConfig {
        phase_timeouts: PhaseTimeouts::all(Duration::from_secs(120)),
        unreachable_grace: Duration::from_secs(30),
        ..FsmConfig::default()
    };
    cfg.phase_timeouts.pending = Duration::ZERO;
    let mut checked = 0;
    let (mut cycles, mut external) = (0, 0);
    for seed in 1..=40u64 {
        let nodes = 7;
        let effect = if seed % 2 == 0 {
            NodeEffect::Auto
        } else {
            NodeEffect::Hold
        };
        let max = 1 + (seed % 4) as u32;
        let mut h = Harness::new(fleet(nodes, 1 + (seed % 3) as usize, max, effect), cfg.clone());
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut now = 1_000_000_000;
        h.settle(now, true);
        for _ in 0..60 {
            for _ in 0..1 + rng.below(3) {
                random_change(&h, &mut rng, &mut now, nodes);
            }
            h.settle(now, true);
            // The power cycle paths were taken too.
            cycles += h
                .open_commands()
                .iter()
                .filter(|(_, c)| {
                    matches!(
                        c.action,
                        Some(hostplane_proto::v1::command::Action::RebootHost(
                            hostplane_proto::v1::RebootHost { power_cycle: true }
                        ))
                    )
                })
                .count();
            external += h
                .store
                .view()
                .dpus
                .values()
                .filter(|d| super::nicfw::external_power_cycle(d))
                .count();
        }
        checked += h.checked;
    }
    assert!(checked > 2000, "only {checked} incremental passes were checked");
    assert!(
        cycles > 0 && external > 0,
        "power cycles issued {cycles}, waiting for an external one {external}"
    );
}
