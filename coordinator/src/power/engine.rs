//! The policy engine: one task that turns the Topology budgets and the
//! PowerPolicies into a cap per node and pushes the caps to the agents.
//!
//! It computes on the store's shared view, keeps only what tells a relevant
//! change from the others ([`Changes`]), and recomputes
//! - at once (after a short debounce) when a Topology or PowerPolicy spec, a
//!   Deployment's policy, a Dpu's node or deployment, or the set of Nodes
//!   changes;
//! - when telemetry arrives, at most once per `power.recompute_interval`;
//! - every `power.resync` regardless (telemetry goes stale).
//!
//! A recompute publishes the caps in the [`PowerHub`] (and makes it forget
//! the telemetry and cap reports of nodes that no longer exist), then gives every node
//! whose caps changed a new desired-state version in one store write (the
//! agent streams send the caps with it), records those caps in the store's
//! `power_caps` with that version (where the agent streams of the other
//! replicas read them, docs/ha.md §5), and writes Topology and PowerPolicy
//! statuses only when they changed. A failed write is retried on the next
//! pass: the nodes still owed a new version are remembered.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hostplane_proto::v1::{Kind, PowerCaps, PowerPolicyStatus, TopologyStatus, WatchEvent, resource};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PowerHub;
use crate::store::{Store, StoreError, now_ms};

#[path = "engine_changes.rs"]
mod changes;
#[path = "engine_compute.rs"]
mod compute;

use changes::Changes;
pub use compute::{
    COND_MISSING_NODES, COND_MISSING_TARGETS, COND_OVERSUBSCRIBED, COND_UNRESOLVED, COND_VALID,
    DEFAULT_LEASE_SECONDS,
};

/// After a store change, wait this long for the rest of a burst (an import
/// of many objects) before recomputing.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The `power:` section of the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// Telemetry triggers a recompute at most this often.
    #[serde(with = "humantime_serde")]
    pub recompute_interval: Duration,
    /// Recompute this often even when nothing changed.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// A node's draw older than this (by its sample time) is unknown demand.
    #[serde(with = "humantime_serde")]
    pub telemetry_max_age: Duration,
    /// Demand target = draw × (1 + headroom) + margin_watts.
    pub headroom: f64,
    pub margin_watts: f64,
    /// A node cap that would move by less than the larger of these is left
    /// as it is (unless it must go down to keep a budget).
    pub hysteresis_percent: f64,
    pub hysteresis_watts: f64,
    /// Topology statuses are rewritten for new draws alone at most this often.
    #[serde(with = "humantime_serde")]
    pub status_refresh: Duration,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            recompute_interval: Duration::from_secs(5),
            resync: Duration::from_secs(30),
            telemetry_max_age: Duration::from_secs(15),
            headroom: 0.10,
            margin_watts: 50.0,
            hysteresis_percent: 1.0,
            hysteresis_watts: 5.0,
            status_refresh: Duration::from_secs(60),
        }
    }
}

impl PowerConfig {
    /// Range checks; `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.recompute_interval.is_zero() {
            return Err(("power.recompute_interval", "must be greater than 0"));
        }
        if self.resync.is_zero() {
            return Err(("power.resync", "must be greater than 0"));
        }
        if self.telemetry_max_age.is_zero() {
            return Err(("power.telemetry_max_age", "must be greater than 0"));
        }
        let ok = |x: f64, max: f64| x.is_finite() && (0.0..=max).contains(&x);
        if !ok(self.headroom, 10.0) {
            return Err(("power.headroom", "must be a fraction from 0 to 10 (0.1 = 10%)"));
        }
        if !ok(self.margin_watts, 1e6) {
            return Err(("power.margin_watts", "must be from 0 to 1000000"));
        }
        if !ok(self.hysteresis_percent, 100.0) {
            return Err(("power.hysteresis_percent", "must be from 0 to 100"));
        }
        if !ok(self.hysteresis_watts, 1e6) {
            return Err(("power.hysteresis_watts", "must be from 0 to 1000000"));
        }
        Ok(())
    }
}

/// What one recompute did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Nodes whose caps changed (and got a new desired-state version).
    pub changed: Vec<String>,
    /// Topologies and PowerPolicies whose status was written.
    pub statuses_written: Vec<String>,
}

/// The policy engine. See the module docs.
pub struct PowerEngine {
    core: Core,
    events: broadcast::Receiver<WatchEvent>,
}

struct Core {
    store: Store,
    hub: PowerHub,
    cfg: PowerConfig,
    /// None until the first pass, and after the events lagged.
    changes: Option<Changes>,
    /// What the hub holds: the caps of the last pass.
    published: HashMap<String, PowerCaps>,
    /// Nodes whose caps changed but whose desired version was not bumped yet.
    owed: BTreeSet<String>,
    dirty: bool,
}

impl PowerEngine {
    /// Subscribes to the store at once: changes from now on are seen.
    pub fn new(store: Store, hub: PowerHub, cfg: PowerConfig) -> PowerEngine {
        let events = store.subscribe();
        PowerEngine {
            core: Core {
                store,
                hub,
                cfg,
                changes: None,
                published: HashMap::new(),
                owed: BTreeSet::new(),
                dirty: true,
            },
            events,
        }
    }

    /// Take in the committed changes, then recompute once (tests and the loop).
    pub async fn recompute(&mut self) -> Result<PassReport, StoreError> {
        self.drain();
        self.core.pass().await
    }

    /// Apply every event already received; a lag drops the fingerprints (taken again).
    fn drain(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(ev) => self.core.take(ev),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                Err(TryRecvError::Lagged(n)) => self.core.lagged(n),
            }
        }
    }

    /// Run until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("power_engine");
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: CancellationToken) {
        let mut telemetry = self.core.hub.telemetry_changes();
        let mut telemetry_open = true;
        let interval = self.core.cfg.recompute_interval;
        let resync = self.core.cfg.resync;
        let mut last_pass: Option<Instant> = None;
        let mut telemetry_due: Option<Instant> = None;
        let mut next_resync = Instant::now();
        tracing::info!(recompute_interval = ?interval, resync = ?resync, "power engine started");
        loop {
            self.drain();
            let now = Instant::now();
            let due = self.core.dirty || now >= next_resync || telemetry_due.is_some_and(|t| now >= t);
            if due {
                match self.core.pass().await {
                    Ok(_) => {
                        last_pass = Some(Instant::now());
                        telemetry_due = None;
                        next_resync = Instant::now() + resync;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "power recompute failed; retrying in 1s");
                        self.core.dirty = true;
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            let wake = telemetry_due.map_or(next_resync, |t| t.min(next_resync));
            tokio::select! {
                () = shutdown.cancelled() => break,
                ev = self.events.recv() => match ev {
                    Ok(ev) => {
                        self.core.take(ev);
                        if self.core.dirty {
                            // Let the rest of a burst arrive; drain() takes it in.
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                () = tokio::time::sleep(DEBOUNCE) => {}
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => self.core.lagged(n),
                    Err(RecvError::Closed) => break,
                },
                r = telemetry.changed(), if telemetry_open => {
                    if r.is_err() {
                        telemetry_open = false;
                    } else if telemetry_due.is_none() {
                        let earliest = last_pass.map_or(Instant::now(), |t| t + interval);
                        telemetry_due = Some(earliest.max(Instant::now()));
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        tracing::info!("power engine stopped");
    }
}

/// What a recompute decided: the nodes whose caps changed, and the Topology and PowerPolicy
/// statuses to write (by name: the generation they were computed for, the status).
type Decided = (
    Vec<String>,
    BTreeMap<String, (u64, TopologyStatus)>,
    BTreeMap<String, (u64, PowerPolicyStatus)>,
);

impl Core {
    fn take(&mut self, ev: WatchEvent) {
        if let Some(c) = self.changes.as_mut()
            && c.apply(&ev)
        {
            self.dirty = true;
        }
    }

    fn lagged(&mut self, missed: u64) {
        tracing::warn!(
            missed,
            "power engine fell behind the store's events; recomputing from the view"
        );
        self.changes = None;
        self.dirty = true;
    }

    /// Compute and publish the caps, and the statuses to write, on the store's view (its read
    /// guard held only here, never across an await).
    fn decide(&mut self) -> Decided {
        let view = self.store.view();
        if self.changes.is_none() {
            self.changes = Some(Changes::load(&view));
        }
        self.dirty = false;
        let now = now_ms();
        let out = compute::compute(&view, &self.hub.node_draws(), &self.published, now, &self.cfg);

        for (node, new) in &out.caps {
            let old = self.published.get(node);
            if old.map(|o| (o.node_watts, &o.policy, &o.topology))
                != Some((new.node_watts, &new.policy, &new.topology))
            {
                tracing::info!(
                    node = %node,
                    old = old.map_or(0.0, |o| o.node_watts),
                    new = new.node_watts,
                    policy = %new.policy,
                    topology = %new.topology,
                    why = %out.why.get(node).map(String::as_str).unwrap_or(""),
                    "node power cap"
                );
            }
        }
        for (node, old) in &self.published {
            if !out.caps.contains_key(node) {
                tracing::info!(node = %node, old = old.node_watts, new = 0.0,
                    why = "no topology or policy covers the node any more", "node power cap removed");
            }
        }
        let changed = self.hub.set_caps(out.caps.clone());
        self.hub.set_elements(out.elements);
        // Deleted nodes: their telemetry and cap reports go (a Node deletion
        // marks the engine dirty, so this runs soon after it).
        self.hub.retain_nodes(|n| view.nodes.contains_key(n));
        self.published = out.caps;
        self.owed.extend(changed.iter().cloned());

        let generation = |m: &Option<hostplane_proto::v1::ObjectMeta>| m.as_ref().map_or(0, |m| m.generation);
        let refresh = self.cfg.status_refresh.as_millis() as i64;
        let mut topo_writes: BTreeMap<String, (u64, TopologyStatus)> = BTreeMap::new();
        for (name, st) in out.topologies {
            let Some(e) = view.topologies.get(&name) else {
                continue;
            };
            let old = e.status.clone().unwrap_or_default();
            if compute::topology_status_changed(&old, &st, refresh) {
                topo_writes.insert(name, (generation(&e.metadata), st));
            }
        }
        let mut policy_writes: BTreeMap<String, (u64, PowerPolicyStatus)> = BTreeMap::new();
        for (name, st) in out.policies {
            let Some(e) = view.power_policies.get(&name) else {
                continue;
            };
            let mut old = e.status.clone().unwrap_or_default();
            old.conditions.sort_by(|a, b| a.r#type.cmp(&b.r#type));
            if old != st {
                policy_writes.insert(name, (generation(&e.metadata), st));
            }
        }
        (changed, topo_writes, policy_writes)
    }

    async fn pass(&mut self) -> Result<PassReport, StoreError> {
        let (changed, topo_writes, policy_writes) = self.decide();
        let mut report = PassReport {
            changed,
            statuses_written: Vec::new(),
        };
        if self.owed.is_empty() && topo_writes.is_empty() && policy_writes.is_empty() {
            return Ok(report);
        }
        // Each owed node's caps (None: uncapped) go into `power_caps` with the
        // version that announces them, for the other replicas' agents
        // (docs/ha.md §5); a deleted node's row goes.
        let owed: Vec<(String, Option<PowerCaps>, bool)> = {
            let view = self.store.view();
            self.owed
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        self.published.get(n).cloned(),
                        view.nodes.contains_key(n),
                    )
                })
                .collect()
        };
        let written = self
            .store
            .write(move |t| {
                for (node, caps, exists) in &owed {
                    let version = crate::desired::touch(t, node, crate::desired::Why::PowerCaps)?;
                    if *exists {
                        t.put_power_caps(node, caps.as_ref(), version)?;
                    } else {
                        t.delete_power_caps(node)?;
                    }
                }
                let mut written = Vec::new();
                for (name, (generation, st)) in topo_writes {
                    // A spec changed since the view was taken: the next pass writes.
                    if let Some(resource::Kind::Topology(mut x)) =
                        t.get(Kind::Topology, &name)?.and_then(|r| r.kind)
                        && x.metadata.as_ref().is_some_and(|m| m.generation == generation)
                    {
                        x.status = Some(st);
                        t.update(x.into())?;
                        written.push(format!("topology/{name}"));
                    }
                }
                for (name, (generation, st)) in policy_writes {
                    if let Some(resource::Kind::PowerPolicy(mut x)) =
                        t.get(Kind::PowerPolicy, &name)?.and_then(|r| r.kind)
                        && x.metadata.as_ref().is_some_and(|m| m.generation == generation)
                    {
                        x.status = Some(st);
                        t.update(x.into())?;
                        written.push(format!("powerpolicy/{name}"));
                    }
                }
                Ok::<_, StoreError>(written)
            })
            .await?;
        self.owed.clear();
        report.statuses_written = written;
        Ok(report)
    }
}
