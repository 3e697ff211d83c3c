//! The reconciler's in-memory view of the store: listed once, then kept
//! current from the store's committed watch events (an informer, in
//! Kubernetes terms). Decisions are made on this view; every write re-checks
//! the object's resource_version in its transaction, so a stale view can only
//! cause a skipped write (retried next pass), never a wrong one.
use std::collections::{BTreeMap, BTreeSet};

use hostplane_proto::v1::{
    Bfb, Deployment, Device, Dpu, EventType, Flavor, Kind, Node, Resource, WatchEvent, resource,
};

use crate::store::{StoreError, Txn};

#[derive(Debug, Default, Clone)]
pub struct Cache {
    pub nodes: BTreeMap<String, Node>,
    pub devices: BTreeMap<String, Device>,
    pub bfbs: BTreeMap<String, Bfb>,
    pub flavors: BTreeMap<String, Flavor>,
    pub deployments: BTreeMap<String, Deployment>,
    pub dpus: BTreeMap<String, Dpu>,
    /// Store revision the list was taken at; older events are already in it.
    listed_at: u64,
    /// Devices whose `spec.pci_address` changed since the reconciler last
    /// took this set: a listed host network carries it (see `network_touches`).
    pub pci_changed: BTreeSet<String>,
}

fn rv_of(m: &Option<hostplane_proto::v1::ObjectMeta>) -> u64 {
    m.as_ref().map(|m| m.resource_version).unwrap_or(0)
}

fn name_of(m: &Option<hostplane_proto::v1::ObjectMeta>) -> String {
    m.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

/// Insert `x` unless the cache holds a newer version of it.
fn upsert<T>(map: &mut BTreeMap<String, T>, name: String, rv: u64, x: T, rv_fn: impl Fn(&T) -> u64) {
    match map.get(&name) {
        Some(old) if rv_fn(old) >= rv => {}
        _ => {
            map.insert(name, x);
        }
    }
}

fn remove<T>(map: &mut BTreeMap<String, T>, name: &str, rv: u64, rv_fn: impl Fn(&T) -> u64) {
    if map.get(name).is_some_and(|old| rv_fn(old) < rv) {
        map.remove(name);
    }
}

impl Cache {
    /// List every kind the reconciler needs, in one transaction.
    pub fn load(t: &mut Txn<'_>) -> Result<Cache, StoreError> {
        let mut c = Cache {
            listed_at: t.revision()?,
            ..Default::default()
        };
        for kind in [
            Kind::Node,
            Kind::Device,
            Kind::Bfb,
            Kind::Flavor,
            Kind::Deployment,
            Kind::Dpu,
        ] {
            for r in t.list(kind)? {
                c.put(r);
            }
        }
        Ok(c)
    }

    fn put(&mut self, r: Resource) {
        let Some(kind) = r.kind else { return };
        match kind {
            resource::Kind::Node(x) => upsert(
                &mut self.nodes,
                name_of(&x.metadata),
                rv_of(&x.metadata),
                x,
                |o| rv_of(&o.metadata),
            ),
            resource::Kind::Device(x) => {
                let (name, rv) = (name_of(&x.metadata), rv_of(&x.metadata));
                let pci = |d: &Device| d.spec.as_ref().map(|s| s.pci_address.clone()).unwrap_or_default();
                if let Some(old) = self.devices.get(&name)
                    && rv_of(&old.metadata) < rv
                    && pci(old) != pci(&x)
                {
                    self.pci_changed.insert(name.clone());
                }
                upsert(&mut self.devices, name, rv, x, |o| rv_of(&o.metadata))
            }
            resource::Kind::Bfb(x) => {
                upsert(&mut self.bfbs, name_of(&x.metadata), rv_of(&x.metadata), x, |o| {
                    rv_of(&o.metadata)
                })
            }
            resource::Kind::Flavor(x) => upsert(
                &mut self.flavors,
                name_of(&x.metadata),
                rv_of(&x.metadata),
                x,
                |o| rv_of(&o.metadata),
            ),
            resource::Kind::Deployment(x) => upsert(
                &mut self.deployments,
                name_of(&x.metadata),
                rv_of(&x.metadata),
                x,
                |o| rv_of(&o.metadata),
            ),
            // The power engine keeps its own view.
            resource::Kind::Topology(_) | resource::Kind::PowerPolicy(_) => {}
            resource::Kind::Dpu(x) => {
                upsert(&mut self.dpus, name_of(&x.metadata), rv_of(&x.metadata), x, |o| {
                    rv_of(&o.metadata)
                })
            }
        }
    }

    fn drop_obj(&mut self, r: &Resource, rv: u64) {
        let name = r.name();
        match r.kind() {
            Kind::Node => remove(&mut self.nodes, name, rv, |o| rv_of(&o.metadata)),
            Kind::Device => remove(&mut self.devices, name, rv, |o| rv_of(&o.metadata)),
            Kind::Bfb => remove(&mut self.bfbs, name, rv, |o| rv_of(&o.metadata)),
            Kind::Flavor => remove(&mut self.flavors, name, rv, |o| rv_of(&o.metadata)),
            Kind::Deployment => remove(&mut self.deployments, name, rv, |o| rv_of(&o.metadata)),
            Kind::Dpu => remove(&mut self.dpus, name, rv, |o| rv_of(&o.metadata)),
            Kind::Topology | Kind::PowerPolicy | Kind::Unspecified => {}
        }
    }

    /// Apply one committed change. Events already covered by the list are ignored.
    pub fn apply(&mut self, ev: WatchEvent) {
        if ev.resource_version <= self.listed_at {
            return;
        }
        let Some(r) = ev.resource else { return };
        if ev.r#type == EventType::Deleted as i32 {
            self.drop_obj(&r, ev.resource_version);
        } else {
            self.put(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, rv: u64) -> Resource {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                resource_version: rv,
                ..Default::default()
            }),
            ..Default::default()
        }
        .into()
    }

    fn ev(ty: EventType, r: Resource) -> WatchEvent {
        WatchEvent {
            r#type: ty as i32,
            resource_version: r.resource_version(),
            resource: Some(r),
        }
    }

    fn device(name: &str, rv: u64, pci: &str, serial: &str) -> Resource {
        hostplane_proto::v1::Device {
            metadata: Some(ObjectMeta {
                name: name.into(),
                resource_version: rv,
                ..Default::default()
            }),
            spec: Some(hostplane_proto::v1::DeviceSpec {
                pci_address: pci.into(),
                serial: serial.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    #[test]
    fn pci_address_changes_are_noted() {
        let mut c = Cache::default();
        c.apply(ev(EventType::Added, device("d1", 1, "0000:04:00.0", "a")));
        c.apply(ev(EventType::Modified, device("d1", 2, "0000:04:00.0", "b")));
        assert!(
            c.pci_changed.is_empty(),
            "a new device or another field is no PCI change"
        );
        c.apply(ev(EventType::Modified, device("d1", 3, "0000:05:00.0", "b")));
        assert_eq!(c.pci_changed.iter().collect::<Vec<_>>(), ["d1"]);
        c.pci_changed.clear();
        c.apply(ev(EventType::Modified, device("d1", 2, "0000:09:00.0", "b")));
        assert!(c.pci_changed.is_empty(), "a stale event changes nothing");
    }

    #[test]
    fn events_apply_in_order_and_stale_ones_are_ignored() {
        let mut c = Cache {
            listed_at: 5,
            ..Default::default()
        };
        c.apply(ev(EventType::Added, node("old", 4)));
        assert!(c.nodes.is_empty(), "an event the list already covers is ignored");
        c.apply(ev(EventType::Added, node("n1", 6)));
        c.apply(ev(EventType::Modified, node("n1", 8)));
        c.apply(ev(EventType::Modified, node("n1", 7)));
        assert_eq!(c.nodes["n1"].metadata.as_ref().unwrap().resource_version, 8);
        c.apply(ev(EventType::Deleted, node("n1", 7)));
        assert!(
            c.nodes.contains_key("n1"),
            "a delete older than the cached version is stale"
        );
        c.apply(ev(EventType::Deleted, node("n1", 9)));
        assert!(c.nodes.is_empty());
    }
}
