//! A follower's caps come from the store (docs/ha.md §5): the leader's
//! engine writes each node's caps into `power_caps` in the write that gives
//! the node its new desired-state version, and this task copies the rows
//! into the replica's [`PowerHub`] for the agent streams.
//!
//! While the replica follows, every desired-state change the store announces
//! (its own commits and those read from the other replicas) makes the task
//! read the rows changed since its last read, with the store revision the
//! read saw: every row up to that revision is then in the hub, and
//! [`PowerHub::caps_through`] says so. A session about to send version V
//! waits until the caps are known through V ([`PowerHub::wait_caps_through`]),
//! so an agent never gets a version with the caps of an older one. Becoming
//! a follower reads the whole table; becoming the leader hands the caps back
//! to the engine ([`PowerHub::caps_from_engine`]).
//!
//! On SQLite (one coordinator) nothing starts this task and the hub's caps
//! are the engine's, as they always were.
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PowerHub;
use crate::ha::Role;
use crate::store::{Store, StoreError};

/// A follower re-reads at least this often, whatever it was told (a lost
/// announcement delays a cap by this much at most).
pub const CAPS_POLL: Duration = Duration::from_secs(5);
/// After a failed read, wait this long before the next.
const RETRY: Duration = Duration::from_secs(1);

/// Start feeding `hub` from the store while `role` says this replica
/// follows; ends when `stop` is cancelled or the role's sender is gone.
pub fn spawn_caps_feed(
    store: Store,
    hub: PowerHub,
    role: watch::Receiver<Role>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(caps_feed(store, hub, role, stop))
}

/// [`spawn_caps_feed`]'s task, for a caller's own `JoinSet`.
pub async fn caps_feed(store: Store, hub: PowerHub, role: watch::Receiver<Role>, stop: CancellationToken) {
    let span = tracing::info_span!("power_caps_feed");
    run(store, hub, role, stop).instrument(span).await
}

async fn run(store: Store, hub: PowerHub, mut role: watch::Receiver<Role>, stop: CancellationToken) {
    loop {
        let leads = role.borrow_and_update().is_leader();
        if leads {
            hub.caps_from_engine();
            tokio::select! {
                () = stop.cancelled() => return,
                r = role.changed() => if r.is_err() { return },
            }
            continue;
        }
        hub.caps_from_store();
        tracing::info!("following: power caps come from the store");
        // Subscribed before the first read: nothing announced after it is missed.
        let mut desired = store.subscribe_desired();
        let mut last: Option<u64> = None;
        loop {
            if role.borrow().is_leader() {
                break;
            }
            match read(&store, last).await {
                Ok((rows, through)) => {
                    // Checked again: the engine owns the caps once this replica leads.
                    if role.borrow().is_leader() {
                        break;
                    }
                    let n = rows.len();
                    hub.apply_store_caps(rows, through, last.is_none());
                    {
                        let view = store.view();
                        hub.retain_nodes(|n| view.nodes.contains_key(n));
                    }
                    tracing::debug!(rows = n, through, "power caps read from the store");
                    last = Some(through);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RETRY, "cannot read the power caps from the store");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        r = role.changed() => if r.is_err() { return } else { continue },
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = role.changed() => if r.is_err() { return },
                d = desired.recv() => match d {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => drain(&mut desired),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(CAPS_POLL) => {}
            }
        }
    }
}

/// Everything announced so far is covered by the next read.
fn drain(rx: &mut broadcast::Receiver<crate::store::DesiredChanged>) {
    loop {
        match rx.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
        }
    }
}

/// The rows written after `last` (all when None) and the store revision
/// the read started at: every row up to it is among them (the revision row
/// is written by the transaction that writes the rows, and this read's
/// later statement sees every commit its first one saw).
#[allow(clippy::type_complexity)]
async fn read(
    store: &Store,
    last: Option<u64>,
) -> Result<(Vec<(String, Option<hostplane_proto::v1::PowerCaps>, u64)>, u64), StoreError> {
    store
        .read(move |t| {
            let through = t.revision()?;
            let rows = t.power_caps_since(last.unwrap_or(0))?;
            Ok::<_, StoreError>((rows, through))
        })
        .await
}
