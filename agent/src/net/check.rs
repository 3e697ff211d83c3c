//! What is checked against the host before anything is changed. An apply is
//! all or nothing: a desired state that names something the host does not
//! have (a port, a route's dev), or that would take over something hostplane
//! did not create (an interface with a bridge's name, a port of someone
//! else's bridge, a route with the same destination and metric), is refused
//! as a whole with an error naming the Dpu and the field, and nothing is
//! changed.
//!
//! One exception, by necessity: the netdevs of VFs that the same apply
//! creates appear only once the VF count is written, so those ports are
//! checked right after the SR-IOV step and before any bridge, port, address
//! or route is changed.
use std::collections::BTreeMap;

use super::NetError;
use super::model::{Desired, PortRef};
use super::netlink::Snapshot;
use super::reconcile::owned;
use super::sysfs::Sysfs;

/// Every SR-IOV PF exists and can have the VFs asked for.
pub async fn preflight(sysfs: &Sysfs, desired: &Desired) -> Result<(), NetError> {
    let sysfs = sysfs.clone();
    let sriov = desired.sriov.clone();
    tokio::task::spawn_blocking(move || {
        for s in &sriov {
            sysfs
                .check_pf(&s.pf, s.num_vfs)
                .map_err(|reason| NetError::Invalid {
                    dpu: s.dpu.clone(),
                    field: format!("{}.pf", s.field),
                    reason,
                })?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| {
        Err(NetError::Port {
            reason: e.to_string(),
        })
    })
}

/// True when `p` is a VF that the desired SR-IOV counts create (its netdev
/// may not exist before the count is written).
fn created_by_this_apply(desired: &Desired, p: &PortRef) -> bool {
    match p {
        PortRef::Vf { pf, index } => desired.sriov.iter().any(|s| &s.pf == pf && s.num_vfs > *index),
        _ => false,
    }
}

/// Every reference of `desired` against the host as `snap` shows it, with
/// `ports` the interface each port reference resolved to. With
/// `vfs_pending` (before the VF counts are written, and in a dry run), a
/// missing VF port that the apply creates is let through.
pub fn references(
    desired: &Desired,
    snap: &Snapshot,
    ports: &BTreeMap<PortRef, Result<String, String>>,
    vfs_pending: bool,
) -> Result<(), NetError> {
    // interface name -> the field that uses it as a port
    let mut used: BTreeMap<&str, String> = BTreeMap::new();
    for b in desired.bridges.values() {
        let bad = |field: String, reason: String| NetError::Invalid {
            dpu: b.dpu.clone(),
            field,
            reason,
        };
        if let Some(l) = snap.link(&b.name)
            && !owned(l)
        {
            return Err(bad(
                format!("{}.name", b.field),
                format!(
                    "interface {} exists and was not created by hostplane; it is left untouched",
                    b.name
                ),
            ));
        }
        for (j, p) in b.ports.iter().enumerate() {
            let field = format!("{}.ports[{j}]", b.field);
            let skip = vfs_pending && created_by_this_apply(desired, p);
            let name = match ports.get(p) {
                Some(Ok(n)) => n.as_str(),
                Some(Err(reason)) if !skip => return Err(bad(field, format!("port {p}: {reason}"))),
                None if !skip => return Err(bad(field, format!("port {p} was not resolved"))),
                _ => continue,
            };
            let Some(l) = snap.link(name) else {
                if skip {
                    continue;
                }
                let what = if p.to_string() == name {
                    String::new()
                } else {
                    format!(" (port {p})")
                };
                return Err(bad(field, format!("no interface named {name}{what}")));
            };
            if l.is_bridge {
                return Err(bad(
                    field,
                    format!("{name} is a bridge; a bridge cannot be a port"),
                ));
            }
            if let Some(c) = l.controller.and_then(|c| snap.by_index(c))
                && !owned(c)
            {
                return Err(bad(
                    field,
                    format!(
                        "{name} is a port of {}, which hostplane did not create; it is left where it is",
                        c.name
                    ),
                ));
            }
            if let Some(other) = used.insert(name, field.clone()) {
                return Err(bad(field, format!("{name} is also {other}")));
            }
        }
    }
    for r in &desired.routes {
        let bad = |field: String, reason: String| NetError::Invalid {
            dpu: r.dpu.clone(),
            field: format!("{}.{field}", r.field),
            reason,
        };
        if let Some(dev) = &r.dev
            && snap.link(dev).is_none()
            && !desired.bridges.contains_key(dev)
        {
            return Err(bad("dev".into(), format!("no interface named {dev}")));
        }
        if let Some(k) = snap
            .foreign_routes
            .iter()
            .find(|k| (k.destination, k.metric) == r.key())
        {
            return Err(bad(
                "destination".into(),
                format!(
                    "the main table already has a route to {} with metric {} that hostplane did not add \
                     (protocol {}); it is left untouched",
                    k.destination, k.metric, k.protocol
                ),
            ));
        }
    }
    Ok(())
}
