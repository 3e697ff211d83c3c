//! Create, Get and Update (List is in list.rs, update masks in mask.rs).
//! Checks that need only the request run before the transaction; checks
//! against stored objects run inside the one transaction that writes, so a
//! refused call changes nothing.
use hostplane_proto::v1::{
    Bfb, CreateRequest, Deployment, DeploymentStatus, Device, DeviceStatus, Flavor, GetRequest, Kind, Node,
    NodeStatus, Resource, UpdateRequest, resource,
};

use super::error::ApiError;
use super::mask::{self, Mask};
use super::typed::{self, Typed};
use super::{AdminApi, audit, validate, validate_power};
use crate::store::Txn;

impl AdminApi {
    pub(super) async fn create_resource(&self, req: CreateRequest) -> Result<Resource, ApiError> {
        let r = req.resource.unwrap_or_default();
        let (kind, name) = (r.kind().noun(), r.name().to_string());
        let res = match prepare_create("", r) {
            Ok(r) => self.store.write(move |t| create(t, r, "")).await,
            Err(e) => Err(e),
        };
        audit("create", kind, &name, res.as_ref().map(|_| "created"));
        res
    }

    pub(super) async fn get_resource(&self, req: GetRequest) -> Result<Resource, ApiError> {
        let kind = validate::kind("kind", req.kind)?;
        validate::name("name", &req.name)?;
        self.store
            .read_snapshot(move |t| typed::fetch_any(t, kind, &req.name))
            .await
    }

    pub(super) async fn update_resource(&self, req: UpdateRequest) -> Result<Resource, ApiError> {
        let r = req.resource.unwrap_or_default();
        let (kind, name) = (r.kind().noun(), r.name().to_string());
        let res = match prepare_update(r, req.update_mask.as_ref()) {
            Ok((r, m)) => self.store.write(move |t| update(t, r, m)).await,
            Err(e) => Err(e),
        };
        let outcome = match &res {
            Ok((_, true)) => Ok("updated"),
            Ok((_, false)) => Ok("unchanged"),
            Err(e) => Err(e),
        };
        audit("update", kind, &name, outcome);
        res.map(|(r, _)| r)
    }
}

/// Validate a new object and reset what only the system writes: metadata
/// times and generation, and status (Nodes start unreachable, Devices absent).
pub(super) fn prepare_create(p: &str, mut r: Resource) -> Result<Resource, ApiError> {
    validate::resource(p, &r)?;
    let p = if p.is_empty() { r.kind().noun() } else { p };
    let m = r
        .metadata_mut()
        .ok_or_else(|| ApiError::invalid("resource", "required"))?;
    if m.resource_version != 0 {
        return Err(ApiError::invalid(
            format!("{p}.metadata.resource_version"),
            "must be 0 on create (the store assigns it)",
        ));
    }
    m.created_at_ms = 0;
    m.updated_at_ms = 0;
    m.deletion_requested_at_ms = 0;
    m.generation = 0;
    match &mut r.kind {
        Some(resource::Kind::Node(n)) => {
            n.spec.get_or_insert_default();
            n.status = Some(NodeStatus {
                reachable: false,
                ..Default::default()
            });
        }
        Some(resource::Kind::Device(d)) => {
            d.spec.get_or_insert_default();
            d.status = Some(DeviceStatus {
                present: false,
                ..Default::default()
            });
        }
        Some(resource::Kind::Bfb(b)) => {
            b.spec.get_or_insert_default();
        }
        Some(resource::Kind::Flavor(f)) => {
            f.spec.get_or_insert_default();
        }
        Some(resource::Kind::Deployment(d)) => {
            d.spec.get_or_insert_default();
            d.status = Some(DeploymentStatus::default());
        }
        Some(resource::Kind::Topology(x)) => {
            x.spec.get_or_insert_default();
            x.status = Some(Default::default());
        }
        Some(resource::Kind::PowerPolicy(x)) => {
            x.spec.get_or_insert_default();
            x.status = Some(Default::default());
        }
        // validate::resource refused these.
        Some(resource::Kind::Dpu(_)) | None => {}
    }
    Ok(r)
}

/// Insert a prepared object after checking it against the store.
pub(super) fn create(t: &mut Txn<'_>, r: Resource, p: &str) -> Result<Resource, ApiError> {
    let kind = r.kind();
    if t.get(kind, r.name())?.is_some() {
        return Err(ApiError::AlreadyExists {
            kind: kind.noun(),
            name: r.name().into(),
        });
    }
    check_references(t, &r, p)?;
    Ok(t.insert(r)?)
}

/// References must exist and unique fields must be unique.
fn check_references(t: &Txn<'_>, r: &Resource, p: &str) -> Result<(), ApiError> {
    let p = if p.is_empty() { r.kind().noun() } else { p };
    match &r.kind {
        Some(resource::Kind::Device(d)) => check_device(t, d, p),
        Some(resource::Kind::Deployment(d)) => {
            let spec = d.spec.clone().unwrap_or_default();
            must_exist::<Bfb>(t, &format!("{p}.spec.bfb"), &spec.bfb)?;
            must_exist::<Flavor>(t, &format!("{p}.spec.flavor"), &spec.flavor)?;
            Ok(())
        }
        Some(resource::Kind::Topology(x)) => validate_power::topology_refs(t, x, p),
        Some(resource::Kind::PowerPolicy(x)) => validate_power::policy_refs(t, x, p),
        _ => Ok(()),
    }
}

pub(super) fn must_exist<T: Typed>(t: &Txn<'_>, field: &str, name: &str) -> Result<T, ApiError> {
    typed::get::<T>(t, name)?
        .ok_or_else(|| ApiError::invalid(field, format!("{} {name:?} does not exist", T::KIND.noun())))
}

fn check_device(t: &Txn<'_>, d: &Device, p: &str) -> Result<(), ApiError> {
    let spec = d.spec.clone().unwrap_or_default();
    let node = must_exist::<Node>(t, &format!("{p}.spec.node"), &spec.node)?;
    if node.being_deleted() {
        return Err(ApiError::BeingDeleted {
            kind: "node",
            name: spec.node,
        });
    }
    // Through indexes: the Devices with this serial, and the node's Devices.
    let mut others = t.devices_with_serial(&spec.serial)?;
    others.extend(t.list_on_node(Kind::Device, &spec.node)?);
    for other in others.into_iter().filter_map(Device::from_resource) {
        if other.name() == d.name() {
            continue;
        }
        let o = other.spec.clone().unwrap_or_default();
        if o.serial == spec.serial {
            return Err(ApiError::invalid(
                format!("{p}.spec.serial"),
                format!(
                    "serial {:?} is already used by device {:?}",
                    spec.serial,
                    other.name()
                ),
            ));
        }
        if o.node == spec.node && o.rshim == spec.rshim {
            return Err(ApiError::invalid(
                format!("{p}.spec.rshim"),
                format!(
                    "{} on node {:?} is already used by device {:?}",
                    spec.rshim,
                    spec.node,
                    other.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Validate an update request (Dpus are refused: the system owns them).
/// Without a mask the request is the whole new object and is validated
/// here; with one, only its name and the mask are, and the object the mask
/// makes is validated in the transaction.
fn prepare_update(
    r: Resource,
    mask: Option<&hostplane_proto::pbjson_types::FieldMask>,
) -> Result<(Resource, Mask), ApiError> {
    if let Some(resource::Kind::Dpu(d)) = &r.kind {
        let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        return Err(ApiError::SystemOwned { name });
    }
    let m = mask::parse(mask, &r)?;
    match m {
        Mask::Replace => validate::resource("", &r)?,
        Mask::Fields(_) => validate::name(&format!("{}.metadata.name", r.kind().noun()), r.name())?,
    }
    Ok((r, m))
}

/// The resource_version precondition of Update and Delete (0 = none).
pub(super) fn check_version(stored: &Resource, sent: u64) -> Result<(), ApiError> {
    let current = stored.resource_version();
    if sent != 0 && sent != current {
        return Err(ApiError::Conflict {
            kind: stored.kind().noun(),
            name: stored.name().into(),
            stored: current,
            sent,
        });
    }
    Ok(())
}

/// Replace spec and labels, or only the fields of the mask; returns the
/// stored object and whether it changed.
fn update(t: &mut Txn<'_>, incoming: Resource, m: Mask) -> Result<(Resource, bool), ApiError> {
    let stored = typed::fetch_any(t, incoming.kind(), incoming.name())?;
    check_version(&stored, incoming.resource_version())?;
    let incoming = match m {
        Mask::Replace => incoming,
        Mask::Fields(paths) => {
            let masked = mask::apply(&stored, &incoming, &paths)?;
            validate::resource("", &masked)?;
            masked
        }
    };
    let (merged, spec_changed) = merge(&stored, incoming)?;
    if merged == stored {
        return Ok((stored, false));
    }
    let mut merged = merged;
    if spec_changed {
        check_references(t, &merged, "")?;
        if let Some(m) = merged.metadata_mut() {
            m.generation += 1;
        }
    }
    Ok((t.update(merged)?, true))
}

/// `Some(spec)` in both, so that "absent" and "empty" compare equal.
fn replace<T: PartialEq + Default>(slot: &mut Option<T>, new: Option<T>) -> bool {
    let new = new.unwrap_or_default();
    let changed = slot.as_ref().map_or(new != T::default(), |old| *old != new);
    *slot = Some(new);
    changed
}

fn same<T: PartialEq + Default + Clone>(old: &Option<T>, new: &Option<T>) -> bool {
    old.clone().unwrap_or_default() == new.clone().unwrap_or_default()
}

/// The stored object with the incoming spec and labels; refuses changes to
/// what cannot change. Status and system metadata are kept.
fn merge(stored: &Resource, incoming: Resource) -> Result<(Resource, bool), ApiError> {
    use resource::Kind as K;
    let labels = incoming.metadata().map(|m| m.labels.clone()).unwrap_or_default();
    let mut out = stored.clone();
    let changed = match (&mut out.kind, incoming.kind) {
        (Some(K::Node(s)), Some(K::Node(i))) => replace(&mut s.spec, i.spec),
        (Some(K::Device(s)), Some(K::Device(i))) => {
            let (old, new) = (
                s.spec.clone().unwrap_or_default(),
                i.spec.clone().unwrap_or_default(),
            );
            if old.node != new.node {
                return Err(ApiError::DeviceMoved {
                    name: s.name().into(),
                    from: old.node,
                    to: new.node,
                });
            }
            replace(&mut s.spec, i.spec)
        }
        (Some(K::Bfb(s)), Some(K::Bfb(i))) => {
            if !same(&s.spec, &i.spec) {
                return Err(ApiError::Immutable {
                    kind: "bfb",
                    title: "Bfb",
                });
            }
            false
        }
        (Some(K::Flavor(s)), Some(K::Flavor(i))) => {
            if !same(&s.spec, &i.spec) {
                return Err(ApiError::Immutable {
                    kind: "flavor",
                    title: "Flavor",
                });
            }
            false
        }
        (Some(K::Deployment(s)), Some(K::Deployment(i))) => replace(&mut s.spec, i.spec),
        (Some(K::Topology(s)), Some(K::Topology(i))) => replace(&mut s.spec, i.spec),
        (Some(K::PowerPolicy(s)), Some(K::PowerPolicy(i))) => replace(&mut s.spec, i.spec),
        (Some(K::Dpu(s)), _) => {
            return Err(ApiError::SystemOwned {
                name: s.name().into(),
            });
        }
        _ => {
            return Err(ApiError::invalid(
                "resource",
                "kind does not match the stored object",
            ));
        }
    };
    if let Some(m) = out.metadata_mut() {
        m.labels = labels;
    }
    Ok((out, changed))
}

/// A Deployment's new image (SetDeploymentImage): empty leaves a field unchanged.
pub(super) fn set_image(
    t: &mut Txn<'_>,
    name: &str,
    bfb: &str,
    flavor: &str,
) -> Result<(Deployment, bool), ApiError> {
    let mut d = typed::fetch::<Deployment>(t, name)?;
    if !bfb.is_empty() {
        must_exist::<Bfb>(t, "bfb", bfb)?;
    }
    if !flavor.is_empty() {
        must_exist::<Flavor>(t, "flavor", flavor)?;
    }
    let spec = d.spec.get_or_insert_default();
    let new_bfb = if bfb.is_empty() {
        spec.bfb.clone()
    } else {
        bfb.to_string()
    };
    let new_flavor = if flavor.is_empty() {
        spec.flavor.clone()
    } else {
        flavor.to_string()
    };
    if spec.bfb == new_bfb && spec.flavor == new_flavor {
        return Ok((d, false));
    }
    spec.bfb = new_bfb;
    spec.flavor = new_flavor;
    d.meta_mut().generation += 1;
    let r = t.update(d.into())?;
    let d = Deployment::from_resource(r)
        .ok_or_else(|| ApiError::invalid("deployment", "stored object changed kind"))?;
    Ok((d, true))
}
