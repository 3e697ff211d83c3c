//! In-memory meeting point of the power data:
//!
//! - the agent stream records telemetry batches (idempotent by epoch and
//!   sequence number: a replayed sample is ignored) and cap reports;
//! - the policy engine reads the latest draw per node and publishes caps;
//! - the agent stream puts a node's caps into its desired state;
//! - `GetPowerSummary` reads everything for `hostplanectl power top`.
//!
//! Nothing here is persisted: telemetry is live data, and the caps are
//! recomputed from the stored Topology and PowerPolicy objects after a restart.
//!
//! With several replicas on PostgreSQL (docs/ha.md §5) only the leader runs
//! the engine. A follower's hub hands every report it accepts to the
//! forwarder ([`crate::peer`]), which sends it to the leader's hub; and its
//! caps come from the store's `power_caps` rows ([`super::caps_feed`])
//! rather than from an engine: [`PowerHub::caps_through`] says up to which
//! store revision they are known, so a session waits for the caps of the
//! desired-state version it is about to send ([`PowerHub::wait_caps_through`]).
//! On SQLite, and on the leader, the caps are the engine's own and nothing
//! waits.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hostplane_proto::internal::v1::{PowerReport, power_report};
use hostplane_proto::v1::{
    CapStatus, ElementAllocation, GpuPower, NodePower, PowerCapReport, PowerCaps, PowerElement, PowerSample,
    PowerSummary, PowerSummaryRequest, TelemetryAck, TelemetryBatch,
};
use tokio::sync::{mpsc, watch};

/// [`PowerHub::caps_through`] when the caps are this replica's engine's own
/// (SQLite, the leader): current for every version.
pub const CAPS_OWN: u64 = u64::MAX;

/// The latest telemetry of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeTelemetry {
    pub epoch: u64,
    /// Highest sequence number stored for `epoch`.
    pub seq: u64,
    /// The newest sample (by seq).
    pub latest: Option<PowerSample>,
    /// Samples the agent dropped from its full buffer in this epoch: the
    /// agent sends a running total, so the largest seen is kept (a replayed
    /// or reordered batch cannot lower it).
    pub dropped: u64,
    /// Samples accepted since the coordinator started (replays excluded).
    pub accepted: u64,
}

#[derive(Default)]
struct Inner {
    telemetry: HashMap<String, NodeTelemetry>,
    reports: HashMap<String, PowerCapReport>,
    caps: HashMap<String, PowerCaps>,
    elements: Vec<ElementAllocation>,
}

/// Shared by the agent stream, the policy engine and the admin API.
#[derive(Clone)]
pub struct PowerHub {
    inner: Arc<Mutex<Inner>>,
    /// Bumped whenever telemetry arrives (the engine recomputes on it).
    telemetry_tx: Arc<watch::Sender<u64>>,
    /// A follower's forwarder: every report accepted goes there too.
    forward: Arc<Mutex<Option<mpsc::Sender<PowerReport>>>>,
    /// Reports the forwarder's full queue refused.
    forward_dropped: Arc<AtomicU64>,
    /// The store revision up to which `caps` hold the `power_caps` rows
    /// ([`CAPS_OWN`]: the engine's own caps).
    caps_through: Arc<watch::Sender<u64>>,
    /// True while the caps come from the store (a follower).
    store_fed: Arc<AtomicBool>,
}

impl Default for PowerHub {
    fn default() -> Self {
        PowerHub::new()
    }
}

impl PowerHub {
    pub fn new() -> PowerHub {
        PowerHub {
            inner: Arc::default(),
            telemetry_tx: Arc::new(watch::channel(0).0),
            forward: Arc::default(),
            forward_dropped: Arc::default(),
            caps_through: Arc::new(watch::channel(CAPS_OWN).0),
            store_fed: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a batch from `node`'s agent. Samples at or below the last
    /// sequence number of the same epoch are replays and are ignored; a new
    /// epoch (the agent restarted) starts over. Returns the ack to send: the
    /// highest seq stored for the batch's epoch.
    pub fn record_telemetry(&self, node: &str, batch: TelemetryBatch) -> TelemetryAck {
        let mut inner = self.lock();
        let t = inner.telemetry.entry(node.to_string()).or_default();
        if t.epoch != batch.epoch {
            *t = NodeTelemetry {
                epoch: batch.epoch,
                ..Default::default()
            };
        }
        let dropped_before = t.dropped;
        t.dropped = t.dropped.max(batch.dropped);
        let forwarding = self.forwarding();
        let mut fresh = 0;
        let mut forwarded = Vec::new();
        for s in batch.samples {
            if s.seq <= t.seq {
                continue;
            }
            t.seq = s.seq;
            if forwarding {
                forwarded.push(s.clone());
            }
            t.latest = Some(s);
            t.accepted += 1;
            fresh += 1;
        }
        let ack = TelemetryAck {
            epoch: t.epoch,
            seq: t.seq,
        };
        let dropped = t.dropped;
        drop(inner);
        if fresh > 0 {
            self.telemetry_tx.send_modify(|n| *n += 1);
        }
        if forwarding && (fresh > 0 || dropped > dropped_before) {
            self.forward(PowerReport {
                node: node.to_string(),
                report: Some(power_report::Report::Telemetry(TelemetryBatch {
                    epoch: ack.epoch,
                    samples: forwarded,
                    dropped,
                })),
            });
        }
        ack
    }

    /// A follower's forwarder installs its queue here (None: not forwarding,
    /// on the leader, on SQLite, between two leaders).
    pub fn set_forward(&self, to: Option<mpsc::Sender<PowerReport>>) {
        *self.forward.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    fn forwarding(&self) -> bool {
        self.forward.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Hand `r` to the forwarder; never waits (a full queue drops it: the
    /// leader treats missing telemetry as stale, and the next report of the
    /// node supersedes it).
    fn forward(&self, r: PowerReport) {
        let tx = self.forward.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx
            && tx.try_send(r).is_err()
        {
            let n = self.forward_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "power reports not forwarded to the leader: the forwarding queue is full or closed"
                );
            }
        }
    }

    /// Reports dropped because the forwarding queue was full (since start).
    pub fn forward_dropped(&self) -> u64 {
        self.forward_dropped.load(Ordering::Relaxed)
    }

    pub fn telemetry(&self, node: &str) -> Option<NodeTelemetry> {
        self.lock().telemetry.get(node).cloned()
    }

    /// The latest node draw of every node that sent one, with when it was sampled (ms).
    pub fn node_draws(&self) -> HashMap<String, (f64, i64)> {
        self.lock()
            .telemetry
            .iter()
            .filter_map(|(n, t)| {
                let s = t.latest.as_ref()?;
                Some((n.clone(), (s.node_watts?, s.at_ms)))
            })
            .collect()
    }

    /// Changes whenever new telemetry is stored.
    pub fn telemetry_changes(&self) -> watch::Receiver<u64> {
        self.telemetry_tx.subscribe()
    }

    pub fn record_cap_report(&self, node: &str, report: PowerCapReport) {
        if self.forwarding() {
            self.forward(PowerReport {
                node: node.to_string(),
                report: Some(power_report::Report::CapReport(report.clone())),
            });
        }
        self.lock().reports.insert(node.to_string(), report);
    }

    pub fn cap_report(&self, node: &str) -> Option<PowerCapReport> {
        self.lock().reports.get(node).cloned()
    }

    /// The caps the engine last computed for `node` (None: uncapped).
    pub fn caps(&self, node: &str) -> Option<PowerCaps> {
        self.lock().caps.get(node).cloned()
    }

    /// Replace every node's caps; returns the nodes whose caps changed
    /// (their desired state must be re-sent). While the caps come from the
    /// store (this replica follows: an engine still finishing its last pass
    /// after the replica stepped down), the hub keeps the store's caps: that
    /// engine's write is fenced and will not announce its own.
    pub fn set_caps(&self, caps: HashMap<String, PowerCaps>) -> Vec<String> {
        let mut inner = self.lock();
        if self.is_store_fed() {
            tracing::debug!("caps of a deposed leader's engine not taken: this replica follows the store's");
            return Vec::new();
        }
        let mut changed: Vec<String> = caps
            .iter()
            .filter(|(n, c)| inner.caps.get(*n) != Some(*c))
            .map(|(n, _)| n.clone())
            .collect();
        changed.extend(inner.caps.keys().filter(|n| !caps.contains_key(*n)).cloned());
        changed.sort();
        inner.caps = caps;
        changed
    }

    /// From now on the caps come from the store (this replica follows):
    /// until the first [`Self::apply_store_caps`], no version's caps are
    /// known (sessions wait for them).
    pub fn caps_from_store(&self) {
        self.store_fed.store(true, Ordering::SeqCst);
        self.caps_through.send_replace(0);
    }

    /// From now on the caps are the engine's (this replica leads, or runs
    /// alone): current for every version. The caps read from the store stay
    /// until the engine's first pass replaces them, so it announces only the
    /// nodes whose caps it changes.
    pub fn caps_from_engine(&self) {
        self.store_fed.store(false, Ordering::SeqCst);
        self.caps_through.send_replace(CAPS_OWN);
    }

    /// Whether the caps come from the store.
    pub fn is_store_fed(&self) -> bool {
        self.store_fed.load(Ordering::SeqCst)
    }

    /// Take in `power_caps` rows read at store revision `through` (every row
    /// up to it included); `all`: they are the whole table, nodes not in it
    /// have no caps. Ignored unless the caps come from the store.
    pub fn apply_store_caps(
        &self,
        rows: impl IntoIterator<Item = (String, Option<PowerCaps>, u64)>,
        through: u64,
        all: bool,
    ) {
        if !self.is_store_fed() {
            return;
        }
        let mut inner = self.lock();
        if all {
            inner.caps.clear();
        }
        for (node, caps, _) in rows {
            match caps {
                Some(c) => inner.caps.insert(node, c),
                None => inner.caps.remove(&node),
            };
        }
        drop(inner);
        self.caps_through.send_modify(|r| *r = (*r).max(through));
    }

    /// The store revision through which the caps are known ([`CAPS_OWN`]:
    /// the engine's own, always current).
    pub fn caps_through(&self) -> u64 {
        *self.caps_through.borrow()
    }

    /// Wait (at most `within`) until the caps are known through store
    /// revision `version`, the desired-state version about to be sent with
    /// them; false when they are not by then.
    pub async fn wait_caps_through(&self, version: u64, within: Duration) -> bool {
        let mut rx = self.caps_through.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|r| *r >= version)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Forget the telemetry, cap reports and caps of every node `exists`
    /// says no longer exists (the engine calls this each pass with the
    /// store's nodes), so deleted nodes leave `power top` and memory.
    pub fn retain_nodes(&self, exists: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        inner.telemetry.retain(|n, _| exists(n));
        inner.reports.retain(|n, _| exists(n));
        inner.caps.retain(|n, _| exists(n));
    }

    pub fn set_elements(&self, elements: Vec<ElementAllocation>) {
        self.lock().elements = elements;
    }

    /// What `power top` shows: every node known to the hub (or those asked for).
    pub fn summary(&self, req: &PowerSummaryRequest) -> PowerSummary {
        let inner = self.lock();
        let mut names: BTreeMap<&str, ()> = BTreeMap::new();
        for n in inner
            .telemetry
            .keys()
            .chain(inner.caps.keys())
            .chain(inner.reports.keys())
        {
            names.insert(n.as_str(), ());
        }
        for n in &req.nodes {
            names.insert(n.as_str(), ());
        }
        let wanted = |n: &str| req.nodes.is_empty() || req.nodes.iter().any(|x| x == n);
        let nodes = names
            .keys()
            .filter(|n| wanted(n))
            .map(|&n| node_power(n, &inner))
            .collect();
        PowerSummary {
            nodes,
            elements: inner.elements.clone(),
        }
    }
}

fn node_power(node: &str, inner: &Inner) -> NodePower {
    let sample = inner.telemetry.get(node).and_then(|t| t.latest.as_ref());
    let caps = inner.caps.get(node);
    let report = inner.reports.get(node);
    let effective = |el: PowerElement, dev: &str| -> Option<&CapStatus> {
        report?
            .caps
            .iter()
            .find(|c| c.element == el as i32 && (dev.is_empty() || c.device == dev))
    };
    let node_cap = effective(PowerElement::Node, "");
    let gpus = sample
        .map(|s| {
            s.readings
                .iter()
                .filter(|r| r.scope == "gpu")
                .map(|r| GpuPower {
                    device: r.device.clone(),
                    watts: r.watts,
                    cap_watts: effective(PowerElement::Gpu, &r.device)
                        .map(|c| c.effective_watts)
                        .unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    NodePower {
        node: node.to_string(),
        draw_watts: sample.and_then(|s| s.node_watts),
        cap_watts: caps.map(|c| c.node_watts).unwrap_or(0.0),
        effective_watts: node_cap.map(|c| c.effective_watts).unwrap_or(0.0),
        method: node_cap.map(|c| c.method.clone()).unwrap_or_default(),
        gpus,
        sampled_at_ms: sample.map(|s| s.at_ms).unwrap_or(0),
        safe_mode: report.is_some_and(|r| r.safe_mode),
        topology: caps.map(|c| c.topology.clone()).unwrap_or_default(),
        policy: caps.map(|c| c.policy.clone()).unwrap_or_default(),
        error: node_cap.map(|c| c.error.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, watts: f64) -> PowerSample {
        PowerSample {
            seq,
            at_ms: seq as i64 * 1000,
            readings: vec![],
            node_watts: Some(watts),
        }
    }

    fn batch(epoch: u64, samples: Vec<PowerSample>) -> TelemetryBatch {
        TelemetryBatch {
            epoch,
            samples,
            dropped: 0,
        }
    }

    #[test]
    fn replayed_samples_are_ignored_and_a_new_epoch_starts_over() {
        let hub = PowerHub::new();
        let ack = hub.record_telemetry("n1", batch(7, vec![sample(1, 100.0), sample(2, 200.0)]));
        assert_eq!((ack.epoch, ack.seq), (7, 2));
        // A replay of 2 plus a new 3: only 3 counts.
        let ack = hub.record_telemetry("n1", batch(7, vec![sample(2, 999.0), sample(3, 300.0)]));
        assert_eq!(ack.seq, 3);
        let t = hub.telemetry("n1").unwrap();
        assert_eq!(t.accepted, 3);
        assert_eq!(hub.node_draws()["n1"].0, 300.0);
        // An old batch alone changes nothing.
        let ack = hub.record_telemetry("n1", batch(7, vec![sample(1, 5.0)]));
        assert_eq!(ack.seq, 3);
        assert_eq!(hub.node_draws()["n1"].0, 300.0);
        // The agent restarted: new epoch, seq from 1 again.
        let ack = hub.record_telemetry("n1", batch(8, vec![sample(1, 50.0)]));
        assert_eq!((ack.epoch, ack.seq), (8, 1));
        assert_eq!(hub.node_draws()["n1"].0, 50.0);
    }

    #[test]
    fn a_follower_forwards_only_what_it_accepted() {
        let hub = PowerHub::new();
        // Not forwarding: nothing queued anywhere.
        hub.record_telemetry("n1", batch(7, vec![sample(1, 100.0)]));
        let (tx, mut rx) = mpsc::channel(8);
        hub.set_forward(Some(tx));
        // A replay of 1 plus a new 2: only 2 goes on.
        hub.record_telemetry("n1", batch(7, vec![sample(1, 100.0), sample(2, 200.0)]));
        let r = rx.try_recv().unwrap();
        let Some(power_report::Report::Telemetry(b)) = r.report else {
            panic!("{r:?}")
        };
        assert_eq!((r.node.as_str(), b.epoch), ("n1", 7));
        assert_eq!(b.samples.iter().map(|s| s.seq).collect::<Vec<_>>(), [2]);
        // A pure replay forwards nothing; a higher drop count alone does.
        hub.record_telemetry("n1", batch(7, vec![sample(2, 200.0)]));
        assert!(rx.try_recv().is_err(), "a replay is not forwarded");
        hub.record_telemetry(
            "n1",
            TelemetryBatch {
                dropped: 3,
                ..batch(7, vec![])
            },
        );
        let Some(power_report::Report::Telemetry(b)) = rx.try_recv().unwrap().report else {
            panic!()
        };
        assert_eq!((b.samples.len(), b.dropped), (0, 3));
        hub.record_cap_report(
            "n1",
            PowerCapReport {
                version: 9,
                ..Default::default()
            },
        );
        let Some(power_report::Report::CapReport(c)) = rx.try_recv().unwrap().report else {
            panic!()
        };
        assert_eq!(c.version, 9);
        // A full queue drops (and counts) instead of waiting.
        for seq in 3..20 {
            hub.record_telemetry("n1", batch(7, vec![sample(seq, 1.0)]));
        }
        assert_eq!(hub.forward_dropped(), 17 - 8);
        hub.set_forward(None);
        hub.record_telemetry("n1", batch(7, vec![sample(30, 1.0)]));
        assert_eq!(hub.forward_dropped(), 9, "no queue, nothing dropped");
    }

    #[tokio::test]
    async fn store_fed_caps_say_through_which_revision_they_are_known() {
        let hub = PowerHub::new();
        let cap = |w| PowerCaps {
            node_watts: w,
            ..Default::default()
        };
        assert_eq!(
            hub.caps_through(),
            CAPS_OWN,
            "the engine's own caps: always current"
        );
        assert!(hub.wait_caps_through(1_000, Duration::ZERO).await);
        hub.caps_from_store();
        assert_eq!(hub.caps_through(), 0);
        assert!(!hub.wait_caps_through(5, Duration::from_millis(20)).await);
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait_caps_through(5, Duration::from_secs(10)).await })
        };
        hub.apply_store_caps(
            vec![("a".into(), Some(cap(1.0)), 3), ("b".into(), Some(cap(2.0)), 5)],
            6,
            true,
        );
        assert!(waiter.await.unwrap(), "the waiter wakes once revision 5 is read");
        assert_eq!(hub.caps("b").unwrap().node_watts, 2.0);
        // Later rows: b uncapped, c new; a kept.
        hub.apply_store_caps(
            vec![("b".into(), None, 7), ("c".into(), Some(cap(3.0)), 8)],
            8,
            false,
        );
        assert!(hub.caps("b").is_none());
        assert_eq!(
            (
                hub.caps("a").unwrap().node_watts,
                hub.caps("c").unwrap().node_watts
            ),
            (1.0, 3.0)
        );
        // A whole-table read replaces everything; the revision never goes back.
        hub.apply_store_caps(vec![("c".into(), Some(cap(4.0)), 8)], 4, true);
        assert!(hub.caps("a").is_none());
        assert_eq!(hub.caps_through(), 8);
        // An engine still finishing after the step-down does not replace them.
        assert!(hub.set_caps(HashMap::from([("c".into(), cap(9.0))])).is_empty());
        assert_eq!(hub.caps("c").unwrap().node_watts, 4.0);
        // Leading: the engine owns the caps, store rows are ignored.
        hub.caps_from_engine();
        hub.apply_store_caps(vec![("c".into(), None, 9)], 9, false);
        assert_eq!(
            hub.caps("c").unwrap().node_watts,
            4.0,
            "kept for the engine's first pass"
        );
        assert_eq!(hub.caps_through(), CAPS_OWN);
    }

    #[test]
    fn the_drop_count_is_the_largest_running_total_of_the_epoch() {
        let hub = PowerHub::new();
        let with = |epoch, samples, dropped| TelemetryBatch {
            dropped,
            ..batch(epoch, samples)
        };
        hub.record_telemetry("n1", with(7, vec![sample(1, 1.0)], 4));
        assert_eq!(hub.telemetry("n1").unwrap().dropped, 4);
        // A replay carries the same total: not counted twice.
        hub.record_telemetry("n1", with(7, vec![sample(1, 1.0), sample(2, 1.0)], 4));
        assert_eq!(hub.telemetry("n1").unwrap().dropped, 4);
        hub.record_telemetry("n1", with(7, vec![sample(3, 1.0)], 9));
        assert_eq!(hub.telemetry("n1").unwrap().dropped, 9);
        // An older batch (lower total) does not lower it.
        hub.record_telemetry("n1", with(7, vec![], 4));
        assert_eq!(hub.telemetry("n1").unwrap().dropped, 9);
        // A new epoch (the agent restarted) starts its own total.
        hub.record_telemetry("n1", with(8, vec![sample(1, 1.0)], 1));
        assert_eq!(hub.telemetry("n1").unwrap().dropped, 1);
    }

    #[test]
    fn retain_nodes_forgets_deleted_nodes_everywhere() {
        let hub = PowerHub::new();
        for n in ["keep", "gone"] {
            hub.record_telemetry(n, batch(1, vec![sample(1, 100.0)]));
            hub.record_cap_report(n, PowerCapReport::default());
        }
        hub.set_caps(HashMap::from([(
            "gone".into(),
            PowerCaps {
                node_watts: 500.0,
                ..Default::default()
            },
        )]));
        hub.retain_nodes(|n| n == "keep");
        assert!(hub.telemetry("gone").is_none());
        assert!(hub.cap_report("gone").is_none());
        assert!(hub.caps("gone").is_none());
        assert!(!hub.node_draws().contains_key("gone"));
        assert!(hub.telemetry("keep").is_some() && hub.cap_report("keep").is_some());
        let names: Vec<String> = hub
            .summary(&PowerSummaryRequest::default())
            .nodes
            .into_iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(names, vec!["keep"], "power top no longer lists the deleted node");
    }

    #[test]
    fn set_caps_reports_only_changed_and_removed_nodes() {
        let hub = PowerHub::new();
        let cap = |w| PowerCaps {
            node_watts: w,
            ..Default::default()
        };
        let changed = hub.set_caps(HashMap::from([("a".into(), cap(1.0)), ("b".into(), cap(2.0))]));
        assert_eq!(changed, vec!["a", "b"]);
        let changed = hub.set_caps(HashMap::from([("a".into(), cap(1.0)), ("c".into(), cap(3.0))]));
        assert_eq!(
            changed,
            vec!["b", "c"],
            "b lost its cap, c is new, a is unchanged"
        );
        assert_eq!(hub.caps("c").unwrap().node_watts, 3.0);
        assert!(hub.caps("b").is_none());
    }

    #[test]
    fn summary_joins_draw_cap_and_effective() {
        let hub = PowerHub::new();
        hub.record_telemetry("n1", batch(1, vec![sample(1, 640.0)]));
        hub.set_caps(HashMap::from([(
            "n1".into(),
            PowerCaps {
                node_watts: 700.0,
                policy: "p".into(),
                ..Default::default()
            },
        )]));
        hub.record_cap_report(
            "n1",
            PowerCapReport {
                version: 3,
                caps: vec![CapStatus {
                    element: PowerElement::Node as i32,
                    device: "node".into(),
                    requested_watts: 700.0,
                    effective_watts: 700.0,
                    method: "redfish".into(),
                    error: String::new(),
                }],
                safe_mode: false,
            },
        );
        let s = hub.summary(&PowerSummaryRequest::default());
        assert_eq!(s.nodes.len(), 1);
        let n = &s.nodes[0];
        assert_eq!(
            (n.draw_watts, n.cap_watts, n.effective_watts),
            (Some(640.0), 700.0, 700.0)
        );
        assert_eq!((n.method.as_str(), n.policy.as_str()), ("redfish", "p"));
        let s = hub.summary(&PowerSummaryRequest {
            nodes: vec!["other".into()],
        });
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(
            s.nodes[0].draw_watts, None,
            "a node without telemetry has no draw"
        );
    }
}
