//! `hostplane-coordinator migrate` on SQLite files: a new one, one already
//! current, one at schema version 2, one newer than the binary.
use std::path::Path;
use std::process::{Command, Output};

use hostplane_coordinator::store::{SCHEMA_VERSION, Store};
use hostplane_proto::v1::{self, Kind, ObjectMeta, Resource};

const BIN: &str = env!("CARGO_BIN_EXE_hostplane-coordinator");

fn migrate(store: &Path) -> Output {
    // An empty config: only the store path matters (no TLS, no tokens needed).
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("coordinator.yaml");
    std::fs::write(&config, format!("store:\n  path: {}\n", store.display())).unwrap();
    Command::new(BIN)
        .arg("migrate")
        .arg("--config")
        .arg(&config)
        .env_remove("HOSTPLANE_STORE_PATH")
        .env("HOSTPLANE_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

fn dpu(name: &str, node: &str) -> Resource {
    v1::Dpu {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(v1::DpuSpec {
            node: node.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

#[test]
fn a_new_store_is_created_at_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/c.db");
    let out = migrate(&path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "store {}: schema version 0 -> {SCHEMA_VERSION} (new store)",
            path.display()
        )
    );
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    // The coordinator opens it as it is.
    Store::open(&path).unwrap();
}

#[test]
fn a_current_store_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = Store::open(&path).unwrap();
    s.write_sync(|t| t.insert(dpu("d1", "n1"))).unwrap();
    drop(s);
    let out = migrate(&path);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains(&format!(
            "schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION} (already current)"
        )),
        "{out:?}"
    );
    let s = Store::open(&path).unwrap();
    assert!(s.write_sync(|t| t.get(Kind::Dpu, "d1")).unwrap().is_some());
}

#[test]
fn a_version_2_store_is_migrated_and_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = Store::open(&path).unwrap();
    s.write_sync(|t| t.insert(dpu("d1", "n1"))).unwrap();
    drop(s);
    // Back to the version-2 layout: no node column (3), no serial index (4),
    // none of step 5's columns, rows and tables, no power_cycle_required (6).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX resources_device_serial; DROP INDEX resources_node;
         ALTER TABLE resources DROP COLUMN node;
         DROP INDEX commands_changed; DROP INDEX commands_finished;
         ALTER TABLE commands DROP COLUMN changed_rev; DROP TABLE power_caps;
         ALTER TABLE commands DROP COLUMN power_cycle_required;
         DELETE FROM meta WHERE key = 'commands_pruned_at';
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);
    let out = migrate(&path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        format!("store {}: schema version 2 -> {SCHEMA_VERSION}", path.display())
    );
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    // Migration 3 filled the node column from the stored Dpu.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let node: String = conn
        .query_row(
            "SELECT node FROM resources WHERE kind = 'dpu' AND name = 'd1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(node, "n1");
    drop(conn);
    let s = Store::open(&path).unwrap();
    let on_n1 = s.write_sync(|t| t.list_on_node(Kind::Dpu, "n1")).unwrap();
    assert_eq!(on_n1.len(), 1);
}

#[test]
fn a_store_newer_than_the_binary_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(Store::open(&path).unwrap());
    let newer = SCHEMA_VERSION + 1;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", newer).unwrap();
    drop(conn);
    let out = migrate(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "has schema version {newer}, newer than this coordinator understands ({SCHEMA_VERSION}); upgrade the coordinator"
        )),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{out:?}");
    assert_eq!(user_version(&path), newer);
}
