//! A reconcile pass over what changed: the same decisions as a full pass
//! ([`super::plan::plan`]) for a view in which only `Work` changed since the
//! last pass, without walking the fleet.
//!
//! A Dpu's step reads its own object, its node, its Device, its Deployment,
//! the command rows of its node and the pass's context (its Deployment's
//! rollout slots, its node's maintenance window, siblings mid-install or in
//! Rebooting, the node's RebootHost). So a pass steps, in name order as a full
//! pass does: the Dpus that changed or whose phase deadline is due, every Dpu
//! of a node that changed (or whose commands did) or that holds one of those,
//! and, as the pass goes, the later siblings of a Dpu that moves and the first
//! reachable Pending Dpus of a Deployment while it has a free slot. The
//! context comes from the view's indexes (slots from `count_in_phase`, a
//! node's Dpus from `dpus_on_node`), ownership of a Device from the
//! Deployments (few), Deployment status from the view's counts plus what the
//! pass moved. Changes that decide ownership (a Device's labels, node or
//! deletion, a Node's or Deployment's existence or spec, Bfbs and Flavors)
//! and a rollout in progress are left to a full pass (see `dirty`).
use std::collections::{BTreeSet, HashMap, HashSet};

use hostplane_proto::v1::{Dpu, DpuPhase};

use super::FsmConfig;
use super::apply::Action;
use super::dirty::{Aggregates, Work};
use super::dpu::StepCtx;
use super::nicfw::{needs_power_cycle_now, waits_for_mark_rebooted};
use super::plan::{
    CommandRows, Plan, Stepped, Tally, by_age, count_on_node, deployment_status, matching, new_ctx, new_dpu,
    node_flags, orphan_reason, step_one, tally,
};
use super::util::{being_deleted, holds_slot, phase_of};
use crate::store::View;

fn phase(d: &Dpu) -> DpuPhase {
    phase_of(d.status.as_ref().map(|s| s.phase).unwrap_or(0))
}

fn node_of(d: &Dpu) -> &str {
    d.spec.as_ref().map(|s| s.node.as_str()).unwrap_or("")
}

fn deployment_of(d: &Dpu) -> &str {
    d.spec.as_ref().map(|s| s.deployment.as_str()).unwrap_or("")
}

/// Every phase a Dpu can be in.
fn all_phases() -> impl Iterator<Item = DpuPhase> {
    (0..=DpuPhase::Error as i32).filter_map(|p| DpuPhase::try_from(p).ok())
}

/// The Dpus of `node` (the view does not index an empty node: those are found by a scan).
fn on_node<'a>(view: &'a View, node: &'a str) -> Box<dyn Iterator<Item = &'a Dpu> + 'a> {
    if node.is_empty() {
        Box::new(
            view.dpus
                .values()
                .filter(|d| d.spec.is_some() && node_of(d).is_empty()),
        )
    } else {
        Box::new(view.dpus_on_node(node))
    }
}

fn max_unavailable(view: &View, dep: &str) -> usize {
    view.deployments
        .get(dep)
        .and_then(|d| d.spec.as_ref())
        .map(|s| s.max_unavailable.max(1) as usize)
        .unwrap_or(1)
}

fn reachable(view: &View, node: &str) -> bool {
    view.nodes
        .get(node)
        .and_then(|n| n.status.as_ref())
        .is_some_and(|s| s.reachable)
}

/// The pass's context, filled per node and per Deployment the first time a Dpu of it is stepped
/// (before any step can have changed it), as a full pass fills it for all.
struct Lazy<'a> {
    view: &'a View,
    nodes: HashSet<&'a str>,
    deps: HashSet<&'a str>,
    /// Node -> whether none of its Dpus was mid-install before the pass.
    none_installing: HashMap<&'a str, bool>,
}

impl<'a> Lazy<'a> {
    fn node(&mut self, ctx: &mut StepCtx<'_>, node: &'a str) {
        if !self.nodes.insert(node) {
            return;
        }
        for d in on_node(self.view, node) {
            count_on_node(ctx, d);
        }
        self.none_installing
            .insert(node, ctx.installing.get(node).is_none_or(|s| s.is_empty()));
    }

    fn deployment(&mut self, ctx: &mut StepCtx<'_>, dep: &'a str) {
        if !self.deps.insert(dep) {
            return;
        }
        let held: usize = all_phases()
            .filter(|p| holds_slot(*p))
            .map(|p| self.view.count_in_phase(dep, p))
            .sum();
        if held > 0 {
            ctx.slots.insert(dep.to_string(), held);
        }
    }
}

/// Plan a pass for `work` (what changed since the last pass) on `view`. `agg`: per-Deployment
/// counts the view does not index (installed bfb and flavor).
pub fn plan_changes<C: CommandRows>(
    view: &View,
    cmds: &C,
    now: i64,
    cfg: &FsmConfig,
    work: &Work,
    agg: &Aggregates,
) -> Plan {
    let deps = by_age(view);
    let owner = |device: &str| matching(view, &deps, device).first().copied();
    let mut actions = Vec::new();

    // Owned Devices without a Dpu: those whose Dpu was removed, and Devices that changed.
    let removed_names: BTreeSet<&str> = work.removed.keys().map(String::as_str).collect();
    let devices: BTreeSet<&str> = removed_names
        .iter()
        .copied()
        .chain(work.devices.iter().map(String::as_str))
        .collect();
    for &device in &devices {
        if view.dpus.contains_key(device) {
            continue;
        }
        if let Some(dep) = owner(device) {
            let node = view.devices[device]
                .spec
                .as_ref()
                .map(|s| s.node.as_str())
                .unwrap_or("");
            actions.push(Action::CreateDpu(Box::new(new_dpu(device, node, dep, now))));
        }
    }

    // What the pass starts from: changed Dpus, due ones, and every Dpu of their nodes and of
    // changed nodes.
    let mut nodes: BTreeSet<&str> = work.nodes.iter().map(String::as_str).collect();
    let mut slot_deps: BTreeSet<&str> = BTreeSet::new();
    let mut status_deps: BTreeSet<&str> = work.deployments.iter().map(String::as_str).collect();
    for (node, dep) in work.removed.values() {
        nodes.insert(node);
        slot_deps.insert(dep);
        status_deps.insert(dep);
    }
    for name in work.dpus.iter().chain(&work.due) {
        if let Some(d) = view.dpus.get(name) {
            nodes.insert(node_of(d));
            slot_deps.insert(deployment_of(d));
            status_deps.insert(deployment_of(d));
        }
    }
    for name in &work.devices {
        if let Some(d) = view.dpus.get(name) {
            nodes.insert(node_of(d));
        }
        if let Some(n) = view.devices.get(name).and_then(|d| d.spec.as_ref()) {
            nodes.insert(n.node.as_str());
        }
    }
    let mut queue: BTreeSet<&str> = BTreeSet::new();
    for &n in &nodes {
        queue.extend(on_node(view, n).filter_map(|d| d.metadata.as_ref().map(|m| m.name.as_str())));
    }
    for name in work.dpus.iter().chain(&work.due) {
        if let Some((k, _)) = view.dpus.get_key_value(name) {
            queue.insert(k);
        }
    }

    let mut ctx = new_ctx(view, cmds, now, cfg);
    let mut lazy = Lazy {
        view,
        nodes: HashSet::new(),
        deps: HashSet::new(),
        none_installing: HashMap::new(),
    };
    let mut acc = Stepped::default();
    let mut stepped: BTreeSet<&str> = BTreeSet::new();
    // Deployment -> its reachable Pending Dpus (name order) and how far the pass got in them.
    let mut pending: HashMap<&str, (Vec<&str>, usize)> = HashMap::new();
    let mut pos: &str = "";
    loop {
        // The next Dpu in name order: queued, or the next reachable Pending one of a Deployment
        // with a free slot now (it takes the slot: a full pass steps it; others it leaves alone).
        let mut next = queue.first().copied();
        for &dep in &slot_deps {
            lazy.deployment(&mut ctx, dep);
            if ctx.slots.get(dep).copied().unwrap_or(0) >= max_unavailable(view, dep) {
                continue;
            }
            let (list, at) = pending.entry(dep).or_insert_with(|| {
                let list = view
                    .dpus_in_phase(DpuPhase::Pending)
                    .filter(|d| deployment_of(d) == dep && reachable(view, node_of(d)))
                    .filter_map(|d| d.metadata.as_ref().map(|m| m.name.as_str()))
                    .collect();
                (list, 0)
            });
            while *at < list.len() && (list[*at] <= pos || stepped.contains(list[*at])) {
                *at += 1;
            }
            if let Some(&c) = list.get(*at)
                && next.is_none_or(|n| c < n)
            {
                next = Some(c);
            }
        }
        let Some(name) = next else { break };
        queue.remove(name);
        if !stepped.insert(name) {
            continue;
        }
        pos = name;
        let d = &view.dpus[name];
        let (node, dep) = (node_of(d), deployment_of(d));
        lazy.node(&mut ctx, node);
        lazy.deployment(&mut ctx, dep);
        tally(&mut acc.tallies, view, name, d, -1);
        let (mut mark, mut new_spec) = (None, None);
        if !being_deleted(&d.metadata) {
            let device = d.spec.as_ref().map(|s| s.device.as_str()).unwrap_or("");
            let of_device = owner(device);
            mark = orphan_reason(d, view, of_device);
            // A full pass looks the Dpu's name up as a Device (the same one, for the Dpus it creates).
            let of_name = if device == name { of_device } else { owner(name) };
            if mark.is_none()
                && let (Some(o), Some(sp)) = (of_name, d.spec.as_ref())
                && let Some(ds) = o.spec.as_ref()
                && matches!(phase(d), DpuPhase::Initializing | DpuPhase::Pending)
                && (sp.bfb != ds.bfb || sp.flavor != ds.flavor)
            {
                new_spec = Some((ds.bfb.as_str(), ds.flavor.as_str()));
            }
        }
        if step_one(d, mark.as_ref(), new_spec, &mut ctx, &mut acc, &mut actions) {
            // What it changed in the context reaches the siblings stepped after it, and the
            // Pending Dpus after it of its Deployment.
            queue.extend(
                on_node(view, node)
                    .filter_map(|s| s.metadata.as_ref().map(|m| m.name.as_str()))
                    .filter(|s| *s > name && !stepped.contains(s)),
            );
            slot_deps.insert(dep);
            nodes.insert(node);
            status_deps.insert(dep);
        }
    }

    // Node flags, for the nodes a stepped Dpu is on. The Dpus of a node that a pass did not step
    // count as stored, against the node's context before the pass.
    let mut flag_nodes: BTreeSet<&str> = nodes;
    flag_nodes.extend(stepped.iter().map(|n| node_of(&view.dpus[*n])));
    for node in flag_nodes {
        let Some(n) = view.nodes.get(node) else { continue };
        lazy.node(&mut ctx, node);
        if lazy.none_installing.get(node).copied().unwrap_or(true) {
            for d in on_node(view, node).filter(|d| {
                waits_for_mark_rebooted(view, d)
                    && !stepped.contains(d.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""))
            }) {
                acc.waiting.insert(node.to_string(), true);
                if needs_power_cycle_now(d) {
                    acc.power_cycle.insert(node.to_string());
                }
            }
        }
        actions.extend(node_flags(node, n, &acc, &ctx));
    }

    // Deployment status from the view's counts, moved by what the steps changed.
    status_deps.extend(stepped.iter().map(|n| deployment_of(&view.dpus[*n])));
    for dep_name in status_deps {
        let Some(dep) = view.deployments.get(dep_name) else {
            continue;
        };
        let delta = acc.tallies.remove(dep_name).unwrap_or_default();
        let ds = dep.spec.clone().unwrap_or_default();
        let t = Tally {
            dpus: all_phases()
                .map(|p| view.count_in_phase(dep_name, p) as i64)
                .sum::<i64>()
                + delta.dpus,
            ready: view.count_in_phase(dep_name, DpuPhase::Ready) as i64 + delta.ready,
            updated: agg.installed(dep_name, &ds.bfb, &ds.flavor) as i64 + delta.updated,
            failed: view.count_in_phase(dep_name, DpuPhase::Error) as i64 + delta.failed,
            failed_names: Vec::new(),
        };
        actions.extend(deployment_status(dep_name, dep, &t, None, false, now));
    }

    // Remove gracefully deleted Devices whose Dpu is gone, and Deployments without Dpus.
    for &device in &devices {
        if let Some(dev) = view.devices.get(device)
            && being_deleted(&dev.metadata)
            && !view.dpus.contains_key(device)
        {
            actions.push(Action::RemoveDevice {
                name: device.to_string(),
            });
        }
    }
    for (name, dep) in &view.deployments {
        if being_deleted(&dep.metadata) && view.dpus_of_deployment(name).next().is_none() {
            actions.push(Action::RemoveDeployment { name: name.clone() });
        }
    }
    Plan {
        actions,
        latencies: acc.latencies,
        deadlines: acc.deadlines,
        stepped: acc.stepped,
    }
}
