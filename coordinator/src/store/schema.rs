//! Versioned schema migrations. Each entry moves the schema from version i to
//! i+1 and runs in its own transaction; a store newer than this binary is
//! refused rather than guessed at.
use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: resources, watch history, agent commands, per-node desired versions.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    CREATE TABLE resources (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE events (
        revision INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        type INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        dpu TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        outcome INTEGER,
        message TEXT,
        finished_ms INTEGER
    );
    CREATE INDEX commands_open ON commands (node) WHERE outcome IS NULL;
    CREATE INDEX commands_dpu ON commands (dpu);
    CREATE TABLE desired (node TEXT PRIMARY KEY, version INTEGER NOT NULL);
    "#,
    // 2: snapshot reads for paged List (see snapshot.rs). `prev_body` keeps
    // an object's state from before an event once the event that wrote that
    // state is pruned; `history_floor` is the revision after which every
    // event is kept. Stores that pruned before this version start their
    // floor below their oldest kept event.
    r#"
    ALTER TABLE events ADD COLUMN prev_body TEXT;
    CREATE INDEX events_object ON events (kind, name, revision);
    INSERT INTO meta (key, value) VALUES ('history_floor',
        COALESCE((SELECT MIN(revision) - 1 FROM events), (SELECT value FROM meta WHERE key = 'revision')));
    "#,
    // 3: the node a Device or Dpu is on, as an indexed column, so an agent's
    // Hello reads its own rows instead of parsing every body's JSON
    // (`Txn::list_on_node`). Written by every put; filled here once. NULL
    // for other kinds and for an empty `spec.node`.
    r#"
    ALTER TABLE resources ADD COLUMN node TEXT;
    UPDATE resources SET node = json_extract(body, '$.' || kind || '.spec.node')
        WHERE kind IN ('device', 'dpu');
    UPDATE resources SET node = NULL WHERE node = '';
    CREATE INDEX resources_node ON resources (kind, node, name) WHERE node IS NOT NULL;
    "#,
    // 4: Devices by serial (an index on the expression `Txn::devices_with_serial`
    // queries, so creating a Device checks its serial without parsing every
    // Device's JSON).
    r#"
    CREATE INDEX resources_device_serial ON resources (json_extract(body, '$.device.spec.serial'))
        WHERE kind = 'device';
    "#,
    // 5: what replicas on PostgreSQL follow (docs/ha.md §4), kept on SQLite
    // too so that both layouts stay one. `commands.changed_rev` is the
    // revision of a command's insert or finish (the desired version it
    // bumped), so a replica reads the commands changed after its view;
    // `commands_pruned_at` is the revision of the newest pruning that deleted commands;
    // `power_caps` holds the power engine's caps per node (written with the
    // desired bump that announces them). Finished commands are pruned
    // through an index on `finished_ms`.
    r#"
    ALTER TABLE commands ADD COLUMN changed_rev INTEGER NOT NULL DEFAULT 0;
    UPDATE commands SET changed_rev =
        COALESCE((SELECT version FROM desired WHERE desired.node = commands.node), 0);
    CREATE INDEX commands_changed ON commands (changed_rev);
    CREATE INDEX commands_finished ON commands (finished_ms) WHERE outcome IS NOT NULL;
    INSERT INTO meta (key, value) VALUES ('commands_pruned_at', 0);
    CREATE TABLE power_caps (node TEXT PRIMARY KEY, caps TEXT NOT NULL, revision INTEGER NOT NULL);
    "#,
    // 6: a finished config_fw_parameters command's `power_cycle_required`
    // (CommandResult field 4: values that wait for a host power cycle), 0 or 1.
    r#"
    ALTER TABLE commands ADD COLUMN power_cycle_required INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A store's schema version before and after [`migrate_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// 0 for a file that held no store yet.
    pub before: i64,
    pub after: i64,
}

/// Open (or create) the store file at `path` and migrate it to
/// [`SCHEMA_VERSION`], as opening the store does, without loading it:
/// `hostplane-coordinator migrate`. A store newer than this binary is
/// refused ([`StoreError::SchemaTooNew`]) and left as it is.
pub fn migrate_file(path: &Path) -> Result<Migrated, StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let open_err = |source| StoreError::Open {
        path: path.into(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    // As the store opens it, so that a running coordinator's lock is waited for.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let before = version(&conn).map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(Migrated {
        before,
        after: version(&conn)?,
    })
}

fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.into(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = i + 1, "store schema migrated");
    }
    Ok(())
}
