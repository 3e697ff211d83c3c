//! Several coordinator replicas on one PostgreSQL (docs/ha.md): the leader
//! lease and its fencing epoch.
//!
//! - [`Elector`] ([`lease`]): takes over, renews and releases the lease,
//!   steps down at its renew deadline, publishes this replica's [`Role`].
//! - [`check_epoch`] ([`fence`]): the fenced writes' check.
//! - [`cluster_status`] ([`status`]): replicas and leader for
//!   `hostplanectl status`; every replica's heartbeat runs with its elector.
//!
//! None of this uses the [`crate::store::Store`]: each replica's elector
//! and heartbeat hold PostgreSQL connections of their own, so a busy store
//! writer never delays a renewal.
mod conn;
pub mod fence;
pub mod lease;
pub mod status;

pub use fence::{FenceError, Fenced, check_epoch};
pub use lease::{Elector, LeaderInfo, LeaseConfig, LeaseConfigError, Replica, Role};
pub use status::{ClusterStatus, LeaderStatus, ReplicaStatus, cluster_status};

use crate::store::StoreError;

/// What failed in the lease's work with PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// Connecting or a statement (the server's message included).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the PostgreSQL store has no leader row (leader, id = 1): it is not migrated to schema 5 or the row was deleted; run `hostplane-coordinator migrate`"
    )]
    NoLeaderRow,
    #[error(
        "the PostgreSQL store has no revision row (meta, key = 'revision'): it is not migrated; run `hostplane-coordinator migrate`"
    )]
    NoRevisionRow,
    #[error("lease connection thread: {0}")]
    Thread(String),
}

impl From<postgres::Error> for HaError {
    fn from(e: postgres::Error) -> HaError {
        HaError::Store(e.into())
    }
}
