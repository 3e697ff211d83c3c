//! `GetClusterStatus` (`hostplanectl status`, docs/ha.md §6): the store
//! backend and schema version, the answering replica and its role, the
//! leader lease and every replica's heartbeat.
//!
//! On PostgreSQL the `leader` and `replicas` rows are read at each call
//! ([`crate::ha::cluster_status`]) on one connection the API keeps for it
//! (opened on first use, dropped on any error so the next call reconnects),
//! on a blocking thread: the synchronous client must not run on a thread
//! that drives async tasks. On SQLite the one coordinator is the cluster:
//! one replica, its own leader with epoch 0 and no lease.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_proto::v1::{ClusterStatus, LeaderStatus, ReplicaStatus};
use tokio::sync::watch;
use tonic::Status;

use crate::ha::{self, Role};
use crate::store::{PgOptions, SCHEMA_VERSION, Store, pg_connect};

/// The longest one PostgreSQL statement of a status call may run (server side).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `GetClusterStatus` reports from: given to [`super::AdminApi::with_cluster`].
#[derive(Clone)]
pub struct ClusterSource {
    /// This replica's name (the `replicas` and `leader` rows' name).
    replica: String,
    /// This replica's address (shown on SQLite, where there is no heartbeat row).
    addr: String,
    /// This replica's role, as its elector publishes it.
    role: watch::Receiver<Role>,
    /// `None` on SQLite.
    postgres: Option<Postgres>,
    /// When this source was made (the coordinator's start), Unix
    /// milliseconds: the SQLite coordinator's `started_at`.
    started_at_ms: i64,
}

#[derive(Clone)]
struct Postgres {
    opts: PgOptions,
    /// The connection status calls share; `None` until the first call or
    /// after an error.
    client: Arc<Mutex<Cached>>,
}

/// The kept connection. Dropping a synchronous client blocks on its own
/// runtime, which tokio refuses on a thread that drives async tasks (where
/// the last `AdminApi` clone goes when the server stops): there it is
/// dropped on a thread of its own.
#[derive(Default)]
struct Cached(Option<postgres::Client>);

impl Drop for Cached {
    fn drop(&mut self) {
        if let Some(client) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("hostplane-status-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl ClusterSource {
    /// A coordinator on SQLite: one replica named `replica`, its own leader
    /// with epoch 0.
    pub fn sqlite(replica: impl Into<String>, addr: impl Into<String>) -> ClusterSource {
        let (_, role) = watch::channel(Role::Leader { epoch: 0 });
        ClusterSource {
            replica: replica.into(),
            addr: addr.into(),
            role,
            postgres: None,
            started_at_ms: crate::store::now_ms(),
        }
    }

    /// A replica on PostgreSQL: `role` from its [`crate::ha::Elector::role`],
    /// the leader and replicas read through a connection opened with `opts`.
    pub fn postgres(
        replica: impl Into<String>,
        role: watch::Receiver<Role>,
        opts: PgOptions,
    ) -> ClusterSource {
        ClusterSource {
            replica: replica.into(),
            addr: String::new(),
            role,
            postgres: Some(Postgres {
                opts,
                client: Arc::new(Mutex::new(Cached::default())),
            }),
            started_at_ms: crate::store::now_ms(),
        }
    }

    /// The backend name as the API reports it.
    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The answer to `GetClusterStatus`, with `store`'s view revision.
    pub async fn status(&self, store: &Store) -> Result<ClusterStatus, Status> {
        let role = match &*self.role.borrow() {
            Role::Leader { .. } => "leader",
            Role::Follower { .. } => "follower",
        };
        let store_revision = store.view().revision();
        let Some(pg) = &self.postgres else {
            return Ok(ClusterStatus {
                backend: self.backend().into(),
                schema_version: SCHEMA_VERSION,
                replica: self.replica.clone(),
                role: role.into(),
                leader: Some(LeaderStatus {
                    holder: self.replica.clone(),
                    addr: self.addr.clone(),
                    epoch: 0,
                    expires_in_ms: None,
                }),
                replicas: vec![ReplicaStatus {
                    name: self.replica.clone(),
                    addr: self.addr.clone(),
                    version: ha::status::VERSION.into(),
                    started_at_ms: self.started_at_ms,
                    seen_ago_ms: 0,
                }],
                store_revision,
            });
        };
        let (cluster, schema_version) = pg.read().await?;
        Ok(ClusterStatus {
            backend: self.backend().into(),
            schema_version,
            replica: self.replica.clone(),
            role: role.into(),
            leader: Some(LeaderStatus {
                holder: cluster.leader.holder,
                addr: cluster.leader.addr,
                epoch: cluster.leader.epoch,
                expires_in_ms: cluster.leader.expires_in.map(millis),
            }),
            replicas: cluster
                .replicas
                .into_iter()
                .map(|r| ReplicaStatus {
                    name: r.name,
                    addr: r.addr,
                    version: r.version,
                    started_at_ms: r.started_at_ms,
                    seen_ago_ms: millis(r.seen_ago),
                })
                .collect(),
            store_revision,
        })
    }
}

impl Postgres {
    /// The cluster and the database's schema version, or UNAVAILABLE naming
    /// the database and the cause.
    async fn read(&self) -> Result<(ha::ClusterStatus, i64), Status> {
        let (opts, client) = (self.opts.clone(), self.client.clone());
        let where_ = opts.describe();
        // The connect timeout, then each statement's: a stuck server is
        // answered, not waited on (the blocking thread ends on its own).
        let limit = opts.connect_timeout + 2 * STATEMENT_TIMEOUT + Duration::from_secs(1);
        let work = tokio::task::spawn_blocking(move || {
            let mut slot = client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = read_with(&mut slot.0, &opts);
            if result.is_err() {
                // The next call reconnects (PostgreSQL may have restarted).
                slot.0 = None;
            }
            result
        });
        let unavailable = |why: String| {
            Status::unavailable(format!(
                "cannot read the cluster status from PostgreSQL ({where_}): {why}"
            ))
        };
        match tokio::time::timeout(limit, work).await {
            Err(_) => Err(unavailable(format!("no answer in {limit:?}"))),
            Ok(Err(join)) => Err(unavailable(format!("the reading thread failed: {join}"))),
            Ok(Ok(Err(e))) => Err(unavailable(e.to_string())),
            Ok(Ok(Ok(out))) => Ok(out),
        }
    }
}

/// Reads on the kept connection; when that fails, once more on a new one
/// (the kept one may have been cut while idle: PostgreSQL restarted, or
/// its session was terminated), so only a database that cannot be read now
/// is an error.
fn read_with(
    slot: &mut Option<postgres::Client>,
    opts: &PgOptions,
) -> Result<(ha::ClusterStatus, i64), ha::HaError> {
    if let Some(c) = slot.as_mut().filter(|c| !c.is_closed())
        && let Ok(out) = read_on(c)
    {
        return Ok(out);
    }
    *slot = None;
    let mut c = pg_connect(opts)?;
    c.batch_execute(&format!(
        "SET application_name = 'hostplane-coordinator status'; SET statement_timeout = {}",
        STATEMENT_TIMEOUT.as_millis()
    ))?;
    let out = read_on(&mut c)?;
    *slot = Some(c);
    Ok(out)
}

fn read_on(c: &mut postgres::Client) -> Result<(ha::ClusterStatus, i64), ha::HaError> {
    let cluster = ha::cluster_status(c)?;
    let schema: i64 = c
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
        .map(|r| r.get(0))
        .unwrap_or(0);
    Ok((cluster, schema))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The host's name, the SQLite coordinator's replica name when none is given.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "coordinator".into())
}
