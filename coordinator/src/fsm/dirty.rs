//! What changed since the last reconcile pass, from the store's events and
//! the desired-state notices, and the phase deadlines: the input of an
//! incremental pass (`incremental::plan_changes`), and when a pass must be full.
//!
//! A pass is full (every Dpu stepped, see `plan::plan`) the first time, after
//! the periodic resync, after the reconciler fell behind the store's events,
//! after a pass that failed or met a conflict, and when what changed decides
//! which Deployment owns which Device: a Device's labels, node or deletion; a
//! Node or Deployment created, removed or marked for deletion; a Deployment's
//! spec; a Bfb or Flavor. While a rollout is in progress (a Ready Dpu whose
//! bfb or flavor is not its Deployment's) every pass is full too: which Dpu a
//! rollout takes next depends on the whole Deployment.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use hostplane_proto::v1::{
    Deployment, DeploymentSpec, Device, Dpu, DpuPhase, EventType, Node, WatchEvent, resource,
};

use super::plan::Plan;
use super::util::{being_deleted, phase_of};
use crate::store::View;

/// What an incremental pass works on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Work {
    /// Dpus whose object changed (removed ones included).
    pub dpus: BTreeSet<String>,
    /// Dpus removed: name -> (node, deployment).
    pub removed: BTreeMap<String, (String, String)>,
    /// Nodes whose object changed (not its existence or deletion) or whose commands did.
    pub nodes: BTreeSet<String>,
    /// Devices that changed, but not in what decides ownership.
    pub devices: BTreeSet<String>,
    /// Deployments whose status changed (not their spec).
    pub deployments: BTreeSet<String>,
    /// Dpus whose phase deadline is due.
    pub due: BTreeSet<String>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.dpus.is_empty()
            && self.nodes.is_empty()
            && self.devices.is_empty()
            && self.deployments.is_empty()
            && self.due.is_empty()
    }
}

type Pair = (String, String);

/// Per-Deployment counts the view does not index.
#[derive(Debug, Default)]
pub struct Aggregates {
    /// Deployment -> (installed bfb, installed flavor) -> Dpus.
    installed: HashMap<String, HashMap<Pair, usize>>,
    /// Deployment -> (spec bfb, spec flavor) -> Ready Dpus.
    ready: HashMap<String, HashMap<Pair, usize>>,
}

impl Aggregates {
    /// The Dpus of `deployment` that run `bfb` and `flavor`.
    pub fn installed(&self, deployment: &str, bfb: &str, flavor: &str) -> usize {
        self.installed
            .get(deployment)
            .and_then(|m| m.get(&(bfb.to_string(), flavor.to_string())))
            .copied()
            .unwrap_or(0)
    }

    /// True when a Ready Dpu's bfb or flavor is not its Deployment's (a rollout has work).
    fn outdated(&self, view: &View) -> bool {
        self.ready.iter().any(|(dep, by)| {
            let ds = view
                .deployments
                .get(dep)
                .and_then(|d| d.spec.clone())
                .unwrap_or_default();
            by.keys().any(|(b, f)| *b != ds.bfb || *f != ds.flavor)
        })
    }

    fn add(&mut self, s: &Summary, sign: isize) {
        let bump = |m: &mut HashMap<String, HashMap<Pair, usize>>, pair: &Pair| {
            let by = m.entry(s.deployment.clone()).or_default();
            let n = by.entry(pair.clone()).or_default();
            *n = n.saturating_add_signed(sign);
            if *n == 0 {
                by.remove(pair);
                if by.is_empty() {
                    m.remove(&s.deployment);
                }
            }
        };
        if let Some(p) = &s.installed {
            bump(&mut self.installed, p);
        }
        if let Some(p) = &s.ready {
            bump(&mut self.ready, p);
        }
    }
}

/// What the aggregates hold of one Dpu.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    deployment: String,
    /// Its spec's (bfb, flavor) when Ready.
    ready: Option<Pair>,
    /// Its installed (bfb, flavor) when it has a status.
    installed: Option<Pair>,
}

fn summary(d: &Dpu) -> Summary {
    let sp = d.spec.clone().unwrap_or_default();
    let st = d.status.as_ref();
    let ready = st.is_some_and(|s| phase_of(s.phase) == DpuPhase::Ready);
    Summary {
        deployment: sp.deployment,
        ready: ready.then_some((sp.bfb, sp.flavor)),
        installed: st.map(|s| (s.installed_bfb.clone(), s.installed_flavor.clone())),
    }
}

/// What decides ownership, of a Device.
type DeviceKey = (Vec<(String, String)>, String, bool);
/// ... of a Deployment.
type DeploymentKey = (Option<DeploymentSpec>, i64, bool);

fn device_key(d: &Device) -> DeviceKey {
    let mut labels: Vec<(String, String)> = d
        .metadata
        .as_ref()
        .map(|m| m.labels.clone().into_iter().collect())
        .unwrap_or_default();
    labels.sort();
    let node = d.spec.as_ref().map(|s| s.node.clone()).unwrap_or_default();
    (labels, node, being_deleted(&d.metadata))
}

fn deployment_key(d: &Deployment) -> DeploymentKey {
    let created = d.metadata.as_ref().map(|m| m.created_at_ms).unwrap_or(0);
    (d.spec.clone(), created, being_deleted(&d.metadata))
}

fn node_key(n: &Node) -> bool {
    being_deleted(&n.metadata)
}

/// The reconciler's record of what changed, and of each Dpu's phase deadline.
#[derive(Debug)]
pub struct Tracker {
    full: bool,
    work: Work,
    dpus: HashMap<String, Summary>,
    agg: Aggregates,
    deadline_of: HashMap<String, i64>,
    /// (deadline ms, Dpu): the earliest first.
    deadlines: BTreeSet<(i64, String)>,
    devices: HashMap<String, DeviceKey>,
    nodes: HashMap<String, bool>,
    deployments: HashMap<String, DeploymentKey>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// The first pass is full.
    pub fn new() -> Tracker {
        Tracker {
            full: true,
            work: Work::default(),
            dpus: HashMap::new(),
            agg: Aggregates::default(),
            deadline_of: HashMap::new(),
            deadlines: BTreeSet::new(),
            devices: HashMap::new(),
            nodes: HashMap::new(),
            deployments: HashMap::new(),
        }
    }

    /// The next pass is full.
    pub fn resync(&mut self) {
        self.full = true;
    }

    /// A node's desired state changed (its commands, or a result came in).
    pub fn desired(&mut self, node: &str) {
        if !self.full {
            self.work.nodes.insert(node.to_string());
        }
    }

    /// A committed change.
    pub fn event(&mut self, ev: &WatchEvent) {
        if self.full {
            return;
        }
        let Some(r) = &ev.resource else { return };
        let Some(kind) = &r.kind else { return };
        let name = r.name().to_string();
        let deleted = ev.r#type == EventType::Deleted as i32;
        match kind {
            resource::Kind::Dpu(d) => {
                if deleted {
                    let sp = d.spec.clone().unwrap_or_default();
                    self.work.removed.insert(name.clone(), (sp.node, sp.deployment));
                }
                self.work.dpus.insert(name);
            }
            resource::Kind::Device(d) => {
                let key = (!deleted).then(|| device_key(d));
                if self.devices.get(&name) != key.as_ref() {
                    self.full = true;
                } else {
                    self.work.devices.insert(name);
                }
            }
            resource::Kind::Node(n) => {
                let key = (!deleted).then(|| node_key(n));
                if self.nodes.get(&name).copied() != key {
                    self.full = true;
                } else {
                    self.work.nodes.insert(name);
                }
            }
            resource::Kind::Deployment(d) => {
                let key = (!deleted).then(|| deployment_key(d));
                if self.deployments.get(&name) != key.as_ref() {
                    self.full = true;
                } else {
                    self.work.deployments.insert(name);
                }
            }
            resource::Kind::Bfb(_) | resource::Kind::Flavor(_) => self.full = true,
            resource::Kind::Topology(_) | resource::Kind::PowerPolicy(_) => {}
        }
    }

    /// Start a pass on `view`: the work of an incremental pass, or None when this pass is full.
    pub fn begin(&mut self, view: &View, now: i64) -> Option<Work> {
        let mut work = std::mem::take(&mut self.work);
        if !self.full {
            for name in &work.dpus {
                self.refresh(view, name);
            }
            if self.agg.outdated(view) {
                self.full = true;
            }
        }
        if self.full {
            self.rebuild(view);
            return None;
        }
        for (at, name) in &self.deadlines {
            if *at > now {
                break;
            }
            work.due.insert(name.clone());
        }
        Some(work)
    }

    /// Record the phase deadlines a pass computed (a full pass: all of them).
    pub fn end(&mut self, plan: &Plan, full: bool) {
        if full {
            self.deadlines.clear();
            self.deadline_of.clear();
        }
        for (name, at) in &plan.deadlines {
            self.set_deadline(name, *at);
        }
    }

    /// The earliest phase deadline (epoch ms).
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    pub fn aggregates(&self) -> &Aggregates {
        &self.agg
    }

    fn set_deadline(&mut self, name: &str, at: Option<i64>) {
        if let Some(old) = self.deadline_of.remove(name) {
            self.deadlines.remove(&(old, name.to_string()));
        }
        if let Some(at) = at {
            self.deadline_of.insert(name.to_string(), at);
            self.deadlines.insert((at, name.to_string()));
        }
    }

    /// Take a Dpu's summary from the view (removed when it is gone).
    fn refresh(&mut self, view: &View, name: &str) {
        if let Some(old) = self.dpus.remove(name) {
            self.agg.add(&old, -1);
        }
        match view.dpus.get(name) {
            Some(d) => {
                let s = summary(d);
                self.agg.add(&s, 1);
                self.dpus.insert(name.to_string(), s);
            }
            None => self.set_deadline(name, None),
        }
    }

    /// Everything from the view, for a full pass.
    fn rebuild(&mut self, view: &View) {
        self.full = false;
        self.work = Work::default();
        self.agg = Aggregates::default();
        self.dpus.clear();
        for (name, d) in &view.dpus {
            let s = summary(d);
            self.agg.add(&s, 1);
            self.dpus.insert(name.clone(), s);
        }
        self.devices = view
            .devices
            .iter()
            .map(|(n, d)| (n.clone(), device_key(d)))
            .collect();
        self.nodes = view.nodes.iter().map(|(n, x)| (n.clone(), node_key(x))).collect();
        self.deployments = view
            .deployments
            .iter()
            .map(|(n, d)| (n.clone(), deployment_key(d)))
            .collect();
    }
}
