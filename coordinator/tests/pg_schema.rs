//! The PostgreSQL schema and its migrations (issue 13; docs/ha.md §1
//! "Dialect", §3 "Migrations"): a fresh database gets SQLite's layout of the
//! same version, a current one is left alone, two migrators at once run the
//! step once, a newer store is refused with SQLite's error. Each test starts
//! its own throwaway cluster (hostplane_common::testing::pg) and skips,
//! printing why, only when the PostgreSQL binaries are missing.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use hostplane_common::testing::pg::PgCluster;
use hostplane_coordinator::store::{Migrated, PG_SCHEMA_VERSION, SCHEMA_VERSION, StoreError, pg_migrate};
use postgres::{Client, NoTls};

fn cluster() -> Option<PgCluster> {
    PgCluster::start().expect("start the throwaway PostgreSQL cluster")
}

fn connect(pg: &PgCluster) -> Client {
    Client::connect(&pg.url(), NoTls).unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", pg.url(), pg.log()))
}

fn schema_version(c: &mut Client) -> i64 {
    c.query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .unwrap()
        .get(0)
}

/// `(table, column, data_type, is_nullable)` for every column of the public schema.
fn columns(c: &mut Client) -> BTreeSet<(String, String, String, String)> {
    c.query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = 'public'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// `(index name, definition)` for every index of the public schema.
fn indexes(c: &mut Client) -> BTreeSet<(String, String)> {
    c.query(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn meta(c: &mut Client) -> Vec<(String, i64)> {
    c.query("SELECT key, value FROM meta ORDER BY key", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn the_postgres_and_sqlite_schema_versions_are_numbered_alike() {
    assert_eq!(PG_SCHEMA_VERSION, SCHEMA_VERSION);
}

#[test]
fn a_fresh_database_gets_sqlites_layout_and_a_second_run_changes_nothing() {
    let Some(pg) = cluster() else { return };
    let mut c = connect(&pg);

    let m = pg_migrate(&mut c).unwrap();
    assert_eq!(
        m,
        Migrated {
            before: 0,
            after: SCHEMA_VERSION
        }
    );
    assert_eq!(schema_version(&mut c), SCHEMA_VERSION);
    assert_eq!(
        meta(&mut c),
        [
            ("commands_pruned_at".to_string(), 0),
            ("history_floor".to_string(), 0),
            ("revision".to_string(), 0),
            ("schema_version".to_string(), SCHEMA_VERSION),
        ]
    );

    let cols = columns(&mut c);
    let col = |t: &str, n: &str, ty: &str, null: &str| (t.into(), n.into(), ty.into(), null.into());
    let want: BTreeSet<(String, String, String, String)> = [
        col("meta", "key", "text", "NO"),
        col("meta", "value", "bigint", "NO"),
        col("resources", "kind", "text", "NO"),
        col("resources", "name", "text", "NO"),
        col("resources", "resource_version", "bigint", "NO"),
        col("resources", "body", "text", "NO"),
        col("resources", "node", "text", "YES"),
        col("resources", "serial", "text", "YES"),
        col("events", "revision", "bigint", "NO"),
        col("events", "kind", "text", "NO"),
        col("events", "name", "text", "NO"),
        col("events", "type", "integer", "NO"),
        col("events", "body", "text", "NO"),
        col("events", "prev_body", "text", "YES"),
        col("commands", "id", "text", "NO"),
        col("commands", "node", "text", "NO"),
        col("commands", "dpu", "text", "NO"),
        col("commands", "body", "text", "NO"),
        col("commands", "created_ms", "bigint", "NO"),
        col("commands", "outcome", "integer", "YES"),
        col("commands", "message", "text", "YES"),
        col("commands", "finished_ms", "bigint", "YES"),
        col("commands", "changed_rev", "bigint", "NO"),
        col("commands", "power_cycle_required", "integer", "NO"),
        col("power_caps", "node", "text", "NO"),
        col("power_caps", "caps", "text", "NO"),
        col("power_caps", "revision", "bigint", "NO"),
        col("leader", "id", "integer", "NO"),
        col("leader", "holder", "text", "NO"),
        col("leader", "addr", "text", "NO"),
        col("leader", "epoch", "bigint", "NO"),
        col("leader", "expires_at", "timestamp with time zone", "NO"),
        col("replicas", "name", "text", "NO"),
        col("replicas", "addr", "text", "NO"),
        col("replicas", "version", "text", "NO"),
        col("replicas", "started_at", "timestamp with time zone", "NO"),
        col("replicas", "seen_at", "timestamp with time zone", "NO"),
        col("sessions", "node", "text", "NO"),
        col("sessions", "replica", "text", "NO"),
        col("sessions", "expires_at", "timestamp with time zone", "NO"),
        col("desired", "node", "text", "NO"),
        col("desired", "version", "bigint", "NO"),
    ]
    .into_iter()
    .collect();
    assert_eq!(cols, want);

    let idx = indexes(&mut c);
    let names: BTreeSet<&str> = idx.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "commands_changed",
            "commands_dpu",
            "commands_finished",
            "commands_open",
            "commands_pkey",
            "desired_pkey",
            "events_object",
            "events_pkey",
            "leader_pkey",
            "meta_pkey",
            "power_caps_pkey",
            "replicas_pkey",
            "resources_device_serial",
            "resources_node",
            "resources_pkey",
            "sessions_pkey",
        ]
        .into_iter()
        .collect()
    );
    let def = |name: &str| {
        idx.iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    assert!(
        def("resources_node").ends_with("(kind, node, name) WHERE (node IS NOT NULL)"),
        "{}",
        def("resources_node")
    );
    assert!(
        def("resources_device_serial").ends_with("(serial) WHERE (kind = 'device'::text)"),
        "{}",
        def("resources_device_serial")
    );
    assert!(
        def("events_object").ends_with("(kind, name, revision)"),
        "{}",
        def("events_object")
    );
    assert!(
        def("commands_open").ends_with("(node) WHERE (outcome IS NULL)"),
        "{}",
        def("commands_open")
    );
    assert!(
        def("events_pkey").ends_with("(revision)"),
        "{}",
        def("events_pkey")
    );
    assert!(
        def("resources_pkey").ends_with("(kind, name)"),
        "{}",
        def("resources_pkey")
    );

    // A store's rows survive a second run, which finds the schema current.
    c.batch_execute(
        "INSERT INTO resources (kind, name, resource_version, body) VALUES ('dpu', 'a', 1, '{}');
         UPDATE meta SET value = 1 WHERE key = 'revision';",
    )
    .unwrap();
    let m = pg_migrate(&mut c).unwrap();
    assert_eq!(
        m,
        Migrated {
            before: SCHEMA_VERSION,
            after: SCHEMA_VERSION
        }
    );
    assert_eq!(columns(&mut c), want);
    assert_eq!(indexes(&mut c), idx);
    assert_eq!(
        meta(&mut c),
        [
            ("commands_pruned_at".to_string(), 0),
            ("history_floor".to_string(), 0),
            ("revision".to_string(), 1),
            ("schema_version".to_string(), SCHEMA_VERSION),
        ]
    );
    let n: i64 = c.query_one("SELECT count(*) FROM resources", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn two_replicas_migrating_one_fresh_database_at_once_run_the_step_once() {
    let Some(pg) = cluster() else { return };
    let url = pg.url();
    let start = Arc::new(Barrier::new(2));
    let migrators: Vec<_> = (0..2)
        .map(|_| {
            let mut c = Client::connect(&url, NoTls).unwrap();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                pg_migrate(&mut c)
            })
        })
        .collect();
    let mut results: Vec<Migrated> = migrators
        .into_iter()
        .map(|t| t.join().unwrap().expect("both migrations succeed"))
        .collect();
    results.sort_by_key(|m| m.before);
    // One found the database empty; the other waited on the lock and found
    // it at some step (each step is its own transaction, so the second may
    // run the later steps), and both end current.
    assert_eq!(
        results[0],
        Migrated {
            before: 0,
            after: SCHEMA_VERSION
        }
    );
    assert!(results[1].before >= 4, "{results:?}");
    assert_eq!(results[1].after, SCHEMA_VERSION);
    let mut c = connect(&pg);
    assert_eq!(schema_version(&mut c), SCHEMA_VERSION);
    assert_eq!(meta(&mut c).len(), 4, "meta's rows were inserted once");
}

#[test]
fn a_store_newer_than_the_binary_is_refused_with_sqlites_error_and_left_as_it_is() {
    let Some(pg) = cluster() else { return };
    let mut c = connect(&pg);
    pg_migrate(&mut c).unwrap();
    c.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'", &[])
        .unwrap();
    let before = (columns(&mut c), indexes(&mut c), meta(&mut c));

    let e = pg_migrate(&mut c).unwrap_err();
    assert!(
        matches!(e, StoreError::SchemaTooNew { found: 99, supported, .. } if supported == SCHEMA_VERSION),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "store postgres has schema version 99, newer than this coordinator understands \
             ({SCHEMA_VERSION}); upgrade the coordinator"
        )
    );
    assert!(!e.to_string().contains(pg.password()), "{e}");
    assert_eq!((columns(&mut c), indexes(&mut c), meta(&mut c)), before);
}

#[test]
fn a_failed_statement_is_a_pg_error_that_names_the_cause() {
    let Some(pg) = cluster() else { return };
    let mut c = connect(&pg);
    // A `meta` table the migration did not make: its first step cannot create it.
    c.batch_execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
        .unwrap();
    let e = pg_migrate(&mut c).unwrap_err();
    assert!(matches!(e, StoreError::Pg(_)), "{e:?}");
    assert!(e.to_string().starts_with("PostgreSQL store query failed"), "{e}");
    assert_eq!(
        e.to_string(),
        "PostgreSQL store query failed: ERROR 42P07: relation \"meta\" already exists"
    );
}
