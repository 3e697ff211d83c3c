//! Fencing (docs/ha.md §3): a write made on behalf of a leadership term is
//! refused once another replica has taken the lease over.
use super::HaError;

/// A leader's write refused: the lease has moved on to a later epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "fenced: this write belongs to leader epoch {mine} but the lease is at epoch {current} (another replica took over); the write is refused"
)]
pub struct Fenced {
    /// The epoch the writer led with.
    pub mine: i64,
    /// The `leader` row's epoch now.
    pub current: i64,
}

/// Why [`check_epoch`] refused.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The epoch could not be read; the write must not go ahead either.
    #[error("checking the leader epoch: {0}")]
    Check(#[from] HaError),
}

impl From<postgres::Error> for FenceError {
    fn from(e: postgres::Error) -> FenceError {
        FenceError::Check(e.into())
    }
}

/// Ok when `epoch` is the `leader` row's epoch now, read inside `tx`.
///
/// The store writer calls it for fenced writes after the transaction took
/// the revision lock (`SELECT ... FROM meta WHERE key = 'revision' FOR
/// UPDATE`): a takeover takes that lock too before it raises the epoch, so
/// while `tx` holds it the epoch read here cannot change before `tx`
/// commits. A write whose check passed commits before any takeover; a
/// write after a takeover sees the new epoch and is refused.
pub fn check_epoch(tx: &mut postgres::Transaction<'_>, epoch: i64) -> Result<(), FenceError> {
    let current: i64 = tx
        .query_opt("SELECT epoch FROM leader WHERE id = 1", &[])?
        .ok_or(HaError::NoLeaderRow)?
        .get(0);
    if current == epoch {
        Ok(())
    } else {
        Err(Fenced { mine: epoch, current }.into())
    }
}
