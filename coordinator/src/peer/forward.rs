//! A follower's forwarder (docs/ha.md §5): one `Peer/Forward` stream to the
//! leader the role names, fed by the follower's [`PowerHub`] with every
//! telemetry batch (its fresh samples) and cap report it accepts.
//!
//! The hub's queue is installed only while a stream to a leader is open, so nothing piles up between leaders: the reports of
//! such a gap are dropped (the leader's engine treats a node without recent
//! telemetry as of unknown demand, `power.telemetry_max_age`, and the
//! agent's next batch brings it back). A leader change (another holder,
//! address or epoch) ends the stream and opens one to the new leader; a
//! broken stream or a refused connection is retried with a backoff up to
//! [`MAX_BACKOFF`].
use std::time::Duration;

use hostplane_proto::internal::v1::peer_client::PeerClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PeerConnect;
use crate::ha::{LeaderInfo, Role};
use crate::power::PowerHub;

/// Reports waiting to be sent to the leader; beyond it they are dropped.
pub const QUEUE: usize = 4096;
/// The longest wait before reconnecting to the leader.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Forward `hub`'s reports to the leader while `role` says this replica
/// (named `me` in the lease) follows one; ends when `stop` is cancelled or
/// the role's sender is gone.
pub fn spawn_forwarder(
    hub: PowerHub,
    role: watch::Receiver<Role>,
    me: String,
    connect: PeerConnect,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(forwarder(hub, role, me, connect, stop))
}

/// [`spawn_forwarder`]'s task, for a caller's own `JoinSet`.
pub async fn forwarder(
    hub: PowerHub,
    role: watch::Receiver<Role>,
    me: String,
    connect: PeerConnect,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("power_forwarder");
    async {
        run(&hub, role, &me, &connect, &stop).await;
        hub.set_forward(None);
    }
    .instrument(span)
    .await
}

/// The leader to forward to, if this replica follows another one.
fn target(role: &Role, me: &str) -> Option<LeaderInfo> {
    match role {
        Role::Follower { leader: Some(l) } if l.holder != me => Some(l.clone()),
        _ => None,
    }
}

async fn run(
    hub: &PowerHub,
    mut role: watch::Receiver<Role>,
    me: &str,
    connect: &PeerConnect,
    stop: &CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(leader) = target(&role.borrow_and_update(), me) else {
            hub.set_forward(None);
            tokio::select! {
                () = stop.cancelled() => return,
                r = role.changed() => if r.is_err() { return },
            }
            continue;
        };
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            r = forward_to(hub, &leader, connect) => Some(r),
            closed = leader_changed(&mut role, &leader) => if closed { return } else { None },
        };
        hub.set_forward(None);
        match ended {
            // The role moved on: go to the new leader at once.
            None => {
                tracing::info!(from = %leader.holder, "the leader changed: forwarding moves");
                backoff = MIN_BACKOFF;
                continue;
            }
            Some(Ok(received)) => {
                tracing::info!(leader = %leader.holder, addr = %leader.addr, received, "forwarding to the leader ended; reconnecting");
                backoff = MIN_BACKOFF;
            }
            Some(Err(e)) => {
                tracing::warn!(leader = %leader.holder, addr = %leader.addr, error = %e, retry_in = ?backoff,
                    "cannot forward power reports to the leader; the reports meanwhile are dropped");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
            closed = leader_changed(&mut role, &leader) => if closed { return },
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves when the role names another leader than `current` (or none):
/// false, or true when the role's sender is gone (the replica stops).
async fn leader_changed(role: &mut watch::Receiver<Role>, current: &LeaderInfo) -> bool {
    loop {
        if role.changed().await.is_err() {
            return true;
        }
        let same = matches!(&*role.borrow_and_update(), Role::Follower { leader: Some(l) } if l == current);
        if !same {
            return false;
        }
    }
}

/// One stream to `leader`, fed from `hub` once connected: Ok(reports the
/// leader counted) when it ended cleanly, else why it could not be opened
/// or broke.
async fn forward_to(hub: &PowerHub, leader: &LeaderInfo, connect: &PeerConnect) -> Result<u64, String> {
    let ch = connect.connect(&leader.addr).await?;
    tracing::info!(leader = %leader.holder, addr = %leader.addr, epoch = leader.epoch, "forwarding power reports to the leader");
    // Reports accepted from here on go to the stream.
    let (tx, rx) = mpsc::channel(QUEUE);
    hub.set_forward(Some(tx));
    let ack = PeerClient::new(ch)
        .forward(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(ack.into_inner().received)
}
