//! One Dpu's step through the state machine (see docs/state-machine.md).
//!
//! A step starts from the cached Dpu, evaluates its phase, and follows as many
//! transitions as the current facts allow (each one recorded in the history);
//! the result is one write that persists the transitions together with the
//! command the last one issues. The Dpu is only cloned when something changes.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use hostplane_proto::v1::{Dpu, DpuPhase, DpuStatus, NodeEffect, PhaseTransition};

use super::plan::CommandRows;

use super::FsmConfig;
use super::apply::DpuUpdate;
use super::commands::{command_for, rshim_of};
use super::util::{
    being_deleted, condition, holds_slot, is_command_phase, mid_install, needs_window, phase_of,
    set_condition,
};
use crate::store::View;

/// Marks the boot id in the history message of the transition into Rebooting.
pub const BOOT_ID_MARK: &str = "boot_id before reboot: ";
pub const COND_UNREACHABLE: &str = "NodeUnreachable";
pub const COND_REFERENCES: &str = "ReferencesResolved";
pub const COND_MAINTENANCE: &str = "MaintenanceApproved";
/// True while a Dpu in Rebooting waits for siblings on its node to finish installing.
pub const COND_REBOOT_HELD: &str = "RebootHeld";
/// True while a Dpu in NodeEffect waits for its node's due reboot before it starts installing.
pub const COND_REBOOT_PENDING: &str = "NodeRebootPending";

mod deadline;
mod phases;

static EMPTY_STATUS: LazyLock<DpuStatus> = LazyLock::new(DpuStatus::default);

/// Shared state of one pass's Dpu steps.
pub struct StepCtx<'a> {
    pub view: &'a View,
    /// The agent command rows the store holds.
    pub cmds: &'a dyn CommandRows,
    pub now: i64,
    pub cfg: &'a FsmConfig,
    /// Deployment -> Dpus holding a rollout slot, kept current as Dpus move.
    pub slots: HashMap<String, usize>,
    /// Node -> Dpus that need its maintenance window, kept current as Dpus move.
    pub window: HashMap<String, usize>,
    /// Nodes whose maintenance approval this pass clears.
    pub cleared: HashSet<String>,
    /// Node -> names of its Dpus mid-install (see `util::mid_install`), kept current as Dpus move.
    pub installing: HashMap<String, BTreeSet<String>>,
    /// Node -> names of its Dpus in Rebooting, kept current as Dpus move.
    pub rebooting: HashMap<String, BTreeSet<String>>,
    /// Node -> the id of its RebootHost command of this reboot round (open or succeeded; at most one
    /// per node): every Dpu of the node in Rebooting waits on it.
    pub reboot_cmd: HashMap<String, String>,
    /// Node -> when the agent reported its power-cycle RebootHost SUCCEEDED (the latest such
    /// result a Dpu of the node waits on), to record on the node.
    pub power_cycled: HashMap<String, i64>,
    /// The phase deadline of the Dpu stepped last (None: it has none), for the reconciler's
    /// deadline index.
    pub step_deadline: Option<i64>,
    /// Commands issued in this pass: not in the store yet, and without a result.
    pub issued: HashSet<String>,
}

/// Why a controller wants a Dpu deleted.
#[derive(Debug, Clone)]
pub struct Mark {
    pub reason: &'static str,
    pub message: String,
}

pub enum StepOut {
    Nothing,
    Update(Box<DpuUpdate>),
    Remove { name: String, expected_rv: u64 },
}

enum Next {
    Stay,
    Go {
        to: DpuPhase,
        reason: &'static str,
        message: String,
    },
    Remove,
}

struct Stepper<'a> {
    orig: &'a Dpu,
    work: Option<Dpu>,
    insert: Vec<hostplane_proto::v1::Command>,
    cancel: Option<String>,
    transitions: Vec<PhaseTransition>,
    mark: Option<&'a Mark>,
}

/// Keep a node -> Dpu names index current when a Dpu moves in or out of the phases it counts.
fn track(index: &mut HashMap<String, BTreeSet<String>>, node: &str, dpu: &str, [was, is]: [bool; 2]) {
    if was == is {
        return;
    }
    let set = index.entry(node.to_string()).or_default();
    if is {
        set.insert(dpu.to_string());
    } else {
        set.remove(dpu);
    }
}

/// Step one Dpu. `mark`: a controller asks for its deletion; `spec`: a new
/// (bfb, flavor) for a Dpu that has not started yet.
pub fn step(orig: &Dpu, mark: Option<&Mark>, spec: Option<(&str, &str)>, ctx: &mut StepCtx<'_>) -> StepOut {
    let mut s = Stepper {
        orig,
        work: None,
        insert: Vec::new(),
        cancel: None,
        transitions: Vec::new(),
        mark,
    };
    ctx.step_deadline = None;
    if mark.is_some() && !being_deleted(&orig.metadata) {
        s.w().metadata.get_or_insert_default().deletion_requested_at_ms = ctx.now;
    }
    if let Some((bfb, flavor)) = spec
        && matches!(s.phase(), DpuPhase::Initializing | DpuPhase::Pending)
    {
        let w = s.w();
        let sp = w.spec.get_or_insert_default();
        sp.bfb = bfb.into();
        sp.flavor = flavor.into();
        w.metadata.get_or_insert_default().generation += 1;
    }
    for _ in 0..32 {
        match s.evaluate(ctx) {
            Next::Remove => {
                return StepOut::Remove {
                    name: s.name().to_string(),
                    expected_rv: s.rv(),
                };
            }
            Next::Go { to, reason, message } => s.go(to, reason, message, ctx),
            Next::Stay => match s.check_deadline(ctx) {
                Some((reason, message)) => s.go(DpuPhase::Error, reason, message, ctx),
                None => break,
            },
        }
    }
    match s.work {
        None => StepOut::Nothing,
        Some(dpu) => {
            let node = dpu.spec.as_ref().map(|x| x.node.clone()).unwrap_or_default();
            StepOut::Update(Box::new(DpuUpdate {
                expected_rv: orig.metadata.as_ref().map(|m| m.resource_version).unwrap_or(0),
                dpu,
                node,
                insert: s.insert,
                cancel: s.cancel,
                transitions: s.transitions,
            }))
        }
    }
}

impl<'a> Stepper<'a> {
    fn cur(&self) -> &Dpu {
        self.work.as_ref().unwrap_or(self.orig)
    }
    fn w(&mut self) -> &mut Dpu {
        self.work.get_or_insert_with(|| self.orig.clone())
    }
    fn st(&self) -> &DpuStatus {
        self.cur().status.as_ref().unwrap_or(&EMPTY_STATUS)
    }
    fn phase(&self) -> DpuPhase {
        phase_of(self.st().phase)
    }
    fn name(&self) -> &str {
        self.orig.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
    }
    fn rv(&self) -> u64 {
        self.orig
            .metadata
            .as_ref()
            .map(|m| m.resource_version)
            .unwrap_or(0)
    }
    fn node(&self) -> String {
        self.cur()
            .spec
            .as_ref()
            .map(|s| s.node.clone())
            .unwrap_or_default()
    }
    fn deployment(&self) -> String {
        self.cur()
            .spec
            .as_ref()
            .map(|s| s.deployment.clone())
            .unwrap_or_default()
    }
    fn rshim(&self, ctx: &StepCtx<'_>) -> String {
        rshim_of(ctx.view, self.cur()).unwrap_or_else(|| "unknown rshim".into())
    }

    /// Set a condition, cloning the Dpu only when it changes.
    fn cond(&mut self, ty: &str, status: &str, reason: &str, message: &str, now: i64) {
        let mut probe = self.st().conditions.clone();
        if set_condition(&mut probe, ty, status, reason, message, now) {
            self.w().status.get_or_insert_default().conditions = probe;
        }
    }

    /// Phases that wait on the node's agent: they pause while it is Unreachable.
    fn waits_on_agent(&self) -> bool {
        let p = self.phase();
        is_command_phase(p)
            || p == DpuPhase::Pending
            || (p == DpuPhase::Rebooting
                && !self.st().command_id.is_empty()
                && !super::nicfw::external_power_cycle(self.cur()))
    }

    fn go(&mut self, to: DpuPhase, reason: &'static str, message: String, ctx: &mut StepCtx<'_>) {
        let from = self.phase();
        let name = self.name().to_string();
        let node = self.node();
        let deployment = self.deployment();
        if !self.st().command_id.is_empty() || to == DpuPhase::Deleting {
            self.cancel = Some(format!("dpu {name} left {}: {reason}", from.display_name()));
        }
        let limit = ctx.cfg.history_limit.max(1);
        let now = ctx.now;
        let w = self.w();
        let st = w.status.get_or_insert_default();
        st.phase = to as i32;
        st.phase_entered_at_ms = now;
        st.message = message.clone();
        st.command_id.clear();
        st.progress = None;
        let tr = PhaseTransition {
            from: from as i32,
            to: to as i32,
            reason: reason.into(),
            message,
            at_ms: now,
        };
        st.history.push(tr.clone());
        if st.history.len() > limit {
            let excess = st.history.len() - limit;
            st.history.drain(..excess);
        }
        self.transitions.push(tr);
        if holds_slot(from) != holds_slot(to) {
            let n = ctx.slots.entry(deployment).or_default();
            *n = if holds_slot(to) {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        }
        if needs_window(from) != needs_window(to) {
            let n = ctx.window.entry(node).or_default();
            *n = if needs_window(to) {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        }
        let node = self.node();
        track(&mut ctx.installing, &node, &name, [from, to].map(mid_install));
        track(
            &mut ctx.rebooting,
            &node,
            &name,
            [from, to].map(|p| p == DpuPhase::Rebooting),
        );
        if to == DpuPhase::Rebooting {
            // The host reboot is issued by `rebooting()`, once per node, when no sibling is mid-install.
            return;
        }
        self.issue(to, ctx);
    }

    /// Issue the command of phase `to` (if it has one) and record it on the Dpu.
    fn issue(&mut self, to: DpuPhase, ctx: &mut StepCtx<'_>) {
        match command_for(to, self.cur(), ctx.view, uuid::Uuid::new_v4().to_string()) {
            Ok(None) => {}
            Ok(Some(cmd)) => {
                self.w().status.get_or_insert_default().command_id = cmd.id.clone();
                ctx.issued.insert(cmd.id.clone());
                self.insert.push(cmd);
            }
            Err(msg) => {
                let msg = format!(
                    "cannot start {} on node {}: {msg}",
                    to.display_name(),
                    self.node()
                );
                self.go(DpuPhase::Error, "InvalidSpec", msg, ctx);
            }
        }
    }

    fn evaluate(&mut self, ctx: &mut StepCtx<'_>) -> Next {
        let phase = self.phase();
        if being_deleted(&self.cur().metadata) && phase != DpuPhase::Deleting {
            let (reason, message) = match self.mark {
                Some(m) => (m.reason, m.message.clone()),
                None => (
                    "DeletionRequested",
                    "deletion or reprovision requested".to_string(),
                ),
            };
            return Next::Go {
                to: DpuPhase::Deleting,
                reason,
                message,
            };
        }
        let node_name = self.node();
        let node = ctx.view.nodes.get(&node_name);
        let reachable = node.and_then(|n| n.status.as_ref()).is_some_and(|s| s.reachable);
        let seen = node
            .and_then(|n| n.status.as_ref())
            .is_some_and(|s| s.last_seen_ms > 0 || !s.boot_id.is_empty());
        self.track_reachability(reachable, seen, &node_name, ctx.now);
        match phase {
            DpuPhase::Deleting => {
                // Persisted as Deleting (and its commands withdrawn) first; removed next pass.
                if phase_of(self.orig.status.as_ref().map(|s| s.phase).unwrap_or(0)) == DpuPhase::Deleting {
                    Next::Remove
                } else {
                    Next::Stay
                }
            }
            DpuPhase::Ready | DpuPhase::Error => Next::Stay,
            DpuPhase::Unspecified | DpuPhase::Initializing => self.initializing(ctx),
            DpuPhase::Pending => self.pending(reachable, ctx),
            DpuPhase::NodeEffect => self.node_effect(ctx),
            DpuPhase::Rebooting => self.rebooting(ctx),
            DpuPhase::NodeEffectRemoval => {
                if node
                    .and_then(|n| n.status.as_ref())
                    .is_some_and(|s| s.maintenance_approved)
                    && ctx.window.get(&node_name).copied().unwrap_or(0) == 0
                {
                    ctx.cleared.insert(node_name.clone());
                }
                let spec = self.cur().spec.clone().unwrap_or_default();
                let message = format!("provisioned with bfb {} and flavor {}", spec.bfb, spec.flavor);
                Next::Go {
                    to: DpuPhase::Ready,
                    reason: "Provisioned",
                    message,
                }
            }
            p if is_command_phase(p) => self.command_phase(p, ctx),
            _ => Next::Stay,
        }
    }

    /// `seen`: the node's agent connected at least once.
    fn track_reachability(&mut self, reachable: bool, seen: bool, node: &str, now: i64) {
        let waiting = self.waits_on_agent();
        let set = condition(&self.st().conditions, COND_UNREACHABLE).is_some_and(|c| c.status == "True");
        if waiting && !reachable {
            let phase = self.phase().display_name();
            let (reason, msg) = if seen {
                let msg = format!(
                    "node {node}'s agent is unreachable (lease expired); {phase} waits for it and does not time \
                     out while it is away"
                );
                ("LeaseExpired", msg)
            } else {
                let msg = format!("no agent has connected for node {node} yet; {phase} waits for it");
                ("NeverConnected", msg)
            };
            self.cond(COND_UNREACHABLE, "True", reason, &msg, now);
        } else if set {
            let msg = format!("node {node} is reachable again");
            self.cond(COND_UNREACHABLE, "False", "Reachable", &msg, now);
        }
    }

    fn initializing(&mut self, ctx: &mut StepCtx<'_>) -> Next {
        let spec = self.cur().spec.clone().unwrap_or_default();
        let c = ctx.view;
        let missing = if !c.nodes.contains_key(&spec.node) {
            Some(format!("node {:?} does not exist", spec.node))
        } else if !c.devices.contains_key(&spec.device) {
            Some(format!("device {:?} does not exist", spec.device))
        } else if !c.bfbs.contains_key(&spec.bfb) {
            Some(format!(
                "bfb {:?} does not exist; create it or point deployment {} at another",
                spec.bfb, spec.deployment
            ))
        } else if !c.flavors.contains_key(&spec.flavor) {
            Some(format!(
                "flavor {:?} does not exist; create it or point deployment {} at another",
                spec.flavor, spec.deployment
            ))
        } else {
            None
        };
        if let Some(msg) = missing {
            self.cond(COND_REFERENCES, "False", "MissingReference", &msg, ctx.now);
            if self.st().message != msg {
                self.w().status.get_or_insert_default().message = msg;
            }
            return Next::Stay;
        }
        if condition(&self.st().conditions, COND_REFERENCES).is_some() {
            self.cond(
                COND_REFERENCES,
                "True",
                "Resolved",
                "bfb, flavor, device and node exist",
                ctx.now,
            );
        }
        let message = format!(
            "created by deployment {} for device {} on node {}; waiting for a rollout slot",
            spec.deployment, spec.device, spec.node
        );
        Next::Go {
            to: DpuPhase::Pending,
            reason: "Initialized",
            message,
        }
    }

    fn pending(&mut self, reachable: bool, ctx: &mut StepCtx<'_>) -> Next {
        if !reachable {
            return Next::Stay;
        }
        let dep = self.deployment();
        let max = ctx
            .view
            .deployments
            .get(&dep)
            .and_then(|d| d.spec.as_ref())
            .map(|s| s.max_unavailable.max(1) as usize)
            .unwrap_or(1);
        let busy = ctx.slots.get(&dep).copied().unwrap_or(0);
        if busy >= max {
            return Next::Stay;
        }
        let message = format!(
            "rollout slot granted ({} of {max} in use for deployment {dep})",
            busy + 1
        );
        Next::Go {
            to: DpuPhase::NodeEffect,
            reason: "RolloutSlot",
            message,
        }
    }

    fn node_effect(&mut self, ctx: &mut StepCtx<'_>) -> Next {
        let node_name = self.node();
        let auto = ctx
            .view
            .deployments
            .get(&self.deployment())
            .and_then(|d| d.spec.as_ref())
            .is_some_and(|s| s.node_effect == NodeEffect::Auto as i32);
        if auto {
            if self.node_reboot_due(&node_name, ctx) {
                return Next::Stay;
            }
            let message = format!("node effect AUTO: proceeding on node {node_name} without approval");
            return Next::Go {
                to: DpuPhase::InitializeInterface,
                reason: "NodeEffectAuto",
                message,
            };
        }
        let approved = !ctx.cleared.contains(&node_name)
            && ctx
                .view
                .nodes
                .get(&node_name)
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.maintenance_approved);
        if approved {
            if self.node_reboot_due(&node_name, ctx) {
                return Next::Stay;
            }
            let msg = format!("maintenance approved on node {node_name}");
            self.cond(COND_MAINTENANCE, "True", "Approved", &msg, ctx.now);
            return Next::Go {
                to: DpuPhase::InitializeInterface,
                reason: "MaintenanceApproved",
                message: msg,
            };
        }
        let msg = format!(
            "waiting for maintenance approval on node {node_name}: deployment {} holds its dpus \
             (node_effect HOLD) until an operator or admin, or the upstream system, approves \
             maintenance of the node (ApproveMaintenance, or `hostplanectl node approve {node_name}`)",
            self.deployment()
        );
        self.cond(COND_MAINTENANCE, "False", "WaitingForApproval", &msg, ctx.now);
        // The status message says what the Dpu waits for now, not how it got here.
        if self.st().message != msg {
            self.w().status.get_or_insert_default().message = msg;
        }
        Next::Stay
    }

    /// A Dpu does not start installing while its node's reboot is due (a sibling waits in Rebooting
    /// and none is mid-install): the host may be rebooted at any moment. It starts after the reboot.
    fn node_reboot_due(&mut self, node: &str, ctx: &StepCtx<'_>) -> bool {
        if let Some(waiting) = ctx.rebooting.get(node).filter(|s| !s.is_empty())
            && ctx.installing.get(node).is_none_or(|s| s.is_empty())
        {
            let msg = format!(
                "node {node} is about to be rebooted for {} (installed, in Rebooting); this Dpu starts \
                 installing after that reboot",
                phases::names_list(waiting)
            );
            self.cond(COND_REBOOT_PENDING, "True", "NodeRebootDue", &msg, ctx.now);
            return true;
        }
        if condition(&self.st().conditions, COND_REBOOT_PENDING).is_some_and(|c| c.status == "True") {
            let msg = format!("node {node} has no reboot pending");
            self.cond(COND_REBOOT_PENDING, "False", "NoRebootDue", &msg, ctx.now);
        }
        false
    }
}
