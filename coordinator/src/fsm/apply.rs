//! What a reconcile pass decided, and how it is written: all of a pass's
//! actions in one store transaction. Each Dpu write re-checks the Dpu's
//! resource_version, so a decision made on a stale view is skipped (and made
//! again next pass) rather than written over someone else's change.
use std::collections::{HashMap, HashSet};

use hostplane_proto::v1::{Command, DeploymentStatus, Dpu, Kind, PhaseTransition, Resource, resource};

use crate::store::{StoreError, Txn};

use super::util::{being_deleted, network_phase};

/// One Dpu write: the new object, the commands entering its phase issues and
/// the transitions it made (persisted together, in one transaction).
#[derive(Debug, Clone, PartialEq)]
pub struct DpuUpdate {
    pub expected_rv: u64,
    pub dpu: Dpu,
    pub node: String,
    /// Agent commands to add to the node's desired state.
    pub insert: Vec<Command>,
    /// Withdraw the Dpu's open commands first, with this reason.
    pub cancel: Option<String>,
    pub transitions: Vec<PhaseTransition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateDpu(Box<Dpu>),
    UpdateDpu(Box<DpuUpdate>),
    RemoveDpu {
        name: String,
        expected_rv: u64,
    },
    PatchNode {
        name: String,
        clear_maintenance: bool,
        waiting_for_reboot: Option<bool>,
        power_cycle_required: Option<bool>,
        /// The agent power-cycled the host (its RebootHost SUCCEEDED at this time): recorded as
        /// the node's last reboot.
        power_cycled_at_ms: Option<i64>,
    },
    DeploymentStatus {
        name: String,
        status: DeploymentStatus,
    },
    RemoveDevice {
        name: String,
    },
    RemoveNode {
        name: String,
    },
    RemoveDeployment {
        name: String,
    },
    /// A new desired-state version for the node (a listed host network changed).
    TouchDesired {
        node: String,
    },
}

/// What a pass wrote.
#[derive(Debug, Default)]
pub struct Applied {
    /// (dpu, transition) in order, for the log.
    pub transitions: Vec<(String, PhaseTransition)>,
    pub created: Vec<String>,
    pub removed: Vec<(Kind, String)>,
    /// Writes skipped because the object changed under the pass.
    pub conflicts: usize,
    pub writes: usize,
}

fn get_dpu(t: &Txn<'_>, name: &str) -> Result<Option<Dpu>, StoreError> {
    Ok(match t.get(Kind::Dpu, name)? {
        Some(Resource {
            kind: Some(resource::Kind::Dpu(d)),
        }) => Some(d),
        _ => None,
    })
}

fn rv(d: &Dpu) -> u64 {
    d.metadata.as_ref().map(|m| m.resource_version).unwrap_or(0)
}

/// The current stored Dpu of each `UpdateDpu` (by action index) whose write goes ahead; the
/// others are conflicts. An update is skipped when its resource_version changed under the pass,
/// and so is every update whose Dpu would point at a command that a skipped update was to insert
/// (the siblings that joined a node's RebootHost issued by a Dpu that changed meanwhile): a Dpu is
/// never written pointing at a command that is not in the store, whatever the order of actions.
/// A command id that no update of this pass inserts must already be stored.
fn decide_updates(t: &Txn<'_>, actions: &[Action]) -> Result<HashMap<usize, Dpu>, StoreError> {
    let mut go: HashMap<usize, Dpu> = HashMap::new();
    let mut skipped: Vec<usize> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let Action::UpdateDpu(u) = a else { continue };
        match get_dpu(t, &name_of(&u.dpu))? {
            Some(cur) if rv(&cur) == u.expected_rv => {
                go.insert(i, cur);
            }
            _ => skipped.push(i),
        }
    }
    let inserted_by = |i: &usize| -> Vec<&str> {
        match &actions[*i] {
            Action::UpdateDpu(u) => u.insert.iter().map(|c| c.id.as_str()).collect(),
            _ => Vec::new(),
        }
    };
    // Skipping an update withdraws the commands it inserts: repeat until nothing more is lost.
    let mut lost: HashSet<&str> = skipped.iter().flat_map(inserted_by).collect();
    loop {
        let more: Vec<usize> = go
            .iter()
            .filter(|(i, cur)| {
                let Action::UpdateDpu(u) = &actions[**i] else {
                    return false;
                };
                let id = command_of(&u.dpu);
                !id.is_empty()
                    && id != command_of(cur)
                    && !u.insert.iter().any(|c| c.id == id)
                    && lost.contains(id)
            })
            .map(|(i, _)| *i)
            .collect();
        if more.is_empty() {
            break;
        }
        for i in more {
            go.remove(&i);
            lost.extend(inserted_by(&i));
        }
    }
    // A joined command that this pass does not insert was read from an older view: it must exist.
    let inserted: HashSet<&str> = go.keys().flat_map(inserted_by).collect();
    let mut missing = Vec::new();
    for (i, cur) in &go {
        let Action::UpdateDpu(u) = &actions[*i] else {
            continue;
        };
        let id = command_of(&u.dpu);
        if !id.is_empty() && id != command_of(cur) && !inserted.contains(id) && t.command(id)?.is_none() {
            tracing::warn!(dpu = %name_of(&u.dpu), command = id, "not written: its command is not in the store");
            missing.push(*i);
        }
    }
    for i in missing {
        go.remove(&i);
    }
    Ok(go)
}

fn name_of(d: &Dpu) -> String {
    d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn command_of(d: &Dpu) -> &str {
    d.status.as_ref().map(|s| s.command_id.as_str()).unwrap_or("")
}

pub fn apply(t: &mut Txn<'_>, actions: Vec<Action>) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    let mut current = decide_updates(t, &actions)?;
    for (i, a) in actions.into_iter().enumerate() {
        match a {
            Action::CreateDpu(d) => {
                let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                if t.get(Kind::Dpu, &name)?.is_some() {
                    out.conflicts += 1;
                    continue;
                }
                t.insert((*d).into())?;
                out.created.push(name);
                out.writes += 1;
            }
            Action::UpdateDpu(u) => {
                let name = name_of(&u.dpu);
                let Some(cur) = current.remove(&i) else {
                    out.conflicts += 1;
                    continue;
                };
                if network_phase(&cur) != network_phase(&u.dpu) {
                    // Its host network joins or leaves the node's desired state;
                    // a Ready Dpu that is deleted has no command to announce that.
                    crate::desired::touch(t, &u.node, crate::desired::Why::Network)?;
                }
                if let Some(why) = &u.cancel {
                    t.cancel_commands_for_dpu(&name, why)?;
                }
                for c in &u.insert {
                    t.insert_command(&u.node, c)?;
                }
                t.update(u.dpu.into())?;
                out.transitions
                    .extend(u.transitions.into_iter().map(|tr| (name.clone(), tr)));
                out.writes += 1;
            }
            Action::RemoveDpu { name, expected_rv } => {
                let cur = match get_dpu(t, &name)? {
                    Some(cur) if rv(&cur) == expected_rv => cur,
                    _ => {
                        out.conflicts += 1;
                        continue;
                    }
                };
                if network_phase(&cur)
                    && let Some(node) = cur.spec.as_ref().map(|s| s.node.as_str())
                {
                    crate::desired::touch(t, node, crate::desired::Why::DpuRemoved)?;
                }
                t.cancel_commands_for_dpu(&name, &format!("dpu {name} was deleted"))?;
                t.delete(Kind::Dpu, &name)?;
                out.removed.push((Kind::Dpu, name));
                out.writes += 1;
            }
            Action::PatchNode {
                name,
                clear_maintenance,
                waiting_for_reboot,
                power_cycle_required,
                power_cycled_at_ms,
            } => {
                let Some(Resource {
                    kind: Some(resource::Kind::Node(mut n)),
                }) = t.get(Kind::Node, &name)?
                else {
                    continue;
                };
                let before = n.status.clone();
                let st = n.status.get_or_insert_default();
                if clear_maintenance {
                    st.maintenance_approved = false;
                    st.maintenance_approved_at_ms = 0;
                }
                if let Some(w) = waiting_for_reboot {
                    st.waiting_for_reboot = w;
                }
                if let Some(c) = power_cycle_required {
                    st.power_cycle_required = c;
                }
                if let Some(at) = power_cycled_at_ms
                    && st.rebooted_at_ms < at
                {
                    st.rebooted_at_ms = at;
                    st.last_reboot_kind = hostplane_proto::v1::RebootKind::PowerCycle as i32;
                }
                if n.status != before {
                    t.update(n.into())?;
                    out.writes += 1;
                }
            }
            Action::DeploymentStatus { name, status } => {
                let Some(Resource {
                    kind: Some(resource::Kind::Deployment(mut d)),
                }) = t.get(Kind::Deployment, &name)?
                else {
                    continue;
                };
                if d.status.as_ref() != Some(&status) {
                    d.status = Some(status);
                    t.update(d.into())?;
                    out.writes += 1;
                }
            }
            Action::RemoveDevice { name } => {
                let Some(dev) = t.get(Kind::Device, &name)? else {
                    continue;
                };
                if !being_deleted(&dev.metadata().cloned()) || t.get(Kind::Dpu, &name)?.is_some() {
                    out.conflicts += 1;
                    continue;
                }
                t.delete(Kind::Device, &name)?;
                out.removed.push((Kind::Device, name));
                out.writes += 1;
            }
            Action::RemoveNode { name } => {
                let Some(node) = t.get(Kind::Node, &name)? else {
                    continue;
                };
                let has_devices = t.list(Kind::Device)?.iter().any(|r| match &r.kind {
                    Some(resource::Kind::Device(d)) => d.spec.as_ref().is_some_and(|s| s.node == name),
                    _ => false,
                });
                if !being_deleted(&node.metadata().cloned()) || has_devices {
                    out.conflicts += 1;
                    continue;
                }
                t.delete(Kind::Node, &name)?;
                out.removed.push((Kind::Node, name));
                out.writes += 1;
            }
            Action::TouchDesired { node } => {
                crate::desired::touch(t, &node, crate::desired::Why::Reconciler)?;
            }
            Action::RemoveDeployment { name } => {
                let Some(dep) = t.get(Kind::Deployment, &name)? else {
                    continue;
                };
                let has_dpus = t.list(Kind::Dpu)?.iter().any(|r| match &r.kind {
                    Some(resource::Kind::Dpu(d)) => d.spec.as_ref().is_some_and(|s| s.deployment == name),
                    _ => false,
                });
                if !being_deleted(&dep.metadata().cloned()) || has_dpus {
                    out.conflicts += 1;
                    continue;
                }
                t.delete(Kind::Deployment, &name)?;
                out.removed.push((Kind::Deployment, name));
                out.writes += 1;
            }
        }
    }
    Ok(out)
}
