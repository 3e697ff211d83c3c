//! The leader lease (docs/ha.md §3): one row in `leader`, taken over when it
//! expired, renewed by its holder, with an epoch that grows at every
//! takeover and fences a deposed leader's writes ([`super::check_epoch`]).
//!
//! Times that decide who holds the lease are PostgreSQL's (`now()` in the
//! statements), so replica clocks never disagree about expiry. The leader
//! itself acts only while `Instant::now() < sent + renew_deadline`, `sent`
//! being when it sent the renewal that succeeded (its monotonic clock): the
//! database set the expiry to `now() + lease` after receiving it, later than
//! `sent`, and `renew_deadline < lease`, so the leader always stops before
//! its lease ends in the database, whatever PostgreSQL or the network do.
use std::time::Duration;

use postgres::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::HaError;
use super::conn::{Conn, OpError, Setup};
use crate::metrics::{LeaseRenewal, hub};
use crate::store::PgOptions;

/// The lease's timing. Defaults are Kubernetes' leader election's: lease
/// 15 s, renew every 2 s, give up 10 s after the last successful renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// How long a takeover or a renewal holds the lease (from PostgreSQL's
    /// `now()` when it runs). Also the longest a crashed leader's lease
    /// keeps the others waiting.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the leader renews, a follower polls the `leader` row, and
    /// every replica writes its heartbeat.
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// The leader steps down when this long has passed since it sent its
    /// last successful renewal (or takeover). Shorter than `lease`, so it
    /// stops before anyone else can take over.
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Duration,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// A [`LeaseConfig`] or [`Replica`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leader lease: {0}")]
pub struct LeaseConfigError(String);

impl LeaseConfig {
    /// `0 < renew_every < renew_deadline < lease`, each at least 1 ms (the
    /// unit the database is given).
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        let show = |d: Duration| format!("{d:?}");
        if self.renew_every < Duration::from_millis(1) {
            return Err(LeaseConfigError(format!(
                "renew_every ({}) must be at least 1ms",
                show(self.renew_every)
            )));
        }
        if self.renew_every >= self.renew_deadline {
            return Err(LeaseConfigError(format!(
                "renew_every ({}) must be shorter than renew_deadline ({}): the leader must get to renew before it gives up",
                show(self.renew_every),
                show(self.renew_deadline)
            )));
        }
        if self.renew_deadline >= self.lease {
            return Err(LeaseConfigError(format!(
                "renew_deadline ({}) must be shorter than lease ({}): a leader cut off from PostgreSQL must stop before another replica can take over",
                show(self.renew_deadline),
                show(self.lease)
            )));
        }
        Ok(())
    }
}

/// This replica as the `leader` and `replicas` rows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Unique among the replicas (the holder of the lease; a restarted
    /// replica under the same name takes its own live lease back at once).
    pub name: String,
    /// Where the other replicas reach this one (forwarded telemetry).
    pub addr: String,
}

impl Replica {
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.name.trim().is_empty() {
            return Err(LeaseConfigError("the replica name is empty".into()));
        }
        if self.addr.trim().is_empty() {
            return Err(LeaseConfigError(format!(
                "replica {:?} has no address for the other replicas to reach it",
                self.name
            )));
        }
        Ok(())
    }
}

/// Who leads, as a follower last read it from the `leader` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub holder: String,
    pub addr: String,
    pub epoch: i64,
}

/// This replica's part, published on [`Elector::role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading. `leader` is the live lease's holder as of the last poll;
    /// `None` when the lease is vacant or PostgreSQL could not be read.
    Follower { leader: Option<LeaderInfo> },
    /// Leading with this epoch: run the reconciler and the power engine and
    /// write with this epoch (fenced). Ends, with a change to `Follower`, at
    /// the renew deadline at the latest.
    Leader { epoch: i64 },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The epoch this replica leads with, if it leads.
    pub fn leader_epoch(&self) -> Option<i64> {
        match self {
            Role::Leader { epoch } => Some(*epoch),
            Role::Follower { .. } => None,
        }
    }
}

/// The running election and heartbeat of one replica.
pub struct Elector {
    role: watch::Receiver<Role>,
    elector: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl Elector {
    /// Starts electing (and the replica's heartbeat, see
    /// [`super::status`]) on the current Tokio runtime, each on a
    /// PostgreSQL connection of its own opened with `opts`. On `stop`, a
    /// leader steps down, then releases the lease so that another replica
    /// takes over at once, and the heartbeat row is removed.
    pub fn start(
        opts: PgOptions,
        me: Replica,
        cfg: LeaseConfig,
        stop: CancellationToken,
    ) -> Result<Elector, LeaseConfigError> {
        cfg.validate()?;
        me.validate()?;
        let (tx, role) = watch::channel(Role::Follower { leader: None });
        let setup = |what: &str| Setup {
            opts: opts.clone(),
            app_name: format!("hostplane-coordinator {what} {}", me.name),
            // The safety net for a statement this replica stopped waiting
            // for and could not cancel: past the lease its outcome no longer
            // matters. Never what makes the leader step down (the deadline
            // timer does, sooner).
            statement_timeout: cfg.lease,
        };
        let run = Run {
            conn: Conn::new(setup("lease"), "hostplane-lease"),
            me: me.clone(),
            cfg,
            role: tx,
            stop: stop.clone(),
        };
        let elector = tokio::spawn(run.run());
        let heartbeat = tokio::spawn(super::status::heartbeat(
            Conn::new(setup("heartbeat"), "hostplane-heartbeat"),
            me,
            cfg,
            stop,
        ));
        Ok(Elector {
            role,
            elector,
            heartbeat,
        })
    }

    /// This replica's role; changes as it takes over, loses or gives up the lease.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Waits until both tasks have ended (after `stop`: the lease released).
    pub async fn stopped(self) {
        let _ = self.elector.await;
        let _ = self.heartbeat.await;
    }

    /// Ends both tasks without releasing anything, as a crash would: the
    /// lease stays with this replica until it expires. For tests.
    pub fn abort(&self) {
        self.elector.abort();
        self.heartbeat.abort();
    }
}

/// What a follower's poll found.
#[derive(Debug)]
enum Poll {
    /// This replica took the lease over with this epoch.
    Took(i64),
    /// Another replica holds a live lease.
    Held(LeaderInfo),
    /// The lease is expired and another replica's takeover won the race or
    /// the row is vacant (rare: the next poll retries).
    Vacant,
}

/// The leader row, and whether this replica may take it over: expired, or
/// held by this replica's own name (a restart, or a renewal that committed
/// after this replica had stopped waiting for it).
fn read_leader(c: &mut impl postgres::GenericClient, me: &str) -> Result<(LeaderInfo, bool), HaError> {
    let row = c
        .query_opt(
            "SELECT holder, addr, epoch, expires_at < now() OR holder = $1 FROM leader WHERE id = 1",
            &[&me],
        )?
        .ok_or(HaError::NoLeaderRow)?;
    Ok((
        LeaderInfo {
            holder: row.get(0),
            addr: row.get(1),
            epoch: row.get(2),
        },
        row.get(3),
    ))
}

/// One follower poll: re-read the row; when it may be taken over, take it
/// over in one transaction that first takes the store's revision lock (so
/// the takeover is ordered against every store write, docs/ha.md §2-3).
fn poll(c: &mut Client, me: &Replica, lease: Duration) -> Result<Poll, HaError> {
    let (row, takeable) = read_leader(c, &me.name)?;
    if !takeable {
        return Ok(Poll::Held(row));
    }
    let mut tx = c.transaction()?;
    if tx
        .query_opt("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])?
        .is_none()
    {
        return Err(HaError::NoRevisionRow);
    }
    let took = tx.query_opt(
        "UPDATE leader SET holder = $1, addr = $2, epoch = epoch + 1, \
                expires_at = now() + make_interval(secs => $3) \
         WHERE id = 1 AND (expires_at < now() OR holder = $1) RETURNING epoch",
        &[&me.name, &me.addr, &lease.as_secs_f64()],
    )?;
    let polled = match took {
        Some(row) => Poll::Took(row.get(0)),
        None => {
            let (row, takeable) = read_leader(&mut tx, &me.name)?;
            if takeable { Poll::Vacant } else { Poll::Held(row) }
        }
    };
    tx.commit()?;
    Ok(polled)
}

/// The leader's renewal: `true` renewed, `false` the lease is no longer
/// this replica's with this epoch.
fn renew(c: &mut Client, me: &str, epoch: i64, lease: Duration) -> Result<bool, HaError> {
    let n = c.execute(
        "UPDATE leader SET expires_at = now() + make_interval(secs => $3) \
         WHERE id = 1 AND holder = $1 AND epoch = $2",
        &[&me, &epoch, &lease.as_secs_f64()],
    )?;
    Ok(n == 1)
}

/// Gives the lease up so that the next follower poll takes it over.
fn release(c: &mut Client, me: &str, epoch: i64) -> Result<bool, HaError> {
    let n = c.execute(
        "UPDATE leader SET expires_at = '-infinity' WHERE id = 1 AND holder = $1 AND epoch = $2",
        &[&me, &epoch],
    )?;
    Ok(n == 1)
}

/// The elector task's state.
struct Run {
    conn: Conn,
    me: Replica,
    cfg: LeaseConfig,
    role: watch::Sender<Role>,
    stop: CancellationToken,
}

/// Where the elector is.
enum State {
    Follower,
    Leader {
        epoch: i64,
        /// When the last successful renewal (or the takeover) was sent.
        renewed_sent: Instant,
        /// When the last renewal attempt was sent.
        attempted: Instant,
    },
}

impl Run {
    async fn run(mut self) {
        let mut state = State::Follower;
        // Log a failing poll once, not every renew_every.
        let mut poll_failing = false;
        loop {
            match state {
                State::Follower => {
                    let sent = Instant::now();
                    let (me, lease) = (self.me.clone(), self.cfg.lease);
                    let op = self
                        .conn
                        .run(sent + self.cfg.renew_deadline, move |c| poll(c, &me, lease));
                    let polled = tokio::select! {
                        r = op => r,
                        () = self.stop.cancelled() => {
                            // The poll may have been a takeover that commits.
                            self.release_if_taken().await;
                            break;
                        }
                    };
                    match polled {
                        Ok(Poll::Took(epoch)) => {
                            poll_failing = false;
                            tracing::info!(replica = self.me.name, epoch, "took over the leader lease");
                            self.publish(Role::Leader { epoch });
                            state = State::Leader {
                                epoch,
                                renewed_sent: sent,
                                attempted: sent,
                            };
                            continue;
                        }
                        Ok(Poll::Held(leader)) => {
                            poll_failing = false;
                            self.publish(Role::Follower { leader: Some(leader) });
                        }
                        Ok(Poll::Vacant) => {
                            poll_failing = false;
                            self.publish(Role::Follower { leader: None });
                        }
                        Err(e) => {
                            if !poll_failing {
                                tracing::warn!(replica = self.me.name, error = %e, "cannot read the leader lease; retrying every renew_every");
                            }
                            poll_failing = true;
                            self.publish(Role::Follower { leader: None });
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(sent + self.cfg.renew_every) => {}
                        () = self.stop.cancelled() => break,
                    }
                }
                State::Leader {
                    epoch,
                    renewed_sent,
                    attempted,
                } => {
                    let deadline = renewed_sent + self.cfg.renew_deadline;
                    let next = (attempted + self.cfg.renew_every).min(deadline);
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        () = self.stop.cancelled() => {
                            self.release(epoch).await;
                            break;
                        }
                    }
                    let sent = Instant::now();
                    if sent >= deadline {
                        self.step_down(epoch, "no renewal succeeded within renew_deadline");
                        state = State::Follower;
                        continue;
                    }
                    let (me, lease) = (self.me.name.clone(), self.cfg.lease);
                    let renewed = self
                        .conn
                        .run(deadline, move |c| renew(c, &me, epoch, lease))
                        .await;
                    state = match renewed {
                        Ok(true) => {
                            count(LeaseRenewal::Ok);
                            State::Leader {
                                epoch,
                                renewed_sent: sent,
                                attempted: sent,
                            }
                        }
                        Ok(false) => {
                            count(LeaseRenewal::Lost);
                            self.step_down(
                                epoch,
                                "the lease is no longer this replica's (renewal matched no row)",
                            );
                            State::Follower
                        }
                        Err(OpError::TimedOut) => {
                            count(LeaseRenewal::Error);
                            self.step_down(epoch, "the renewal got no answer before renew_deadline");
                            State::Follower
                        }
                        Err(OpError::Failed(e)) => {
                            count(LeaseRenewal::Error);
                            tracing::warn!(
                                replica = self.me.name,
                                epoch,
                                error = %e,
                                "renewing the leader lease failed; retrying until renew_deadline"
                            );
                            State::Leader {
                                epoch,
                                renewed_sent,
                                attempted: sent,
                            }
                        }
                    };
                }
            }
        }
        self.publish(Role::Follower { leader: None });
    }

    fn publish(&self, role: Role) {
        let m = hub();
        match &role {
            Role::Leader { epoch } => {
                m.leader.set(1);
                m.leader_epoch.set(*epoch);
            }
            Role::Follower { leader } => {
                m.leader.set(0);
                if let Some(l) = leader {
                    m.leader_epoch.set(l.epoch);
                }
            }
        }
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }

    fn step_down(&self, epoch: i64, why: &str) {
        tracing::warn!(
            replica = self.me.name,
            epoch,
            reason = why,
            "stepped down as leader"
        );
        self.publish(Role::Follower { leader: None });
    }

    /// Graceful stop of a leader: stop acting first, then give the lease up.
    async fn release(&mut self, epoch: i64) {
        self.publish(Role::Follower { leader: None });
        let me = self.me.name.clone();
        let deadline = Instant::now() + self.cfg.renew_deadline;
        match self.conn.run(deadline, move |c| release(c, &me, epoch)).await {
            Ok(true) => tracing::info!(replica = self.me.name, epoch, "released the leader lease"),
            Ok(false) => tracing::info!(
                replica = self.me.name,
                epoch,
                "the leader lease was no longer ours to release"
            ),
            Err(e) => tracing::warn!(
                replica = self.me.name,
                epoch,
                error = %e,
                "releasing the leader lease failed; it expires on its own within lease"
            ),
        }
    }
}

impl Run {
    /// Graceful stop during a poll: the poll still runs on the connection's
    /// thread and may be a takeover that commits; this release runs after
    /// it, on the same connection, so a lease taken just as the replica
    /// stops does not keep the others waiting until it expires.
    async fn release_if_taken(&mut self) {
        let me = self.me.name.clone();
        let deadline = Instant::now() + self.cfg.renew_deadline;
        let released = self
            .conn
            .run(deadline, move |c| {
                Ok(c.execute(
                    "UPDATE leader SET expires_at = '-infinity' \
                     WHERE id = 1 AND holder = $1 AND expires_at > now()",
                    &[&me],
                )?)
            })
            .await;
        match released {
            Ok(0) => {}
            Ok(_) => tracing::info!(
                replica = self.me.name,
                "released the leader lease taken as it stopped"
            ),
            Err(e) => {
                tracing::debug!(replica = self.me.name, error = %e, "releasing on stop during a poll failed")
            }
        }
    }
}

fn count(result: LeaseRenewal) {
    hub().lease_renewals.get_or_create(&result.into()).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_kubernetes_and_valid() {
        let d = LeaseConfig::default();
        assert_eq!(
            (d.lease, d.renew_every, d.renew_deadline),
            (
                Duration::from_secs(15),
                Duration::from_secs(2),
                Duration::from_secs(10)
            )
        );
        d.validate().unwrap();
    }

    #[test]
    fn renew_every_below_renew_deadline_below_lease_is_enforced() {
        let s = Duration::from_secs;
        let cfg = |lease, every, deadline| LeaseConfig {
            lease: s(lease),
            renew_every: s(every),
            renew_deadline: s(deadline),
        };
        let e = cfg(15, 10, 10).validate().unwrap_err().to_string();
        assert!(
            e.contains("renew_every (10s)") && e.contains("renew_deadline (10s)"),
            "{e}"
        );
        let e = cfg(10, 2, 10).validate().unwrap_err().to_string();
        assert!(
            e.contains("renew_deadline (10s)") && e.contains("lease (10s)"),
            "{e}"
        );
        let e = cfg(10, 0, 5).validate().unwrap_err().to_string();
        assert!(e.contains("renew_every (0ns) must be at least 1ms"), "{e}");
        cfg(3, 1, 2).validate().unwrap();
    }

    #[test]
    fn the_lease_settings_read_from_yaml_with_units_and_refuse_typos() {
        let cfg: LeaseConfig = serde_norway::from_str("lease: 20s\nrenew_deadline: 12s\n").unwrap();
        assert_eq!(
            cfg,
            LeaseConfig {
                lease: Duration::from_secs(20),
                renew_deadline: Duration::from_secs(12),
                ..LeaseConfig::default()
            }
        );
        let e = serde_norway::from_str::<LeaseConfig>("renew_interval: 2s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("renew_interval"), "{e}");
    }

    #[test]
    fn a_replica_needs_a_name_and_an_address() {
        let r = |name: &str, addr: &str| Replica {
            name: name.into(),
            addr: addr.into(),
        };
        assert!(
            r("", "10.0.0.1:50051")
                .validate()
                .unwrap_err()
                .to_string()
                .contains("name is empty")
        );
        let e = r("c1", " ").validate().unwrap_err().to_string();
        assert!(e.contains("\"c1\"") && e.contains("no address"), "{e}");
        r("c1", "10.0.0.1:50051").validate().unwrap();
    }
}
