//! Typed access to the store's generic `Resource` rows.
use hostplane_proto::v1::{Bfb, Deployment, Device, Dpu, Flavor, Kind, Node, ObjectMeta, Resource, resource};

use super::error::ApiError;
use crate::store::Txn;

/// One concrete resource type.
pub(super) trait Typed: Sized + Into<Resource> {
    const KIND: Kind;
    fn from_resource(r: Resource) -> Option<Self>;
    fn meta(&self) -> Option<&ObjectMeta>;
    fn meta_mut(&mut self) -> &mut ObjectMeta;

    fn name(&self) -> &str {
        self.meta().map(|m| m.name.as_str()).unwrap_or("")
    }

    fn being_deleted(&self) -> bool {
        self.meta().is_some_and(|m| m.deletion_requested_at_ms != 0)
    }
}

macro_rules! typed {
    ($($t:ident),*) => {$(
        impl Typed for $t {
            const KIND: Kind = Kind::$t;

            fn from_resource(r: Resource) -> Option<Self> {
                match r.kind {
                    Some(resource::Kind::$t(x)) => Some(x),
                    _ => None,
                }
            }

            fn meta(&self) -> Option<&ObjectMeta> {
                self.metadata.as_ref()
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                self.metadata.get_or_insert_default()
            }
        }
    )*};
}
typed!(Node, Device, Bfb, Flavor, Deployment, Dpu);

/// The object, or `None` when absent (or stored under another shape).
pub(super) fn get<T: Typed>(t: &Txn<'_>, name: &str) -> Result<Option<T>, ApiError> {
    Ok(t.get(T::KIND, name)?.and_then(T::from_resource))
}

/// The object, or NOT_FOUND naming it.
pub(super) fn fetch<T: Typed>(t: &Txn<'_>, name: &str) -> Result<T, ApiError> {
    get(t, name)?.ok_or_else(|| ApiError::NotFound {
        kind: T::KIND.noun(),
        name: name.into(),
    })
}

/// Every object of the type, by name.
pub(super) fn list<T: Typed>(t: &Txn<'_>) -> Result<Vec<T>, ApiError> {
    Ok(t.list(T::KIND)?
        .into_iter()
        .filter_map(T::from_resource)
        .collect())
}

/// The resource, or NOT_FOUND naming it.
pub(super) fn fetch_any(t: &Txn<'_>, kind: Kind, name: &str) -> Result<Resource, ApiError> {
    t.get(kind, name)?.ok_or_else(|| ApiError::NotFound {
        kind: kind.noun(),
        name: name.into(),
    })
}

/// The node a Device or Dpu is on ("" for other kinds).
pub(super) fn node_of(r: &Resource) -> &str {
    match &r.kind {
        Some(resource::Kind::Device(d)) => d.spec.as_ref().map(|s| s.node.as_str()).unwrap_or(""),
        Some(resource::Kind::Dpu(d)) => d.spec.as_ref().map(|s| s.node.as_str()).unwrap_or(""),
        _ => "",
    }
}

/// Dpus that depend on an object: a Node's (directly or through its
/// Devices), a Device's, a Deployment's; a Dpu itself.
pub(super) fn dependent_dpus(t: &Txn<'_>, kind: Kind, name: &str) -> Result<Vec<Dpu>, ApiError> {
    let node_devices: Vec<String> = if kind == Kind::Node {
        devices_on(t, name)?
            .into_iter()
            .map(|d| d.name().to_string())
            .collect()
    } else {
        Vec::new()
    };
    Ok(list::<Dpu>(t)?
        .into_iter()
        .filter(|d| {
            let s = d.spec.clone().unwrap_or_default();
            match kind {
                Kind::Node => s.node == name || node_devices.contains(&s.device),
                Kind::Device => s.device == name,
                Kind::Deployment => s.deployment == name,
                Kind::Dpu => d.name() == name,
                Kind::Unspecified | Kind::Bfb | Kind::Flavor | Kind::Topology | Kind::PowerPolicy => false,
            }
        })
        .collect())
}

/// The Devices of a node.
pub(super) fn devices_on(t: &Txn<'_>, node: &str) -> Result<Vec<Device>, ApiError> {
    Ok(list::<Device>(t)?
        .into_iter()
        .filter(|d| d.spec.as_ref().is_some_and(|s| s.node == node))
        .collect())
}
