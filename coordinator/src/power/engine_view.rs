//! The policy engine's view of the store: what caps depend on, listed once
//! and then kept current from the store's committed events. Applying an
//! event says whether it changed anything caps depend on, so the engine's
//! own status writes (and a Dpu's phase changes) do not cause recomputes.
use std::collections::BTreeMap;

use hostplane_proto::v1::{
    EventType, Kind, ObjectMeta, PowerPolicy, PowerPolicySpec, Resource, Topology, TopologySpec, WatchEvent,
    resource,
};

use crate::store::{StoreError, Txn};

/// One stored object reduced to what the engine needs, with its version.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry<T> {
    pub rv: u64,
    pub generation: u64,
    pub value: T,
}

#[derive(Debug, Default, Clone)]
pub(super) struct View {
    /// Store revision of the list; older events are already in it.
    pub listed_at: u64,
    pub topologies: BTreeMap<String, Entry<Topology>>,
    pub policies: BTreeMap<String, Entry<PowerPolicy>>,
    /// Deployment name -> the PowerPolicy its spec names ("" = none).
    pub deployments: BTreeMap<String, Entry<String>>,
    /// Dpu name -> (node, deployment).
    pub dpus: BTreeMap<String, Entry<(String, String)>>,
    pub nodes: BTreeMap<String, Entry<()>>,
}

fn meta(m: &Option<ObjectMeta>) -> (String, u64, u64) {
    let m = m.clone().unwrap_or_default();
    (m.name, m.resource_version, m.generation)
}

/// Insert unless a newer version is held; true when the projection changed.
fn upsert<T: PartialEq>(
    map: &mut BTreeMap<String, Entry<T>>,
    (name, rv, generation): (String, u64, u64),
    value: T,
    same: impl Fn(&T, &T) -> bool,
) -> bool {
    match map.get_mut(&name) {
        Some(old) if old.rv >= rv => false,
        Some(old) => {
            let changed = !same(&old.value, &value);
            *old = Entry {
                rv,
                generation,
                value,
            };
            changed
        }
        None => {
            map.insert(
                name,
                Entry {
                    rv,
                    generation,
                    value,
                },
            );
            true
        }
    }
}

fn remove<T>(map: &mut BTreeMap<String, Entry<T>>, name: &str, rv: u64) -> bool {
    if map.get(name).is_some_and(|old| old.rv < rv) {
        map.remove(name);
        return true;
    }
    false
}

fn topology_spec(t: &Topology) -> TopologySpec {
    t.spec.clone().unwrap_or_default()
}

fn policy_spec(p: &PowerPolicy) -> PowerPolicySpec {
    p.spec.clone().unwrap_or_default()
}

impl View {
    /// List every kind the engine needs, in one transaction.
    pub fn load(t: &mut Txn<'_>) -> Result<View, StoreError> {
        let mut v = View {
            listed_at: t.revision()?,
            ..Default::default()
        };
        for kind in [
            Kind::Node,
            Kind::Deployment,
            Kind::Dpu,
            Kind::Topology,
            Kind::PowerPolicy,
        ] {
            for r in t.list(kind)? {
                v.put(r);
            }
        }
        Ok(v)
    }

    /// Take in an object; true when what caps depend on changed.
    fn put(&mut self, r: Resource) -> bool {
        let Some(kind) = r.kind else { return false };
        match kind {
            resource::Kind::Node(x) => upsert(&mut self.nodes, meta(&x.metadata), (), |_, _| true),
            resource::Kind::Deployment(x) => {
                let policy = x.spec.map(|s| s.power_policy).unwrap_or_default();
                upsert(&mut self.deployments, meta(&x.metadata), policy, |a, b| a == b)
            }
            resource::Kind::Dpu(x) => {
                let s = x.spec.clone().unwrap_or_default();
                upsert(
                    &mut self.dpus,
                    meta(&x.metadata),
                    (s.node, s.deployment),
                    |a, b| a == b,
                )
            }
            // Status writes (ours) keep the spec: only a spec change counts.
            resource::Kind::Topology(x) => upsert(&mut self.topologies, meta(&x.metadata), x, |a, b| {
                topology_spec(a) == topology_spec(b)
            }),
            resource::Kind::PowerPolicy(x) => upsert(&mut self.policies, meta(&x.metadata), x, |a, b| {
                policy_spec(a) == policy_spec(b)
            }),
            resource::Kind::Device(_) | resource::Kind::Bfb(_) | resource::Kind::Flavor(_) => false,
        }
    }

    fn drop_obj(&mut self, r: &Resource, rv: u64) -> bool {
        let name = r.name();
        match r.kind() {
            Kind::Node => remove(&mut self.nodes, name, rv),
            Kind::Deployment => remove(&mut self.deployments, name, rv),
            Kind::Dpu => remove(&mut self.dpus, name, rv),
            Kind::Topology => remove(&mut self.topologies, name, rv),
            Kind::PowerPolicy => remove(&mut self.policies, name, rv),
            Kind::Device | Kind::Bfb | Kind::Flavor | Kind::Unspecified => false,
        }
    }

    /// Apply one committed change; true when caps may have to change.
    pub fn apply(&mut self, ev: WatchEvent) -> bool {
        if ev.resource_version <= self.listed_at {
            return false;
        }
        let Some(r) = ev.resource else { return false };
        if ev.r#type == EventType::Deleted as i32 {
            self.drop_obj(&r, ev.resource_version)
        } else {
            self.put(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Dpu, DpuSpec, DpuStatus, TopologyStatus};

    use super::*;

    fn ev(ty: EventType, r: Resource) -> WatchEvent {
        WatchEvent {
            r#type: ty as i32,
            resource_version: r.resource_version(),
            resource: Some(r),
        }
    }

    fn m(name: &str, rv: u64) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            resource_version: rv,
            generation: 1,
            ..Default::default()
        })
    }

    #[test]
    fn only_what_caps_depend_on_counts_as_a_change() {
        let mut v = View::default();
        let topo = |rv, computed_at_ms| -> Resource {
            Topology {
                metadata: m("t", rv),
                spec: Some(TopologySpec::default()),
                status: Some(TopologyStatus {
                    computed_at_ms,
                    ..Default::default()
                }),
            }
            .into()
        };
        assert!(v.apply(ev(EventType::Added, topo(1, 0))), "a new topology");
        assert!(
            !v.apply(ev(EventType::Modified, topo(2, 5))),
            "a status write is no change"
        );
        assert_eq!(
            v.topologies["t"].value.status.as_ref().unwrap().computed_at_ms,
            5,
            "but the view keeps the new status"
        );
        let dpu = |rv, node: &str, phase| -> Resource {
            Dpu {
                metadata: m("d", rv),
                spec: Some(DpuSpec {
                    node: node.into(),
                    deployment: "dep".into(),
                    ..Default::default()
                }),
                status: Some(DpuStatus {
                    phase,
                    ..Default::default()
                }),
            }
            .into()
        };
        assert!(v.apply(ev(EventType::Added, dpu(3, "n1", 1))));
        assert!(
            !v.apply(ev(EventType::Modified, dpu(4, "n1", 2))),
            "a phase change"
        );
        assert!(v.apply(ev(EventType::Modified, dpu(5, "n2", 2))), "another node");
        assert!(
            !v.apply(ev(EventType::Modified, dpu(4, "n3", 2))),
            "a stale event"
        );
        assert!(v.apply(ev(EventType::Deleted, dpu(6, "n2", 2))));
        assert!(v.dpus.is_empty());
        assert!(!v.apply(ev(EventType::Deleted, topo(1, 0))), "an old deletion");
        assert!(v.topologies.contains_key("t"));
    }
}
