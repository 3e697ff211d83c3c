//! Host networking through netlink and sysfs: SR-IOV VF counts, bridges and
//! their ports, MTU, addresses and routes, reconciled (never replayed) and
//! kept true: netlink change events trigger a repair of anything the agent
//! owns. See `docs/network.md`.
//!
//! One owner task holds the desired state and the ownership record; callers
//! talk to it through a [`NetHandle`]. The owner and its netlink connections'
//! driver tasks all run in the caller's task tracker ([`start_in`]) and end
//! with it. The agent config's `network:` section is [`NetConfig`] (defined
//! and checked in `config.rs`).
use std::path::PathBuf;
use std::time::Duration;

use hostplane_proto::v1::{DpuNetwork, NetworkObjectStatus, NetworkReport};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod check;
pub mod cli;
mod config;
pub mod file;
pub mod model;
pub mod netlink;
pub mod owned;
pub mod reconcile;
pub mod routes;
pub mod sysfs;
pub mod vf;

pub use config::{NetConfig, OWNED_FILE};

use model::Desired;
use netlink::Netlink;
use owned::Owned;
use reconcile::Outcome;
use sysfs::Sysfs;

/// `ifalias` prefix on interfaces the agent created: `hostplane:<dpu>`.
pub const OWNER_TAG: &str = "hostplane:";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("dpu {dpu}: host_network.{field}: {reason}")]
    Invalid {
        dpu: String,
        field: String,
        reason: String,
    },
    #[error("{op} {ifname}: {source}")]
    Netlink {
        op: &'static str,
        ifname: String,
        source: rtnetlink::Error,
    },
    #[error("no interface named {ifname}")]
    NoSuchInterface { ifname: String },
    #[error("{reason}")]
    Port { reason: String },
    #[error("interface {ifname} exists and was not created by hostplane; it is left untouched")]
    Foreign { ifname: String },
    #[error("{op} {path}: {source}")]
    Sysfs {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("PF {pf}: VF(s) {missing:?} have no netdev after {after:?}")]
    VfsMissing {
        pf: String,
        missing: Vec<u32>,
        after: Duration,
    },
    #[error("PF {pf}: {wanted} VFs requested but sriov_totalvfs is {total}")]
    TooManyVfs { pf: String, wanted: u32, total: u32 },
    #[error("network namespace {netns}: {source}")]
    Netns { netns: String, source: std::io::Error },
    #[error("network state file {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("the network manager has stopped")]
    Stopped,
}

/// Check a desired state without touching anything.
pub fn validate(nets: &[DpuNetwork]) -> Result<(), NetError> {
    model::build(nets).map(|_| ())
}

/// What would change to reach `nets`, changing nothing.
pub async fn diff(cfg: &NetConfig, nets: &[DpuNetwork]) -> Result<Vec<String>, NetError> {
    let desired = model::build(nets)?;
    let sysfs = Sysfs::new(&cfg.sysfs_root).with_vf_wait(cfg.vf_wait);
    reconcile::preflight(&sysfs, &desired).await?;
    let nl = Netlink::open(cfg.netns.as_deref())?;
    let mut owned = match &cfg.owned_file {
        Some(path) => Owned::load(path)?,
        None => Owned::default(),
    };
    let out = reconcile::reconcile(&nl, &sysfs, &desired, &mut owned, true).await?;
    Ok(out.log)
}

enum Request {
    Set(
        Vec<DpuNetwork>,
        oneshot::Sender<Result<Vec<NetworkReport>, NetError>>,
    ),
}

/// Labels of the per-Dpu network metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DpuLabel {
    pub dpu: String,
}

/// The network manager's metrics (cheap to clone; clones share the values).
#[derive(Debug, Clone, Default)]
pub struct NetMetrics {
    /// Drift repairs, per Dpu.
    pub drift_repairs:
        prometheus_client::metrics::family::Family<DpuLabel, prometheus_client::metrics::counter::Counter>,
    /// Netlink and sysfs writes made, all reconciles together.
    pub changes: prometheus_client::metrics::counter::Counter,
    /// Reconcile passes that failed as a whole (a netlink error).
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl NetMetrics {
    /// Register under `registry` (give it a `hostplane_network` prefix).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "drift_repairs",
            "Host network drift repairs, per Dpu",
            self.drift_repairs.clone(),
        );
        registry.register(
            "changes",
            "Host network changes made (netlink and sysfs writes)",
            self.changes.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Host network reconciles that failed",
            self.failures.clone(),
        );
    }
}

/// Talks to the network owner task.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Request>,
    reports: broadcast::Sender<NetworkReport>,
    metrics: NetMetrics,
}

impl NetHandle {
    /// Replace the whole desired set (every Dpu's network on this host) and
    /// reconcile now. Returns one report per Dpu. An invalid set changes nothing.
    pub async fn set_desired(&self, nets: Vec<DpuNetwork>) -> Result<Vec<NetworkReport>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Set(nets, reply))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// The manager's metrics, to register in the agent's registry.
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// Reports published after each drift repair.
    pub fn subscribe(&self) -> broadcast::Receiver<NetworkReport> {
        self.reports.subscribe()
    }
}

/// Start the owner task (and its netlink watcher) until `shutdown`, in a
/// tracker of its own (tests and tools that only cancel); the daemon uses
/// [`start_in`].
pub fn start(cfg: NetConfig, shutdown: CancellationToken) -> Result<NetHandle, NetError> {
    start_in(cfg, &TaskTracker::new(), shutdown)
}

/// [`start`] with the owner task and its netlink connections' driver tasks
/// in `tasks`, so the caller can wait for them all to end (the last repair
/// done, the drivers aborted when the owner drops its connections) after
/// cancelling `shutdown`.
pub fn start_in(
    cfg: NetConfig,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<NetHandle, NetError> {
    let nl = Netlink::open_in(cfg.netns.as_deref(), tasks)?;
    let events = Netlink::watch_in(cfg.netns.as_deref(), tasks)?;
    let (tx, rx) = mpsc::channel(8);
    let (reports, _) = broadcast::channel(64);
    let metrics = NetMetrics::default();
    let owned = match &cfg.owned_file {
        Some(path) => Owned::load(path).unwrap_or_else(|e| {
            // Starting empty is the safe side: an address the agent cannot
            // prove it added is never removed.
            tracing::error!(error = %e, "the address record is unreadable; starting with an empty one");
            Owned::default()
        }),
        None => Owned::default(),
    };
    let owner = Owner {
        metrics: metrics.clone(),
        nl,
        sysfs: Sysfs::new(&cfg.sysfs_root).with_vf_wait(cfg.vf_wait),
        desired: Desired::default(),
        nets: Vec::new(),
        owned,
        owned_file: cfg.owned_file.clone(),
        drift: Default::default(),
        reports: reports.clone(),
    };
    tasks.spawn(
        owner
            .run(rx, events, cfg.drift_debounce, shutdown)
            .instrument(tracing::info_span!("net")),
    );
    Ok(NetHandle { tx, reports, metrics })
}

#[derive(Debug, Clone, Default)]
struct Drift {
    repairs: u64,
    last: String,
    at_ms: i64,
}

struct Owner {
    metrics: NetMetrics,
    nl: Netlink,
    sysfs: Sysfs,
    desired: Desired,
    nets: Vec<DpuNetwork>,
    owned: Owned,
    owned_file: Option<PathBuf>,
    /// Per Dpu: drift repairs since start, the last one, and when.
    drift: std::collections::BTreeMap<String, Drift>,
    reports: broadcast::Sender<NetworkReport>,
}

impl Owner {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut events: netlink::Events,
        debounce: Duration,
        shutdown: CancellationToken,
    ) {
        // False once the event stream has ended: drift is no longer watched,
        // requests and `shutdown` still are.
        let mut watching = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                req = rx.recv() => match req {
                    None => return,
                    Some(Request::Set(nets, reply)) => {
                        let r = self.set(nets).await;
                        // Our own changes echo back as events: drop them.
                        events.drain();
                        let _ = reply.send(r);
                    }
                },
                ev = futures::StreamExt::next(&mut events), if watching => {
                    if ev.is_none() {
                        tracing::warn!("netlink event stream ended; drift is no longer watched");
                        watching = false;
                        continue;
                    }
                    tokio::time::sleep(debounce).await;
                    events.drain();
                    self.repair().await;
                    events.drain();
                }
            }
        }
    }

    /// Write the address record if it changed since `before`.
    async fn save_owned(&self, before: &Owned) {
        if let Some(path) = &self.owned_file
            && *before != self.owned
            && let Err(e) = self.owned.save_async(path).await
        {
            tracing::error!(error = %e, "cannot save the address record");
        }
    }

    /// One reconcile pass of `desired`, the address record saved after it.
    async fn pass(&mut self, desired: &Desired) -> Result<Outcome, NetError> {
        let before = self.owned.clone();
        let r = reconcile::reconcile(&self.nl, &self.sysfs, desired, &mut self.owned, false).await;
        self.save_owned(&before).await;
        r
    }

    async fn set(&mut self, nets: Vec<DpuNetwork>) -> Result<Vec<NetworkReport>, NetError> {
        let desired = model::build(&nets)?;
        // Checked against the host before the state is taken: a refused
        // state changes nothing and the previous one stays in force.
        reconcile::preflight(&self.sysfs, &desired).await?;
        let r = self.pass(&desired).await;
        if let Err(e @ NetError::Invalid { .. }) = r {
            return Err(e);
        }
        self.desired = desired;
        self.drift.retain(|dpu, _| nets.iter().any(|n| &n.dpu == dpu));
        self.nets = nets;
        let out = r.inspect_err(|_| {
            self.metrics.failures.inc();
        })?;
        self.metrics.changes.inc_by(u64::from(out.changes));
        for l in &out.log {
            tracing::info!(change = %l, "host network");
        }
        Ok(self.reports_of(&out))
    }

    async fn repair(&mut self) {
        let desired = self.desired.clone();
        let pass = match reconcile::preflight(&self.sysfs, &desired).await {
            Ok(()) => self.pass(&desired).await,
            Err(e) => Err(e),
        };
        match pass {
            Ok(out) if out.changes > 0 => {
                let now = hostplane_common::time::now_ms();
                tracing::warn!(changes = %out.log.join("; "), "host network drift repaired");
                // Count and report the drift on the Dpus whose objects were repaired, only.
                let hit: Vec<String> = out.by_dpu.keys().filter(|d| !d.is_empty()).cloned().collect();
                self.metrics.changes.inc_by(u64::from(out.changes));
                for dpu in &hit {
                    self.metrics
                        .drift_repairs
                        .get_or_create(&DpuLabel { dpu: dpu.clone() })
                        .inc();
                    let d = self.drift.entry(dpu.clone()).or_default();
                    d.repairs += 1;
                    d.last = format!("repaired drift: {}", out.by_dpu[dpu].join("; "));
                    d.at_ms = now;
                }
                for r in self.reports_of(&out).into_iter().filter(|r| hit.contains(&r.dpu)) {
                    let _ = self.reports.send(r);
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.failures.inc();
                tracing::warn!(error = %e, "host network repair failed")
            }
        }
    }

    fn reports_of(&self, out: &Outcome) -> Vec<NetworkReport> {
        self.nets
            .iter()
            .map(|n| {
                let objects: Vec<NetworkObjectStatus> = out
                    .objects
                    .iter()
                    .filter(|o| o.dpu == n.dpu)
                    .map(|o| NetworkObjectStatus {
                        object: o.object.clone(),
                        applied: o.error.is_none(),
                        error: o.error.clone().unwrap_or_default(),
                    })
                    .collect();
                let drift = self.drift.get(&n.dpu).cloned().unwrap_or_default();
                NetworkReport {
                    dpu: n.dpu.clone(),
                    applied: objects.iter().all(|o| o.applied),
                    objects,
                    changes: out.changes,
                    drift_repairs: drift.repairs,
                    last_drift: drift.last,
                    last_drift_at_ms: drift.at_ms,
                }
            })
            .collect()
    }
}
