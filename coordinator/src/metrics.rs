//! The coordinator's Prometheus endpoint: `GET /metrics` when
//! `metrics.listen` is set. It serves what only the coordinator knows, read
//! from the store's in-memory view at every scrape — how many Dpus are in each phase, each
//! Dpu's phase, whether each Node's agent holds its lease — and the
//! process's own `process_*` metrics; as OpenMetrics to a scraper that asks
//! for it, as the Prometheus text format 0.0.4 otherwise.
use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hostplane_common::exposition::{self, process::ProcessCollector};
use hostplane_proto::v1::DpuPhase;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, View};

/// The `metrics:` section of the coordinator config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on (plain HTTP, no auth), e.g.
    /// `127.0.0.1:9465`; unset = no endpoint.
    pub listen: Option<SocketAddr>,
}

/// What the coordinator counts as it runs (process-wide, like a Prometheus
/// client's default registry): each subsystem records its own through
/// [`hub()`], and every scrape registers the same series. Names are under
/// `hostplane_coordinator_`.
pub struct Hub {
    /// Agent sessions open now (one per node at most).
    pub agents_connected: Gauge,
    /// Watch streams open now.
    pub watch_subscribers: Gauge,
    /// Duration of one reconcile pass (plan and write).
    pub reconcile_pass_seconds: Histogram,
    /// From an agent's command result being recorded to the Dpu's next
    /// command being issued (the coordinator's reaction time).
    pub command_latency_seconds: Histogram,
    /// Duration of one store transaction (a group commit is one).
    pub store_write_seconds: Histogram,
    /// Writes committed together in one store transaction.
    pub store_batch_writes: Histogram,
    /// Desired states sent to agents.
    pub desired_states_sent: Counter,
    /// Desired states agents refused (NACK).
    pub nacks: Counter,
    /// 1 while this replica holds the leader lease (docs/ha.md §3), else 0.
    pub leader: Gauge,
    /// The leader's fencing epoch as this replica last knew it: its own
    /// while it leads, the `leader` row's as a follower last read it.
    pub leader_epoch: Gauge,
    /// The leader's renewals of its lease, by result.
    pub lease_renewals: Family<LeaseRenewalLabels, Counter>,
}

/// How one renewal of the leader lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseRenewal {
    /// Renewed.
    Ok,
    /// The lease was no longer this replica's: it stepped down.
    Lost,
    /// No answer (an error or no reply by the renew deadline).
    Error,
}

impl EncodeLabelValue for LeaseRenewal {
    fn encode(&self, out: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        out.write_str(match self {
            LeaseRenewal::Ok => "ok",
            LeaseRenewal::Lost => "lost",
            LeaseRenewal::Error => "error",
        })
    }
}

/// `{result="ok|lost|error"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LeaseRenewalLabels {
    pub result: LeaseRenewal,
}

impl From<LeaseRenewal> for LeaseRenewalLabels {
    fn from(result: LeaseRenewal) -> LeaseRenewalLabels {
        LeaseRenewalLabels { result }
    }
}

impl Hub {
    fn new() -> Hub {
        Hub {
            agents_connected: Gauge::default(),
            watch_subscribers: Gauge::default(),
            reconcile_pass_seconds: Histogram::new(exponential_buckets(0.000_1, 4.0, 10)),
            command_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.5, 12)),
            store_write_seconds: Histogram::new(exponential_buckets(0.000_05, 4.0, 10)),
            store_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            desired_states_sent: Counter::default(),
            nacks: Counter::default(),
            leader: Gauge::default(),
            leader_epoch: Gauge::default(),
            lease_renewals: {
                // Every result from the start, so that "no renewal lost" is a 0.
                let f = Family::<LeaseRenewalLabels, Counter>::default();
                for r in [LeaseRenewal::Ok, LeaseRenewal::Lost, LeaseRenewal::Error] {
                    let _ = f.get_or_create(&r.into());
                }
                f
            },
        }
    }

    /// Register every series (clones share their values) under `sub`.
    fn register(&self, sub: &mut Registry) {
        sub.register(
            "agents_connected",
            "Agent sessions open now",
            self.agents_connected.clone(),
        );
        sub.register(
            "watch_subscribers",
            "Watch streams open now",
            self.watch_subscribers.clone(),
        );
        sub.register(
            "reconcile_pass_seconds",
            "Duration of one reconcile pass (plan and write)",
            self.reconcile_pass_seconds.clone(),
        );
        sub.register(
            "command_latency_seconds",
            "From a command result being recorded to the Dpu's next command being issued",
            self.command_latency_seconds.clone(),
        );
        sub.register(
            "store_write_seconds",
            "Duration of one store transaction",
            self.store_write_seconds.clone(),
        );
        sub.register(
            "store_batch_writes",
            "Writes committed together in one store transaction",
            self.store_batch_writes.clone(),
        );
        sub.register(
            "desired_states_sent",
            "Desired states sent to agents",
            self.desired_states_sent.clone(),
        );
        sub.register("nacks", "Desired states agents refused", self.nacks.clone());
        sub.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            self.leader.clone(),
        );
        sub.register(
            "leader_epoch",
            "The leader lease's fencing epoch as this replica last knew it",
            self.leader_epoch.clone(),
        );
        sub.register(
            "lease_renewals",
            "Renewals of the leader lease by this replica, by result (ok, lost, error)",
            self.lease_renewals.clone(),
        );
    }
}

/// The coordinator's process-wide [`Hub`].
pub fn hub() -> &'static Hub {
    static HUB: std::sync::LazyLock<Hub> = std::sync::LazyLock::new(Hub::new);
    &HUB
}

/// What the store holds now, as far as the metrics go.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each Dpu: name, node, phase.
    pub dpus: Vec<(String, String, DpuPhase)>,
    /// Each Node: name, reachable (its agent holds its lease).
    pub nodes: Vec<(String, bool)>,
}

impl Snapshot {
    /// The Dpus and Nodes of the store's in-memory view (no SQL: a scrape
    /// costs the same whatever the writers are doing).
    pub fn of(view: &View) -> Snapshot {
        let dpus = (view.dpus.iter())
            .map(|(name, d)| {
                let node = d.spec.as_ref().map(|s| s.node.clone()).unwrap_or_default();
                let phase = d
                    .status
                    .as_ref()
                    .map(|s| s.phase())
                    .unwrap_or(DpuPhase::Unspecified);
                (name.clone(), node, phase)
            })
            .collect();
        let nodes = (view.nodes.iter())
            .map(|(name, n)| (name.clone(), n.status.as_ref().is_some_and(|s| s.reachable)))
            .collect();
        Snapshot { dpus, nodes }
    }

    /// The OpenMetrics text of this snapshot, with the process metrics.
    pub fn render(&self) -> String {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct PhaseLabels {
            phase: String,
        }
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct DpuLabels {
            dpu: String,
            node: String,
            phase: String,
        }
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct NodeLabels {
            node: String,
        }
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let sub = registry.sub_registry_with_prefix("hostplane_coordinator");
        hub().register(sub);
        let dpus = Family::<PhaseLabels, Gauge>::default();
        let dpu_phase = Family::<DpuLabels, Gauge>::default();
        let node_reachable = Family::<NodeLabels, Gauge>::default();
        sub.register(
            "dpus",
            "Dpus in each phase (every phase, 0 included)",
            dpus.clone(),
        );
        sub.register(
            "dpu_phase",
            "1 for each Dpu, labelled with its node and its phase",
            dpu_phase.clone(),
        );
        sub.register(
            "node_reachable",
            "1 while the node's agent holds its lease, 0 when the node is Unreachable",
            node_reachable.clone(),
        );
        // Every phase a Dpu can be in, so that "none in Error" is a 0.
        for phase in (DpuPhase::Initializing as i32..=DpuPhase::Error as i32)
            .filter_map(|p| DpuPhase::try_from(p).ok())
        {
            let _ = dpus.get_or_create(&PhaseLabels {
                phase: phase.display_name().to_string(),
            });
        }
        for (dpu, node, phase) in &self.dpus {
            let phase = phase.display_name().to_string();
            dpus.get_or_create(&PhaseLabels { phase: phase.clone() }).inc();
            dpu_phase
                .get_or_create(&DpuLabels {
                    dpu: dpu.clone(),
                    node: node.clone(),
                    phase,
                })
                .set(1);
        }
        for (node, reachable) in &self.nodes {
            node_reachable
                .get_or_create(&NodeLabels { node: node.clone() })
                .set(i64::from(*reachable));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One scrape: read the store's view, render in the format `Accept` asks for.
async fn scrape(store: Store, headers: HeaderMap) -> Response {
    let format = exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // The read guard lives for this statement only.
    let snapshot = Snapshot::of(&store.view());
    match exposition::encode(format, snapshot.render()) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

/// Serve `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, store: Store, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| scrape(store.clone(), headers)),
    );
    tracing::info!(?addr, "metrics endpoint serving /metrics");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_snapshot_renders_phase_counts_each_dpu_and_each_node() {
        let s = Snapshot {
            dpus: vec![
                ("d1".into(), "n1".into(), DpuPhase::Ready),
                ("d2".into(), "n1".into(), DpuPhase::Error),
                ("d3".into(), "n2".into(), DpuPhase::Ready),
            ],
            nodes: vec![("n1".into(), true), ("n2".into(), false)],
        };
        let text = exposition::to_text_004(&s.render()).unwrap();
        assert_eq!(
            value(&text, "hostplane_coordinator_dpus{phase=\"Ready\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "hostplane_coordinator_dpus{phase=\"Error\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "hostplane_coordinator_dpus{phase=\"OSInstalling\"}"),
            Some(0.0),
            "every phase, 0 included"
        );
        assert_eq!(
            text.matches("hostplane_coordinator_dpus{").count(),
            13,
            "the 13 phases, not Unspecified: {text}"
        );
        assert_eq!(
            value(
                &text,
                "hostplane_coordinator_dpu_phase{dpu=\"d2\",node=\"n1\",phase=\"Error\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(text.matches("hostplane_coordinator_dpu_phase{").count(), 3);
        assert_eq!(
            value(&text, "hostplane_coordinator_node_reachable{node=\"n1\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "hostplane_coordinator_node_reachable{node=\"n2\"}"),
            Some(0.0)
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }

    #[test]
    fn a_snapshot_reads_the_dpus_and_nodes_of_the_view() {
        use hostplane_proto::v1::{Dpu, DpuSpec, DpuStatus, Node, NodeStatus};
        let mut view = View::default();
        let dpu = |node: &str, phase: Option<DpuPhase>| Dpu {
            spec: Some(DpuSpec {
                node: node.into(),
                ..Default::default()
            }),
            status: phase.map(|p| DpuStatus {
                phase: p as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        view.dpus.insert("d1".into(), dpu("n1", Some(DpuPhase::Ready)));
        view.dpus.insert("d2".into(), dpu("n2", None));
        let node = |reachable: Option<bool>| Node {
            status: reachable.map(|reachable| NodeStatus {
                reachable,
                ..Default::default()
            }),
            ..Default::default()
        };
        view.nodes.insert("n1".into(), node(Some(true)));
        view.nodes.insert("n2".into(), node(Some(false)));
        view.nodes.insert("n3".into(), node(None));
        assert_eq!(
            Snapshot::of(&view),
            Snapshot {
                dpus: vec![
                    ("d1".into(), "n1".into(), DpuPhase::Ready),
                    ("d2".into(), "n2".into(), DpuPhase::Unspecified),
                ],
                nodes: vec![("n1".into(), true), ("n2".into(), false), ("n3".into(), false)],
            }
        );
    }

    #[test]
    fn every_hub_series_is_in_a_scrape_with_what_was_recorded() {
        // The Hub is process-wide: other tests may record too, so counts are "at least".
        hub().command_latency_seconds.observe(0.002);
        hub().store_batch_writes.observe(3.0);
        hub().desired_states_sent.inc();
        let text = exposition::to_text_004(&Snapshot::default().render()).unwrap();
        for series in [
            "hostplane_coordinator_agents_connected ",
            "hostplane_coordinator_watch_subscribers ",
            "hostplane_coordinator_reconcile_pass_seconds_count ",
            "hostplane_coordinator_store_write_seconds_count ",
            "hostplane_coordinator_nacks_total ",
            "hostplane_coordinator_leader ",
            "hostplane_coordinator_leader_epoch ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(series)),
                "no {series:?} in {text}"
            );
        }
        let at_least = |series: &str, min: f64| {
            let v = value(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"));
            assert!(v >= min, "{series} = {v}, expected at least {min}");
        };
        at_least("hostplane_coordinator_command_latency_seconds_count", 1.0);
        at_least(
            "hostplane_coordinator_command_latency_seconds_bucket{le=\"0.0025\"}",
            1.0,
        );
        at_least("hostplane_coordinator_store_batch_writes_sum", 3.0);
        at_least("hostplane_coordinator_desired_states_sent_total", 1.0);
        // Every renewal result is a series from the start.
        for result in ["ok", "lost", "error"] {
            at_least(
                &format!("hostplane_coordinator_lease_renewals_total{{result=\"{result}\"}}"),
                0.0,
            );
        }
    }

    #[test]
    fn metrics_listen_is_read_checked_and_typos_are_refused() {
        use crate::config::Config;
        let origin = std::path::Path::new("coordinator.yaml");
        let cfg = Config::from_yaml("insecure: true\nmetrics:\n  listen: 127.0.0.1:9465\n", origin).unwrap();
        assert_eq!(cfg.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
        cfg.validate().unwrap();
        assert_eq!(Config::default().metrics.listen, None, "off by default");
        let same = Config::from_yaml(
            "listen: 127.0.0.1:50051\nmetrics:\n  listen: 127.0.0.1:50051\n",
            origin,
        )
        .unwrap();
        let e = same.validate().unwrap_err().to_string();
        assert!(e.contains("metrics.listen") && e.contains("differ"), "{e}");
        let e = Config::from_yaml("metrics:\n  port: 9465\n", origin)
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        let e = Config::from_yaml("metrics:\n  listen: everywhere\n", origin)
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics") || e.contains("listen"), "{e}");
    }
}
