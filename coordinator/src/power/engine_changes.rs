//! Which store changes the caps depend on. The engine computes on the store's shared view; this
//! keeps only what it needs to tell a relevant change from the others (a fingerprint of each
//! object's relevant part, with its version), so the engine's own status writes and a Dpu's
//! phase changes do not cause recomputes.
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use hostplane_proto::v1::{EventType, Kind, Resource, WatchEvent, resource};
use prost::Message as _;

use crate::store::View;

/// The fingerprint of one object's relevant part, and the version it was taken at.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    rv: u64,
    fingerprint: u64,
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// What caps depend on in an object: None for kinds they do not depend on. A Node counts by its
/// existence; a Deployment by its policy; a Dpu by its node and deployment; a Topology or
/// PowerPolicy by its spec (status writes, ours, keep the spec).
fn fingerprint(r: &Resource) -> Option<u64> {
    Some(match r.kind.as_ref()? {
        resource::Kind::Node(_) => 0,
        resource::Kind::Deployment(x) => {
            let p = x.spec.as_ref().map(|s| s.power_policy.as_str()).unwrap_or("");
            hash(&[p.as_bytes()])
        }
        resource::Kind::Dpu(x) => {
            let s = x.spec.clone().unwrap_or_default();
            hash(&[s.node.as_bytes(), s.deployment.as_bytes()])
        }
        resource::Kind::Topology(x) => hash(&[&x.spec.clone().unwrap_or_default().encode_to_vec()]),
        resource::Kind::PowerPolicy(x) => hash(&[&x.spec.clone().unwrap_or_default().encode_to_vec()]),
        resource::Kind::Device(_) | resource::Kind::Bfb(_) | resource::Kind::Flavor(_) => return None,
    })
}

const KINDS: [Kind; 5] = [
    Kind::Node,
    Kind::Deployment,
    Kind::Dpu,
    Kind::Topology,
    Kind::PowerPolicy,
];

#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Store revision the fingerprints were taken at; older events are already in them.
    taken_at: u64,
    seen: HashMap<(Kind, String), Seen>,
}

impl Changes {
    /// Fingerprint every object caps depend on, as the view holds them.
    pub fn load(view: &View) -> Changes {
        let mut c = Changes {
            taken_at: view.revision(),
            seen: HashMap::new(),
        };
        let names = |k: Kind| -> Vec<String> {
            match k {
                Kind::Node => view.nodes.keys().cloned().collect(),
                Kind::Deployment => view.deployments.keys().cloned().collect(),
                Kind::Dpu => view.dpus.keys().cloned().collect(),
                Kind::Topology => view.topologies.keys().cloned().collect(),
                Kind::PowerPolicy => view.power_policies.keys().cloned().collect(),
                _ => Vec::new(),
            }
        };
        for k in KINDS {
            for name in names(k) {
                if let Some(r) = view.get(k, &name) {
                    c.put(&r);
                }
            }
        }
        c
    }

    /// Take in an object; true when what caps depend on changed.
    fn put(&mut self, r: &Resource) -> bool {
        let Some(fingerprint) = fingerprint(r) else {
            return false;
        };
        let new = Seen {
            rv: r.resource_version(),
            fingerprint,
        };
        match self.seen.get_mut(&(r.kind(), r.name().to_string())) {
            Some(old) if old.rv >= new.rv => false,
            Some(old) => {
                let changed = old.fingerprint != new.fingerprint;
                *old = new;
                changed
            }
            None => {
                self.seen.insert((r.kind(), r.name().to_string()), new);
                true
            }
        }
    }

    /// Apply one committed change; true when caps may have to change.
    pub fn apply(&mut self, ev: &WatchEvent) -> bool {
        if ev.resource_version <= self.taken_at {
            return false;
        }
        let Some(r) = &ev.resource else { return false };
        if ev.r#type != EventType::Deleted as i32 {
            return self.put(r);
        }
        let key = (r.kind(), r.name().to_string());
        if self
            .seen
            .get(&key)
            .is_some_and(|old| old.rv < ev.resource_version)
        {
            self.seen.remove(&key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Dpu, DpuSpec, DpuStatus, ObjectMeta, Topology, TopologySpec, TopologyStatus};

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
        let mut v = Changes::default();
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
        assert!(v.apply(&ev(EventType::Added, topo(1, 0))), "a new topology");
        assert!(
            !v.apply(&ev(EventType::Modified, topo(2, 5))),
            "a status write is no change"
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
        assert!(v.apply(&ev(EventType::Added, dpu(3, "n1", 1))));
        assert!(
            !v.apply(&ev(EventType::Modified, dpu(4, "n1", 2))),
            "a phase change"
        );
        assert!(v.apply(&ev(EventType::Modified, dpu(5, "n2", 2))), "another node");
        assert!(
            !v.apply(&ev(EventType::Modified, dpu(4, "n3", 2))),
            "a stale event"
        );
        assert!(v.apply(&ev(EventType::Deleted, dpu(6, "n2", 2))));
        assert!(!v.seen.contains_key(&(Kind::Dpu, "d".to_string())));
        assert!(!v.apply(&ev(EventType::Deleted, topo(1, 0))), "an old deletion");
        assert!(v.seen.contains_key(&(Kind::Topology, "t".to_string())));
    }
}
