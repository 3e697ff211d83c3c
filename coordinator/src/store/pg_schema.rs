//! The PostgreSQL schema and its migrations (docs/ha.md §1 "Dialect").
//!
//! Versions are numbered as SQLite's ([`super::schema`]): the list starts
//! with one step that creates the layout SQLite has at version 4, and every
//! later step takes the next number on both engines, each in its own
//! dialect. The version is `meta('schema_version')` (SQLite keeps it in
//! `PRAGMA user_version`).
//!
//! Nothing selects this backend yet; the store's engine comes with the next
//! steps of issue 13.
use postgres::Client;

use super::{Migrated, StoreError};

/// The key of the transaction-level advisory lock every migration step takes
/// first (`pg_advisory_xact_lock`): "hpln" in ASCII. Two replicas that start
/// at once therefore migrate one after the other; the second finds the
/// schema current.
pub const MIGRATION_LOCK_KEY: i64 = 0x6870_6c6e;

/// One migration: the schema version it makes current, and its SQL.
struct Step {
    version: i64,
    sql: &'static str,
}

const STEPS: &[Step] = &[
    // 4: the layout of SQLite's schema 4 in one step. BIGINT wherever a
    // revision, a version or a millisecond time is held; bodies are `text`
    // (the same proto3 JSON bytes as SQLite, and `jsonb` would refuse a
    // `\u0000`); `events.revision` is assigned by the store from
    // `meta('revision')`, never by a sequence (commit order = revision
    // order, no holes). A Device's serial is a plain column the put fills
    // (SQLite indexes a `json_extract` expression instead).
    Step {
        version: 4,
        sql: r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('revision', 0), ('history_floor', 0), ('schema_version', 0);
    CREATE TABLE resources (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        resource_version BIGINT NOT NULL,
        body TEXT NOT NULL,
        node TEXT,
        serial TEXT,
        PRIMARY KEY (kind, name)
    );
    CREATE INDEX resources_node ON resources (kind, node, name) WHERE node IS NOT NULL;
    CREATE INDEX resources_device_serial ON resources (serial) WHERE kind = 'device';
    CREATE TABLE events (
        revision BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        type INTEGER NOT NULL,
        body TEXT NOT NULL,
        prev_body TEXT
    );
    CREATE INDEX events_object ON events (kind, name, revision);
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        dpu TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        outcome INTEGER,
        message TEXT,
        finished_ms BIGINT
    );
    CREATE INDEX commands_open ON commands (node) WHERE outcome IS NULL;
    CREATE INDEX commands_dpu ON commands (dpu);
    CREATE TABLE desired (node TEXT PRIMARY KEY, version BIGINT NOT NULL);
    "#,
    },
    // 5: SQLite's step 5 (commands followed by revision, the newest pruning's revision,
    // power caps), and what only replicas need (docs/ha.md §3, §5, §6): the
    // leader lease with its fencing epoch (one row; times are the
    // database's own `now()`), each replica's heartbeat, and which replica
    // serves each node's agent.
    Step {
        version: 5,
        sql: r#"
    ALTER TABLE commands ADD COLUMN changed_rev BIGINT NOT NULL DEFAULT 0;
    UPDATE commands SET changed_rev =
        COALESCE((SELECT version FROM desired WHERE desired.node = commands.node), 0);
    CREATE INDEX commands_changed ON commands (changed_rev);
    CREATE INDEX commands_finished ON commands (finished_ms) WHERE outcome IS NOT NULL;
    INSERT INTO meta (key, value) VALUES ('commands_pruned_at', 0);
    CREATE TABLE power_caps (node TEXT PRIMARY KEY, caps TEXT NOT NULL, revision BIGINT NOT NULL);
    CREATE TABLE leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL DEFAULT '',
        addr TEXT NOT NULL DEFAULT '',
        epoch BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
    );
    INSERT INTO leader (id) VALUES (1);
    CREATE TABLE replicas (
        name TEXT PRIMARY KEY,
        addr TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE sessions (
        node TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    "#,
    },
    // 6: SQLite's step 6 (a finished command's `power_cycle_required`, 0 or 1).
    Step {
        version: 6,
        sql: r#"
    ALTER TABLE commands ADD COLUMN power_cycle_required INTEGER NOT NULL DEFAULT 0;
    "#,
    },
];

/// The schema version this binary writes on PostgreSQL; always equal to
/// SQLite's [`super::SCHEMA_VERSION`] (a test checks it).
pub const PG_SCHEMA_VERSION: i64 = STEPS[STEPS.len() - 1].version;

/// What [`StoreError::SchemaTooNew`] names as the store's path: never the
/// URL, which may carry a user name or a host worth keeping out of logs.
const STORE_NAME: &str = "postgres";

/// The schema version of the database `tx` is connected to: 0 when it holds
/// no store yet (no `meta` table).
fn version(tx: &mut postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
        .get(0);
    if !has_meta {
        return Ok(0);
    }
    let row = tx.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Migrate the database `client` is connected to up to
/// [`PG_SCHEMA_VERSION`]. Each step runs in its own transaction, which first
/// takes the advisory lock [`MIGRATION_LOCK_KEY`] and then reads the version
/// (READ COMMITTED: that read sees whatever a replica that held the lock
/// before committed), so concurrent migrators run every step exactly once. A
/// store newer than this binary is refused ([`StoreError::SchemaTooNew`],
/// the same error SQLite gives) and left as it is.
pub fn pg_migrate(client: &mut Client) -> Result<Migrated, StoreError> {
    let mut before = None;
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
        let current = version(&mut tx)?;
        let before = *before.get_or_insert(current);
        if current > PG_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: STORE_NAME.into(),
                found: current,
                supported: PG_SCHEMA_VERSION,
            });
        }
        // The next step above `current`: a PostgreSQL store is empty (0) or
        // at 4 or later, since the list starts at 4.
        let Some(step) = STEPS.iter().find(|s| s.version > current) else {
            tx.commit()?;
            return Ok(Migrated {
                before,
                after: current,
            });
        };
        tx.batch_execute(step.sql)?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'schema_version'",
            &[&step.version],
        )?;
        tx.commit()?;
        tracing::info!(
            backend = "postgres",
            version = step.version,
            "store schema migrated"
        );
    }
}

/// A PostgreSQL error as a person needs it: the server's own report
/// (severity, SQLSTATE, message, detail, hint) for an error the server sent,
/// else the client's error with its cause (`postgres::Error` alone prints
/// only "db error" or its kind).
pub(super) fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            m.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            m.push_str(&format!(" (hint: {hint})"));
        }
        return m;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
