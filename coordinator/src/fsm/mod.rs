//! The DPU state machine and the controllers around it (Deployment -> Dpus,
//! rollout, phase timeouts, graceful deletion). See docs/state-machine.md.
//!
//! One owner task, the [`Reconciler`], plans on the store's shared in-memory
//! view (`Store::view`, current as of the last commit), wakes on the store's
//! committed events, on command results (announced as desired-state changes)
//! and on the earliest phase deadline, and runs a pass: plan every decision on
//! the view (its read guard held only while planning), then write them in one
//! transaction. Everything it knows is in the store, so a restarted Reconciler
//! resumes each Dpu where it was.
mod apply;
mod commands;
mod config;
mod dirty;
mod dpu;
mod incremental;
pub(crate) mod nicfw;
mod plan;
pub mod testing;
pub(crate) mod util;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hostplane_proto::v1::{EventType, WatchEvent, resource};

use crate::store::{Store, StoreError, View, now_ms};

pub use config::{FsmConfig, PhaseTimeouts};
pub use dpu::{
    BOOT_ID_MARK, COND_MAINTENANCE, COND_REBOOT_HELD, COND_REBOOT_PENDING, COND_REFERENCES, COND_UNREACHABLE,
};
pub use plan::{COND_CONFLICT, COND_ROLLOUT};

use util::{network_phase, phase_of};

#[derive(Debug, thiserror::Error)]
pub enum FsmError {
    #[error("reconciler store access failed: {0}")]
    Store(#[from] StoreError),
}

/// The single owner of Dpu state transitions.
pub struct Reconciler {
    store: Store,
    cfg: FsmConfig,
}

struct PassOutcome {
    wrote: bool,
    conflicts: usize,
}

impl Reconciler {
    pub fn new(store: Store, cfg: FsmConfig) -> Reconciler {
        Reconciler { store, cfg }
    }

    /// Run until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("reconciler");
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) {
        // Subscribe before reading the view: the view is updated before an event is broadcast,
        // so nothing falls between the two.
        let mut events = self.store.subscribe();
        let mut desired = self.store.subscribe_desired();
        let mut pci = PciWatch::load(&self.store.view());
        // What changed since the last pass (the first pass is full).
        let mut tracker = dirty::Tracker::new();
        let mut next_resync = Instant::now() + self.cfg.resync;
        tracing::info!(resync = ?self.cfg.resync, "reconciler started");
        loop {
            // Take in everything that happened since the last pass.
            loop {
                match events.try_recv() {
                    Ok(ev) => {
                        pci.event(&ev);
                        tracker.event(&ev);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "reconciler fell behind the store's events; resyncing");
                        pci = PciWatch::load(&self.store.view());
                        tracker.resync();
                    }
                    Err(TryRecvError::Closed) => return,
                }
            }
            loop {
                match desired.try_recv() {
                    Ok(d) => tracker.desired(&d.node),
                    Err(TryRecvError::Lagged(_)) => tracker.resync(),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return,
                }
            }
            // The resync is due even when changes never stop coming.
            if Instant::now() >= next_resync {
                next_resync = Instant::now() + self.cfg.resync;
                self.prune_commands().await;
                // The safety net: every Dpu, every command result and every deadline re-read.
                tracker.resync();
            }
            let pci_changed = std::mem::take(&mut pci.changed);
            let res = self.pass(&pci_changed, &mut tracker).await;
            match &res {
                Err(_) => {
                    pci.changed.extend(pci_changed);
                    tracker.resync();
                }
                // The objects changed under the pass: their events are on their way, but a full
                // pass does not depend on it.
                Ok(out) if out.conflicts > 0 => tracker.resync(),
                Ok(_) => {}
            }
            let deadline = match res {
                Ok(out) if out.wrote => {
                    // Our own writes come back as events: take them in and go again.
                    tokio::task::yield_now().await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Ok(_) => tracker.next_deadline(),
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile pass failed; retrying in 1s");
                    if sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let mut wake = next_resync;
            if let Some(d) = deadline {
                let wait = Duration::from_millis((d - now_ms()).max(0) as u64 + 1);
                wake = wake.min(Instant::now() + wait);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => {
                    match ev {
                        Ok(ev) => {
                            pci.event(&ev);
                            tracker.event(&ev);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            pci = PciWatch::load(&self.store.view());
                            tracker.resync();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    if sleep_or_shutdown(self.cfg.batch_delay, &shutdown).await { break; }
                }
                d = desired.recv() => {
                    match d {
                        Ok(d) => tracker.desired(&d.node),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => tracker.resync(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    if sleep_or_shutdown(self.cfg.batch_delay, &shutdown).await { break; }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        tracing::info!("reconciler stopped");
    }

    async fn prune_commands(&self) {
        if self.cfg.command_retention.is_zero() {
            return;
        }
        let before = now_ms() - self.cfg.command_retention.as_millis() as i64;
        match self.store.write(move |t| t.prune_commands(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "finished agent commands pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning finished agent commands failed"),
        }
    }

    /// One pass: plan on the store's view (under its read guard, never across an await), then
    /// write the decisions in one transaction. It plans what changed since the last pass
    /// (`incremental`), or every Dpu when the tracker says so (`plan::plan`).
    async fn pass(
        &self,
        pci_changed: &BTreeSet<String>,
        tracker: &mut dirty::Tracker,
    ) -> Result<PassOutcome, FsmError> {
        let started = std::time::Instant::now();
        let (plan, full) = {
            let view = self.store.view();
            let now = now_ms();
            let (mut plan, full) = match tracker.begin(&view, now) {
                None => (plan::plan(&view, &*view, now, &self.cfg), true),
                Some(work) if work.is_empty() && pci_changed.is_empty() => {
                    return Ok(PassOutcome {
                        wrote: false,
                        conflicts: 0,
                    });
                }
                Some(work) => (
                    incremental::plan_changes(&view, &*view, now, &self.cfg, &work, tracker.aggregates()),
                    false,
                ),
            };
            plan.actions.extend(
                network_touches(&view, pci_changed)
                    .into_iter()
                    .map(|node| apply::Action::TouchDesired { node }),
            );
            (plan, full)
        };
        tracker.end(&plan, full);
        tracing::trace!(
            full,
            stepped = plan.stepped,
            actions = plan.actions.len(),
            "reconcile pass planned"
        );
        let out = self.write(plan).await;
        crate::metrics::hub()
            .reconcile_pass_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }

    async fn write(&self, plan: plan::Plan) -> Result<PassOutcome, FsmError> {
        if plan.actions.is_empty() {
            return Ok(PassOutcome {
                wrote: false,
                conflicts: 0,
            });
        }
        let latencies = plan.latencies;
        let applied = self.store.write(move |t| apply::apply(t, plan.actions)).await?;
        for l in latencies {
            crate::metrics::hub().command_latency_seconds.observe(l);
        }
        for name in &applied.created {
            tracing::info!(dpu = %name, "dpu created");
        }
        for (dpu, tr) in &applied.transitions {
            tracing::info!(
                dpu = %dpu,
                from = phase_of(tr.from).display_name(),
                to = phase_of(tr.to).display_name(),
                reason = %tr.reason,
                message = %tr.message,
                "dpu phase transition"
            );
        }
        for (kind, name) in &applied.removed {
            tracing::info!(kind = kind.noun(), name = %name, "removed after graceful deletion");
        }
        if applied.conflicts > 0 {
            tracing::debug!(
                conflicts = applied.conflicts,
                "objects changed during the pass; retrying them"
            );
        }
        Ok(PassOutcome {
            wrote: applied.writes > 0,
            conflicts: applied.conflicts,
        })
    }
}

/// Nodes whose listed host networks name one of `devices`' PCI address: a
/// Device edited under a Dpu whose network is in the desired state.
fn network_touches(view: &View, devices: &BTreeSet<String>) -> BTreeSet<String> {
    if devices.is_empty() {
        return BTreeSet::new();
    }
    let nodes: BTreeSet<&str> = devices
        .iter()
        .filter_map(|name| view.devices.get(name))
        .filter_map(|d| d.spec.as_ref().map(|s| s.node.as_str()))
        .collect();
    nodes
        .into_iter()
        .flat_map(|node| view.dpus_on_node(node))
        .filter(|d| network_phase(d) && !util::being_deleted(&d.metadata))
        .filter_map(|d| d.spec.as_ref())
        .filter(|s| devices.contains(&s.device))
        .map(|s| s.node.clone())
        .collect()
}

/// Devices' PCI addresses as last seen, to tell which changed: a listed host network carries it.
struct PciWatch {
    pci: HashMap<String, String>,
    /// Devices whose `spec.pci_address` changed since the reconciler last took this set.
    changed: BTreeSet<String>,
}

fn pci_of(d: &hostplane_proto::v1::Device) -> String {
    d.spec.as_ref().map(|s| s.pci_address.clone()).unwrap_or_default()
}

impl PciWatch {
    fn load(view: &View) -> PciWatch {
        PciWatch {
            pci: view.devices.iter().map(|(n, d)| (n.clone(), pci_of(d))).collect(),
            changed: BTreeSet::new(),
        }
    }

    fn event(&mut self, ev: &WatchEvent) {
        let Some(r) = &ev.resource else { return };
        let Some(resource::Kind::Device(d)) = &r.kind else {
            return;
        };
        let name = r.name().to_string();
        if ev.r#type == EventType::Deleted as i32 {
            self.pci.remove(&name);
            return;
        }
        let pci = pci_of(d);
        match self.pci.insert(name.clone(), pci.clone()) {
            Some(old) if old != pci => {
                self.changed.insert(name);
            }
            _ => {}
        }
    }
}

/// Sleep; true when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    if d.is_zero() {
        return shutdown.is_cancelled();
    }
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;
