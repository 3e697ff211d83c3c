//! The desired-state store: one SQLite file (the embedded default).
//!
//! Every change happens inside [`Store::write`], which runs a closure over a
//! [`Txn`] in one SQLite transaction on a blocking thread. Each object change
//! gets the next store-wide revision (its `resource_version`) and an event
//! row; after commit, the events are broadcast to watchers and the nodes whose
//! desired state changed are announced to the agent streams. Watch history is
//! kept in the `events` table (bounded) so a watcher can resume from a
//! version after a disconnect or a coordinator restart, and so a paged List
//! reads every page at its first page's revision (snapshot.rs).
//!
//! Bodies are stored as proto3 JSON (pbjson), so `sqlite3 coordinator.db`
//! shows readable rows.

mod schema;
mod snapshot;
mod txn;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hostplane_proto::v1::{Kind, WatchEvent};
use rusqlite::Connection;
use tokio::sync::broadcast;

pub use snapshot::{Page, PageLimit};
pub use txn::{CommandRow, Txn};

/// Events kept for Watch resumption.
pub const DEFAULT_EVENT_RETENTION: u64 = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening store {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "store {path} has schema version {found}, newer than this coordinator understands ({supported}); upgrade the coordinator"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored {kind} {name:?} is not readable: {source}")]
    Corrupt {
        kind: &'static str,
        name: String,
        source: serde_json::Error,
    },
    #[error("encoding {kind} {name:?}: {source}")]
    Encode {
        kind: &'static str,
        name: String,
        source: serde_json::Error,
    },
    #[error("store worker failed: {0}")]
    Join(String),
    #[error(
        "watch from version {requested} is too old: history starts after version {oldest}; list again and watch from the list's version"
    )]
    TooOld { requested: u64, oldest: u64 },
    #[error(
        "the listing's snapshot (store revision {at}) is no longer kept (history is kept after revision {floor}); list again from the first page"
    )]
    SnapshotGone { at: u64, floor: u64 },
}

/// A change of a node's desired state (its open command set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredChanged {
    pub node: String,
    pub version: u64,
}

struct Inner {
    conn: Mutex<Connection>,
    /// One async caller at a time goes to a blocking thread: the others wait
    /// here, as tasks, instead of each holding a blocking thread parked on
    /// `conn` (the coordinator bench saw 328 threads at 1,000 Dpus without it).
    turn: Arc<tokio::sync::Semaphore>,
    events: broadcast::Sender<WatchEvent>,
    desired: broadcast::Sender<DesiredChanged>,
    retention: u64,
    path: PathBuf,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Open (or create) the store at `path`, migrating the schema forward.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.into(),
            source,
        })?;
        Self::from_connection(conn, path.to_path_buf(), DEFAULT_EVENT_RETENTION)
    }

    /// A store in memory (tests and benchmarks).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::in_memory_with_retention(DEFAULT_EVENT_RETENTION)
    }

    /// A store in memory that keeps the last `retention` revisions of
    /// history (tests of what happens when history runs out).
    pub fn in_memory_with_retention(retention: u64) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::from_connection(conn, PathBuf::from(":memory:"), retention)
    }

    fn from_connection(mut conn: Connection, path: PathBuf, retention: u64) -> Result<Store, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL").ok();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn, &path)?;
        let (events, _) = broadcast::channel(4096);
        let (desired, _) = broadcast::channel(4096);
        Ok(Store {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                turn: Arc::new(tokio::sync::Semaphore::new(1)),
                events,
                desired,
                retention,
                path,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` in one transaction; commit if it returns Ok, roll back otherwise.
    /// Events are broadcast only after a successful commit.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let turn = inner
            .turn
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| E::from(StoreError::Join(e.to_string())))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            Self::write_blocking(&inner, f)
        })
        .await
        .map_err(|e| E::from(StoreError::Join(e.to_string())))?
    }

    /// Like [`Store::write`], but on the calling thread (for blocking contexts and tests).
    pub fn write_sync<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        Self::write_blocking(&self.inner, f)
    }

    fn write_blocking<T, E, F>(inner: &Inner, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(StoreError::from)?;
        let mut txn = Txn::new(tx);
        let out = f(&mut txn)?;
        let (events, desired) = txn.commit(inner.retention)?;
        // Broadcast while still holding the connection, so receivers see
        // events in commit (revision) order; watchers dedupe by revision.
        // `send` never blocks.
        for ev in events {
            // No receivers is fine: nobody watches.
            let _ = inner.events.send(ev);
        }
        for d in desired {
            let _ = inner.desired.send(d);
        }
        drop(conn);
        Ok(out)
    }

    /// Read-only access (runs in a transaction too, for a consistent view).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        // A read is a write that changes nothing; commit is then a no-op.
        self.write(f).await
    }

    /// Subscribe to committed changes. Subscribe *before* reading history so
    /// nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.inner.events.subscribe()
    }

    /// Subscribe to changes of nodes' desired states (agent streams use this).
    pub fn subscribe_desired(&self) -> broadcast::Receiver<DesiredChanged> {
        self.inner.desired.subscribe()
    }

    /// Events after `from_version` (exclusive) from the retained history, oldest first,
    /// at most `limit`. Fails with [`StoreError::TooOld`] when history no longer reaches back.
    pub async fn events_since(
        &self,
        from_version: u64,
        kinds: Vec<Kind>,
        limit: usize,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        self.read(move |t| t.events_since(from_version, &kinds, limit))
            .await
    }
}

pub use hostplane_common::time::now_ms;

#[cfg(test)]
mod tests;
