//! Each replica's heartbeat row in `replicas`, and what `hostplanectl
//! status` shows of the cluster (docs/ha.md §6).
use std::time::Duration;

use postgres::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::HaError;
use super::conn::Conn;
use super::lease::{LeaseConfig, Replica};

/// The version every replica reports in its heartbeat.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One replica's heartbeat row.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub name: String,
    pub addr: String,
    /// The coordinator version it runs.
    pub version: String,
    /// When its first heartbeat reached the database, Unix milliseconds.
    pub started_at_ms: i64,
    /// How long ago its last heartbeat reached the database (PostgreSQL's
    /// clock): a few `renew_every` at most while it runs.
    pub seen_ago: Duration,
}

/// The `leader` row.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderStatus {
    /// The replica that took the lease last (empty before any did).
    pub holder: String,
    pub addr: String,
    /// 0 before the first takeover.
    pub epoch: i64,
    /// Time left on the lease; `None` when it is expired or released: no
    /// replica leads, the next follower poll takes over.
    pub expires_in: Option<Duration>,
}

/// Replicas and leader, as PostgreSQL has them now.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    pub leader: LeaderStatus,
    /// By name.
    pub replicas: Vec<ReplicaStatus>,
}

/// Reads the `leader` row and every `replicas` row in one snapshot; ages
/// and time left are computed by PostgreSQL, against its own clock.
pub fn cluster_status(c: &mut Client) -> Result<ClusterStatus, HaError> {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let row = tx
        .query_opt(
            "SELECT holder, addr, epoch, \
                    CASE WHEN expires_at > now() \
                         THEN (extract(epoch FROM expires_at - now()) * 1000)::bigint END \
             FROM leader WHERE id = 1",
            &[],
        )?
        .ok_or(HaError::NoLeaderRow)?;
    let expires_in: Option<i64> = row.get(3);
    let leader = LeaderStatus {
        holder: row.get(0),
        addr: row.get(1),
        epoch: row.get(2),
        expires_in: expires_in.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
    };
    let replicas = tx
        .query(
            "SELECT name, addr, version, \
                    (extract(epoch FROM started_at) * 1000)::bigint, \
                    greatest((extract(epoch FROM now() - seen_at) * 1000)::bigint, 0) \
             FROM replicas ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| ReplicaStatus {
            name: r.get(0),
            addr: r.get(1),
            version: r.get(2),
            started_at_ms: r.get(3),
            seen_ago: Duration::from_millis(r.get::<_, i64>(4).unsigned_abs()),
        })
        .collect();
    tx.commit()?;
    Ok(ClusterStatus { leader, replicas })
}

/// Upserts this replica's row. The first heartbeat of this process sets
/// `started_at`; each returns the row's `started_at` (microseconds), so a
/// change shows another process writing under the same name.
fn beat(c: &mut Client, me: &Replica, first: bool) -> Result<i64, HaError> {
    let sql = if first {
        "INSERT INTO replicas (name, addr, version, started_at, seen_at) \
         VALUES ($1, $2, $3, now(), now()) \
         ON CONFLICT (name) DO UPDATE SET addr = $2, version = $3, started_at = now(), seen_at = now() \
         RETURNING (extract(epoch FROM started_at) * 1000000)::bigint"
    } else {
        "INSERT INTO replicas (name, addr, version, started_at, seen_at) \
         VALUES ($1, $2, $3, now(), now()) \
         ON CONFLICT (name) DO UPDATE SET addr = $2, version = $3, seen_at = now() \
         RETURNING (extract(epoch FROM started_at) * 1000000)::bigint"
    };
    Ok(c.query_one(sql, &[&me.name, &me.addr, &VERSION])?.get(0))
}

/// Writes the heartbeat every `renew_every` until `stop`, then removes the
/// row (a replica stopped on purpose is no longer part of the cluster; one
/// that crashed stays, its `seen_ago` growing).
pub(super) async fn heartbeat(mut conn: Conn, me: Replica, cfg: LeaseConfig, stop: CancellationToken) {
    let mut started: Option<i64> = None;
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let (m, first) = (me.clone(), started.is_none());
        let op = conn.run(sent + cfg.renew_deadline, move |c| beat(c, &m, first));
        let beat = tokio::select! {
            r = op => r,
            () = stop.cancelled() => break,
        };
        match beat {
            Ok(at) => {
                if failing {
                    tracing::info!(replica = me.name, "replica heartbeat written again");
                }
                failing = false;
                match started {
                    None => started = Some(at),
                    Some(mine) if mine != at => tracing::error!(
                        replica = me.name,
                        "another coordinator replica runs under the same name (the heartbeat row's started_at changed): replica names must be unique"
                    ),
                    Some(_) => {}
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(replica = me.name, error = %e, "cannot write the replica heartbeat; retrying every renew_every");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(sent + cfg.renew_every) => {}
            () = stop.cancelled() => break,
        }
    }
    let name = me.name.clone();
    let gone = conn
        .run(Instant::now() + cfg.renew_deadline, move |c| {
            Ok(c.execute("DELETE FROM replicas WHERE name = $1", &[&name])?)
        })
        .await;
    if let Err(e) = gone {
        tracing::warn!(replica = me.name, error = %e, "cannot remove the replica heartbeat row on stop");
    }
}
