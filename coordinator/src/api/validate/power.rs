//! Validation of Topology and PowerPolicy objects.
//!
//! The structural checks (one object alone) are `hostplane_proto::power`'s,
//! shared with `hostplanectl topology validate`; the checks against stored
//! objects ([`topology_refs`], [`policy_refs`]) run inside the create or
//! update transaction, so a refused call changes nothing.
use hostplane_proto::power::{self as shared, Invalid};
use hostplane_proto::v1::{Deployment, Node, PowerPolicy, Topology, TopologyLevel, resource};
use hostplane_proto::v1::{Kind, ObjectMeta};

use super::super::crud::must_exist;
use super::super::error::ApiError;
use super::{self as validate, Result};
use crate::store::Txn;

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::invalid(e.field, e.reason)
    }
}

fn metadata(p: &str, m: Option<&ObjectMeta>) -> Result {
    let m = m.ok_or_else(|| ApiError::invalid(format!("{p}.metadata"), "required"))?;
    validate::name(&format!("{p}.metadata.name"), &m.name)?;
    validate::labels(&format!("{p}.metadata.labels"), &m.labels)
}

/// Metadata and the tree's structure (see `hostplane_proto::power::Tree::build`).
pub fn topology(p: &str, t: &Topology) -> Result {
    metadata(p, t.metadata.as_ref())?;
    shared::check_topology(p, &t.spec.clone().unwrap_or_default())?;
    Ok(())
}

/// Metadata and the policy's structure (see `hostplane_proto::power::check_policy`).
pub fn power_policy(p: &str, x: &PowerPolicy) -> Result {
    metadata(p, x.metadata.as_ref())?;
    shared::check_policy(p, &x.spec.clone().unwrap_or_default())?;
    Ok(())
}

/// Every NODE element names an existing Node, and no node is in another Topology.
pub(in crate::api) fn topology_refs(t: &Txn<'_>, x: &Topology, p: &str) -> Result {
    let spec = x.spec.clone().unwrap_or_default();
    let name = x.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    let nodes: Vec<(usize, &str)> = spec
        .elements
        .iter()
        .enumerate()
        .filter(|(_, e)| e.level() == TopologyLevel::Node)
        .map(|(i, e)| (i, e.name.as_str()))
        .collect();
    for &(i, node) in &nodes {
        must_exist::<Node>(t, &format!("{p}.spec.elements[{i}].name"), node)?;
    }
    for other in t.list(Kind::Topology)? {
        let Some(resource::Kind::Topology(o)) = other.kind else {
            continue;
        };
        let other_name = o.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        if other_name == name {
            continue;
        }
        let theirs = o.spec.unwrap_or_default();
        for &(i, node) in &nodes {
            let taken = theirs
                .elements
                .iter()
                .any(|e| e.level() == TopologyLevel::Node && e.name == node);
            if taken {
                return Err(ApiError::NodeInOtherTopology {
                    field: format!("{p}.spec.elements[{i}].name"),
                    node: node.to_string(),
                    other: other_name,
                });
            }
        }
    }
    Ok(())
}

/// The policy's target nodes and deployments exist.
pub(in crate::api) fn policy_refs(t: &Txn<'_>, x: &PowerPolicy, p: &str) -> Result {
    let spec = x.spec.clone().unwrap_or_default();
    for (i, n) in spec.nodes.iter().enumerate() {
        must_exist::<Node>(t, &format!("{p}.spec.nodes[{i}]"), n)?;
    }
    for (i, d) in spec.deployments.iter().enumerate() {
        must_exist::<Deployment>(t, &format!("{p}.spec.deployments[{i}]"), d)?;
    }
    Ok(())
}
