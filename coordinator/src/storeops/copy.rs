//! `store copy`: a whole store from one engine into another, verified.
//!
//! The copy runs in one read transaction on the source (SQLite: a deferred
//! transaction, whose first read fixes its snapshot; PostgreSQL: REPEATABLE
//! READ READ ONLY) and one write transaction on the target (SQLite: BEGIN
//! IMMEDIATE; PostgreSQL: the revision row locked `FOR UPDATE` first, the lock
//! every store writer takes, docs/ha.md §2), table by table in primary-key
//! order and in batches, so a store of any size is never held in memory.
//!
//! Copied: `meta` (every key but `schema_version`, which each side's own
//! migrations own), `resources`, `events`, `commands`, `desired`,
//! `power_caps`. PostgreSQL's `resources.serial` (SQLite indexes the body's
//! JSON instead) is filled from each Device's `spec.serial`; the tables only
//! replicas use (`leader`, `replicas`, `sessions`) are not copied.
//!
//! Verification, after the target committed: every copied table is read
//! again on both sides (the source in the copy's own snapshot, the target in
//! a new read transaction), in primary-key order, and its rows are hashed
//! with SHA-256 in a canonical encoding ([`RowHasher`]); counts and digests
//! must be equal. On PostgreSQL the order is the C collation's (byte order,
//! as SQLite's BINARY), whatever the database's default collation.
use std::collections::BTreeMap;
use std::fmt;

use postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;
use sha2::{Digest, Sha256};

use super::endpoint::{Endpoint, PgSettings};
use super::{CopyArgs, EXIT_FAILED};
use crate::store::{StoreError, migrate_file, pg_connect, pg_migrate};

/// Rows per batch read from the source and written to the target.
pub const DEFAULT_BATCH: usize = 500;

/// The longest a statement waits for a SQLite lock held by a running coordinator.
const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One copied table: its columns (those both engines have), its primary key
/// in order, which rows are copied, and how an existing row is replaced.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    /// The primary key's columns; `true` for text (ordered in the C collation).
    key: &'static [(&'static str, bool)],
    /// A condition on the copied rows.
    filter: Option<&'static str>,
    /// Appended to the INSERT: for `meta`, whose rows each side's migrations
    /// create.
    on_conflict: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &["key", "value"],
        key: &[("key", true)],
        filter: Some("key <> 'schema_version'"),
        on_conflict: Some("ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
    },
    Table {
        name: "resources",
        columns: &["kind", "name", "resource_version", "body", "node"],
        key: &[("kind", true), ("name", true)],
        filter: None,
        on_conflict: None,
    },
    Table {
        name: "events",
        columns: &["revision", "kind", "name", "type", "body", "prev_body"],
        key: &[("revision", false)],
        filter: None,
        on_conflict: None,
    },
    Table {
        name: "commands",
        columns: &[
            "id",
            "node",
            "dpu",
            "body",
            "created_ms",
            "outcome",
            "message",
            "finished_ms",
            "changed_rev",
            "power_cycle_required",
        ],
        key: &[("id", true)],
        filter: None,
        on_conflict: None,
    },
    Table {
        name: "desired",
        columns: &["node", "version"],
        key: &[("node", true)],
        filter: None,
        on_conflict: None,
    },
    Table {
        name: "power_caps",
        columns: &["node", "caps", "revision"],
        key: &[("node", true)],
        filter: None,
        on_conflict: None,
    },
];

/// The tables whose rows make a store "hold data" (with a revision above 0).
const DATA_TABLES: [&str; 5] = ["resources", "events", "commands", "desired", "power_caps"];

/// The name of each copied table, in the order they are copied and reported.
pub fn table_names() -> Vec<&'static str> {
    TABLES.iter().map(|t| t.name).collect()
}

/// Each copied table with the columns copied (those both engines have).
pub fn copied_columns() -> Vec<(&'static str, &'static [&'static str])> {
    TABLES.iter().map(|t| (t.name, t.columns)).collect()
}

/// What PostgreSQL holds that is not copied: `resources.serial` (filled from
/// the body) and the tables only replicas use.
pub const PG_ONLY_COLUMNS: &[(&str, &str)] = &[("resources", "serial")];
pub const PG_ONLY_TABLES: &[&str] = &["leader", "replicas", "sessions"];

impl Table {
    fn select(&self, pg: bool) -> String {
        let order: Vec<String> = self
            .key
            .iter()
            .map(|(c, text)| {
                if pg && *text {
                    format!("{c} COLLATE \"C\"")
                } else {
                    c.to_string()
                }
            })
            .collect();
        format!(
            "SELECT {} FROM {}{} ORDER BY {}",
            self.columns.join(", "),
            self.name,
            self.filter.map(|f| format!(" WHERE {f}")).unwrap_or_default(),
            order.join(", ")
        )
    }

    /// The row's primary key, for messages.
    fn key_of(&self, row: &[Value]) -> String {
        self.key
            .iter()
            .zip(row)
            .map(|((c, _), v)| format!("{c}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A column value as both engines hold the copied columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// SHA-256 over a table's rows in a canonical encoding, the same for both
/// engines: each value is a tag byte, then for an integer its 8 bytes
/// (big-endian i64), for text its length (8 bytes, big-endian) and its UTF-8
/// bytes; NULL is the tag alone. Every value delimits itself and a table's
/// rows all have the same columns, so two different row sequences never
/// encode alike; NULL and the empty string differ.
#[derive(Default)]
pub struct RowHasher {
    sha: Sha256,
    rows: u64,
}

impl RowHasher {
    pub fn row(&mut self, row: &[Value]) {
        for v in row {
            match v {
                Value::Null => self.sha.update([0u8]),
                Value::Int(i) => {
                    self.sha.update([1u8]);
                    self.sha.update(i.to_be_bytes());
                }
                Value::Text(s) => {
                    self.sha.update([2u8]);
                    self.sha.update((s.len() as u64).to_be_bytes());
                    self.sha.update(s.as_bytes());
                }
            }
        }
        self.rows += 1;
    }

    pub fn finish(self, table: &'static str) -> TableSummary {
        TableSummary {
            table,
            rows: self.rows,
            sha256: hex::encode(self.sha.finalize()),
        }
    }
}

/// One table's row count and digest on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    pub table: &'static str,
    pub rows: u64,
    /// Hex SHA-256 of the rows ([`RowHasher`]).
    pub sha256: String,
}

/// What a target held before the copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub revision: i64,
    /// Rows per data table ([`DATA_TABLES`] order), only those above 0.
    pub rows: Vec<(&'static str, u64)>,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        self.revision == 0 && self.rows.is_empty()
    }
}

impl fmt::Display for Holdings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revision {}", self.revision)?;
        for (table, n) in &self.rows {
            write!(f, ", {n} {table} row{}", if *n == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

/// One table whose two sides differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiff {
    pub table: &'static str,
    pub from: TableSummary,
    pub to: TableSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Usage(String),
    #[error("{store}: {doing}: {source}")]
    Store {
        store: String,
        doing: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{store}: {what}")]
    Data { store: String, what: String },
    #[error(
        "the schema versions differ after migrating: {from} is at version {from_version}, {to} at {to_version}"
    )]
    SchemaMismatch {
        from: String,
        to: String,
        from_version: i64,
        to_version: i64,
    },
    #[error(
        "{to} already holds store data ({holds}); nothing was copied: copy into an empty store, or pass --replace to delete what it holds in the copy's transaction"
    )]
    NotEmpty { to: String, holds: Holdings },
    #[error("verification failed: {}", describe_diffs(.from, .to, .diffs))]
    Mismatch {
        from: String,
        to: String,
        diffs: Vec<TableDiff>,
    },
}

impl CopyError {
    /// The process exit status for this error.
    pub fn exit_status(&self) -> u8 {
        match self {
            CopyError::Usage(_) => super::EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

fn describe_diffs(from: &str, to: &str, diffs: &[TableDiff]) -> String {
    diffs
        .iter()
        .map(|d| {
            format!(
                "table {} differs: {from} has {} rows (sha256 {}), {to} has {} rows (sha256 {})",
                d.table, d.from.rows, d.from.sha256, d.to.rows, d.to.sha256
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `store copy` does.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub from: Endpoint,
    pub to: Endpoint,
    /// Delete what the target holds instead of refusing.
    pub replace: bool,
    pub pg: PgSettings,
    /// Rows per batch ([`DEFAULT_BATCH`]).
    pub batch: usize,
}

impl CopyOptions {
    pub fn new(from: Endpoint, to: Endpoint) -> CopyOptions {
        CopyOptions {
            from,
            to,
            replace: false,
            pg: PgSettings::default(),
            batch: DEFAULT_BATCH,
        }
    }
}

/// What a successful copy did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Both sides' schema version.
    pub schema_version: i64,
    /// The store revision copied.
    pub revision: i64,
    /// What `--replace` deleted (empty when the target held nothing).
    pub replaced: Holdings,
    /// Each table's rows and digest, equal on both sides.
    pub tables: Vec<TableSummary>,
}

/// An open store: a SQLite connection or a PostgreSQL client.
enum Conn {
    Sqlite(rusqlite::Connection),
    Pg(Box<postgres::Client>),
}

/// One side of a copy.
struct Side {
    name: String,
    conn: Conn,
}

impl Side {
    /// Connect, migrating to this binary's schema first when `migrate`;
    /// returns the schema version. A missing SQLite file is created only
    /// when `create`.
    fn open(ep: &Endpoint, pg: &PgSettings, migrate: bool, create: bool) -> Result<(Side, i64), CopyError> {
        let name = ep.to_string();
        let fail = |doing: &str| {
            let name = name.clone();
            let doing = doing.to_string();
            move |source| CopyError::Store {
                store: name,
                doing,
                source: Box::new(source),
            }
        };
        match ep {
            Endpoint::Sqlite(path) => {
                if !create && !path.is_file() {
                    return Err(CopyError::Usage(format!(
                        "{name}: no such store file{}",
                        if path.exists() {
                            " (not a regular file)"
                        } else {
                            ""
                        }
                    )));
                }
                if path.is_dir() {
                    return Err(CopyError::Usage(format!(
                        "{name} is a directory; name the database file"
                    )));
                }
                if migrate {
                    migrate_file(path).map_err(fail("migrating the schema"))?;
                }
                // Only a copy's own sides are opened to write; `verify` and
                // `summarize` read.
                let mode = if migrate {
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                } else {
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                };
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    mode | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| fail("opening")(StoreError::Sql(e)))?;
                conn.busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .map_err(|e| fail("opening")(StoreError::Sql(e)))?;
                let version: i64 = conn
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(|e| fail("reading the schema version")(StoreError::Sql(e)))?;
                Ok((
                    Side {
                        name,
                        conn: Conn::Sqlite(conn),
                    },
                    version,
                ))
            }
            Endpoint::Postgres(url) => {
                let mut client = pg_connect(&pg.options(url)).map_err(fail("connecting"))?;
                let version = if migrate {
                    pg_migrate(&mut client)
                        .map_err(fail("migrating the schema"))?
                        .after
                } else {
                    let has_meta: bool = client
                        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
                        .map_err(|e| fail("reading the schema version")(StoreError::Pg(e)))?
                        .get(0);
                    if has_meta {
                        client
                            .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
                            .map_err(|e| fail("reading the schema version")(StoreError::Pg(e)))?
                            .map_or(0, |r| r.get(0))
                    } else {
                        0
                    }
                };
                Ok((
                    Side {
                        name,
                        conn: Conn::Pg(Box::new(client)),
                    },
                    version,
                ))
            }
        }
    }

    /// A consistent read of the whole store.
    fn begin_read(&mut self) -> Result<ReadTx<'_>, CopyError> {
        let name = self.name.clone();
        let tx = match &mut self.conn {
            Conn::Sqlite(c) => Tx::Sqlite(
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
                    .map_err(|e| store_err(&name, "starting the read transaction", StoreError::Sql(e)))?,
            ),
            Conn::Pg(c) => Tx::Pg(
                c.build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .map_err(|e| store_err(&name, "starting the read transaction", StoreError::Pg(e)))?,
            ),
        };
        Ok(ReadTx { name, tx })
    }

    /// The target's write transaction, holding the store's write lock.
    fn begin_write(&mut self) -> Result<WriteTx<'_>, CopyError> {
        let name = self.name.clone();
        let tx = match &mut self.conn {
            Conn::Sqlite(c) => Tx::Sqlite(
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| store_err(&name, "starting the write transaction", StoreError::Sql(e)))?,
            ),
            Conn::Pg(c) => {
                let mut tx = c
                    .transaction()
                    .map_err(|e| store_err(&name, "starting the write transaction", StoreError::Pg(e)))?;
                // The revision lock every store writer takes first (docs/ha.md §2).
                tx.query_opt("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
                    .map_err(|e| store_err(&name, "locking the revision", StoreError::Pg(e)))?;
                Tx::Pg(tx)
            }
        };
        Ok(WriteTx {
            name,
            tx,
            pg_insert: BTreeMap::new(),
        })
    }
}

fn store_err(store: &str, doing: &str, source: StoreError) -> CopyError {
    CopyError::Store {
        store: store.into(),
        doing: doing.into(),
        source: Box::new(source),
    }
}

enum Tx<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Pg(postgres::Transaction<'c>),
}

/// A read transaction on one side.
struct ReadTx<'c> {
    name: String,
    tx: Tx<'c>,
}

impl ReadTx<'_> {
    /// Every row of `table` in primary-key order, handed to `f` in batches of
    /// at most `batch` rows.
    fn scan(
        &mut self,
        table: &Table,
        batch: usize,
        mut f: impl FnMut(&[Vec<Value>]) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        let batch = batch.max(1);
        let doing = format!("reading table {}", table.name);
        let name = self.name.clone();
        let mut rows = Vec::with_capacity(batch);
        match &mut self.tx {
            Tx::Sqlite(tx) => {
                let sql_err = |e| store_err(&name, &doing, StoreError::Sql(e));
                let mut stmt = tx.prepare(&table.select(false)).map_err(sql_err)?;
                let mut it = stmt.query([]).map_err(sql_err)?;
                while let Some(r) = it.next().map_err(sql_err)? {
                    let mut row = Vec::with_capacity(table.columns.len());
                    for (i, col) in table.columns.iter().enumerate() {
                        let v = match r.get_ref(i).map_err(sql_err)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(n) => Value::Int(n),
                            ValueRef::Text(t) => {
                                Value::Text(String::from_utf8(t.to_vec()).map_err(|e| CopyError::Data {
                                    store: name.clone(),
                                    what: format!(
                                        "table {} ({}): column {col} is not valid UTF-8: {e}",
                                        table.name,
                                        table.key_of(&row)
                                    ),
                                })?)
                            }
                            other => {
                                return Err(CopyError::Data {
                                    store: name.clone(),
                                    what: format!(
                                        "table {} ({}): column {col} holds a {:?} value; the schema stores only integers and text",
                                        table.name,
                                        table.key_of(&row),
                                        other.data_type()
                                    ),
                                });
                            }
                        };
                        row.push(v);
                    }
                    rows.push(row);
                    if rows.len() == batch {
                        f(&rows)?;
                        rows.clear();
                    }
                }
            }
            Tx::Pg(tx) => {
                let pg_err = |e| store_err(&name, &doing, StoreError::Pg(e));
                let portal = tx.bind(&table.select(true), &[]).map_err(pg_err)?;
                let max = i32::try_from(batch).unwrap_or(i32::MAX);
                loop {
                    let got = tx.query_portal(&portal, max).map_err(pg_err)?;
                    if got.is_empty() {
                        break;
                    }
                    for r in &got {
                        let mut row = Vec::with_capacity(table.columns.len());
                        for (i, col) in r.columns().iter().enumerate() {
                            let ty = col.type_();
                            let v = if *ty == Type::INT8 {
                                r.try_get::<_, Option<i64>>(i).map_err(pg_err)?.map(Value::Int)
                            } else if *ty == Type::INT4 {
                                r.try_get::<_, Option<i32>>(i)
                                    .map_err(pg_err)?
                                    .map(|n| Value::Int(n.into()))
                            } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                                r.try_get::<_, Option<String>>(i)
                                    .map_err(pg_err)?
                                    .map(Value::Text)
                            } else {
                                return Err(CopyError::Data {
                                    store: name.clone(),
                                    what: format!(
                                        "table {}: column {} has type {ty}; the copy knows bigint, integer and text",
                                        table.name,
                                        col.name()
                                    ),
                                });
                            };
                            row.push(v.unwrap_or(Value::Null));
                        }
                        rows.push(row);
                    }
                    while rows.len() >= batch {
                        let rest = rows.split_off(batch);
                        f(&rows)?;
                        rows = rest;
                    }
                }
            }
        }
        if !rows.is_empty() {
            f(&rows)?;
        }
        Ok(())
    }

    /// Each copied table's rows and digest, in [`TABLES`] order.
    fn summaries(&mut self, batch: usize) -> Result<Vec<TableSummary>, CopyError> {
        let mut out = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let mut h = RowHasher::default();
            self.scan(table, batch, |rows| {
                rows.iter().for_each(|r| h.row(r));
                Ok(())
            })?;
            out.push(h.finish(table.name));
        }
        Ok(out)
    }

    /// On PostgreSQL: every resource's `serial` column holds what the body
    /// says (a Device's non-empty `spec.serial`, else NULL).
    fn check_serials(&mut self) -> Result<(), CopyError> {
        let Tx::Pg(tx) = &mut self.tx else { return Ok(()) };
        let name = self.name.clone();
        let doing = "reading resources.serial";
        let portal = tx
            .bind(
                "SELECT kind, name, body, serial FROM resources ORDER BY kind COLLATE \"C\", name COLLATE \"C\"",
                &[],
            )
            .map_err(|e| store_err(&name, doing, StoreError::Pg(e)))?;
        loop {
            let rows = tx
                .query_portal(&portal, 1000)
                .map_err(|e| store_err(&name, doing, StoreError::Pg(e)))?;
            if rows.is_empty() {
                return Ok(());
            }
            for r in rows {
                let (kind, obj, body, serial): (String, String, String, Option<String>) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                let want = device_serial(&kind, &body).map_err(|what| CopyError::Data {
                    store: name.clone(),
                    what: format!("resources {kind} {obj:?}: {what}"),
                })?;
                if want != serial {
                    return Err(CopyError::Data {
                        store: name,
                        what: format!(
                            "verification failed: resources {kind} {obj:?} has serial column {serial:?} but its body says {want:?}"
                        ),
                    });
                }
            }
        }
    }

    fn revision(&mut self) -> Result<i64, CopyError> {
        let name = self.name.clone();
        let doing = "reading the revision";
        let sql = "SELECT value FROM meta WHERE key = 'revision'";
        Ok(match &mut self.tx {
            Tx::Sqlite(tx) => tx
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(|e| store_err(&name, doing, StoreError::Sql(e)))?,
            Tx::Pg(tx) => tx
                .query_opt(sql, &[])
                .map_err(|e| store_err(&name, doing, StoreError::Pg(e)))?
                .map_or(0, |r| r.get(0)),
        })
    }
}

/// The serial PostgreSQL's `resources.serial` holds for a resource: a
/// Device's `spec.serial` from its body (proto3 JSON
/// `{"device": {"spec": {"serial": ...}}}`), NULL for other kinds and for an
/// empty or absent serial (as `resources.node` is for an empty node).
pub fn device_serial(kind: &str, body: &str) -> Result<Option<String>, String> {
    if kind != "device" {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    match v.pointer("/device/spec/serial") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("device.spec.serial is not a string: {other}")),
    }
}

/// The target's write transaction.
struct WriteTx<'c> {
    name: String,
    tx: Tx<'c>,
    /// Prepared multi-row INSERTs by (table, rows).
    pg_insert: BTreeMap<(&'static str, usize), postgres::Statement>,
}

impl WriteTx<'_> {
    fn holdings(&mut self) -> Result<Holdings, CopyError> {
        let name = self.name.clone();
        let doing = "reading what it holds";
        let mut h = Holdings::default();
        let rev_sql = "SELECT value FROM meta WHERE key = 'revision'";
        for table in DATA_TABLES {
            let sql = format!("SELECT count(*) FROM {table}");
            let n: i64 = match &mut self.tx {
                Tx::Sqlite(tx) => tx
                    .query_row(&sql, [], |r| r.get(0))
                    .map_err(|e| store_err(&name, doing, StoreError::Sql(e)))?,
                Tx::Pg(tx) => tx
                    .query_one(&sql, &[])
                    .map_err(|e| store_err(&name, doing, StoreError::Pg(e)))?
                    .get(0),
            };
            if n > 0 {
                h.rows.push((table, n as u64));
            }
        }
        h.revision = match &mut self.tx {
            Tx::Sqlite(tx) => tx
                .query_row(rev_sql, [], |r| r.get(0))
                .map_err(|e| store_err(&name, doing, StoreError::Sql(e)))?,
            Tx::Pg(tx) => tx
                .query_opt(rev_sql, &[])
                .map_err(|e| store_err(&name, doing, StoreError::Pg(e)))?
                .map_or(0, |r| r.get(0)),
        };
        Ok(h)
    }

    /// `--replace`: delete every data row (the meta values are overwritten by the copy).
    fn clear(&mut self) -> Result<(), CopyError> {
        let name = self.name.clone();
        for table in DATA_TABLES {
            let sql = format!("DELETE FROM {table}");
            let doing = format!("deleting what table {table} holds");
            match &mut self.tx {
                Tx::Sqlite(tx) => {
                    tx.execute(&sql, [])
                        .map_err(|e| store_err(&name, &doing, StoreError::Sql(e)))?;
                }
                Tx::Pg(tx) => {
                    tx.execute(&sql, &[])
                        .map_err(|e| store_err(&name, &doing, StoreError::Pg(e)))?;
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, table: &'static Table, rows: &[Vec<Value>]) -> Result<(), CopyError> {
        let name = self.name.clone();
        let doing = format!("writing table {}", table.name);
        match &mut self.tx {
            Tx::Sqlite(tx) => {
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({}){}",
                    table.name,
                    table.columns.join(", "),
                    (1..=table.columns.len())
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    table.on_conflict.map(|c| format!(" {c}")).unwrap_or_default()
                );
                let mut stmt = tx
                    .prepare_cached(&sql)
                    .map_err(|e| store_err(&name, &doing, StoreError::Sql(e)))?;
                for row in rows {
                    let params = row.iter().map(|v| match v {
                        Value::Null => rusqlite::types::Value::Null,
                        Value::Int(i) => rusqlite::types::Value::Integer(*i),
                        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
                    });
                    stmt.execute(rusqlite::params_from_iter(params)).map_err(|e| {
                        store_err(
                            &name,
                            &format!("{doing} ({})", table.key_of(row)),
                            StoreError::Sql(e),
                        )
                    })?;
                }
            }
            Tx::Pg(tx) => {
                // PostgreSQL's resources has the serial column SQLite lacks.
                let serial = table.name == "resources";
                let width = table.columns.len() + usize::from(serial);
                let stmt = match self.pg_insert.get(&(table.name, rows.len())) {
                    Some(s) => s.clone(),
                    None => {
                        let mut cols = table.columns.join(", ");
                        if serial {
                            cols.push_str(", serial");
                        }
                        let values: Vec<String> = (0..rows.len())
                            .map(|r| {
                                let ps: Vec<String> =
                                    (1..=width).map(|c| format!("${}", r * width + c)).collect();
                                format!("({})", ps.join(", "))
                            })
                            .collect();
                        let sql = format!(
                            "INSERT INTO {} ({cols}) VALUES {}{}",
                            table.name,
                            values.join(", "),
                            table.on_conflict.map(|c| format!(" {c}")).unwrap_or_default()
                        );
                        let s = tx
                            .prepare(&sql)
                            .map_err(|e| store_err(&name, &doing, StoreError::Pg(e)))?;
                        self.pg_insert.insert((table.name, rows.len()), s.clone());
                        s
                    }
                };
                let types = stmt.params();
                let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(rows.len() * width);
                for row in rows {
                    let bad = |what: String| CopyError::Data {
                        store: name.clone(),
                        what: format!("table {} ({}): {what}", table.name, table.key_of(row)),
                    };
                    let mut values: Vec<Value> = row.clone();
                    if serial {
                        let (Value::Text(kind), Value::Text(body)) = (&row[0], &row[3]) else {
                            return Err(bad("kind and body must be text".into()));
                        };
                        values.push(
                            device_serial(kind, body)
                                .map_err(&bad)?
                                .map_or(Value::Null, Value::Text),
                        );
                    }
                    for (i, v) in values.into_iter().enumerate() {
                        let ty = &types[params.len()];
                        let col = table.columns.get(i).copied().unwrap_or("serial");
                        params.push(pg_param(ty, v).map_err(|e| bad(format!("column {col}: {e}")))?);
                    }
                }
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
                tx.execute(&stmt, &refs)
                    .map_err(|e| store_err(&name, &doing, StoreError::Pg(e)))?;
            }
        }
        Ok(())
    }

    fn commit(self) -> Result<(), CopyError> {
        let name = self.name;
        match self.tx {
            Tx::Sqlite(tx) => tx
                .commit()
                .map_err(|e| store_err(&name, "committing", StoreError::Sql(e))),
            Tx::Pg(tx) => tx
                .commit()
                .map_err(|e| store_err(&name, "committing", StoreError::Pg(e))),
        }
    }
}

/// A value as a parameter of PostgreSQL type `ty`.
fn pg_param(ty: &Type, v: Value) -> Result<Box<dyn ToSql + Sync>, String> {
    Ok(match v {
        Value::Null if *ty == Type::INT8 => Box::new(None::<i64>),
        Value::Null if *ty == Type::INT4 => Box::new(None::<i32>),
        Value::Null => Box::new(None::<String>),
        Value::Int(i) if *ty == Type::INT8 => Box::new(i),
        Value::Int(i) if *ty == Type::INT4 => {
            Box::new(i32::try_from(i).map_err(|_| format!("{i} does not fit PostgreSQL's integer column"))?)
        }
        Value::Text(s) if *ty == Type::TEXT || *ty == Type::VARCHAR => Box::new(s),
        other => return Err(format!("{other} cannot be stored in a column of type {ty}")),
    })
}

/// Copy the store `o.from` names into `o.to`, then verify (module docs).
pub fn copy(o: &CopyOptions) -> Result<CopyReport, CopyError> {
    if o.from.same_store(&o.to) {
        return Err(CopyError::Usage(format!(
            "--from and --to name the same store ({})",
            o.from
        )));
    }
    let on_pg = matches!(o.from, Endpoint::Postgres(_)) || matches!(o.to, Endpoint::Postgres(_));
    if on_pg && o.pg.sslmode.verifies() && o.pg.ca_file.is_none() {
        return Err(CopyError::Usage(format!(
            "--sslmode {} needs --ca-file (the CA that signed the server's certificate)",
            o.pg.sslmode
        )));
    }
    let (mut src, from_version) = Side::open(&o.from, &o.pg, true, false)?;
    let (mut dst, to_version) = Side::open(&o.to, &o.pg, true, true)?;
    if from_version != to_version {
        return Err(CopyError::SchemaMismatch {
            from: src.name.clone(),
            to: dst.name.clone(),
            from_version,
            to_version,
        });
    }
    let mut read = src.begin_read()?;
    let revision = read.revision()?;
    let mut write = dst.begin_write()?;
    let replaced = write.holdings()?;
    if !replaced.is_empty() {
        if !o.replace {
            return Err(CopyError::NotEmpty {
                to: write.name.clone(),
                holds: replaced,
            });
        }
        write.clear()?;
    }
    for table in TABLES {
        read.scan(table, o.batch, |rows| write.insert(table, rows))?;
    }
    write.commit()?;

    // Verify: the source in the snapshot it was copied from, the target as committed.
    let from_sums = read.summaries(o.batch)?;
    drop(read);
    let to_sums = {
        let mut r = dst.begin_read()?;
        r.check_serials()?;
        r.summaries(o.batch)?
    };
    compare(&src.name, &dst.name, from_sums, to_sums).map(|tables| CopyReport {
        schema_version: from_version,
        revision,
        replaced,
        tables,
    })
}

/// Read both stores (each in one read transaction, changing nothing, not
/// migrating) and compare every copied table's row count and digest: what
/// `copy` checks after its commit, on its own (`Mismatch` names each table
/// that differs).
pub fn verify(from: &Endpoint, to: &Endpoint, pg: &PgSettings) -> Result<Vec<TableSummary>, CopyError> {
    let (mut src, _) = Side::open(from, pg, false, false)?;
    let (mut dst, _) = Side::open(to, pg, false, false)?;
    let from_sums = src.begin_read()?.summaries(DEFAULT_BATCH)?;
    let to_sums = {
        let mut r = dst.begin_read()?;
        r.check_serials()?;
        r.summaries(DEFAULT_BATCH)?
    };
    compare(&src.name, &dst.name, from_sums, to_sums)
}

/// Every copied table's row count and digest in one store (one read
/// transaction; nothing migrated or changed).
pub fn summarize(store: &Endpoint, pg: &PgSettings) -> Result<Vec<TableSummary>, CopyError> {
    let (mut side, _) = Side::open(store, pg, false, false)?;
    side.begin_read()?.summaries(DEFAULT_BATCH)
}

fn compare(
    from: &str,
    to: &str,
    from_sums: Vec<TableSummary>,
    to_sums: Vec<TableSummary>,
) -> Result<Vec<TableSummary>, CopyError> {
    let diffs: Vec<TableDiff> = from_sums
        .iter()
        .zip(&to_sums)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| TableDiff {
            table: a.table,
            from: a.clone(),
            to: b.clone(),
        })
        .collect();
    if diffs.is_empty() {
        Ok(from_sums)
    } else {
        Err(CopyError::Mismatch {
            from: from.into(),
            to: to.into(),
            diffs,
        })
    }
}

/// `store copy` on the command line.
pub(super) fn run(a: CopyArgs) -> u8 {
    let o = CopyOptions {
        from: a.from,
        to: a.to,
        replace: a.replace,
        pg: PgSettings {
            password_file: a.password_file,
            sslmode: a.sslmode,
            ca_file: a.ca_file,
            cert_file: a.cert_file,
            key_file: a.key_file,
        },
        batch: DEFAULT_BATCH,
    };
    match copy(&o) {
        Ok(r) => {
            print!("{}", report_text(&o, &r));
            0
        }
        Err(e) => {
            eprintln!("hostplane-coordinator: store copy: {e}");
            e.exit_status()
        }
    }
}

/// What `store copy` prints when it is done.
pub fn report_text(o: &CopyOptions, r: &CopyReport) -> String {
    let mut s = format!(
        "copied {} -> {}: schema version {}, revision {}{}\n",
        o.from,
        o.to,
        r.schema_version,
        r.revision,
        if r.replaced.is_empty() {
            String::new()
        } else {
            format!(" (replaced what the target held: {})", r.replaced)
        }
    );
    s.push_str(&format!("{:<12} {:>10}  sha256\n", "table", "rows"));
    for t in &r.tables {
        s.push_str(&format!("{:<12} {:>10}  {}\n", t.table, t.rows, t.sha256));
    }
    s.push_str("verified: every table's row count and SHA-256 are equal on both sides\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_text_and_zero_hash_apart() {
        let digest = |rows: &[Vec<Value>]| {
            let mut h = RowHasher::default();
            rows.iter().for_each(|r| h.row(r));
            h.finish("t").sha256
        };
        let all = [
            digest(&[vec![Value::Null]]),
            digest(&[vec![Value::Text(String::new())]]),
            digest(&[vec![Value::Int(0)]]),
            digest(&[vec![Value::Text("0".into())]]),
            // The same bytes split differently across a row's values.
            digest(&[vec![Value::Text("ab".into()), Value::Text("c".into())]]),
            digest(&[vec![Value::Text("a".into()), Value::Text("bc".into())]]),
            digest(&[]),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            digest(&[vec![Value::Int(7), Value::Text("x".into())]]),
            digest(&[vec![Value::Int(7), Value::Text("x".into())]])
        );
    }

    #[test]
    fn a_devices_serial_comes_from_its_body() {
        assert_eq!(
            device_serial(
                "device",
                r#"{"device":{"spec":{"node":"n1","serial":"MT2233X01"}}}"#
            ),
            Ok(Some("MT2233X01".into()))
        );
        assert_eq!(
            device_serial("device", r#"{"device":{"spec":{"node":"n1"}}}"#),
            Ok(None)
        );
        assert_eq!(
            device_serial("device", r#"{"device":{"spec":{"serial":""}}}"#),
            Ok(None)
        );
        assert_eq!(device_serial("device", r#"{"device":{}}"#), Ok(None));
        assert_eq!(
            device_serial("dpu", r#"{"dpu":{"spec":{"serial":"x"}}}"#),
            Ok(None)
        );
        assert!(device_serial("device", "{").unwrap_err().contains("not JSON"));
        assert!(
            device_serial("device", r#"{"device":{"spec":{"serial":5}}}"#)
                .unwrap_err()
                .contains("not a string")
        );
    }

    #[test]
    fn postgres_orders_text_keys_bytewise() {
        let t = TABLES.iter().find(|t| t.name == "resources").unwrap();
        assert_eq!(
            t.select(true),
            "SELECT kind, name, resource_version, body, node FROM resources ORDER BY kind COLLATE \"C\", name COLLATE \"C\""
        );
        assert_eq!(
            t.select(false),
            "SELECT kind, name, resource_version, body, node FROM resources ORDER BY kind, name"
        );
        let meta = TABLES.iter().find(|t| t.name == "meta").unwrap();
        assert!(meta.select(true).contains("WHERE key <> 'schema_version'"));
        let events = TABLES.iter().find(|t| t.name == "events").unwrap();
        assert!(events.select(true).ends_with("ORDER BY revision"));
    }

    #[test]
    fn a_mismatch_names_every_table_that_differs() {
        let s = |table, rows, sha: &str| TableSummary {
            table,
            rows,
            sha256: sha.into(),
        };
        let e = compare(
            "sqlite:/a",
            "postgres:x",
            vec![s("meta", 3, "aa"), s("resources", 2, "bb"), s("events", 9, "cc")],
            vec![s("meta", 3, "aa"), s("resources", 2, "bd"), s("events", 8, "cd")],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("table resources differs"), "{msg}");
        assert!(
            msg.contains("table events differs: sqlite:/a has 9 rows"),
            "{msg}"
        );
        assert!(!msg.contains("table meta"), "{msg}");
        assert_eq!(e.exit_status(), EXIT_FAILED);
    }
}
