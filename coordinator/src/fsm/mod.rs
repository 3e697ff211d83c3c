//! The DPU state machine and the controllers around it (Deployment -> Dpus,
//! rollout, phase timeouts, graceful deletion). See docs/state-machine.md.
//!
//! One owner task, the [`Reconciler`], keeps an in-memory view of the store
//! (listed once, then followed through the store's committed events), wakes on
//! changes, on command results (announced as desired-state changes) and on the
//! earliest phase deadline, and runs a pass: plan every decision on the view,
//! then write them in one transaction. Everything it knows is in the store, so
//! a restarted Reconciler resumes each Dpu where it was.
mod apply;
mod cache;
mod commands;
mod config;
mod dpu;
mod plan;
pub mod testing;
pub(crate) mod util;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{CommandRow, Store, StoreError, now_ms};

pub use config::{FsmConfig, PhaseTimeouts};
pub use dpu::{
    BOOT_ID_MARK, COND_MAINTENANCE, COND_REBOOT_HELD, COND_REBOOT_PENDING, COND_REFERENCES, COND_UNREACHABLE,
};
pub use plan::{COND_CONFLICT, COND_ROLLOUT};

use cache::Cache;
use util::{is_command_phase, network_phase, phase_of};

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

/// Command rows the reconciler has read; a finished row never changes, an
/// open one is re-read when its node's desired state changes.
#[derive(Default)]
struct CommandView {
    rows: HashMap<String, Option<CommandRow>>,
    dirty_nodes: HashSet<String>,
    refetch_all: bool,
}

struct PassOutcome {
    wrote: bool,
    next_deadline_ms: Option<i64>,
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
        let mut events = self.store.subscribe();
        let mut desired = self.store.subscribe_desired();
        let mut cache: Option<Cache> = None;
        let mut cmds = CommandView {
            refetch_all: true,
            ..Default::default()
        };
        let mut next_resync = Instant::now() + self.cfg.resync;
        tracing::info!(resync = ?self.cfg.resync, "reconciler started");
        loop {
            // Take in everything that happened since the last pass.
            loop {
                match events.try_recv() {
                    Ok(ev) => {
                        if let Some(c) = cache.as_mut() {
                            c.apply(ev)
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "reconciler fell behind the store's events; listing again"
                        );
                        cache = None;
                    }
                    Err(TryRecvError::Closed) => return,
                }
            }
            loop {
                match desired.try_recv() {
                    Ok(d) => {
                        cmds.dirty_nodes.insert(d.node);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => cmds.refetch_all = true,
                    Err(TryRecvError::Closed) => return,
                }
            }
            // The resync is due even when changes never stop coming.
            if Instant::now() >= next_resync {
                next_resync = Instant::now() + self.cfg.resync;
                cmds.refetch_all = true;
                self.prune_commands().await;
            }
            if cache.is_none() {
                match self.store.read(Cache::load).await {
                    Ok(c) => {
                        cache = Some(c);
                        cmds.refetch_all = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reconciler cannot list the store; retrying in 1s");
                        if sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let mut deadline = None;
            if let Some(c) = cache.as_mut() {
                let pci_changed = std::mem::take(&mut c.pci_changed);
                let res = self.pass(c, &mut cmds, &pci_changed).await;
                if res.is_err() {
                    c.pci_changed.extend(pci_changed);
                }
                match res {
                    Ok(out) if out.wrote => {
                        // Our own writes come back as events: take them in and go again.
                        tokio::task::yield_now().await;
                        if shutdown.is_cancelled() {
                            break;
                        }
                        continue;
                    }
                    Ok(out) => deadline = out.next_deadline_ms,
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile pass failed; retrying in 1s");
                        if sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let mut wake = next_resync;
            if let Some(d) = deadline {
                let wait = Duration::from_millis((d - now_ms()).max(0) as u64 + 1);
                wake = wake.min(Instant::now() + wait);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => {
                    match ev {
                        Ok(ev) => if let Some(c) = cache.as_mut() { c.apply(ev) },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache = None,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    if sleep_or_shutdown(self.cfg.batch_delay, &shutdown).await { break; }
                }
                d = desired.recv() => {
                    match d {
                        Ok(d) => { cmds.dirty_nodes.insert(d.node); }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cmds.refetch_all = true,
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

    /// One pass: read the command rows it needs, plan, write.
    async fn pass(
        &self,
        cache: &Cache,
        cmds: &mut CommandView,
        pci_changed: &BTreeSet<String>,
    ) -> Result<PassOutcome, FsmError> {
        let mut wanted: HashSet<String> = HashSet::new();
        let mut fetch: Vec<String> = Vec::new();
        for d in cache.dpus.values() {
            let (Some(st), Some(sp)) = (d.status.as_ref(), d.spec.as_ref()) else {
                continue;
            };
            let p = phase_of(st.phase);
            if st.command_id.is_empty()
                || !(is_command_phase(p) || p == hostplane_proto::v1::DpuPhase::Rebooting)
            {
                continue;
            }
            wanted.insert(st.command_id.clone());
            let stale = match cmds.rows.get(&st.command_id) {
                None => true,
                Some(Some(row)) if row.result.is_some() => false,
                Some(_) => cmds.refetch_all || cmds.dirty_nodes.contains(&sp.node),
            };
            if stale {
                fetch.push(st.command_id.clone());
            }
        }
        cmds.dirty_nodes.clear();
        cmds.refetch_all = false;
        cmds.rows.retain(|id, _| wanted.contains(id));
        if !fetch.is_empty() {
            let rows = self
                .store
                .read(move |t| {
                    fetch
                        .into_iter()
                        .map(|id| Ok((t.command(&id)?, id)))
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await?;
            for (row, id) in rows {
                cmds.rows.insert(id, row);
            }
        }

        let mut plan = plan::plan(cache, &cmds.rows, now_ms(), &self.cfg);
        plan.actions.extend(
            network_touches(cache, pci_changed)
                .into_iter()
                .map(|node| apply::Action::TouchDesired { node }),
        );
        if plan.actions.is_empty() {
            return Ok(PassOutcome {
                wrote: false,
                next_deadline_ms: plan.next_deadline_ms,
            });
        }
        let applied = self.store.write(move |t| apply::apply(t, plan.actions)).await?;
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
            next_deadline_ms: plan.next_deadline_ms,
        })
    }
}

/// Nodes whose listed host networks name one of `devices`' PCI address: a
/// Device edited under a Dpu whose network is in the desired state.
fn network_touches(cache: &Cache, devices: &BTreeSet<String>) -> BTreeSet<String> {
    if devices.is_empty() {
        return BTreeSet::new();
    }
    cache
        .dpus
        .values()
        .filter(|d| network_phase(d) && !util::being_deleted(&d.metadata))
        .filter_map(|d| d.spec.as_ref())
        .filter(|s| devices.contains(&s.device))
        .map(|s| s.node.clone())
        .collect()
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
mod tests;
