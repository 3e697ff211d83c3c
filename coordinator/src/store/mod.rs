//! The desired-state store: one SQLite file (the embedded default).
//!
//! Every change happens inside [`Store::write`], which runs a closure over a
//! [`Txn`] in a SQLite transaction on a blocking thread. Writes that queue
//! while a transaction runs are committed together (group commit): one
//! writer drains the queue, runs each closure in its own SAVEPOINT of one
//! transaction (a closure's error undoes only its own work) and commits
//! once. Each object change gets the next store-wide revision (its
//! `resource_version`) and an event row; after commit the in-memory
//! [`View`] replays the changes (view.rs), then the events are broadcast to
//! watchers and the nodes whose desired state changed are announced to the
//! agent streams, and only then does each caller get its result. Watch
//! history is kept in the `events` table (bounded by count and by age,
//! retention.rs) so a watcher can resume from a version after a disconnect,
//! after falling behind the live feed or after a coordinator restart, and so
//! a paged List reads every page at its first page's revision (snapshot.rs).
//!
//! Bodies are stored as proto3 JSON (pbjson), so `sqlite3 coordinator.db`
//! shows readable rows; what must be looked up in SQL has an indexed column
//! (a Device's or Dpu's node), never a `json_extract` scan.

mod cache;
mod pg_conn;
mod pg_schema;
mod power_caps;
mod reader;
mod readers;
mod retention;
mod schema;
mod sessions;
mod snapshot;
mod txn;
mod view;

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

use hostplane_proto::v1::{Kind, WatchEvent};
use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

pub use cache::WATCH_CACHE_CAPACITY;
use cache::WatchCache;
pub use pg_conn::{PgOptions, SslMode, connect as pg_connect};
pub use pg_schema::{MIGRATION_LOCK_KEY, PG_SCHEMA_VERSION, pg_migrate};
pub use retention::HistoryConfig;
use retention::Retention;
pub use schema::{Migrated, SCHEMA_VERSION, migrate_file};
pub use snapshot::{Page, PageLimit};
use txn::{Changes, Counters, PgStatements, Tx};
pub use txn::{CommandRow, Txn};
pub use view::View;

/// Revisions of watch history always kept (`store.history.min_revisions`);
/// younger events are kept beyond it, see [`HistoryConfig`].
pub const DEFAULT_EVENT_RETENTION: u64 = 50_000;

/// Committed events the live feed buffers for each watcher; one that falls
/// further behind reads the history instead.
pub const LIVE_FEED_CAPACITY: usize = 4096;

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
    #[error("PostgreSQL store query failed: {}", pg_schema::pg_message(.0))]
    Pg(#[from] postgres::Error),
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
    /// A connection setting that cannot work (a missing password file, a
    /// certificate that does not parse); the message names it.
    #[error("{0}")]
    Settings(String),
    #[error(
        "watch from version {requested} is too old: history starts after version {oldest}; list again and watch from the list's version"
    )]
    TooOld { requested: u64, oldest: u64 },
    #[error(
        "write refused: this replica led with epoch {mine}, and the leadership has moved on (epoch {current})"
    )]
    Fenced { mine: i64, current: i64 },
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

/// How often a replica on PostgreSQL reads others' commits when no
/// notification came (one may be lost: docs/ha.md §4).
pub const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The most closures one group commit runs in one transaction.
pub const MAX_BATCH: usize = 256;

/// Work counters, cheap enough to leave on; regression tests compare them
/// (never times) between small and large stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (a group commit of many writes counts once;
    /// reads are transactions too).
    pub transactions: u64,
    /// Rows SQLite stepped through, measured as the virtual-machine steps of
    /// the store's statements (`SQLITE_STMTSTATUS_VM_STEP`, summed over every
    /// statement the store runs): a few per row a statement visits, whether
    /// by a full scan, an index range or a sort, so it grows with the rows
    /// visited and not with the size of a B-tree that is only searched.
    pub rows_read: u64,
}

/// The writer's connection: the engine the store runs on.
enum Conn {
    Lite(Connection),
    Pg(Box<PgWriter>),
}

/// The PostgreSQL writer connection, reopened after it breaks (a restart
/// of PostgreSQL, a network cut) at the next write.
struct PgWriter {
    opts: PgOptions,
    client: Option<postgres::Client>,
    /// Prepared statements of `client` (forgotten with it).
    stmts: PgStatements,
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        // Closing the synchronous client blocks on its own runtime, which
        // may not happen on a thread that drives async tasks (the store's
        // last clone may be dropped on one): close it on a thread of its own.
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

/// Run `f` on a thread that is not inside an async runtime: the synchronous
/// PostgreSQL client blocks on a runtime of its own, which tokio refuses on
/// a thread that drives async tasks.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Conn {
    /// Begin a transaction. `lock`: it may write (on PostgreSQL it takes
    /// the revision lock first, docs/ha.md §2).
    fn begin<'c>(&'c mut self, counters: &'c Counters, lock: bool) -> Result<Txn<'c>, StoreError> {
        match self {
            Conn::Lite(conn) => Txn::new(Tx::Lite(conn.transaction()?), counters, lock),
            Conn::Pg(w) => {
                if w.client.as_ref().is_none_or(|c| c.is_closed()) {
                    w.stmts.clear();
                    w.client = None;
                    w.client = Some(pg_conn::connect(&w.opts)?);
                }
                let client = w.client.as_mut().expect("connected above");
                let tx = client.transaction()?;
                Txn::new(
                    Tx::Pg {
                        tx: std::cell::RefCell::new(tx),
                        stmts: std::cell::RefCell::new(&mut w.stmts),
                    },
                    counters,
                    lock,
                )
            }
        }
    }

    fn is_pg(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }
}

struct Inner {
    conn: Mutex<Conn>,
    /// Writes waiting for the writer, and whether a writer is draining them.
    queue: Mutex<Queue>,
    view: RwLock<View>,
    counters: Counters,
    events: broadcast::Sender<WatchEvent>,
    /// The live feed of watchers: the same events, shared (`Arc`).
    shared: broadcast::Sender<Arc<WatchEvent>>,
    /// The newest committed events (cache.rs), updated before the broadcasts.
    cache: RwLock<WatchCache>,
    desired: broadcast::Sender<DesiredChanged>,
    /// How far history is pruned after each commit (under the writer).
    retention: Mutex<Retention>,
    /// PostgreSQL's read connections (`None` on SQLite, so also what says
    /// which engine the store runs on without taking the writer's lock).
    readers: Option<Arc<readers::Readers>>,
    /// Serialises whoever brings the view forward (the writer with its own
    /// commits, the change reader with other replicas'), and what following
    /// needs to remember.
    follow: Mutex<Follow>,
    /// The watch cache's capacity (a reload starts a new cache).
    cache_capacity: usize,
    /// This store's commits prune the history: always on SQLite; on
    /// PostgreSQL only the leader's (docs/ha.md §1), set by leadership.
    prunes: std::sync::atomic::AtomicBool,
    path: PathBuf,
}

/// The follower's memory (docs/ha.md §4).
#[derive(Default)]
struct Follow {
    /// The revision of the newest command pruning the view has applied
    /// (`meta.commands_pruned_at`).
    commands_pruned_at: i64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Box<dyn Job + Send>>,
    /// A blocking task is draining `jobs`; a write that finds none starts one.
    draining: bool,
}

/// One caller's closure in a group commit.
trait Job {
    /// The leader epoch this write is fenced with (docs/ha.md §3).
    fn fence(&self) -> Option<i64>;
    /// Run the closure; true when it returned Ok.
    fn run(&mut self, txn: &mut Txn<'_>) -> bool;
    /// The transaction failed: the outcome becomes `e` (a closure's own
    /// error stays).
    fn fail(&mut self, e: StoreError);
    /// Hand the outcome to a queued caller.
    fn deliver(&mut self);
}

struct Slot<T, E, F> {
    f: Option<F>,
    out: Option<Result<T, E>>,
    reply: Option<oneshot::Sender<Result<T, E>>>,
    /// A panic becomes this caller's error instead of ending the batch.
    catch: bool,
    fence: Option<i64>,
}

impl<T, E, F> Job for Slot<T, E, F>
where
    F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
    E: From<StoreError>,
{
    fn fence(&self) -> Option<i64> {
        self.fence
    }

    fn run(&mut self, txn: &mut Txn<'_>) -> bool {
        let Some(f) = self.f.take() else { return false };
        let out = if self.catch {
            catch_unwind(AssertUnwindSafe(|| f(txn))).unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(E::from(StoreError::Join(format!("store write panicked: {why}"))))
            })
        } else {
            f(txn)
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn fail(&mut self, e: StoreError) {
        if !matches!(self.out, Some(Err(_))) {
            self.out = Some(Err(E::from(e)));
        }
    }

    fn deliver(&mut self) {
        if let (Some(reply), Some(out)) = (self.reply.take(), self.out.take()) {
            // The caller may have gone away: its write still happened.
            let _ = reply.send(out);
        }
    }
}

/// A copy of a failed commit's error for each caller of the batch.
fn dup(e: &StoreError) -> StoreError {
    match e {
        StoreError::Sql(rusqlite::Error::SqliteFailure(code, msg)) => {
            StoreError::Sql(rusqlite::Error::SqliteFailure(*code, msg.clone()))
        }
        other => StoreError::Join(format!("the store transaction failed: {other}")),
    }
}

/// Resets `draining` if the writer unwinds, so later writes start a new one;
/// the writes it held get an error (their reply is dropped).
struct DrainGuard<'a>(&'a Inner);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = lock(&self.0.queue);
            q.draining = false;
            q.jobs.clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Writes through this handle are fenced with this leader epoch
    /// ([`Store::fenced`]).
    fence: Option<i64>,
}

impl Store {
    /// Open (or create) the store at `path`, migrating the schema forward.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, HistoryConfig::default())
    }

    /// [`Store::open`], keeping the watch history `history` says.
    pub fn open_with(path: &Path, history: HistoryConfig) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.into(),
            source,
        })?;
        Self::from_connection(conn, path.to_path_buf(), history, LIVE_FEED_CAPACITY)
    }

    /// Open the store on PostgreSQL (`store.backend: postgres`), migrating
    /// the schema forward under the migration lock (docs/ha.md §1).
    pub fn open_postgres(opts: &PgOptions, history: HistoryConfig) -> Result<Store, StoreError> {
        Self::open_postgres_with(opts, history, WATCH_CACHE_CAPACITY, true)
    }

    /// [`Store::open_postgres`] with a watch cache of `cache` events; the
    /// change reader only when `follow` (without it, the store follows
    /// others' commits only when it writes: tests of a replica that fell behind).
    pub(crate) fn open_postgres_with(
        opts: &PgOptions,
        history: HistoryConfig,
        cache: usize,
        follow: bool,
    ) -> Result<Store, StoreError> {
        let feed = LIVE_FEED_CAPACITY;
        off_runtime(|| {
            let mut client = pg_conn::connect(opts)?;
            pg_schema::pg_migrate(&mut client)?;
            let conn = Conn::Pg(Box::new(PgWriter {
                opts: opts.clone(),
                client: Some(client),
                stmts: HashMap::new(),
            }));
            let mut store = Self::from_conn(conn, PathBuf::from("postgres"), history, feed, cache)?;
            Arc::get_mut(&mut store.inner)
                .expect("a store just opened has one handle")
                .readers = Some(Arc::new(readers::Readers::new(opts.clone())));
            if follow {
                reader::spawn(Arc::downgrade(&store.inner), opts.clone(), FOLLOW_POLL);
            }
            Ok(store)
        })
    }

    /// A store in memory (tests and benchmarks).
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::from_connection(
            conn,
            PathBuf::from(":memory:"),
            HistoryConfig::default(),
            LIVE_FEED_CAPACITY,
        )
    }

    /// A store in memory that keeps the last `retention` revisions of
    /// history (tests of what happens when history runs out).
    pub fn in_memory_with_retention(retention: u64) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::from_connection(
            conn,
            PathBuf::from(":memory:"),
            HistoryConfig::revisions(retention),
            LIVE_FEED_CAPACITY,
        )
    }

    /// A store in memory with `history`, a live feed of `feed` events and a
    /// watch cache of `cache` events (tests of watchers that fall behind them).
    #[cfg(test)]
    pub(crate) fn in_memory_with_cache_for_test(
        history: HistoryConfig,
        feed: usize,
        cache: usize,
    ) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::from_connection_cached(conn, PathBuf::from(":memory:"), history, feed, cache)
    }

    fn from_connection(
        conn: Connection,
        path: PathBuf,
        history: HistoryConfig,
        feed: usize,
    ) -> Result<Store, StoreError> {
        Self::from_connection_cached(conn, path, history, feed, WATCH_CACHE_CAPACITY)
    }

    fn from_connection_cached(
        mut conn: Connection,
        path: PathBuf,
        history: HistoryConfig,
        feed: usize,
        cache: usize,
    ) -> Result<Store, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL").ok();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn, &path)?;
        Self::from_conn(Conn::Lite(conn), path, history, feed, cache)
    }

    fn from_conn(
        mut conn: Conn,
        path: PathBuf,
        history: HistoryConfig,
        feed: usize,
        cache: usize,
    ) -> Result<Store, StoreError> {
        let counters = Counters::default();
        let conn_is_pg = conn.is_pg();
        let (view, commands_pruned_at) = {
            let txn = conn.begin(&counters, false)?;
            (View::load(&txn)?, txn.commands_pruned_at()?)
        };
        let retention = Retention::new(history, view.revision(), Instant::now());
        let cache_capacity = cache;
        let cache = WatchCache::new(cache_capacity, view.revision());
        let (events, _) = broadcast::channel(feed);
        let (shared, _) = broadcast::channel(feed);
        let (desired, _) = broadcast::channel(4096);
        Ok(Store {
            fence: None,
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                queue: Mutex::new(Queue::default()),
                view: RwLock::new(view),
                counters,
                events,
                shared,
                cache: RwLock::new(cache),
                desired,
                retention: Mutex::new(retention),
                follow: Mutex::new(Follow { commands_pruned_at }),
                cache_capacity,
                readers: None,
                prunes: std::sync::atomic::AtomicBool::new(!conn_is_pg),
                path,
            }),
        })
    }

    /// This store, every write through it fenced with leader `epoch`
    /// (docs/ha.md §3): on PostgreSQL a write whose epoch is no longer the
    /// `leader` row's fails with [`StoreError::Fenced`] and changes nothing,
    /// so a deposed leader's late write cannot move a Dpu twice. The FSM and
    /// the power engine write through it. SQLite has one replica and no
    /// `leader` row: there the fence is not checked.
    pub fn fenced(&self, epoch: i64) -> Store {
        Store {
            inner: self.inner.clone(),
            fence: Some(epoch),
        }
    }

    /// Whether this store's commits prune the watch history. On PostgreSQL
    /// only the leader's do (the others learn the floor as they follow);
    /// SQLite's always do, so there this changes nothing.
    pub fn set_prunes_history(&self, prunes: bool) {
        if self.inner.readers.is_some() {
            self.inner.prunes.store(prunes, Ordering::Relaxed);
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The in-memory view, current as of the last commit: updated in the
    /// commit path, under the writer, BEFORE the commit's events are
    /// broadcast — so anyone woken by an event sees at least that event's
    /// state in the view. Hold the guard briefly and never across an
    /// `.await` (it is a std RwLock read guard), nor while writing to the
    /// store from the same thread (the commit waits for readers to let go).
    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        self.inner.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's work counters since it was opened.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.inner.counters.transactions.load(Ordering::Relaxed),
            rows_read: self.inner.counters.rows_read.load(Ordering::Relaxed),
        }
    }

    /// Run `f` in a transaction; its changes are committed if it returns Ok
    /// and undone otherwise. Writes queued while another transaction runs
    /// are committed together with the others of their batch, each closure
    /// in its own savepoint; a failed commit fails every caller of the
    /// batch. Events are broadcast only after a successful commit, and the
    /// caller's Ok comes after them. Once queued, the write happens even if
    /// the caller stops waiting.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Slot {
            f: Some(f),
            out: None,
            reply: Some(reply),
            catch: true,
            fence: self.fence,
        });
        let start = {
            let mut q = lock(&self.inner.queue);
            q.jobs.push_back(job);
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || Self::drain(&inner));
        }
        rx.await.map_err(|_| {
            E::from(StoreError::Join(
                "the store writer stopped before this write".into(),
            ))
        })?
    }

    /// The writer: commit the queued writes, a batch at a time, until none is left.
    fn drain(inner: &Inner) {
        let _guard = DrainGuard(inner);
        loop {
            let mut conn = lock(&inner.conn);
            let mut batch: Vec<Box<dyn Job + Send>> = {
                let mut q = lock(&inner.queue);
                let n = q.jobs.len().min(MAX_BATCH);
                if n == 0 {
                    q.draining = false;
                    return;
                }
                q.jobs.drain(..n).collect()
            };
            let mut jobs: Vec<&mut dyn Job> = batch.iter_mut().map(|j| &mut **j as &mut dyn Job).collect();
            if let Err(e) = Self::run_batch(inner, &mut conn, &mut jobs) {
                for job in &mut jobs {
                    job.fail(dup(&e));
                }
            }
            drop(conn);
            for job in &mut jobs {
                job.deliver();
            }
        }
    }

    /// Run `jobs` in one transaction (each in its own savepoint when there
    /// are several), commit, update the view and broadcast.
    fn run_batch(inner: &Inner, conn: &mut Conn, jobs: &mut [&mut dyn Job]) -> Result<(), StoreError> {
        let started = Instant::now();
        // On PostgreSQL every closure gets a savepoint: an error there
        // aborts the whole transaction until it is rolled back to one.
        let grouped = jobs.len() > 1 || conn.is_pg();
        let mut txn = conn.begin(&inner.counters, true)?;
        // Another replica committed since the view was last brought forward:
        // replay its commits first (the revision lock is held, so nothing
        // else commits now), so that this batch's own changes apply on top.
        if txn.is_pg() {
            Self::follow(inner, &txn)?;
        }
        let mut kept = Changes::default();
        let mut any_ok = false;
        // The leader epoch, read once per batch after the revision lock
        // (a takeover takes that lock too, so it is current until commit).
        let epoch = if txn.is_pg() && jobs.iter().any(|j| j.fence().is_some()) {
            Some(txn.leader_epoch()?)
        } else {
            None
        };
        for job in jobs.iter_mut() {
            if let (Some(current), Some(mine)) = (epoch, job.fence())
                && mine != current
            {
                job.fail(StoreError::Fenced { mine, current });
                continue;
            }
            let mark = if grouped { Some(txn.savepoint()?) } else { None };
            let ok = job.run(&mut txn);
            if !txn.in_transaction() {
                return Err(StoreError::Join(
                    "the store transaction was rolled back after an error".into(),
                ));
            }
            match (ok, mark) {
                (true, Some(_)) => kept.append(txn.release()?),
                (true, None) => kept.append(std::mem::take(&mut txn.changes)),
                (false, Some(rev)) => txn.rollback_to(rev)?,
                // The only closure failed: dropping the transaction undoes it.
                (false, None) => return Ok(()),
            }
            any_ok |= ok;
        }
        if !any_ok {
            return Ok(());
        }
        // Only commits with events have history to prune (and to age).
        let prune_through = if kept.events.is_empty() || !inner.prunes.load(Ordering::Relaxed) {
            0
        } else {
            lock(&inner.retention).commit(txn.revision()?, Instant::now())
        };
        // This batch pruned commands: the view applies exactly the rows it
        // deleted, and the pruning's revision is what a later catch-up
        // compares with.
        let pruned_at = if kept
            .commands
            .iter()
            .any(|c| matches!(c, txn::CommandChange::Prune(_)))
        {
            Some(txn.commands_pruned_at()?)
        } else {
            None
        };
        let revision = txn.commit(prune_through)?;
        inner.counters.transactions.fetch_add(1, Ordering::Relaxed);
        let hub = crate::metrics::hub();
        hub.store_write_seconds.observe(started.elapsed().as_secs_f64());
        hub.store_batch_writes.observe(jobs.len() as f64);
        let mut follow = lock(&inner.follow);
        if let Some(at) = pruned_at {
            follow.commands_pruned_at = follow.commands_pruned_at.max(at);
        }
        Self::publish(inner, &mut follow, kept, revision, prune_through);
        Ok(())
    }

    /// Bring the view, the watch cache and the feeds to `revision` with
    /// `changes`, unless the view is there already (the change reader
    /// replayed this commit from the database first). The caller holds
    /// `follow` (passed in), so the writer and the change reader never
    /// interleave.
    fn publish(inner: &Inner, _follow: &mut Follow, changes: Changes, revision: u64, prune_through: u64) {
        {
            let mut view = inner.view.write().unwrap_or_else(|p| p.into_inner());
            if view.revision() >= revision && revision > 0 {
                return;
            }
            // The view first, then the broadcasts (the caller holds `follow`,
            // so receivers see events in commit = revision order; watchers
            // dedupe by revision). `send` never blocks; no receivers is fine.
            view.apply(&changes, revision);
        }
        // The watch cache before the feeds, so a watcher that lags the feed
        // finds every event it missed there. One Arc per event, shared by
        // the cache and the watchers' feed; the FSM's and the power
        // engine's feed of plain events gets a copy only when subscribed.
        let shared: Vec<Arc<WatchEvent>> = changes.events.into_iter().map(Arc::new).collect();
        inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .commit(&shared, revision, prune_through);
        let plain = inner.events.receiver_count() > 0;
        for ev in shared {
            if plain {
                let _ = inner.events.send(WatchEvent::clone(&ev));
            }
            let _ = inner.shared.send(ev);
        }
        for d in changes.desired {
            let _ = inner.desired.send(d);
        }
    }

    /// Replay what other replicas committed after the view's revision up to
    /// `txn`'s (docs/ha.md §4). When the history no longer reaches back to
    /// the view (a replica away longer than the history is kept), the view is
    /// loaded afresh, the watch cache restarts (watchers behind it get
    /// `TooOld` from the history) and every node's desired version is
    /// announced.
    fn follow(inner: &Inner, txn: &Txn<'_>) -> Result<(), StoreError> {
        let mut f = lock(&inner.follow);
        let to = txn.revision()?;
        let from = inner.view.read().unwrap_or_else(|p| p.into_inner()).revision();
        if to <= from {
            return Ok(());
        }
        let floor = txn.history_floor()?;
        if floor > from {
            let view = View::load(txn)?;
            f.commands_pruned_at = txn.commands_pruned_at()?;
            let desired = txn.all_desired()?;
            *inner.view.write().unwrap_or_else(|p| p.into_inner()) = view;
            *inner.cache.write().unwrap_or_else(|p| p.into_inner()) =
                WatchCache::new(inner.cache_capacity, to);
            tracing::warn!(
                from,
                to,
                floor,
                "store history no longer reaches back to this replica's view: view reloaded"
            );
            for (node, version) in desired {
                let _ = inner.desired.send(DesiredChanged { node, version });
            }
            return Ok(());
        }
        let (changes, pruned_at) = {
            let view = inner.view.read().unwrap_or_else(|p| p.into_inner());
            txn.changes_between(
                from,
                to,
                f.commands_pruned_at,
                &|id| view.has_command(id),
                &|| view.command_ids(),
            )?
        };
        f.commands_pruned_at = pruned_at;
        Self::publish(inner, &mut f, changes, to, floor);
        Ok(())
    }

    /// Like [`Store::write`], but on the calling thread, in a transaction of
    /// its own (for blocking contexts and tests). On PostgreSQL the calling
    /// thread must not be one that drives async tasks (the synchronous
    /// client blocks on a runtime of its own): use [`Store::write`] there.
    pub fn write_sync<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut slot = Slot {
            f: Some(f),
            out: None,
            reply: None,
            catch: false,
            fence: self.fence,
        };
        let mut conn = lock(&self.inner.conn);
        if let Err(e) = Self::run_batch(&self.inner, &mut conn, &mut [&mut slot]) {
            slot.fail(e);
        }
        drop(conn);
        slot.out
            .unwrap_or_else(|| Err(E::from(StoreError::Join("store write did not run".into()))))
    }

    /// Read-only access (runs in a transaction too, for a consistent view).
    /// A read goes through the writer (a write that changes nothing), so it
    /// also brings the view up to the store first; on PostgreSQL it takes
    /// the revision lock like a write (the admin API reads through
    /// [`Store::read_snapshot`] instead).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        // A read is a write that changes nothing; commit is then a no-op.
        self.write(f).await
    }

    /// A read for the admin API: on PostgreSQL in a `REPEATABLE READ READ
    /// ONLY` transaction on one of `store.postgres.pool` read connections,
    /// without the revision lock (it sees every commit made before it
    /// began, whatever this replica's view holds yet); on SQLite exactly
    /// [`Store::read`]. The store's own parts use [`Store::read`], which
    /// also brings the view up to date first.
    pub async fn read_snapshot<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let Some(readers) = self.inner.readers.clone() else {
            return self.read(f).await;
        };
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || readers.read(&inner.counters, f)).await {
            Ok(out) => out,
            Err(e) => Err(E::from(StoreError::Join(format!("store read failed: {e}")))),
        }
    }

    /// Bring this replica's view up to every commit in the store (on
    /// PostgreSQL: replay what the other replicas committed; on SQLite the
    /// view is always current). Returns the store's revision.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        self.write(|t| t.revision()).await
    }

    /// Subscribe to committed changes. Subscribe *before* reading history so
    /// nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.inner.events.subscribe()
    }

    /// [`Store::subscribe`], each event shared (`Arc`): a receiver clones a
    /// pointer, not the resource. Watchers use this with
    /// [`Store::recent_since`] to catch up when they fall behind.
    pub fn subscribe_shared(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.inner.shared.subscribe()
    }

    /// The events after `rev` (exclusive) from the watch cache in memory,
    /// oldest first, at most `limit`, with the store revision the cache is
    /// at: when fewer than `limit` came back, every event up to that
    /// revision was among them. No store read. `None` when the cache does
    /// not reach back to `rev` (or `rev` is ahead of it): read
    /// [`Store::events_since`], which also decides whether `rev` is too old.
    pub fn recent_since(&self, rev: u64, limit: usize) -> Option<(Vec<Arc<WatchEvent>>, u64)> {
        self.inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .since(rev, limit)
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
        self.read_snapshot(move |t| t.events_since(from_version, &kinds, limit))
            .await
    }
}

pub use hostplane_common::time::now_ms;

/// One closure of a test's group commit.
#[cfg(test)]
type TestWrite<'f> = Box<dyn FnOnce(&mut Txn<'_>) -> Result<(), StoreError> + 'f>;

#[cfg(test)]
impl Store {
    /// Writes waiting for the writer.
    fn queued_for_test(&self) -> usize {
        lock(&self.inner.queue).jobs.len()
    }

    /// Run `fs` as one group commit, on this thread; each closure's outcome.
    fn write_group_for_test<'f>(&self, fs: Vec<TestWrite<'f>>) -> Vec<Result<(), StoreError>> {
        let mut slots: Vec<_> = fs
            .into_iter()
            .map(|f| Slot {
                f: Some(f),
                out: None,
                reply: None,
                catch: false,
                fence: self.fence,
            })
            .collect();
        let mut jobs: Vec<&mut dyn Job> = slots.iter_mut().map(|s| s as &mut dyn Job).collect();
        let mut conn = lock(&self.inner.conn);
        if let Err(e) = Self::run_batch(&self.inner, &mut conn, &mut jobs) {
            for job in &mut jobs {
                job.fail(dup(&e));
            }
        }
        drop(conn);
        drop(jobs);
        slots
            .into_iter()
            .map(|s| s.out.unwrap_or_else(|| Err(StoreError::Join("not run".into()))))
            .collect()
    }
}

#[cfg(test)]
mod follow_tests;
#[cfg(test)]
pub(crate) mod test_backend;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;
