//! The store's in-memory, indexed view (in the spirit of the watch cache
//! that Kubernetes' apiserver keeps in front of etcd): every object and
//! command row, listed once when the store opens, then kept current by the
//! commit path itself. After a transaction commits, and while the writer
//! still holds the connection, the view replays what the transaction did
//! (its events, command changes and desired versions), and only then are
//! the events broadcast: whoever an event wakes finds at least that state
//! in the view.
//!
//! Indexes hold names, never copies of objects: Devices and Dpus by node
//! (not those with an empty `spec.node`),
//! Dpus by Deployment and by phase, Dpu counts by (Deployment, phase), open
//! commands by node (in desired-state order), desired versions by node.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use hostplane_proto::v1::{
    Bfb, Command, Deployment, Device, Dpu, DpuPhase, EventType, Flavor, Kind, Node, PowerPolicy, Resource,
    Topology, resource,
};

use super::StoreError;
use super::txn::{Changes, CommandChange, CommandRow, Txn};

/// The store as of its last commit. Read it through [`super::Store::view`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    pub nodes: BTreeMap<String, Node>,
    pub devices: BTreeMap<String, Device>,
    pub bfbs: BTreeMap<String, Bfb>,
    pub flavors: BTreeMap<String, Flavor>,
    pub deployments: BTreeMap<String, Deployment>,
    pub dpus: BTreeMap<String, Dpu>,
    pub topologies: BTreeMap<String, Topology>,
    pub power_policies: BTreeMap<String, PowerPolicy>,
    revision: u64,
    devices_by_node: HashMap<String, BTreeSet<String>>,
    dpus_by_node: HashMap<String, BTreeSet<String>>,
    dpus_by_deployment: HashMap<String, BTreeSet<String>>,
    /// By `status.phase` as stored (an unknown number keeps its own entry).
    dpus_by_phase: HashMap<i32, BTreeSet<String>>,
    /// Deployment → phase → how many of its Dpus are in it (no zero entries).
    phase_counts: HashMap<String, HashMap<i32, usize>>,
    /// Every command row the store holds, by id.
    commands: HashMap<String, CommandRow>,
    /// Node → its open commands as `(created_ms, id)`: the SQL order.
    open_by_node: HashMap<String, BTreeSet<(i64, String)>>,
    desired: HashMap<String, u64>,
}

/// Where a Dpu is indexed: (node, deployment, phase).
fn dpu_keys(d: &Dpu) -> (&str, &str, i32) {
    let (node, deployment) = d
        .spec
        .as_ref()
        .map(|s| (s.node.as_str(), s.deployment.as_str()))
        .unwrap_or(("", ""));
    (node, deployment, d.status.as_ref().map(|s| s.phase).unwrap_or(0))
}

fn device_node(d: &Device) -> &str {
    d.spec.as_ref().map(|s| s.node.as_str()).unwrap_or("")
}

fn name_of(m: &Option<hostplane_proto::v1::ObjectMeta>) -> String {
    m.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn index_add<K: std::hash::Hash + Eq>(idx: &mut HashMap<K, BTreeSet<String>>, key: K, name: &str) {
    idx.entry(key).or_default().insert(name.to_string());
}

fn index_remove<K, Q>(idx: &mut HashMap<K, BTreeSet<String>>, key: &Q, name: &str)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = idx.get_mut(key) {
        set.remove(name);
        if set.is_empty() {
            idx.remove(key);
        }
    }
}

impl View {
    /// List the whole store (one transaction).
    pub(super) fn load(t: &Txn<'_>) -> Result<View, StoreError> {
        let mut v = View {
            revision: t.revision()?,
            ..View::default()
        };
        for kind in Kind::ALL {
            for r in t.list(kind)? {
                v.put(r);
            }
        }
        for row in t.all_commands()? {
            v.add_command(row);
        }
        v.desired = t.all_desired()?.into_iter().collect();
        Ok(v)
    }

    /// Replay one committed transaction's changes; the store is at `revision` after it.
    pub(super) fn apply(&mut self, changes: &Changes, revision: u64) {
        for ev in &changes.events {
            let Some(r) = &ev.resource else { continue };
            if ev.r#type == EventType::Deleted as i32 {
                self.remove(r.kind(), r.name());
            } else {
                self.put(r.clone());
            }
        }
        for c in &changes.commands {
            match c {
                CommandChange::Insert(row) => self.add_command((**row).clone()),
                CommandChange::Finish { id, result } => {
                    if let Some(row) = self.commands.get_mut(id) {
                        if row.result.is_none() {
                            let key = (row.created_ms, id.clone());
                            if let Some(set) = self.open_by_node.get_mut(&row.node) {
                                set.remove(&key);
                                if set.is_empty() {
                                    self.open_by_node.remove(&row.node);
                                }
                            }
                        }
                        row.result = Some(result.clone());
                    }
                }
                CommandChange::Prune(ids) => {
                    for id in ids {
                        // Still open here when a replica learns of its finish
                        // and its pruning in one catch-up.
                        if let Some(row) = self.commands.remove(id)
                            && row.result.is_none()
                        {
                            let key = (row.created_ms, id.clone());
                            if let Some(set) = self.open_by_node.get_mut(&row.node) {
                                set.remove(&key);
                                if set.is_empty() {
                                    self.open_by_node.remove(&row.node);
                                }
                            }
                        }
                    }
                }
            }
        }
        for d in &changes.desired {
            self.desired.insert(d.node.clone(), d.version);
        }
        self.revision = self.revision.max(revision);
    }

    /// Every command id the view holds.
    pub(super) fn command_ids(&self) -> Vec<String> {
        self.commands.keys().cloned().collect()
    }

    /// Whether the view holds command `id`.
    pub(super) fn has_command(&self, id: &str) -> bool {
        self.commands.contains_key(id)
    }

    fn add_command(&mut self, row: CommandRow) {
        let id = row.command.id.clone();
        if row.result.is_none() {
            self.open_by_node
                .entry(row.node.clone())
                .or_default()
                .insert((row.created_ms, id.clone()));
        }
        self.commands.insert(id, row);
    }

    fn put(&mut self, r: Resource) {
        let Some(kind) = r.kind else { return };
        match kind {
            resource::Kind::Node(x) => {
                self.nodes.insert(name_of(&x.metadata), x);
            }
            resource::Kind::Device(x) => {
                let name = name_of(&x.metadata);
                self.unindex_device(&name);
                let node = device_node(&x);
                if !node.is_empty() {
                    index_add(&mut self.devices_by_node, node.to_string(), &name);
                }
                self.devices.insert(name, x);
            }
            resource::Kind::Bfb(x) => {
                self.bfbs.insert(name_of(&x.metadata), x);
            }
            resource::Kind::Flavor(x) => {
                self.flavors.insert(name_of(&x.metadata), x);
            }
            resource::Kind::Deployment(x) => {
                self.deployments.insert(name_of(&x.metadata), x);
            }
            resource::Kind::Dpu(x) => {
                let name = name_of(&x.metadata);
                self.unindex_dpu(&name);
                let (node, deployment, phase) = dpu_keys(&x);
                if !node.is_empty() {
                    index_add(&mut self.dpus_by_node, node.to_string(), &name);
                }
                index_add(&mut self.dpus_by_deployment, deployment.to_string(), &name);
                index_add(&mut self.dpus_by_phase, phase, &name);
                *self
                    .phase_counts
                    .entry(deployment.to_string())
                    .or_default()
                    .entry(phase)
                    .or_default() += 1;
                self.dpus.insert(name, x);
            }
            resource::Kind::Topology(x) => {
                self.topologies.insert(name_of(&x.metadata), x);
            }
            resource::Kind::PowerPolicy(x) => {
                self.power_policies.insert(name_of(&x.metadata), x);
            }
        }
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Node => {
                self.nodes.remove(name);
            }
            Kind::Device => {
                self.unindex_device(name);
                self.devices.remove(name);
            }
            Kind::Bfb => {
                self.bfbs.remove(name);
            }
            Kind::Flavor => {
                self.flavors.remove(name);
            }
            Kind::Deployment => {
                self.deployments.remove(name);
            }
            Kind::Dpu => {
                self.unindex_dpu(name);
                self.dpus.remove(name);
            }
            Kind::Topology => {
                self.topologies.remove(name);
            }
            Kind::PowerPolicy => {
                self.power_policies.remove(name);
            }
            Kind::Unspecified => {}
        }
    }

    /// Take a stored Device out of the indexes (before it changes or goes).
    fn unindex_device(&mut self, name: &str) {
        if let Some(old) = self.devices.get(name) {
            index_remove(&mut self.devices_by_node, device_node(old), name);
        }
    }

    /// Take a stored Dpu out of the indexes (before it changes or goes).
    fn unindex_dpu(&mut self, name: &str) {
        let Some(old) = self.dpus.get(name) else { return };
        let (node, deployment, phase) = dpu_keys(old);
        index_remove(&mut self.dpus_by_node, node, name);
        index_remove(&mut self.dpus_by_deployment, deployment, name);
        index_remove(&mut self.dpus_by_phase, &phase, name);
        if let Some(counts) = self.phase_counts.get_mut(deployment) {
            if let Some(n) = counts.get_mut(&phase) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&phase);
                }
            }
            if counts.is_empty() {
                self.phase_counts.remove(deployment);
            }
        }
    }

    /// The store revision the view is at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One object, as a [`Resource`] (a clone).
    pub fn get(&self, kind: Kind, name: &str) -> Option<Resource> {
        match kind {
            Kind::Node => self.nodes.get(name).cloned().map(Into::into),
            Kind::Device => self.devices.get(name).cloned().map(Into::into),
            Kind::Bfb => self.bfbs.get(name).cloned().map(Into::into),
            Kind::Flavor => self.flavors.get(name).cloned().map(Into::into),
            Kind::Deployment => self.deployments.get(name).cloned().map(Into::into),
            Kind::Dpu => self.dpus.get(name).cloned().map(Into::into),
            Kind::Topology => self.topologies.get(name).cloned().map(Into::into),
            Kind::PowerPolicy => self.power_policies.get(name).cloned().map(Into::into),
            Kind::Unspecified => None,
        }
    }

    /// The Devices whose `spec.node` is `node`, in name order (none for "",
    /// as `Txn::list_on_node`).
    pub fn devices_on_node(&self, node: &str) -> impl Iterator<Item = &Device> {
        self.devices_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|n| self.devices.get(n))
    }

    /// The Dpus whose `spec.node` is `node`, in name order (none for "", as
    /// `Txn::list_on_node`).
    pub fn dpus_on_node(&self, node: &str) -> impl Iterator<Item = &Dpu> {
        self.dpus_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|n| self.dpus.get(n))
    }

    /// The Dpus whose `spec.deployment` is `deployment`, in name order (""
    /// gives those of no Deployment).
    pub fn dpus_of_deployment(&self, deployment: &str) -> impl Iterator<Item = &Dpu> {
        self.dpus_by_deployment
            .get(deployment)
            .into_iter()
            .flatten()
            .filter_map(|n| self.dpus.get(n))
    }

    /// The Dpus in `phase` (a Dpu without status is `Unspecified`), in name order.
    pub fn dpus_in_phase(&self, phase: DpuPhase) -> impl Iterator<Item = &Dpu> {
        self.dpus_by_phase
            .get(&(phase as i32))
            .into_iter()
            .flatten()
            .filter_map(|n| self.dpus.get(n))
    }

    /// How many Dpus of `deployment` are in `phase`.
    pub fn count_in_phase(&self, deployment: &str, phase: DpuPhase) -> usize {
        self.phase_counts
            .get(deployment)
            .and_then(|c| c.get(&(phase as i32)))
            .copied()
            .unwrap_or(0)
    }

    /// A node's open commands, oldest first (`created_ms`, then id): its
    /// desired commands, as `Txn::open_commands` orders them.
    pub fn open_commands(&self, node: &str) -> Vec<&Command> {
        self.open_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.commands.get(id))
            .map(|row| &row.command)
            .collect()
    }

    /// A command row the store holds (open or finished, until pruned).
    pub fn command(&self, id: &str) -> Option<&CommandRow> {
        self.commands.get(id)
    }

    /// The version of a node's desired state (0 when never set).
    pub fn desired_version(&self, node: &str) -> u64 {
        self.desired.get(node).copied().unwrap_or(0)
    }
}
