//! The cap enforcer, on top of the device facets: the agent enforces the
//! caps of its desired state by the best means the node has — the BMC's
//! power limit over Redfish for the whole node
//! ([`BmcNodeLimiter`](super::bmc::BmcNodeLimiter)), NVML power limits
//! per GPU ([`NvmlLimiter`](super::nvml::NvmlLimiter)), RAPL constraints per
//! CPU package and memory domain, RAPL psys for the node when there is no
//! BMC ([`RaplLimiter`](super::rapl::RaplLimiter)) — each a [`Limiter`] —
//! and reports, per device, what was requested and what the device says it
//! enforces.
//!
//! The caps come with a lease: when the agent has not heard from the
//! coordinator for that long it applies the policy's safe node cap on its
//! own, rather than leaving the node at whatever the last allocation was
//! (which assumed the other nodes' caps held). It goes back to the
//! coordinator's caps as soon as it hears from it again.
//!
//! Devices the agent never limited are never touched; when a cap is lifted
//! the device gets back the limit it had before the agent changed it. Which
//! devices the agent limited, and the limits they had before, are kept in
//! `<state_dir>/power-caps.json`, so a restart neither forgets to lift a cap
//! removed meanwhile nor takes the agent's own cap for the device's original.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use hostplane_proto::v1::{CapStatus, PowerCapReport, PowerCaps, PowerElement, power_limit};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The `power.caps` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapsConfig {
    /// Enforce the coordinator's caps at all (false: report them as not enforced).
    pub enabled: bool,
    /// Re-apply the caps this often (a BMC or driver reset loses them).
    #[serde(with = "humantime_serde")]
    pub reverify_interval: Duration,
    /// Lease used when the desired state carries caps without one.
    #[serde(with = "humantime_serde")]
    pub default_lease: Duration,
}

impl Default for CapsConfig {
    fn default() -> Self {
        CapsConfig {
            enabled: true,
            reverify_interval: Duration::from_secs(30),
            default_lease: Duration::from_secs(60),
        }
    }
}

/// One device the agent can limit.
/// Why a limit could not be set. The enforcer branches on
/// [`LimitError::is_transient`]: a means that is not ready yet is tried
/// again at the next tick rather than after `reverify_interval`.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The BMC has not been reached yet (the poller is still connecting).
    #[error("the BMC at {url} has not been reached yet (see the agent log for why)")]
    BmcNotReached { url: String },
    #[error("permission denied writing {} (the agent needs root or write access to the powercap files)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("NVML refused to set the power limit of GPU {gpu}: no permission (the agent must run as root)")]
    NvmlNoPermission { gpu: u32 },
    #[error(transparent)]
    Redfish(#[from] super::bmc::RedfishError),
    /// A sysfs file the limiter reads (RAPL's constraint) gave no number.
    #[error(transparent)]
    Read(#[from] super::ReadError),
    /// Any other failure of the device; the text names the file or GPU.
    #[error("{0}")]
    Device(String),
}

impl LimitError {
    /// Worth trying again soon: the means may be ready in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            LimitError::BmcNotReached { .. } => true,
            LimitError::PermissionDenied { .. }
            | LimitError::NvmlNoPermission { .. }
            | LimitError::Redfish(_)
            | LimitError::Read(_)
            | LimitError::Device(_) => false,
        }
    }
}

pub trait Limiter: Send + Sync {
    fn element(&self) -> PowerElement;
    /// e.g. `node`, `gpu0:NVIDIA H100:GPU-…`, `intel-rapl:0`.
    fn device(&self) -> &str;
    /// `redfish`, `nvml`, `rapl`.
    fn method(&self) -> &'static str;
    /// The limits the device accepts, in watts (min, max), when it says.
    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>>;
    /// Set `Some(watts)`, or lift the limit with None (back to the device's
    /// own default or the value it had before the agent changed it).
    /// Returns the limit the device reports after the change (None: none).
    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>>;
    /// The device's own limit from before the agent changed it, when the
    /// limiter restores one on lift (RAPL: µW). Saved across restarts.
    fn original(&self) -> Option<u64> {
        None
    }
    /// Give back [`Limiter::original`] as saved before a restart.
    fn restore_original(&self, _original: Option<u64>) {}
}

/// What `<state_dir>/power-caps.json` holds: the devices the agent has
/// limited and, per device, its original limit when the limiter keeps one.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct CapsState {
    touched: std::collections::BTreeMap<String, Option<u64>>,
}

/// Applies caps through the node's limiters and says what took effect.
pub struct Enforcer {
    limiters: Vec<Box<dyn Limiter>>,
    /// Devices the agent has limited (only these are ever reset).
    touched: Mutex<HashMap<String, ()>>,
    /// Where `touched` and the originals are saved (None: memory only).
    state_file: Option<PathBuf>,
    /// A limiter failed transiently during the last enforcement.
    retry_soon: std::sync::atomic::AtomicBool,
}

/// Every means this host has to enforce caps, best first: the BMC's node
/// limit when there is a BMC (`bmc`), RAPL constraints (psys for the node
/// only without a BMC: the BMC's node limit covers more than psys), NVML
/// limits per GPU. Reads sysfs and NVML: blocking.
pub fn discover_limiters(
    sysfs_root: &std::path::Path,
    bmc: Option<super::bmc::BmcLink>,
) -> Vec<Box<dyn Limiter>> {
    use super::bmc::BmcNodeLimiter;
    use super::nvml::NvmlLimiter;
    use super::rapl::RaplLimiter;
    let mut limiters: Vec<Box<dyn Limiter>> = Vec::new();
    let has_bmc = bmc.is_some();
    if let Some(link) = bmc {
        limiters.push(Box::new(BmcNodeLimiter::new(link)));
    }
    for l in RaplLimiter::discover(sysfs_root) {
        if !(has_bmc && l.element() == PowerElement::Node) {
            limiters.push(Box::new(l));
        }
    }
    for l in NvmlLimiter::discover() {
        limiters.push(Box::new(l));
    }
    limiters
}

impl Enforcer {
    pub fn new(limiters: Vec<Box<dyn Limiter>>) -> Enforcer {
        Enforcer {
            limiters,
            touched: Mutex::new(HashMap::new()),
            state_file: None,
            retry_soon: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Keep the devices the agent limited, and their original limits, in
    /// `path`, loading what an earlier run left there. A file that cannot be
    /// read is logged and treated as empty (nothing was limited). Blocking.
    pub fn with_state_file(mut self, path: PathBuf) -> Enforcer {
        let state: CapsState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "power caps state unreadable; starting without it");
                CapsState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CapsState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "power caps state unreadable; starting without it");
                CapsState::default()
            }
        };
        if !state.touched.is_empty() {
            tracing::info!(
                devices = ?state.touched.keys().collect::<Vec<_>>(),
                "devices limited by an earlier run; their caps are lifted if the desired state has none"
            );
        }
        for (device, original) in &state.touched {
            self.touched().insert(device.clone(), ());
            if let Some(l) = self.limiters.iter().find(|l| l.device() == device) {
                l.restore_original(*original);
            }
        }
        self.state_file = Some(path);
        self
    }

    /// Write the touched set and the originals (atomically: a temporary
    /// file, then a rename) on a blocking thread. A failure is logged:
    /// enforcement goes on.
    pub async fn persist(&self) {
        let Some((path, bytes)) = self.state_bytes() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || write_state(&path, &bytes)).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot save the power caps state");
        }
    }

    /// The state file and what goes in it (no I/O).
    fn state_bytes(&self) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.state_file.clone()?;
        let touched: Vec<String> = self.touched().keys().cloned().collect();
        let state = CapsState {
            touched: touched
                .into_iter()
                .map(|d| {
                    let orig = self
                        .limiters
                        .iter()
                        .find(|l| l.device() == d)
                        .and_then(|l| l.original());
                    (d, orig)
                })
                .collect(),
        };
        match serde_json::to_vec_pretty(&state) {
            Ok(b) => Some((path, b)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot encode the power caps state");
                None
            }
        }
    }

    /// Whether a limiter failed transiently since the last call (a BMC not
    /// reached yet): the caps task then enforces again at its next tick.
    pub fn take_retry_soon(&self) -> bool {
        self.retry_soon.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    /// The means, for the log: `node via redfish, 8 gpu via nvml, ...`.
    pub fn describe(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for l in &self.limiters {
            let k = format!("{} via {}", element_name(l.element()), l.method());
            match counts.iter_mut().find(|(n, _)| *n == k) {
                Some((_, c)) => *c += 1,
                None => counts.push((k, 1)),
            }
        }
        if counts.is_empty() {
            return "none".into();
        }
        counts
            .into_iter()
            .map(|(k, c)| if c == 1 { k } else { format!("{c}x {k}") })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Enforce `caps` (None: uncapped); `safe`: the lease lapsed, use the safe node cap.
    pub async fn enforce(&self, version: u64, caps: Option<&PowerCaps>, safe: bool) -> PowerCapReport {
        let node_req = caps.and_then(|c| {
            let w = if safe && c.safe_node_watts > 0.0 {
                c.safe_node_watts
            } else {
                c.node_watts
            };
            (w > 0.0).then_some(w)
        });
        let mut out = Vec::new();
        let has_node_limiter = self.limiters.iter().any(|l| l.element() == PowerElement::Node);
        if let Some(w) = node_req
            && !has_node_limiter
        {
            out.push(CapStatus {
                element: PowerElement::Node as i32,
                device: "node".into(),
                requested_watts: w,
                effective_watts: 0.0,
                method: String::new(),
                error: "no means to enforce a node cap on this host: no BMC (power.bmc.url) and no RAPL psys zone"
                    .into(),
            });
        }
        for l in &self.limiters {
            let wanted = match l.element() {
                PowerElement::Node => Want::Watts(node_req),
                el => device_limit(caps, el),
            };
            let touched = self.touched().contains_key(l.device());
            if matches!(wanted, Want::Watts(None)) && !touched {
                continue;
            }
            out.push(self.apply_one(l.as_ref(), wanted).await);
        }
        PowerCapReport {
            version,
            caps: out,
            safe_mode: safe,
        }
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, HashMap<String, ()>> {
        self.touched.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn apply_one(&self, l: &dyn Limiter, wanted: Want) -> CapStatus {
        let mut st = CapStatus {
            element: l.element() as i32,
            device: l.device().to_string(),
            method: l.method().to_string(),
            ..Default::default()
        };
        let range = l.range().await;
        let requested = match wanted {
            Want::Watts(w) => w,
            Want::Percent(p) => match range {
                Some((_, max)) => Some(max * p / 100.0),
                None => {
                    st.error = format!(
                        "a limit of {p}% needs the device's maximum, which {} does not report",
                        l.device()
                    );
                    return st;
                }
            },
        };
        st.requested_watts = requested.unwrap_or(0.0);
        let mut note = None;
        let to_set = requested.map(|w| match range {
            Some((min, _)) if w < min => {
                note = Some(format!(
                    "requested {w:.0} W is below the {min:.0} W minimum the device accepts; applied {min:.0} W"
                ));
                min
            }
            Some((_, max)) if w > max => max,
            _ => w,
        });
        match l.apply(to_set).await {
            Ok(effective) => {
                st.effective_watts = effective.unwrap_or(0.0);
                if let Some(n) = note {
                    st.error = n;
                }
                let changed = if to_set.is_some() {
                    self.touched().insert(l.device().to_string(), ()).is_none()
                } else {
                    self.touched().remove(l.device()).is_some()
                };
                if changed {
                    self.persist().await;
                }
            }
            Err(e) => {
                if e.is_transient() {
                    self.retry_soon.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                st.error = e.to_string();
            }
        }
        st
    }
}

enum Want {
    Watts(Option<f64>),
    Percent(f64),
}

fn device_limit(caps: Option<&PowerCaps>, el: PowerElement) -> Want {
    let l = caps.and_then(|c| c.device_limits.iter().find(|l| l.element() == el));
    match l.and_then(|l| l.value) {
        Some(power_limit::Value::Watts(w)) if w > 0.0 => Want::Watts(Some(w)),
        Some(power_limit::Value::Percent(p)) if p > 0.0 => Want::Percent(p),
        _ => Want::Watts(None),
    }
}

pub fn element_name(el: PowerElement) -> &'static str {
    match el {
        PowerElement::Node => "node",
        PowerElement::Gpu => "gpu",
        PowerElement::Cpu => "cpu",
        PowerElement::Memory => "memory",
        PowerElement::Unspecified => "unspecified",
    }
}

/// Write `bytes` to `path` through a temporary file and a rename; a failure is logged.
fn write_state(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("json.tmp");
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "cannot save the power caps state");
    }
}

// ---------------------------------------------------------------- the task

/// What the session tells the caps task.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredCaps {
    pub version: u64,
    pub caps: Option<PowerCaps>,
}

/// The session's handle on the caps task.
pub struct CapsHandle {
    desired: watch::Sender<Option<DesiredCaps>>,
    heard: watch::Sender<Instant>,
    pub reports: mpsc::Receiver<PowerCapReport>,
}

impl CapsHandle {
    /// The caps of a desired state just applied (or restored from disk at start).
    pub fn set(&self, version: u64, caps: Option<PowerCaps>) {
        let d = DesiredCaps { version, caps };
        self.desired.send_if_modified(|cur| {
            if cur.as_ref() == Some(&d) {
                false
            } else {
                *cur = Some(d);
                true
            }
        });
    }

    /// The coordinator was heard from just now (any message).
    pub fn heard(&self) {
        self.heard.send_replace(Instant::now());
    }
}

/// Start the caps task: enforces each new set of caps, re-applies them every
/// `reverify_interval`, switches to the safe cap when the coordinator has
/// been silent longer than the caps' lease and back when it is heard again,
/// and sends a report whenever what it enforces changes. The task belongs to
/// `tasks`; on `shutdown` it finishes the enforcement in progress, saves the
/// caps state and ends.
pub fn spawn(
    enforcer: Enforcer,
    cfg: CapsConfig,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> CapsHandle {
    let (desired_tx, mut desired_rx) = watch::channel::<Option<DesiredCaps>>(None);
    let (heard_tx, heard_rx) = watch::channel(Instant::now());
    let (report_tx, reports) = mpsc::channel(8);
    tracing::info!(means = %enforcer.describe(), "power caps: enforcement means found");
    tasks.spawn(
        async move {
            let mut safe = false;
            let mut last: Option<PowerCapReport> = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reverify_at = Instant::now() + cfg.reverify_interval;
            // The desired caps last enforced.
            let mut applied: Option<DesiredCaps> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = desired_rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                    }
                    _ = tick.tick() => {}
                };
                let Some(d) = desired_rx.borrow_and_update().clone() else {
                    continue;
                };
                let changed = applied.as_ref() != Some(&d);
                let lease = d
                    .caps
                    .as_ref()
                    .map(|c| match c.lease_seconds {
                        0 => cfg.default_lease,
                        s => Duration::from_secs(u64::from(s)),
                    })
                    .unwrap_or(cfg.default_lease);
                let silent = heard_rx.borrow().elapsed();
                let should_be_safe = d.caps.is_some() && silent > lease;
                let due = Instant::now() >= reverify_at;
                if !(changed || due || should_be_safe != safe) {
                    continue;
                }
                if should_be_safe != safe {
                    safe = should_be_safe;
                    if safe {
                        tracing::warn!(
                            silent = ?silent, lease = ?lease,
                            safe_cap = d.caps.as_ref().map_or(0.0, |c| c.safe_node_watts),
                            "no word from the coordinator for longer than the power caps' lease; applying the safe cap"
                        );
                    } else {
                        tracing::info!("the coordinator is back; applying its power caps again");
                    }
                }
                reverify_at = Instant::now() + cfg.reverify_interval;
                applied = Some(d.clone());
                let report = if cfg.enabled {
                    enforcer.enforce(d.version, d.caps.as_ref(), safe).await
                } else {
                    disabled_report(d.version, d.caps.as_ref())
                };
                if enforcer.take_retry_soon() {
                    // A means that was not ready (the BMC still connecting): again at the next tick.
                    reverify_at = Instant::now();
                }
                if last.as_ref() != Some(&report) {
                    log_report(&report);
                    last = Some(report.clone());
                    if report_tx.send(report).await.is_err() {
                        break;
                    }
                }
            }
            // Whatever was limited stays on record, so the next start lifts
            // or keeps it (the drain's "persist caps state").
            enforcer.persist().await;
            tracing::debug!("power caps stopped; state saved");
        }
        .instrument(tracing::info_span!("power_caps")),
    );
    CapsHandle {
        desired: desired_tx,
        heard: heard_tx,
        reports,
    }
}

fn disabled_report(version: u64, caps: Option<&PowerCaps>) -> PowerCapReport {
    PowerCapReport {
        version,
        caps: caps
            .filter(|c| c.node_watts > 0.0)
            .map(|c| CapStatus {
                element: PowerElement::Node as i32,
                device: "node".into(),
                requested_watts: c.node_watts,
                effective_watts: 0.0,
                method: String::new(),
                error: "cap enforcement is disabled on this agent (power.caps.enabled: false)".into(),
            })
            .into_iter()
            .collect(),
        safe_mode: false,
    }
}

fn log_report(r: &PowerCapReport) {
    for c in &r.caps {
        if c.error.is_empty() {
            tracing::info!(device = %c.device, method = %c.method, requested = c.requested_watts,
                effective = c.effective_watts, safe = r.safe_mode, "power cap applied");
        } else {
            tracing::warn!(device = %c.device, method = %c.method, requested = c.requested_watts,
                effective = c.effective_watts, error = %c.error, "power cap not fully applied");
        }
    }
}

#[cfg(test)]
mod tests;
