//! The PostgreSQL foundation of issue 13: a throwaway cluster
//! (hostplane_common::testing::pg) started, used through the `postgres`
//! client (a query, LISTEN/NOTIFY between two connections, an advisory lock
//! held by one session and refused to another), and stopped with nothing left
//! running. Skips (prints why) only when the PostgreSQL binaries are missing;
//! scripts/setup installs them.

use std::path::Path;

use hostplane_common::testing::pg::{PgCluster, process_alive};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

fn cluster() -> Option<PgCluster> {
    PgCluster::start().expect("start the throwaway PostgreSQL cluster")
}

fn connect(pg: &PgCluster) -> Client {
    Client::connect(&pg.url(), NoTls).unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", pg.url(), pg.log()))
}

#[test]
fn a_throwaway_cluster_serves_queries_notifications_and_advisory_locks_and_leaves_nothing_running() {
    let Some(mut pg) = cluster() else { return };
    let data = pg.data_dir();
    let pid = pg
        .postmaster_pid()
        .expect("postmaster.pid names the running server");
    assert!(process_alive(pid), "the postmaster {pid} runs");

    // A query over TCP with the password (SCRAM).
    let mut a = connect(&pg);
    let one: i32 = a.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    let (user, db): (String, String) = {
        let row = a
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((user.as_str(), db.as_str()), ("hostplane", "hostplane_test"));

    // The password is checked: a wrong one is refused.
    let wrong = pg.url().replace(pg.password(), "not-the-password");
    assert!(
        Client::connect(&wrong, NoTls).is_err(),
        "a wrong password is refused"
    );

    // LISTEN on one connection, NOTIFY from another, the payload arrives.
    let mut b = connect(&pg);
    a.batch_execute("LISTEN hostplane_changes").unwrap();
    b.execute("SELECT pg_notify('hostplane_changes', 'dpu/7')", &[])
        .unwrap();
    let note = a
        .notifications()
        .timeout_iter(std::time::Duration::from_secs(30))
        .next()
        .unwrap()
        .expect("the notification arrives on the listening connection");
    assert_eq!((note.channel(), note.payload()), ("hostplane_changes", "dpu/7"));
    assert_ne!(note.process_id(), 0);

    // An advisory lock held by one session is refused to another until released.
    let got = |c: &mut Client, sql: &str| -> bool { c.query_one(sql, &[]).unwrap().get(0) };
    assert!(
        got(&mut a, "SELECT pg_try_advisory_lock(1313)"),
        "a takes the free lock"
    );
    assert!(
        !got(&mut b, "SELECT pg_try_advisory_lock(1313)"),
        "b is refused while a holds it"
    );
    assert!(got(&mut a, "SELECT pg_advisory_unlock(1313)"));
    assert!(
        got(&mut b, "SELECT pg_try_advisory_lock(1313)"),
        "b takes it once a let go"
    );
    // A session's end releases its locks: the leader lease's fencing relies on it.
    drop(b);
    // pg_advisory_lock waits (server side, up to lock_timeout) for the closed session's backend to exit.
    a.batch_execute("SET lock_timeout = '60s'").unwrap();
    a.execute("SELECT pg_advisory_lock(1313)", &[])
        .expect("the lock of a closed session is released");
    drop(a);

    // Stopped: the postmaster is gone and so is its pid file.
    pg.stop().expect("pg_ctl stop");
    assert!(!process_alive(pid), "the postmaster {pid} is gone after stop");
    assert!(!data.join("postmaster.pid").exists(), "postmaster.pid removed");
    let dir = pg.socket_dir().to_path_buf();
    drop(pg);
    assert!(
        !dir.exists(),
        "the cluster's directory {} is removed on drop",
        dir.display()
    );
}

#[test]
fn dropping_a_cluster_during_a_panic_stops_it() {
    let Some(pg) = cluster() else { return };
    let pid = pg.postmaster_pid().expect("postmaster.pid");
    let dir = pg.socket_dir().to_path_buf();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _pg = pg;
        panic!("a test failing while its cluster runs");
    }));
    assert!(unwound.is_err());
    assert!(
        !process_alive(pid),
        "the postmaster {pid} is gone after the panic"
    );
    assert!(
        !Path::new(&dir).exists(),
        "the cluster's directory {} is removed",
        dir.display()
    );
}
