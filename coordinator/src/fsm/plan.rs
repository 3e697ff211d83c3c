//! One reconcile pass over the cached view: the Deployment controller (which
//! Device gets which Dpu), rollout, every Dpu's step, Deployment and Node
//! status, and removal of gracefully deleted objects. Pure: it returns the
//! actions; `apply` writes them.
use std::collections::{BTreeMap, HashMap, HashSet};

use hostplane_proto::v1::{
    Deployment, DeploymentStatus, Dpu, DpuPhase, DpuSpec, DpuStatus, ObjectMeta, PhaseTransition,
};

use crate::store::CommandRow;

use super::FsmConfig;
use super::apply::Action;
use super::dpu::{Mark, StepCtx, StepOut, step};
use super::nicfw::{needs_power_cycle_now, waits_for_mark_rebooted};
use super::util::{
    being_deleted, condition, holds_slot, mid_install, needs_window, phase_of, selector_matches,
    set_condition,
};
use crate::store::View;

pub const COND_CONFLICT: &str = "DeviceConflict";
pub const COND_ROLLOUT: &str = "RolloutProgressing";

pub struct Plan {
    pub actions: Vec<Action>,
    /// Seconds from a command's result to the Dpu's next command, for each command issued.
    pub latencies: Vec<f64>,
    /// Each stepped Dpu's phase deadline after the pass (None: none, or removed).
    pub deadlines: Vec<(String, Option<i64>)>,
    /// How many Dpus the pass stepped.
    pub stepped: usize,
}

fn created(d: &Deployment) -> (i64, &str) {
    let m = d.metadata.as_ref();
    (
        m.map(|m| m.created_at_ms).unwrap_or(0),
        m.map(|m| m.name.as_str()).unwrap_or(""),
    )
}

fn spec(d: &Dpu) -> DpuSpec {
    d.spec.clone().unwrap_or_default()
}

fn phase(d: &Dpu) -> DpuPhase {
    phase_of(d.status.as_ref().map(|s| s.phase).unwrap_or(0))
}

/// Which Deployment owns each Device (the oldest matching one), and the
/// devices each younger Deployment also matches.
struct Ownership<'a> {
    owner: BTreeMap<&'a str, &'a Deployment>,
    conflicts: HashMap<&'a str, Vec<(&'a str, &'a str)>>,
}

/// The live Deployments, oldest first: the first whose selector matches a Device owns it.
pub(super) fn by_age(view: &View) -> Vec<&Deployment> {
    let mut deps: Vec<&Deployment> = view
        .deployments
        .values()
        .filter(|d| !being_deleted(&d.metadata))
        .collect();
    deps.sort_by(|a, b| created(a).cmp(&created(b)));
    deps
}

/// The Deployments (of `deps`, oldest first) whose selector matches Device `name`, when the
/// Device can be owned at all (it exists, is not being deleted, and neither is its node).
pub(super) fn matching<'a>(view: &'a View, deps: &[&'a Deployment], name: &str) -> Vec<&'a Deployment> {
    let Some(dev) = view.devices.get(name) else {
        return Vec::new();
    };
    if being_deleted(&dev.metadata) {
        return Vec::new();
    }
    let node = dev.spec.as_ref().map(|s| s.node.as_str()).unwrap_or("");
    if view.nodes.get(node).is_none_or(|n| being_deleted(&n.metadata)) {
        return Vec::new();
    }
    let labels = dev.metadata.as_ref().map(|m| &m.labels);
    deps.iter()
        .copied()
        .filter(|dep| {
            let sel = dep.spec.as_ref().map(|s| &s.device_selector);
            match (sel, labels) {
                (Some(sel), Some(labels)) => selector_matches(sel, labels),
                (Some(sel), None) => sel.is_empty(),
                (None, _) => true,
            }
        })
        .collect()
}

fn ownership(view: &View) -> Ownership<'_> {
    let deps = by_age(view);
    let mut own = Ownership {
        owner: BTreeMap::new(),
        conflicts: HashMap::new(),
    };
    for name in view.devices.keys() {
        let m = matching(view, &deps, name);
        let Some((first, younger)) = m.split_first() else {
            continue;
        };
        own.owner.insert(name, first);
        for dep in younger {
            own.conflicts
                .entry(created(dep).1)
                .or_default()
                .push((name, created(first).1));
        }
    }
    own
}

pub(super) fn new_dpu(device: &str, node: &str, dep: &Deployment, now: i64) -> Dpu {
    let ds = dep.spec.clone().unwrap_or_default();
    let dep_name = created(dep).1.to_string();
    let message = format!("created by deployment {dep_name} for device {device}");
    Dpu {
        metadata: Some(ObjectMeta {
            name: device.into(),
            ..Default::default()
        }),
        spec: Some(DpuSpec {
            device: device.into(),
            node: node.into(),
            deployment: dep_name,
            bfb: ds.bfb,
            flavor: ds.flavor,
        }),
        status: Some(DpuStatus {
            phase: DpuPhase::Initializing as i32,
            phase_entered_at_ms: now,
            message: message.clone(),
            history: vec![PhaseTransition {
                from: DpuPhase::Unspecified as i32,
                to: DpuPhase::Initializing as i32,
                reason: "Created".into(),
                message,
                at_ms: now,
            }],
            ..Default::default()
        }),
    }
}

/// Why a Dpu no longer belongs where it is, if it does not.
pub(super) fn orphan_reason(d: &Dpu, view: &View, owner: Option<&Deployment>) -> Option<Mark> {
    let sp = spec(d);
    let (reason, message) = match owner {
        Some(o) if created(o).1 == sp.deployment => return None,
        Some(o) => (
            "OwnerChanged",
            format!(
                "device {} now belongs to older deployment {}",
                sp.device,
                created(o).1
            ),
        ),
        None => match view.devices.get(&sp.device) {
            None => ("DeviceGone", format!("device {} no longer exists", sp.device)),
            Some(dev) if being_deleted(&dev.metadata) => {
                ("DeviceDeleted", format!("device {} is being deleted", sp.device))
            }
            Some(dev)
                if view
                    .nodes
                    .get(dev.spec.as_ref().map(|s| s.node.as_str()).unwrap_or(""))
                    .is_none_or(|n| being_deleted(&n.metadata)) =>
            {
                (
                    "NodeDeleted",
                    format!(
                        "node {} of device {} is gone or being deleted",
                        sp.node, sp.device
                    ),
                )
            }
            Some(_) => match view.deployments.get(&sp.deployment) {
                Some(dep) if !being_deleted(&dep.metadata) => (
                    "NoLongerSelected",
                    format!(
                        "device {} no longer matches deployment {}'s device_selector",
                        sp.device, sp.deployment
                    ),
                ),
                _ => (
                    "DeploymentDeleted",
                    format!("deployment {} is being deleted", sp.deployment),
                ),
            },
        },
    };
    Some(Mark { reason, message })
}

#[derive(Default)]
pub(super) struct Tally {
    pub dpus: i64,
    pub ready: i64,
    pub updated: i64,
    pub failed: i64,
    /// Its failed Dpus in name order (a full pass only).
    pub failed_names: Vec<String>,
}

/// Where a pass reads the agent command rows: the store's view (a test may give a map).
pub trait CommandRows {
    /// The row, None when the store does not hold it.
    fn row(&self, id: &str) -> Option<&CommandRow>;
}

impl CommandRows for View {
    fn row(&self, id: &str) -> Option<&CommandRow> {
        self.command(id)
    }
}

#[cfg(test)]
impl CommandRows for HashMap<String, Option<CommandRow>> {
    fn row(&self, id: &str) -> Option<&CommandRow> {
        self.get(id).and_then(Option::as_ref)
    }
}

pub fn plan<C: CommandRows>(view: &View, cmds: &C, now: i64, cfg: &FsmConfig) -> Plan {
    let own = ownership(view);
    let mut actions = Vec::new();
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    let mut specs: HashMap<&str, (&str, &str)> = HashMap::new();

    // Dpus that lost their Device or Deployment, or that have not started and
    // can take the Deployment's new spec in place.
    for (name, d) in &view.dpus {
        if being_deleted(&d.metadata) {
            continue;
        }
        if let Some(m) = orphan_reason(d, view, own.owner.get(spec(d).device.as_str()).copied()) {
            marks.insert(name, m);
        } else if let (Some(dep), Some(sp)) = (own.owner.get(name.as_str()), d.spec.as_ref())
            && let Some(ds) = dep.spec.as_ref()
            && matches!(phase(d), DpuPhase::Initializing | DpuPhase::Pending)
            && (sp.bfb != ds.bfb || sp.flavor != ds.flavor)
        {
            specs.insert(name, (&ds.bfb, &ds.flavor));
        }
    }

    // Create missing Dpus; roll outdated Ready ones within max_unavailable.
    let mut unavailable: HashMap<&str, usize> = HashMap::new();
    let mut outdated: HashMap<&str, Vec<&str>> = HashMap::new();
    for (&device, &dep) in &own.owner {
        let dep_name = created(dep).1;
        let ds = dep.spec.clone().unwrap_or_default();
        match view.dpus.get(device) {
            None => {
                let node = view.devices[device]
                    .spec
                    .as_ref()
                    .map(|s| s.node.as_str())
                    .unwrap_or("");
                actions.push(Action::CreateDpu(Box::new(new_dpu(device, node, dep, now))));
                *unavailable.entry(dep_name).or_default() += 1;
            }
            Some(d) if spec(d).deployment != dep_name => *unavailable.entry(dep_name).or_default() += 1,
            Some(d) => {
                let sp = spec(d);
                let ready = phase(d) == DpuPhase::Ready;
                if !ready || being_deleted(&d.metadata) || marks.contains_key(device) {
                    *unavailable.entry(dep_name).or_default() += 1;
                } else if sp.bfb != ds.bfb || sp.flavor != ds.flavor {
                    outdated.entry(dep_name).or_default().push(device);
                }
            }
        }
    }
    let mut blocked: HashMap<&str, bool> = HashMap::new();
    for (dep_name, names) in &outdated {
        let dep = &view.deployments[*dep_name];
        let ds = dep.spec.clone().unwrap_or_default();
        let max = ds.max_unavailable.max(1) as usize;
        let budget = max.saturating_sub(unavailable.get(dep_name).copied().unwrap_or(0));
        blocked.insert(dep_name, budget == 0);
        for name in names.iter().take(budget) {
            let message = format!(
                "rollout: deployment {dep_name} now uses bfb {} and flavor {}; reprovisioning (max_unavailable {max})",
                ds.bfb, ds.flavor
            );
            marks.insert(
                name,
                Mark {
                    reason: "Rollout",
                    message,
                },
            );
        }
    }

    // Step every Dpu.
    let mut ctx = new_ctx(view, cmds, now, cfg);
    for d in view.dpus.values() {
        if let Some(sp) = d.spec.as_ref() {
            if holds_slot(phase(d)) {
                *ctx.slots.entry(sp.deployment.clone()).or_default() += 1;
            }
            count_on_node(&mut ctx, d);
        }
    }
    let mut out = Stepped::default();
    for (name, d) in &view.dpus {
        step_one(
            d,
            marks.get(name.as_str()),
            specs.get(name.as_str()).copied(),
            &mut ctx,
            &mut out,
            &mut actions,
        );
    }

    // Node flags.
    for (name, n) in &view.nodes {
        actions.extend(node_flags(name, n, &out, &ctx));
    }

    // Deployment status.
    for (name, dep) in &view.deployments {
        let t = out.tallies.remove(name).unwrap_or_default();
        let conflicts = Some(own.conflicts.get(name.as_str()));
        let blocked = blocked.get(name.as_str()).copied().unwrap_or(false);
        actions.extend(deployment_status(name, dep, &t, conflicts, blocked, now));
    }

    // Remove gracefully deleted objects whose dependents are gone.
    for (name, dev) in &view.devices {
        if being_deleted(&dev.metadata) && !view.dpus.contains_key(name) {
            actions.push(Action::RemoveDevice { name: name.clone() });
        }
    }
    for (name, n) in &view.nodes {
        if being_deleted(&n.metadata)
            && !view
                .devices
                .values()
                .any(|d| d.spec.as_ref().is_some_and(|s| &s.node == name))
        {
            actions.push(Action::RemoveNode { name: name.clone() });
        }
    }
    for (name, dep) in &view.deployments {
        if being_deleted(&dep.metadata) && !view.dpus.values().any(|d| &spec(d).deployment == name) {
            actions.push(Action::RemoveDeployment { name: name.clone() });
        }
    }
    Plan {
        actions,
        latencies: out.latencies,
        deadlines: out.deadlines,
        stepped: out.stepped,
    }
}

pub(super) fn new_ctx<'a>(
    view: &'a View,
    cmds: &'a dyn CommandRows,
    now: i64,
    cfg: &'a FsmConfig,
) -> StepCtx<'a> {
    StepCtx {
        view,
        cmds,
        now,
        cfg,
        slots: HashMap::new(),
        window: HashMap::new(),
        cleared: Default::default(),
        installing: HashMap::new(),
        rebooting: HashMap::new(),
        reboot_cmd: HashMap::new(),
        power_cycled: HashMap::new(),
        step_deadline: None,
        issued: Default::default(),
    }
}

/// Count Dpu `d` (as stored, before the pass) in its node's entries of the pass's context.
pub(super) fn count_on_node(ctx: &mut StepCtx<'_>, d: &Dpu) {
    let (p, Some(sp)) = (phase(d), d.spec.as_ref()) else {
        return;
    };
    if needs_window(p) {
        *ctx.window.entry(sp.node.clone()).or_default() += 1;
    }
    let name = || d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    if mid_install(p) {
        ctx.installing.entry(sp.node.clone()).or_default().insert(name());
    }
    if p == DpuPhase::Rebooting {
        ctx.rebooting.entry(sp.node.clone()).or_default().insert(name());
        // The node's RebootHost of this round (a Dpu released this pass joins it, even when it
        // already failed: the Dpus waiting on a failed reboot go to Error together).
        let id = d.status.as_ref().map(|s| s.command_id.as_str()).unwrap_or("");
        if !id.is_empty() {
            ctx.reboot_cmd
                .entry(sp.node.clone())
                .or_insert_with(|| id.to_string());
        }
    }
}

/// What the steps of a pass found, besides their actions.
#[derive(Default)]
pub(super) struct Stepped {
    pub latencies: Vec<f64>,
    /// Deployment -> its Dpus after the steps (those stepped, or all in a full pass).
    pub tallies: HashMap<String, Tally>,
    /// Nodes with a Dpu in Rebooting waiting for an external reboot.
    pub waiting: HashMap<String, bool>,
    /// Nodes among `waiting` where a waiting Dpu needs a power cycle.
    pub power_cycle: HashSet<String>,
    pub deadlines: Vec<(String, Option<i64>)>,
    pub stepped: usize,
}

/// Step one Dpu: its action, and what it adds to the tallies. Returns true when it changes.
pub(super) fn step_one(
    d: &Dpu,
    mark: Option<&Mark>,
    new_spec: Option<(&str, &str)>,
    ctx: &mut StepCtx<'_>,
    acc: &mut Stepped,
    actions: &mut Vec<Action>,
) -> bool {
    let view = ctx.view;
    let name = d.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    let out = step(d, mark, new_spec, ctx);
    acc.stepped += 1;
    let after = match &out {
        StepOut::Remove { .. } => None,
        StepOut::Update(u) => Some(&u.dpu),
        StepOut::Nothing => Some(d),
    };
    acc.deadlines
        .push((name.to_string(), after.and(ctx.step_deadline)));
    if let Some(after) = after {
        let node = after.spec.as_ref().map(|s| s.node.as_str()).unwrap_or("");
        // An external reboot is asked for only once no sibling is mid-install.
        if waits_for_mark_rebooted(view, after) && ctx.installing.get(node).is_none_or(|s| s.is_empty()) {
            acc.waiting.insert(node.to_string(), true);
            if needs_power_cycle_now(after) {
                acc.power_cycle.insert(node.to_string());
            }
        }
        tally(&mut acc.tallies, view, name, after, 1);
    }
    match out {
        StepOut::Nothing => false,
        StepOut::Update(u) => {
            if !u.insert.is_empty()
                && let Some(prev) = d.status.as_ref().map(|s| s.command_id.as_str())
                && let Some(r) = ctx.cmds.row(prev).and_then(|row| row.result.as_ref())
                && r.finished_at_ms > 0
            {
                acc.latencies
                    .push((ctx.now - r.finished_at_ms).max(0) as f64 / 1000.0);
            }
            actions.push(Action::UpdateDpu(u));
            true
        }
        StepOut::Remove { name, expected_rv } => {
            actions.push(Action::RemoveDpu { name, expected_rv });
            true
        }
    }
}

/// Add (`sign` 1) or take away (-1) Dpu `d` from its Deployment's tally.
pub(super) fn tally(tallies: &mut HashMap<String, Tally>, view: &View, name: &str, d: &Dpu, sign: i64) {
    let p = phase(d);
    let dep = d.spec.as_ref().map(|s| s.deployment.as_str()).unwrap_or("");
    let t = tallies.entry(dep.to_string()).or_default();
    t.dpus += sign;
    t.ready += sign * i64::from(p == DpuPhase::Ready);
    if p == DpuPhase::Error {
        t.failed += sign;
        if sign > 0 {
            t.failed_names.push(name.to_string());
        }
    }
    if let (Some(ds), Some(st)) = (
        view.deployments.get(dep).and_then(|x| x.spec.as_ref()),
        d.status.as_ref(),
    ) {
        t.updated += sign * i64::from(st.installed_bfb == ds.bfb && st.installed_flavor == ds.flavor);
    }
}

/// The node's flags after the pass, when they change. All its Dpus must have been stepped.
pub(super) fn node_flags(
    name: &str,
    n: &hostplane_proto::v1::Node,
    acc: &Stepped,
    ctx: &StepCtx<'_>,
) -> Option<Action> {
    // Read in place: a node's status holds its inventory and conditions, not worth a clone per pass.
    let (approved, was_waiting, was_cycle, rebooted_at_ms) = n
        .status
        .as_ref()
        .map(|s| {
            (
                s.maintenance_approved,
                s.waiting_for_reboot,
                s.power_cycle_required,
                s.rebooted_at_ms,
            )
        })
        .unwrap_or_default();
    let wait = acc.waiting.get(name).copied().unwrap_or(false);
    let cycle = wait && acc.power_cycle.contains(name);
    let clear = ctx.cleared.contains(name) && approved;
    // A power cycle the agent reported, not recorded yet.
    let power_cycled = ctx
        .power_cycled
        .get(name)
        .copied()
        .filter(|at| rebooted_at_ms < *at);
    (clear || was_waiting != wait || was_cycle != cycle || power_cycled.is_some()).then(|| {
        Action::PatchNode {
            name: name.to_string(),
            clear_maintenance: clear,
            waiting_for_reboot: (was_waiting != wait).then_some(wait),
            power_cycle_required: (was_cycle != cycle).then_some(cycle),
            power_cycled_at_ms: power_cycled,
        }
    })
}

/// The Deployment's status from its tally, when it changes. `conflicts`: the devices an older
/// Deployment owns (None when the pass did not look: the condition stays as it is).
pub(super) fn deployment_status(
    name: &str,
    dep: &Deployment,
    t: &Tally,
    conflicts: Option<Option<&Vec<(&str, &str)>>>,
    blocked: bool,
    now: i64,
) -> Option<Action> {
    let old = dep.status.clone().unwrap_or_default();
    let mut conds = old.conditions.clone();
    match conflicts {
        Some(Some(list)) => {
            let shown: Vec<String> = list
                .iter()
                .take(5)
                .map(|(dev, o)| format!("{dev} (owned by {o})"))
                .collect();
            let more = if list.len() > 5 {
                format!(" and {} more", list.len() - 5)
            } else {
                String::new()
            };
            let msg = format!(
                "devices also matched by an older deployment, which owns them: {}{more}; narrow device_selector",
                shown.join(", ")
            );
            set_condition(
                &mut conds,
                COND_CONFLICT,
                "True",
                "MatchedByOlderDeployment",
                &msg,
                now,
            );
        }
        Some(None) if condition(&conds, COND_CONFLICT).is_some() => {
            set_condition(
                &mut conds,
                COND_CONFLICT,
                "False",
                "NoConflict",
                "no device is contested",
                now,
            );
        }
        _ => {}
    }
    if blocked && t.failed > 0 {
        let msg = format!(
            "rollout paused: failed dpus count as unavailable ({}); reprovision or delete them",
            t.failed_names
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        set_condition(
            &mut conds,
            COND_ROLLOUT,
            "False",
            "BlockedByFailedDpus",
            &msg,
            now,
        );
    } else if condition(&conds, COND_ROLLOUT).is_some() {
        set_condition(
            &mut conds,
            COND_ROLLOUT,
            "True",
            "Progressing",
            "rollout is not blocked",
            now,
        );
    }
    let count = |n: i64| n.max(0) as u32;
    let status = DeploymentStatus {
        dpus: count(t.dpus),
        ready: count(t.ready),
        updated: count(t.updated),
        failed: count(t.failed),
        conditions: conds,
    };
    (status != old).then(|| Action::DeploymentStatus {
        name: name.to_string(),
        status,
    })
}
