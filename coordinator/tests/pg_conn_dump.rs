//! docs/postgres.md "Backup and restore": a plain `pg_dump -Fc` of a store
//! and `pg_restore` into an empty database owned by the role give a store
//! that opens with the same objects, revision and watch history, and whose
//! next write takes the next revision. Runs the throwaway cluster's own
//! pg_dump/pg_restore; skips, printing why, only when the PostgreSQL binaries
//! are missing.
use std::process::Command;

use hostplane_common::testing::pg::{self, DATABASE, PgCluster, USER};
use hostplane_coordinator::store::{HistoryConfig, PgOptions, Store, StoreError};
use hostplane_proto::v1::{self, Kind, ObjectMeta, Resource};

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

fn tool(pg: &PgCluster, name: &str, args: &[&str]) {
    let bin = pg::bindir()
        .expect("the cluster started, so its binaries are there")
        .join(name);
    let port = pg.port().to_string();
    let out = Command::new(&bin)
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &port, "-U", USER])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(revision, every Dpu, the watch history from 0)`.
type Snapshot = (u64, Vec<Resource>, Vec<v1::WatchEvent>);

fn snapshot(s: &Store) -> Snapshot {
    s.write_sync(|t| {
        Ok::<_, StoreError>((t.revision()?, t.list(Kind::Dpu)?, t.events_since(0, &[], 10_000)?))
    })
    .unwrap()
}

#[test]
fn pg_dump_and_pg_restore_give_the_same_store() {
    let Some(pg) = PgCluster::start().expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    pg.write_password_file(&pw).unwrap();
    let opts = |db: &str| PgOptions {
        password_file: Some(pw.clone()),
        ..PgOptions::from_url(format!("postgres://{USER}@127.0.0.1:{}/{db}", pg.port()))
    };

    let store = Store::open_postgres(&opts(DATABASE), HistoryConfig::default()).unwrap();
    for i in 0..20 {
        store
            .write_sync(|t| t.insert(dpu(&format!("dpu-{i}"), &format!("node-{}", i % 4))))
            .unwrap();
    }
    store
        .write_sync(|t| t.delete(Kind::Dpu, "dpu-3").map(|_| ()))
        .unwrap();
    let before = snapshot(&store);
    assert_eq!(before.1.len(), 19);
    assert!(before.0 >= 21, "revision {}", before.0);

    // The dump runs while the store is open (one consistent snapshot).
    let dump = dir.path().join("store.dump");
    tool(
        &pg,
        "pg_dump",
        &["-Fc", "-d", DATABASE, "-f", dump.to_str().unwrap()],
    );
    drop(store);
    tool(&pg, "createdb", &["-O", USER, "restored"]);
    tool(
        &pg,
        "pg_restore",
        &[
            "-d",
            "restored",
            "--no-owner",
            "--role",
            USER,
            dump.to_str().unwrap(),
        ],
    );

    let restored = Store::open_postgres(&opts("restored"), HistoryConfig::default()).unwrap();
    let after = snapshot(&restored);
    assert_eq!(after, before, "the restored store differs");
    restored
        .write_sync(|t| t.insert(dpu("dpu-new", "node-9")))
        .unwrap();
    let (rev, dpus, _) = snapshot(&restored);
    assert_eq!(rev, before.0 + 1, "the next write takes the next revision");
    assert_eq!(dpus.len(), 20);
}
