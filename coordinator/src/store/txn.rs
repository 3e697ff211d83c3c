//! One store transaction: reads, writes, revisions and the events they make.
//!
//! A transaction runs on either engine (docs/ha.md §1): SQLite's
//! `rusqlite::Transaction` or PostgreSQL's `postgres::Transaction`. Every
//! statement is written once, with SQLite's `?N` placeholders; on
//! PostgreSQL it is rewritten once (`$N`, SQLite-only planner hints
//! dropped) and prepared once per connection. Parameters are [`Arg`]s and
//! rows are read through [`Row`], both of which speak to either engine.
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hostplane_proto::v1::{
    Command, CommandOutcome, CommandResult, EventType, Kind, Resource, WatchEvent, resource,
};
use rusqlite::{Statement, StatementStatus};

use super::{DesiredChanged, StoreError, now_ms};

/// A stored agent command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub command: Command,
    pub node: String,
    pub created_ms: i64,
    /// `None` while the command is open (part of the node's desired state).
    pub result: Option<CommandResult>,
}

/// A change to the commands table, as the view replays it.
#[derive(Debug, Clone)]
pub(super) enum CommandChange {
    Insert(Box<CommandRow>),
    Finish { id: String, result: CommandResult },
    Prune(Vec<String>),
}

/// What a transaction (or one closure of a group commit) changed, in order:
/// the view replays it and the events and desired changes are broadcast.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub events: Vec<WatchEvent>,
    pub desired: Vec<DesiredChanged>,
    pub commands: Vec<CommandChange>,
}

impl Changes {
    pub(super) fn append(&mut self, mut other: Changes) {
        self.events.append(&mut other.events);
        self.desired.append(&mut other.desired);
        self.commands.append(&mut other.commands);
    }
}

/// The store's work counters (see [`super::StoreStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub rows_read: AtomicU64,
}

/// A statement parameter either engine can bind. Integers are bound as
/// the column's type: `i64` for BIGINT columns (revisions, versions,
/// milliseconds), `i32` for INTEGER ones (`events.type`,
/// `commands.outcome`); PostgreSQL refuses a mismatch.
pub(crate) trait Arg: rusqlite::ToSql + postgres::types::ToSql + Sync {}
impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync + ?Sized> Arg for T {}

/// `args![a, b]`: a statement's parameters as a slice of [`Arg`]s.
macro_rules! args {
    () => {
        &[] as &[&dyn $crate::store::txn::Arg]
    };
    ($($e:expr),+ $(,)?) => {
        &[$(&$e as &dyn $crate::store::txn::Arg),+][..]
    };
}
pub(crate) use args;

/// `p` as SQLite binds it.
fn lite_args<'p>(p: &'p [&'p dyn Arg]) -> Vec<&'p dyn rusqlite::ToSql> {
    p.iter().map(|a| *a as &dyn rusqlite::ToSql).collect()
}

/// `p` as PostgreSQL binds it.
fn pg_args<'p>(p: &'p [&'p dyn Arg]) -> Vec<&'p (dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|a| *a as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// A column value either engine can read.
pub(crate) trait Col: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b> {}
impl<T: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b>> Col for T {}

/// One result row, from either engine.
pub(crate) enum Row<'r, 's> {
    Lite(&'r rusqlite::Row<'s>),
    Pg(&'r postgres::Row),
}

impl Row<'_, '_> {
    /// Column `i` (from 0).
    pub(crate) fn get<T: Col>(&self, i: usize) -> Result<T, StoreError> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }
}

/// A PostgreSQL connection's prepared statements, by their SQLite text.
pub(super) type PgStatements = HashMap<String, postgres::Statement>;

/// The engine's transaction under a [`Txn`].
pub(super) enum Tx<'a> {
    Lite(rusqlite::Transaction<'a>),
    Pg {
        tx: RefCell<postgres::Transaction<'a>>,
        stmts: RefCell<&'a mut PgStatements>,
    },
}

/// `sql` in PostgreSQL's dialect: `?N` placeholders become `$N` and
/// SQLite's planner hints (`NOT INDEXED`) go. Statements never hold a `?`
/// inside a string literal.
pub(super) fn pg_sql(sql: &str) -> String {
    sql.replace(" NOT INDEXED", "").replace('?', "$")
}

pub struct Txn<'a> {
    pub(super) tx: Tx<'a>,
    counters: &'a Counters,
    /// The revision as of the newest change in this transaction; written to
    /// `meta` once, at commit.
    rev: u64,
    start_rev: u64,
    /// The changes of the closure running now (a group commit takes them
    /// after each closure).
    pub(super) changes: Changes,
}

fn kind_key(kind: Kind) -> &'static str {
    kind.noun()
}

/// The node a Device or Dpu is on (the indexed `resources.node` column):
/// `None` for other kinds and for an empty `spec.node` (proto3 JSON leaves
/// an empty string out, so `json_extract` found NULL there too).
fn node_column(r: &Resource) -> Option<&str> {
    let node = match &r.kind {
        Some(resource::Kind::Device(d)) => d.spec.as_ref().map(|s| s.node.as_str()),
        Some(resource::Kind::Dpu(d)) => d.spec.as_ref().map(|s| s.node.as_str()),
        _ => None,
    };
    node.filter(|n| !n.is_empty())
}

/// A Device's serial (PostgreSQL's indexed `resources.serial` column):
/// `None` for other kinds and for an empty serial, as proto3 JSON leaves
/// it out and SQLite's `json_extract` index finds NULL there.
fn serial_column(r: &Resource) -> Option<&str> {
    match &r.kind {
        Some(resource::Kind::Device(d)) => d.spec.as_ref().map(|s| s.serial.as_str()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

impl<'a> Txn<'a> {
    /// A transaction over `tx`. On PostgreSQL a writing transaction
    /// (`lock`) first takes the revision row `FOR UPDATE`: that serialises
    /// writers across replicas, so commits become visible in revision order
    /// (docs/ha.md §2).
    pub(super) fn new(tx: Tx<'a>, counters: &'a Counters, lock: bool) -> Result<Self, StoreError> {
        let mut t = Txn {
            tx,
            counters,
            rev: 0,
            start_rev: 0,
            changes: Changes::default(),
        };
        let sql = if lock && t.is_pg() {
            "SELECT value FROM meta WHERE key = 'revision' FOR UPDATE"
        } else {
            "SELECT value FROM meta WHERE key = 'revision'"
        };
        let v: i64 = t.one_row(sql, args![], |r| r.get(0))?.unwrap_or(0);
        t.rev = v as u64;
        t.start_rev = t.rev;
        Ok(t)
    }

    /// Whether this transaction runs on PostgreSQL.
    pub(super) fn is_pg(&self) -> bool {
        matches!(self.tx, Tx::Pg { .. })
    }

    /// Add the rows `stmt` stepped through since the last count to the store's counter.
    fn count(&self, stmt: &Statement<'_>) {
        let steps = stmt.reset_status(StatementStatus::VmStep).max(0) as u64;
        self.counters.rows_read.fetch_add(steps, Ordering::Relaxed);
    }

    /// The prepared PostgreSQL statement for `sql` (prepared once per connection).
    fn pg_statement(
        tx: &mut postgres::Transaction<'_>,
        stmts: &mut PgStatements,
        sql: &str,
    ) -> Result<postgres::Statement, StoreError> {
        if let Some(st) = stmts.get(sql) {
            return Ok(st.clone());
        }
        let st = tx.prepare(&pg_sql(sql))?;
        stmts.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Run a statement that returns no rows (cached, counted); the rows it changed.
    pub(super) fn exec(&self, sql: &str, p: &[&dyn Arg]) -> Result<usize, StoreError> {
        match &self.tx {
            Tx::Lite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let n = stmt.execute(lite_args(p).as_slice());
                self.count(&stmt);
                Ok(n?)
            }
            Tx::Pg { tx, stmts } => {
                let mut tx = tx.borrow_mut();
                let st = Self::pg_statement(&mut tx, &mut stmts.borrow_mut(), sql)?;
                Ok(tx.execute(&st, &pg_args(p))? as usize)
            }
        }
    }

    /// The first row of a query, if any (cached, counted).
    pub(super) fn one_row<T>(
        &self,
        sql: &str,
        p: &[&dyn Arg],
        f: impl FnOnce(&Row<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.each_row(sql, p, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// Every row of a query (cached, counted).
    pub(super) fn all_rows<T>(
        &self,
        sql: &str,
        p: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each_row(sql, p, |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// `f` over the rows of a query, in order, for as long as it returns
    /// true (cached, counted). Rows are streamed on both engines.
    pub(super) fn each_row(
        &self,
        sql: &str,
        p: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_, '_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        match &self.tx {
            Tx::Lite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let params = lite_args(p);
                let res = (|| {
                    let mut rows = stmt.query(params.as_slice())?;
                    while let Some(r) = rows.next()? {
                        if !f(&Row::Lite(r))? {
                            break;
                        }
                    }
                    Ok(())
                })();
                self.count(&stmt);
                res
            }
            Tx::Pg { tx, stmts } => {
                use postgres::fallible_iterator::FallibleIterator;
                let mut tx = tx.borrow_mut();
                let st = Self::pg_statement(&mut tx, &mut stmts.borrow_mut(), sql)?;
                let mut rows = tx.query_raw(&st, pg_args(p))?;
                while let Some(r) = rows.next()? {
                    if !f(&Row::Pg(&r))? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Run SQL without parameters or results (savepoints).
    pub(super) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.tx {
            Tx::Lite(tx) => Ok(tx.execute_batch(sql)?),
            Tx::Pg { tx, .. } => Ok(tx.borrow_mut().batch_execute(sql)?),
        }
    }

    /// Start one closure of a group commit.
    pub(super) fn savepoint(&mut self) -> Result<u64, StoreError> {
        self.batch("SAVEPOINT job")?;
        Ok(self.rev)
    }

    /// The closure succeeded: keep its work; returns its changes.
    pub(super) fn release(&mut self) -> Result<Changes, StoreError> {
        self.batch("RELEASE job")?;
        Ok(std::mem::take(&mut self.changes))
    }

    /// The closure failed: undo its work and forget its changes.
    pub(super) fn rollback_to(&mut self, rev: u64) -> Result<(), StoreError> {
        self.batch("ROLLBACK TO job; RELEASE job")?;
        self.rev = rev;
        self.changes = Changes::default();
        Ok(())
    }

    /// False when SQLite ended the transaction on its own (some errors roll
    /// it back): nothing after that may be committed as part of it. On
    /// PostgreSQL an error leaves the transaction aborted until its savepoint
    /// is rolled back, which the writer always does (every closure runs in
    /// one there).
    pub(super) fn in_transaction(&self) -> bool {
        match &self.tx {
            Tx::Lite(tx) => !tx.is_autocommit(),
            Tx::Pg { .. } => true,
        }
    }

    /// Write the revision, prune history through `prune_through` (0:
    /// nothing), commit. Returns the store's revision after the commit.
    pub(super) fn commit(self, prune_through: u64) -> Result<u64, StoreError> {
        if self.rev != self.start_rev {
            self.exec(
                "UPDATE meta SET value = ?1 WHERE key = 'revision'",
                args![self.rev as i64],
            )?;
            if self.is_pg() {
                // Delivered to every replica's change reader at commit, in
                // commit order; the payload is only the revision.
                self.exec("SELECT pg_notify('hostplane', ?1)", args![self.rev.to_string()])?;
            }
        }
        if prune_through > 0 {
            self.prune_history(prune_through)?;
        }
        let rev = self.rev;
        match self.tx {
            Tx::Lite(tx) => tx.commit()?,
            Tx::Pg { tx, .. } => tx.into_inner().commit()?,
        }
        Ok(rev)
    }

    /// The store's current revision (the resource_version of the newest change).
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.rev)
    }

    fn next_revision(&mut self) -> Result<u64, StoreError> {
        self.rev += 1;
        Ok(self.rev)
    }

    pub(super) fn decode(kind: Kind, name: &str, body: &str) -> Result<Resource, StoreError> {
        serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
            kind: kind.noun(),
            name: name.into(),
            source,
        })
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let body: Option<String> = self.one_row(
            "SELECT body FROM resources WHERE kind = ?1 AND name = ?2",
            args![kind_key(kind), name],
            |r| r.get(0),
        )?;
        body.map(|b| Self::decode(kind, name, &b)).transpose()
    }

    fn decode_rows(kind: Kind, rows: Vec<(String, String)>) -> Result<Vec<Resource>, StoreError> {
        rows.into_iter()
            .map(|(name, body)| Self::decode(kind, &name, &body))
            .collect()
    }

    /// Every object of a kind, ordered by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError> {
        let rows = self.all_rows(
            "SELECT name, body FROM resources WHERE kind = ?1 ORDER BY name",
            args![kind_key(kind)],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )?;
        Self::decode_rows(kind, rows)
    }

    fn put(&mut self, mut r: Resource, ty: EventType) -> Result<Resource, StoreError> {
        let kind = r.kind();
        let rev = self.next_revision()?;
        let now = now_ms();
        {
            let m = r.metadata_mut().expect("resource has a kind");
            m.resource_version = rev;
            m.updated_at_ms = now;
            if ty == EventType::Added {
                m.created_at_ms = now;
                m.generation = m.generation.max(1);
            }
        }
        let name = r.name().to_string();
        let body = serde_json::to_string(&r).map_err(|source| StoreError::Encode {
            kind: kind.noun(),
            name: name.clone(),
            source,
        })?;
        let prev = if ty == EventType::Added {
            None
        } else {
            self.prev_body_to_keep(kind, &name)?
        };
        let node = node_column(&r);
        if self.is_pg() {
            // PostgreSQL indexes a Device's serial as a plain column
            // (SQLite indexes the JSON expression instead).
            let serial = serial_column(&r);
            if ty == EventType::Added {
                self.exec(
                    "INSERT INTO resources (kind, name, resource_version, body, node, serial) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    args![kind_key(kind), name, rev as i64, body, node, serial],
                )?;
            } else {
                self.exec(
                    "UPDATE resources SET resource_version = ?3, body = ?4, node = ?5, serial = ?6 WHERE kind = ?1 AND name = ?2",
                    args![kind_key(kind), name, rev as i64, body, node, serial],
                )?;
            }
        } else if ty == EventType::Added {
            self.exec(
                "INSERT INTO resources (kind, name, resource_version, body, node) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![kind_key(kind), name, rev as i64, body, node],
            )?;
        } else {
            self.exec(
                "UPDATE resources SET resource_version = ?3, body = ?4, node = ?5 WHERE kind = ?1 AND name = ?2",
                args![kind_key(kind), name, rev as i64, body, node],
            )?;
        }
        self.record_event(rev, kind, &name, ty, (&body, prev), &r)?;
        Ok(r)
    }

    /// `(body, prev_body)`: `prev_body` is the object's state before this
    /// event when no kept event holds it (see snapshot.rs).
    fn record_event(
        &mut self,
        rev: u64,
        kind: Kind,
        name: &str,
        ty: EventType,
        (body, prev_body): (&str, Option<String>),
        r: &Resource,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO events (revision, kind, name, type, body, prev_body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![rev as i64, kind_key(kind), name, ty as i32, body, prev_body],
        )?;
        self.changes.events.push(WatchEvent {
            r#type: ty as i32,
            resource_version: rev,
            resource: Some(r.clone()),
        });
        Ok(())
    }

    /// Insert a new object; sets resource_version, created/updated times and generation 1.
    /// The caller checks that it does not exist yet.
    pub fn insert(&mut self, r: Resource) -> Result<Resource, StoreError> {
        self.put(r, EventType::Added)
    }

    /// Replace a stored object; sets resource_version and updated time. The
    /// caller handles `generation` (it grows with spec changes only).
    pub fn update(&mut self, r: Resource) -> Result<Resource, StoreError> {
        self.put(r, EventType::Modified)
    }

    /// Remove an object; returns what was stored (with the deletion's revision).
    pub fn delete(&mut self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let Some(mut r) = self.get(kind, name)? else {
            return Ok(None);
        };
        let rev = self.next_revision()?;
        let prev = self.prev_body_to_keep(kind, name)?;
        self.exec(
            "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
            args![kind_key(kind), name],
        )?;
        if let Some(m) = r.metadata_mut() {
            m.resource_version = rev;
        }
        let body = serde_json::to_string(&r).map_err(|source| StoreError::Encode {
            kind: kind.noun(),
            name: name.into(),
            source,
        })?;
        self.record_event(rev, kind, name, EventType::Deleted, (&body, prev), &r)?;
        Ok(Some(r))
    }

    /// Retained events after `from_version`, oldest first.
    pub fn events_since(
        &self,
        from_version: u64,
        kinds: &[Kind],
        limit: usize,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        let oldest: Option<i64> = self
            .one_row("SELECT MIN(revision) FROM events", args![], |r| r.get(0))?
            .flatten();
        let current = self.revision()?;
        if let Some(oldest) = oldest
            && from_version + 1 < oldest as u64
            && from_version < current
        {
            return Err(StoreError::TooOld {
                requested: from_version,
                oldest: oldest as u64 - 1,
            });
        }
        let rows = self.all_rows(
            "SELECT revision, kind, name, type, body FROM events WHERE revision > ?1 ORDER BY revision LIMIT ?2",
            args![from_version as i64, limit as i64],
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<i32>(3)?,
                    r.get::<String>(4)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for (rev, kind_s, name, ty, body) in rows {
            let kind = Kind::from_noun(&kind_s).unwrap_or(Kind::Unspecified);
            if !kinds.is_empty() && !kinds.contains(&kind) {
                continue;
            }
            let resource = Self::decode(kind, &name, &body)?;
            out.push(WatchEvent {
                r#type: ty,
                resource_version: rev as u64,
                resource: Some(resource),
            });
        }
        Ok(out)
    }

    // ------------------------------------------------- following (replicas)

    /// What was committed after revision `from` up to `to`, as one
    /// [`Changes`] the view, the watch cache and the feeds replay: the events
    /// in that range, the commands inserted or finished in it (`known` says
    /// which the view already holds: those are finishes), the commands
    /// pruned since the pruning at revision `pruned_at` (the last the view
    /// applied;
    /// `view_commands` lists the view's command ids) and the nodes whose
    /// desired version moved. Returns the new
    /// cut-off with it. A replica follows others' commits with it (docs/ha.md §4).
    pub(super) fn changes_between(
        &self,
        from: u64,
        to: u64,
        pruned_at: i64,
        known: &dyn Fn(&str) -> bool,
        view_commands: &dyn Fn() -> Vec<String>,
    ) -> Result<(Changes, i64), StoreError> {
        let mut out = Changes::default();
        let rows = self.all_rows(
            "SELECT revision, kind, name, type, body FROM events WHERE revision > ?1 AND revision <= ?2 ORDER BY revision",
            args![from as i64, to as i64],
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<i32>(3)?,
                    r.get::<String>(4)?,
                ))
            },
        )?;
        for (rev, kind_s, name, ty, body) in rows {
            let kind = Kind::from_noun(&kind_s).unwrap_or(Kind::Unspecified);
            out.events.push(WatchEvent {
                r#type: ty,
                resource_version: rev as u64,
                resource: Some(Self::decode(kind, &name, &body)?),
            });
        }
        let newest_pruning = self.commands_pruned_at()?;
        let mut pruned = std::collections::HashSet::new();
        if newest_pruning > pruned_at {
            // A pruning ran: the view's commands the table no longer holds
            // are the ones it deleted. (Not "finished before its cut-off" as
            // the view knows them: a command finished and pruned within this
            // range is still open in the view; and a later pruning with an
            // earlier cut-off still deletes what finished since.)
            let kept: std::collections::HashSet<String> = self
                .all_rows("SELECT id FROM commands", args![], |r| r.get(0))?
                .into_iter()
                .collect();
            let ids: Vec<String> = view_commands()
                .into_iter()
                .filter(|id| !kept.contains(id))
                .collect();
            if !ids.is_empty() {
                pruned.extend(ids.iter().cloned());
                out.commands.push(CommandChange::Prune(ids));
            }
        }
        let rows = self.all_rows(
            "SELECT id, node, body, created_ms, outcome, message, finished_ms, power_cycle_required FROM commands \
             WHERE changed_rev > ?1 AND changed_rev <= ?2 ORDER BY changed_rev",
            args![from as i64, to as i64],
            |r| Ok((r.get::<String>(0)?, Self::command_columns(r, 1)?)),
        )?;
        for (id, cols) in rows {
            let row = Self::command_row(&id, cols)?;
            // A row the pruning above drops from the view but the store
            // kept (it finished after the pruning, with an older
            // `finished_ms`) comes back whole.
            match (&row.result, known(&id) && !pruned.contains(&id)) {
                (Some(result), true) => out.commands.push(CommandChange::Finish {
                    id,
                    result: result.clone(),
                }),
                (None, true) => {}
                (_, false) => out.commands.push(CommandChange::Insert(Box::new(row))),
            }
        }
        out.desired = self.all_rows(
            "SELECT node, version FROM desired WHERE version > ?1 AND version <= ?2 ORDER BY version",
            args![from as i64, to as i64],
            |r| {
                Ok(DesiredChanged {
                    node: r.get(0)?,
                    version: r.get::<i64>(1)? as u64,
                })
            },
        )?;
        Ok((out, newest_pruning))
    }

    /// The epoch of the `leader` row (PostgreSQL only; docs/ha.md §3).
    pub(super) fn leader_epoch(&self) -> Result<i64, StoreError> {
        Ok(self
            .one_row("SELECT epoch FROM leader WHERE id = 1", args![], |r| r.get(0))?
            .unwrap_or(0))
    }

    /// The revision of the newest pruning that deleted commands
    /// (`meta.commands_pruned_at`, 0 before any).
    pub(super) fn commands_pruned_at(&self) -> Result<i64, StoreError> {
        Ok(self
            .one_row(
                "SELECT value FROM meta WHERE key = 'commands_pruned_at'",
                args![],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }

    // ------------------------------------------------------------ commands

    fn bump_desired(&mut self, node: &str) -> Result<u64, StoreError> {
        let version = self.next_revision()?;
        self.exec(
            "INSERT INTO desired (node, version) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET version = excluded.version",
            args![node, version as i64],
        )?;
        self.changes.desired.retain(|d| d.node != node);
        self.changes.desired.push(DesiredChanged {
            node: node.into(),
            version,
        });
        Ok(version)
    }

    /// Give a node's desired state a new version without changing its
    /// commands: for changes the version must announce that are not command
    /// rows (a Dpu's host network joining or leaving the node's desired
    /// state). Sessions resend on the new version. Returns it.
    pub fn touch_desired(&mut self, node: &str) -> Result<u64, StoreError> {
        self.bump_desired(node)
    }

    /// The version of a node's desired state (0 if it never had one).
    pub fn desired_version(&self, node: &str) -> Result<u64, StoreError> {
        let v: Option<i64> =
            self.one_row("SELECT version FROM desired WHERE node = ?1", args![node], |r| {
                r.get(0)
            })?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Every node's desired version (loading the view).
    pub(super) fn all_desired(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.all_rows("SELECT node, version FROM desired", args![], |r| {
            Ok((r.get::<String>(0)?, r.get::<i64>(1)? as u64))
        })
    }

    /// Add an open command to `node`'s desired state. Returns the new desired version.
    pub fn insert_command(&mut self, node: &str, command: &Command) -> Result<u64, StoreError> {
        let body = serde_json::to_string(command).map_err(|source| StoreError::Encode {
            kind: "command",
            name: command.id.clone(),
            source,
        })?;
        let created_ms = now_ms();
        // The desired bump's revision is the row's `changed_rev`, which
        // replicas follow (docs/ha.md §4).
        let version = self.bump_desired(node)?;
        self.exec(
            "INSERT INTO commands (id, node, dpu, body, created_ms, changed_rev) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![command.id, node, command.dpu, body, created_ms, version as i64],
        )?;
        self.changes
            .commands
            .push(CommandChange::Insert(Box::new(CommandRow {
                command: command.clone(),
                node: node.into(),
                created_ms,
                result: None,
            })));
        Ok(version)
    }

    fn command_row(
        id: &str,
        (node, body, created_ms, outcome, message, finished, power_cycle_required): CommandColumns,
    ) -> Result<CommandRow, StoreError> {
        let command: Command = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
            kind: "command",
            name: id.into(),
            source,
        })?;
        let result = outcome.map(|o| CommandResult {
            outcome: o,
            message: message.unwrap_or_default(),
            finished_at_ms: finished.unwrap_or(0),
            power_cycle_required: power_cycle_required != 0,
        });
        Ok(CommandRow {
            command,
            node,
            created_ms,
            result,
        })
    }

    fn command_columns(r: &Row<'_, '_>, at: usize) -> Result<CommandColumns, StoreError> {
        Ok((
            r.get(at)?,
            r.get(at + 1)?,
            r.get(at + 2)?,
            r.get(at + 3)?,
            r.get(at + 4)?,
            r.get(at + 5)?,
            r.get(at + 6)?,
        ))
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        let row = self.one_row(
            "SELECT node, body, created_ms, outcome, message, finished_ms, power_cycle_required FROM commands WHERE id = ?1",
            args![id],
            |r| Self::command_columns(r, 0),
        )?;
        row.map(|cols| Self::command_row(id, cols)).transpose()
    }

    /// Every command row, open and finished (loading the view).
    pub(super) fn all_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
        let rows = self.all_rows(
            "SELECT id, node, body, created_ms, outcome, message, finished_ms, power_cycle_required FROM commands",
            args![],
            |r| Ok((r.get::<String>(0)?, Self::command_columns(r, 1)?)),
        )?;
        rows.into_iter()
            .map(|(id, cols)| Self::command_row(&id, cols))
            .collect()
    }

    /// The open commands of a node, oldest first: its desired state.
    pub fn open_commands(&self, node: &str) -> Result<Vec<Command>, StoreError> {
        let rows = self.all_rows(
            "SELECT id, body FROM commands WHERE node = ?1 AND outcome IS NULL ORDER BY created_ms, id",
            args![node],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )?;
        rows.into_iter()
            .map(|(id, body)| {
                serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                    kind: "command",
                    name: id,
                    source,
                })
            })
            .collect()
    }

    /// Record a command's final result. Returns false (and changes nothing) if
    /// the command is unknown or already has a result: results are idempotent by id.
    /// A recorded result takes the command out of the node's desired state.
    pub fn finish_command(&mut self, id: &str, result: &CommandResult) -> Result<bool, StoreError> {
        let node: Option<String> = self.one_row(
            "SELECT node FROM commands WHERE id = ?1 AND outcome IS NULL",
            args![id],
            |r| r.get(0),
        )?;
        let Some(node) = node else { return Ok(false) };
        let finished = if result.finished_at_ms > 0 {
            result.finished_at_ms
        } else {
            now_ms()
        };
        let version = self.bump_desired(&node)?;
        self.exec(
            "UPDATE commands SET outcome = ?2, message = ?3, finished_ms = ?4, changed_rev = ?5, \
             power_cycle_required = ?6 WHERE id = ?1",
            args![
                id,
                result.outcome,
                result.message,
                finished,
                version as i64,
                i32::from(result.power_cycle_required)
            ],
        )?;
        self.changes.commands.push(CommandChange::Finish {
            id: id.into(),
            result: CommandResult {
                outcome: result.outcome,
                message: result.message.clone(),
                finished_at_ms: finished,
                power_cycle_required: result.power_cycle_required,
            },
        });
        Ok(true)
    }

    /// Withdraw every open command of a Dpu (the agent cancels them). Returns their ids.
    pub fn cancel_commands_for_dpu(&mut self, dpu: &str, why: &str) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = self.all_rows(
            "SELECT id FROM commands WHERE dpu = ?1 AND outcome IS NULL",
            args![dpu],
            |r| r.get(0),
        )?;
        for id in &ids {
            let result = CommandResult {
                outcome: CommandOutcome::Cancelled as i32,
                message: why.to_string(),
                finished_at_ms: 0,
                power_cycle_required: false,
            };
            self.finish_command(id, &result)?;
        }
        Ok(ids)
    }

    /// Drop finished commands older than `before_ms` (history housekeeping).
    pub fn prune_commands(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        let ids: Vec<String> = self.all_rows(
            "DELETE FROM commands WHERE outcome IS NOT NULL AND finished_ms < ?1 RETURNING id",
            args![before_ms],
            |r| r.get(0),
        )?;
        let n = ids.len();
        if n > 0 {
            self.changes.commands.push(CommandChange::Prune(ids));
            // Replicas learn that a pruning ran from the revision it got
            // (docs/ha.md §4), and which rows went from the table itself.
            let at = self.next_revision()?;
            self.exec(
                "UPDATE meta SET value = ?1 WHERE key = 'commands_pruned_at'",
                args![at as i64],
            )?;
        }
        Ok(n)
    }

    /// Devices or Dpus whose `spec.node` is `node`, ordered by name (an index
    /// lookup on the `node` column, so an agent's Hello reads only its own rows).
    pub fn list_on_node(&self, kind: Kind, node: &str) -> Result<Vec<Resource>, StoreError> {
        let rows = self.all_rows(
            "SELECT name, body FROM resources WHERE kind = ?1 AND node = ?2 ORDER BY name",
            args![kind_key(kind), node],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )?;
        Self::decode_rows(kind, rows)
    }

    /// The Devices whose `spec.serial` is `serial`, ordered by name (through
    /// the serial index of schema 4, not a scan).
    pub fn devices_with_serial(&self, serial: &str) -> Result<Vec<Resource>, StoreError> {
        let sql = if self.is_pg() {
            "SELECT name, body FROM resources WHERE kind = 'device' AND serial = ?1 ORDER BY name"
        } else {
            "SELECT name, body FROM resources INDEXED BY resources_device_serial WHERE kind = 'device' \
             AND json_extract(body, '$.device.spec.serial') = ?1 ORDER BY name"
        };
        let rows = self.all_rows(sql, args![serial], |r| {
            Ok((r.get::<String>(0)?, r.get::<String>(1)?))
        })?;
        Self::decode_rows(Kind::Device, rows)
    }
}

/// A command row's columns after its id.
type CommandColumns = (String, String, i64, Option<i32>, Option<String>, Option<i64>, i32);

#[cfg(test)]
impl Txn<'_> {
    pub fn commit_retention_for_test(&mut self, keep: u64) -> Result<(), StoreError> {
        let rev = self.revision()?;
        self.prune_history(rev.saturating_sub(keep))
    }
}
