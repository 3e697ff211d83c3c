//! `store backup` (issue 13, "Operations"; coordinator/src/storeops/backup.rs):
//! an online backup of a SQLite store taken while a writer keeps committing
//! through `Store` is a consistent, intact store of an earlier or equal
//! revision; an existing DEST is refused and left as it was.
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hostplane_coordinator::store::{SCHEMA_VERSION, Store, StoreError};
use hostplane_coordinator::storeops::backup::{BackupError, backup};
use hostplane_coordinator::storeops::{BackupArgs, StoreCommand, run_status};
use hostplane_proto::v1::{self, Kind, ObjectMeta, Resource};

fn node(name: &str) -> Resource {
    v1::Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn query_i64(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_backup_taken_while_a_writer_commits_is_intact_and_not_ahead_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (live, dest) = (dir.path().join("live.db"), dir.path().join("backup.db"));
    let store = Store::open(&live).unwrap();
    store
        .write_sync(|t| {
            for i in 0..200 {
                t.insert(node(&format!("node-{i:03}")))?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // A writer that keeps committing (one new Node and one update per
    // commit) until the backup is done.
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, commits) = (store.clone(), stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                store
                    .write_sync(|t| {
                        t.insert(node(&format!("extra-{i:06}")))?;
                        let mut n = t.get(Kind::Node, "node-000")?.unwrap();
                        n.metadata_mut().unwrap().labels.insert("i".into(), i.to_string());
                        t.update(n)
                    })
                    .unwrap();
                i += 1;
                commits.store(i, Ordering::Relaxed);
            }
        })
    };
    while commits.load(Ordering::Relaxed) < 20 {
        std::thread::yield_now();
    }
    let before = commits.load(Ordering::Relaxed);
    let report = backup(&live, &dest).unwrap();
    let during = commits.load(Ordering::Relaxed);
    // Keep writing a little after the backup: the live store moves on.
    while commits.load(Ordering::Relaxed) < during + 20 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let live_revision = store.write_sync(|t| t.revision()).unwrap();

    assert_eq!(report.dest, dest);
    assert_eq!(report.schema_version, SCHEMA_VERSION);
    assert!(
        report.revision as u64 <= live_revision,
        "{report:?} ahead of {live_revision}"
    );
    assert!(
        report.revision as u64 >= 200 + 2 * before,
        "{report:?} older than the commits before it"
    );
    // Each commit adds one Node and two revisions: the backup is one commit's state.
    assert_eq!(
        report.objects as u64,
        200 + (report.revision as u64 - 200) / 2,
        "{report:?}"
    );
    assert_eq!(report.bytes, std::fs::metadata(&dest).unwrap().len());

    // The file on its own: intact, one file (no journal or WAL beside it),
    // and the same revision, objects and no revision past its counter.
    let check: String = rusqlite::Connection::open(&dest)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup") || n.starts_with(".backup"))
        .collect();
    names.sort();
    assert_eq!(names, ["backup.db"]);
    assert_eq!(
        query_i64(&dest, "SELECT value FROM meta WHERE key = 'revision'"),
        report.revision
    );
    assert_eq!(query_i64(&dest, "SELECT count(*) FROM resources"), report.objects);
    assert!(query_i64(&dest, "SELECT MAX(resource_version) FROM resources") <= report.revision);
    assert_eq!(
        query_i64(&dest, "SELECT MAX(revision) FROM events"),
        report.revision
    );

    // And a coordinator opens it: the objects read back.
    let restored = dir.path().join("restored.db");
    std::fs::copy(&dest, &restored).unwrap();
    let r = Store::open(&restored).unwrap();
    assert_eq!(r.write_sync(|t| t.revision()).unwrap(), report.revision as u64);
    assert_eq!(
        r.write_sync(|t| t.list(Kind::Node)).unwrap().len() as i64,
        report.objects
    );
}

#[test]
fn an_existing_dest_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (live, dest) = (dir.path().join("live.db"), dir.path().join("backup.db"));
    Store::open(&live)
        .unwrap()
        .write_sync(|t| t.insert(node("n1")))
        .unwrap();
    for existing in [&b"an older backup"[..], b""] {
        std::fs::write(&dest, existing).unwrap();
        let e = backup(&live, &dest).unwrap_err();
        assert!(matches!(e, BackupError::DestExists(_)), "{e}");
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read(&dest).unwrap(), existing);
        let status = run_status(StoreCommand::Backup(BackupArgs {
            store: Some(live.clone()),
            config: None,
            to: dest.clone(),
        }));
        assert_eq!(status, 1);
        assert_eq!(std::fs::read(&dest).unwrap(), existing);
    }
    // Nothing left behind under a temporary name.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("live.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["backup.db"]);

    // A new name works, through the command too.
    let fresh = dir.path().join("fresh.db");
    let status = run_status(StoreCommand::Backup(BackupArgs {
        store: Some(live.clone()),
        config: None,
        to: fresh.clone(),
    }));
    assert_eq!(status, 0);
    assert_eq!(query_i64(&fresh, "SELECT count(*) FROM resources"), 1);
}

#[test]
fn the_config_names_the_store_to_back_up() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    Store::open(&live)
        .unwrap()
        .write_sync(|t| t.insert(node("n1")))
        .unwrap();
    let cfg = dir.path().join("coordinator.yaml");
    std::fs::write(&cfg, format!("store:\n  path: {}\n", live.display())).unwrap();
    if std::env::var_os("HOSTPLANE_STORE_PATH").is_some() {
        eprintln!("HOSTPLANE_STORE_PATH is set and would override the config's store.path; skipped");
        return;
    }
    let dest = dir.path().join("b.db");
    let status = run_status(StoreCommand::Backup(BackupArgs {
        store: None,
        config: Some(cfg),
        to: dest.clone(),
    }));
    assert_eq!(status, 0);
    assert_eq!(
        query_i64(&dest, "SELECT value FROM meta WHERE key = 'revision'"),
        1
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_hostplane-coordinator");

fn coordinator(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("HOSTPLANE_STORE_PATH")
        .env_remove("HOSTPLANE_STORE_BACKEND")
        .output()
        .unwrap()
}

#[test]
fn the_binary_backs_up_by_config_and_refuses_postgres_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    Store::open(&live)
        .unwrap()
        .write_sync(|t| t.insert(node("n1")))
        .unwrap();
    let cfg = dir.path().join("coordinator.yaml");
    std::fs::write(&cfg, format!("store:\n  path: {}\n", live.display())).unwrap();
    let dest = dir.path().join("b.db");

    // main.rs's global --config, given before the subcommand.
    let out = coordinator(&[
        "--config".as_ref(),
        cfg.as_ref(),
        "store".as_ref(),
        "backup".as_ref(),
        "--to".as_ref(),
        dest.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "written to {}: integrity ok, schema version {SCHEMA_VERSION}, revision 1, 1 objects",
            dest.display()
        )),
        "{stdout}"
    );

    // Again to the same DEST: refused, exit 1.
    let out = coordinator(&[
        "store".as_ref(),
        "backup".as_ref(),
        "--store".as_ref(),
        live.as_ref(),
        "--to".as_ref(),
        dest.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );

    // A config on PostgreSQL: pointed to pg_dump, exit 64.
    let pg_cfg = dir.path().join("pg.yaml");
    std::fs::write(
        &pg_cfg,
        "store:\n  backend: postgres\n  postgres:\n    url: postgres://hostplane@db/hostplane\n",
    )
    .unwrap();
    let other = dir.path().join("other.db");
    let out = coordinator(&[
        "store".as_ref(),
        "backup".as_ref(),
        "--config".as_ref(),
        pg_cfg.as_ref(),
        "--to".as_ref(),
        other.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pg_dump"),
        "{out:?}"
    );

    // No --to: clap's usage error, exit 64.
    let out = coordinator(&[
        "store".as_ref(),
        "backup".as_ref(),
        "--store".as_ref(),
        live.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!other.exists());
}
