//! Delete, graceful and forced.
//!
//! Graceful (the default): Dpus that depend on the object are marked
//! (`metadata.deletion_requested_at_ms`) and the reconciler takes them down
//! (phase Deleting, agent commands cancelled, row removed). Objects with no
//! Dpu left go at once; the others are marked and removed by the reconciler
//! once their last Dpu is gone. Forced: the object and every dependent go at
//! once, and the Dpus' open agent commands are cancelled.
use hostplane_proto::v1::{
    DeleteRequest, DeleteResponse, Deployment, Device, Dpu, Kind, Node, Resource, resource,
};

use super::crud::check_version;
use super::error::ApiError;
use super::typed::{self, Typed};
use super::{AdminApi, audit, validate};
use crate::store::{Txn, now_ms};

impl AdminApi {
    pub(super) async fn delete_resource(&self, req: DeleteRequest) -> Result<DeleteResponse, ApiError> {
        let noun = Kind::try_from(req.kind).map(Kind::noun).unwrap_or("unknown");
        let name = req.name.clone();
        let res = match (
            validate::kind("kind", req.kind),
            validate::name("name", &req.name),
        ) {
            (Ok(kind), Ok(())) => {
                self.store
                    .write(move |t| delete(t, kind, &req.name, req.force, req.resource_version))
                    .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let outcome = match &res {
            Ok(r) if r.deleted => Ok("deleted"),
            Ok(_) => Ok("deletion requested"),
            Err(e) => Err(e),
        };
        audit("delete", noun, &name, outcome);
        res
    }
}

fn delete(
    t: &mut Txn<'_>,
    kind: Kind,
    name: &str,
    force: bool,
    sent_version: u64,
) -> Result<DeleteResponse, ApiError> {
    let stored = typed::fetch_any(t, kind, name)?;
    check_version(&stored, sent_version)?;
    match kind {
        Kind::Bfb | Kind::Flavor => {
            ensure_unused(t, kind, name)?;
            t.delete(kind, name)?;
            Ok(gone())
        }
        // Nothing depends on them: the policy engine recomputes without them.
        Kind::Topology | Kind::PowerPolicy => {
            t.delete(kind, name)?;
            Ok(gone())
        }
        _ if force => force_delete(t, kind, name),
        _ => graceful(t, kind, name),
    }
}

fn gone() -> DeleteResponse {
    DeleteResponse {
        deleted: true,
        resource: None,
    }
}

fn pending(r: Resource) -> DeleteResponse {
    DeleteResponse {
        deleted: false,
        resource: Some(r),
    }
}

/// Bfbs and Flavors go only when no Deployment or Dpu uses them.
fn ensure_unused(t: &Txn<'_>, kind: Kind, name: &str) -> Result<(), ApiError> {
    let in_use = |user_kind, user: &str| ApiError::InUse {
        kind: kind.noun(),
        name: name.into(),
        user_kind,
        user: user.into(),
    };
    for d in typed::list::<Deployment>(t)? {
        let s = d.spec.clone().unwrap_or_default();
        if (kind == Kind::Bfb && s.bfb == name) || (kind == Kind::Flavor && s.flavor == name) {
            return Err(in_use("deployment", d.name()));
        }
    }
    for d in typed::list::<Dpu>(t)? {
        let s = d.spec.clone().unwrap_or_default();
        if (kind == Kind::Bfb && s.bfb == name) || (kind == Kind::Flavor && s.flavor == name) {
            return Err(in_use("dpu", d.name()));
        }
    }
    Ok(())
}

fn force_delete(t: &mut Txn<'_>, kind: Kind, name: &str) -> Result<DeleteResponse, ApiError> {
    let why = format!("{} {name} was force-deleted", kind.noun());
    for dpu in typed::dependent_dpus(t, kind, name)? {
        t.cancel_commands_for_dpu(dpu.name(), &why)?;
        t.delete(Kind::Dpu, dpu.name())?;
    }
    if kind == Kind::Node {
        for d in typed::devices_on(t, name)? {
            t.delete(Kind::Device, d.name())?;
        }
    }
    // A Dpu was removed with the dependents above.
    if kind != Kind::Dpu {
        t.delete(kind, name)?;
    }
    Ok(gone())
}

/// Set `deletion_requested_at_ms` unless it is set already.
pub(super) fn mark<T: Typed>(t: &mut Txn<'_>, mut x: T, now: i64) -> Result<Resource, ApiError> {
    if x.being_deleted() {
        return Ok(x.into());
    }
    x.meta_mut().deletion_requested_at_ms = now;
    Ok(t.update(x.into())?)
}

fn graceful(t: &mut Txn<'_>, kind: Kind, name: &str) -> Result<DeleteResponse, ApiError> {
    let now = now_ms();
    let dpus = typed::dependent_dpus(t, kind, name)?;
    let mut marked = Vec::new();
    for dpu in dpus {
        marked.push(mark(t, dpu, now)?);
    }
    let dpu_devices: Vec<String> = marked
        .iter()
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::Dpu(d)) => d.spec.as_ref().map(|s| s.device.clone()),
            _ => None,
        })
        .collect();
    match kind {
        Kind::Dpu => Ok(pending(marked.pop().unwrap_or_default())),
        Kind::Device | Kind::Deployment if marked.is_empty() => {
            t.delete(kind, name)?;
            Ok(gone())
        }
        Kind::Device => Ok(pending(mark(t, typed::fetch::<Device>(t, name)?, now)?)),
        Kind::Deployment => Ok(pending(mark(t, typed::fetch::<Deployment>(t, name)?, now)?)),
        Kind::Node => {
            let mut left = 0;
            for d in typed::devices_on(t, name)? {
                if dpu_devices.iter().any(|n| n == d.name()) {
                    mark(t, d, now)?;
                    left += 1;
                } else {
                    t.delete(Kind::Device, d.name())?;
                }
            }
            // Dpus on the node without a Device here still hold the node.
            if left == 0 && marked.is_empty() {
                t.delete(kind, name)?;
                return Ok(gone());
            }
            Ok(pending(mark(t, typed::fetch::<Node>(t, name)?, now)?))
        }
        // Bfb and Flavor are handled by the caller; validate::kind refuses Unspecified.
        Kind::Bfb | Kind::Flavor | Kind::Topology | Kind::PowerPolicy | Kind::Unspecified => Ok(gone()),
    }
}
