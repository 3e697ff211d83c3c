//! What a reconcile pass decided, and how it is written: all of a pass's
//! actions in one store transaction. Each Dpu write re-checks the Dpu's
//! resource_version, so a decision made on a stale view is skipped (and made
//! again next pass) rather than written over someone else's change.
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

pub fn apply(t: &mut Txn<'_>, actions: Vec<Action>) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    for a in actions {
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
                let name = u
                    .dpu
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let cur = match get_dpu(t, &name)? {
                    Some(cur) if rv(&cur) == u.expected_rv => cur,
                    _ => {
                        out.conflicts += 1;
                        continue;
                    }
                };
                if network_phase(&cur) != network_phase(&u.dpu) {
                    // Its host network joins or leaves the node's desired state;
                    // a Ready Dpu that is deleted has no command to announce that.
                    t.touch_desired(&u.node)?;
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
                    t.touch_desired(node)?;
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
                t.touch_desired(&node)?;
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
