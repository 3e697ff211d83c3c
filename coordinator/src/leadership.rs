//! What only the leader runs (docs/ha.md §3): the DPU reconciler and the
//! power policy engine, started when this replica becomes the leader and
//! stopped when it is no longer, their writes fenced with its epoch.
//!
//! On SQLite there is one replica and no election: the role is a constant
//! `Leader { epoch: 0 }`, so both run from start to shutdown as before.
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::fsm::{FsmConfig, Reconciler};
use crate::ha::Role;
use crate::power::{PowerConfig, PowerEngine, PowerHub};
use crate::store::Store;

/// What the leader runs, and with what.
pub struct LeaderWork {
    pub store: Store,
    pub power: PowerHub,
    pub fsm: FsmConfig,
    pub power_cfg: PowerConfig,
}

/// A role that never changes: the single replica on SQLite leads.
pub fn sole_leader() -> watch::Receiver<Role> {
    let (tx, rx) = watch::channel(Role::Leader { epoch: 0 });
    // Keep the sender: a closed channel would read as "role unknown".
    std::mem::forget(tx);
    rx
}

/// Run the leader's work for as long as `role` says this replica leads,
/// each term with its own epoch, until `stop`.
pub async fn run(mut role: watch::Receiver<Role>, work: LeaderWork, stop: CancellationToken) {
    loop {
        // Wait to lead.
        let epoch = loop {
            if let Some(epoch) = role.borrow_and_update().leader_epoch() {
                break epoch;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = role.changed() => if changed.is_err() { return },
            }
        };
        // The takeover took the revision lock: a write (here a read, which
        // goes through the writer) brings the view to every commit before
        // it, so the reconciler starts from the store as the last leader
        // left it.
        if let Err(e) = work.store.catch_up().await {
            tracing::warn!(epoch, error = %e, "leading, but the store cannot be read yet; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        tracing::info!(epoch, "leading: the reconciler and the power engine start");
        work.store.set_prunes_history(true);
        let term = stop.child_token();
        let fenced = work.store.fenced(epoch);
        let reconciler = tokio::spawn(
            Reconciler::new(fenced.clone(), work.fsm.clone())
                .run(term.clone())
                .instrument(tracing::info_span!("reconciler", epoch)),
        );
        let engine = tokio::spawn(
            PowerEngine::new(fenced, work.power.clone(), work.power_cfg.clone())
                .run(term.clone())
                .instrument(tracing::info_span!("power engine", epoch)),
        );
        // Lead until the role changes (or the epoch does) or we stop.
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = role.changed() => {
                    if changed.is_err() || role.borrow_and_update().leader_epoch() != Some(epoch) {
                        break;
                    }
                }
            }
        }
        work.store.set_prunes_history(false);
        term.cancel();
        let _ = reconciler.await;
        let _ = engine.await;
        if stop.is_cancelled() {
            return;
        }
        tracing::warn!(
            epoch,
            "no longer leading: the reconciler and the power engine stopped"
        );
    }
}
