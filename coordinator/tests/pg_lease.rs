//! The leader lease and its fencing epoch (issue 13; docs/ha.md §3) on a
//! real throwaway PostgreSQL cluster (hostplane_common::testing::pg), with
//! short timings: lease 2 s, renew every 300 ms, renew deadline 1.2 s.
//!
//! Each elector connects as a role of its own (`elector_a`, `elector_b`,
//! not superusers), so a test can cut one replica off PostgreSQL: its
//! backends terminated and its role's `CONNECTION LIMIT 0`. Whether a
//! replica stopped or took over in time is asserted against the database's
//! clock (`clock_timestamp()` and the `leader` row's `expires_at`), not the
//! test's. Each test skips, printing why, only when the PostgreSQL binaries
//! are missing.

use std::time::Duration;

use hostplane_common::testing::pg::{DATABASE, PgCluster};
use hostplane_coordinator::ha::{
    Elector, FenceError, Fenced, LeaderInfo, LeaseConfig, Replica, Role, check_epoch, cluster_status,
};
use hostplane_coordinator::metrics::{LeaseRenewal, hub};
use hostplane_coordinator::store::{PgOptions, pg_migrate};
use postgres::{Client, NoTls};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CFG: LeaseConfig = LeaseConfig {
    lease: Duration::from_secs(2),
    renew_every: Duration::from_millis(300),
    renew_deadline: Duration::from_millis(1200),
};
const LEASE_US: i64 = 2_000_000;
const ROLE_PASSWORD: &str = "elector-pw";

struct Fixture {
    pg: PgCluster,
    rt: Runtime,
    admin: Client,
}

/// A migrated store, the roles `elector_a`, `elector_b` and `elector_c`, and a runtime
/// for the electors (the test's own SQL runs on the test thread: a
/// synchronous postgres client must not run inside the runtime).
fn setup() -> Option<Fixture> {
    let pg = PgCluster::start().expect("start the throwaway PostgreSQL cluster")?;
    let mut admin = Client::connect(&pg.url(), NoTls)
        .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", pg.url(), pg.log()));
    pg_migrate(&mut admin).unwrap();
    for role in ["elector_a", "elector_b", "elector_c"] {
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}'; \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
            ))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Some(Fixture { pg, rt, admin })
}

struct Running {
    elector: Elector,
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    replica: Replica,
}

impl Fixture {
    /// Starts an elector named `name` connecting as role `elector_<name>`.
    fn start(&self, name: &str) -> Running {
        self.start_with(name, CFG)
    }

    fn start_with(&self, name: &str, cfg: LeaseConfig) -> Running {
        let url = format!(
            "postgres://elector_{name}:{ROLE_PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.pg.port()
        );
        let replica = Replica {
            name: name.into(),
            addr: format!("{name}.coordinators.example:50051"),
        };
        let stop = CancellationToken::new();
        let _rt = self.rt.enter();
        let elector = Elector::start(PgOptions::from_url(url), replica.clone(), cfg, stop.clone()).unwrap();
        Running {
            role: elector.role(),
            elector,
            stop,
            replica,
        }
    }

    /// Waits up to `within` for `r`'s role to satisfy `pred`; panics with
    /// the role it has and the server log otherwise.
    fn wait(&self, r: &mut Running, within: Duration, what: &str, pred: impl FnMut(&Role) -> bool) -> Role {
        let got = self.rt.block_on(async {
            tokio::time::timeout(within, r.role.wait_for(pred))
                .await
                .map(|g| g.map(|r| r.clone()))
        });
        match got {
            Ok(Ok(role)) => role,
            Ok(Err(_)) => panic!("{}: the elector ended while waiting for {what}", r.replica.name),
            Err(_) => panic!(
                "{}: not {what} within {within:?}; role {:?}\nleader row {:?}\n{}",
                r.replica.name,
                *r.role.borrow(),
                self.leader_row_text(),
                self.pg.log()
            ),
        }
    }

    /// The `leader` row for a failure message (or why it cannot be read).
    fn leader_row_text(&self) -> String {
        let read = || -> Result<String, postgres::Error> {
            let mut c = Client::connect(&self.pg.url(), NoTls)?;
            // The lock test holds the table: do not wait for it forever.
            c.batch_execute("SET lock_timeout = '2s'")?;
            let row = c.query_one(
                "SELECT holder, epoch, expires_at::text, clock_timestamp()::text FROM leader",
                &[],
            )?;
            Ok(format!(
                "holder {:?} epoch {} expires_at {} (now {})",
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3)
            ))
        };
        read().unwrap_or_else(|e| format!("(cannot read the leader row: {e:?})"))
    }
}

/// The `leader` row now: holder, epoch, expires_at in Unix microseconds
/// (`None` for -infinity: released or never held).
fn leader_row(c: &mut impl postgres::GenericClient) -> (String, i64, Option<i64>) {
    let r = c
        .query_one(
            "SELECT holder, epoch, \
                    CASE WHEN isfinite(expires_at) THEN (extract(epoch FROM expires_at) * 1000000)::bigint END \
             FROM leader WHERE id = 1",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Whether the `leader` row's lease is still live by the database's clock
/// now (`clock_timestamp()`, not the transaction's `now()`), and its epoch.
fn lease_live_now(c: &mut impl postgres::GenericClient) -> (bool, i64) {
    let r = c
        .query_one(
            "SELECT expires_at > clock_timestamp(), epoch FROM leader WHERE id = 1",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn renewals(result: LeaseRenewal) -> u64 {
    hub().lease_renewals.get_or_create(&result.into()).get()
}

fn leads(epoch: i64) -> impl FnMut(&Role) -> bool {
    move |r| *r == Role::Leader { epoch }
}

fn follows(leader: &Replica, epoch: i64) -> impl FnMut(&Role) -> bool {
    let want = Role::Follower {
        leader: Some(LeaderInfo {
            holder: leader.name.clone(),
            addr: leader.addr.clone(),
            epoch,
        }),
    };
    move |r| *r == want
}

#[test]
fn one_of_two_leads_with_epoch_1_the_other_follows_and_a_graceful_stop_hands_over_at_once() {
    let Some(mut fx) = setup() else { return };
    let ok_before = renewals(LeaseRenewal::Ok);
    let mut a = fx.start("a");
    let mut b = fx.start("b");
    // Whichever polls first takes over; the other must then follow it.
    let wait = Duration::from_secs(5);
    fx.rt.block_on(async {
        tokio::time::timeout(wait, async {
            loop {
                if a.role.borrow().is_leader() || b.role.borrow().is_leader() {
                    break;
                }
                tokio::select! {
                    _ = a.role.changed() => {}
                    _ = b.role.changed() => {}
                }
            }
        })
        .await
        .expect("one elector becomes leader")
    });
    let (leader, mut follower) = if a.role.borrow().is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(*leader.role.borrow(), Role::Leader { epoch: 1 });
    let l = leader.replica.clone();
    fx.wait(&mut follower, wait, "following the leader", follows(&l, 1));

    // Past the renew deadline and the lease: still the same term, renewed.
    std::thread::sleep(CFG.lease + Duration::from_millis(500));
    assert_eq!(*leader.role.borrow(), Role::Leader { epoch: 1 });
    assert!(!follower.role.borrow().is_leader());
    assert!(
        renewals(LeaseRenewal::Ok) >= ok_before + 3,
        "renewals counted: {} -> {}",
        ok_before,
        renewals(LeaseRenewal::Ok)
    );

    let status = cluster_status(&mut fx.admin).unwrap();
    assert_eq!(
        (status.leader.holder.as_str(), status.leader.epoch),
        (l.name.as_str(), 1)
    );
    assert_eq!(status.leader.addr, l.addr);
    let left = status.leader.expires_in.expect("a live lease");
    assert!(left > Duration::ZERO && left <= CFG.lease, "{left:?}");
    let names: Vec<_> = status.replicas.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    for r in &status.replicas {
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert!(r.seen_ago < CFG.renew_deadline, "{r:?}");
        assert!(r.addr.ends_with(".coordinators.example:50051"), "{r:?}");
    }

    // Graceful stop: released at once; the follower takes over on its next
    // poll, long before the old lease would have expired.
    let (_, _, old_expiry) = leader_row(&mut fx.admin);
    let old_expiry = old_expiry.expect("a live lease has a finite expiry");
    leader.stop.cancel();
    let stopped = fx
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), leader.elector.stopped()).await });
    assert!(stopped.is_ok(), "the stopped elector's tasks end");
    assert_eq!(*leader.role.borrow(), Role::Follower { leader: None });
    fx.wait(
        &mut follower,
        Duration::from_secs(5),
        "leader with epoch 2",
        leads(2),
    );
    let (holder, epoch, new_expiry) = leader_row(&mut fx.admin);
    assert_eq!((holder.as_str(), epoch), (follower.replica.name.as_str(), 2));
    let took_over_at = new_expiry.unwrap() - LEASE_US;
    assert!(
        took_over_at < old_expiry,
        "the takeover ({took_over_at} us) came before the released lease's expiry ({old_expiry} us)"
    );
    // The stopped replica removed its heartbeat row; the running one's stays.
    let names: Vec<String> = cluster_status(&mut fx.admin)
        .unwrap()
        .replicas
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, [follower.replica.name.clone()]);
}

#[test]
fn a_leader_killed_without_release_is_replaced_only_after_its_lease_expired() {
    let Some(mut fx) = setup() else { return };
    let mut a = fx.start("a");
    fx.wait(&mut a, Duration::from_secs(5), "leader with epoch 1", leads(1));
    let mut b = fx.start("b");
    let a_replica = a.replica.clone();
    fx.wait(
        &mut b,
        Duration::from_secs(5),
        "following a",
        follows(&a_replica, 1),
    );

    // A crash: both tasks end, nothing is released.
    a.elector.abort();
    // Follow the row by the database's clock until the takeover: the last
    // expiry seen for epoch 1 is where a's lease ended (a renewal still in
    // flight when the tasks ended would only have moved it later, and the
    // poll would have seen it).
    let mut last_a_expiry = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (holder, new_expiry) = loop {
        let (holder, epoch, expiry) = leader_row(&mut fx.admin);
        match epoch {
            1 => last_a_expiry = expiry,
            2 => break (holder, expiry.unwrap()),
            other => panic!("unexpected epoch {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover: {}",
            fx.leader_row_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(holder, "b");
    let a_expiry = last_a_expiry.expect("a's lease was seen");
    let took_over_at = new_expiry - LEASE_US;
    assert!(
        took_over_at >= a_expiry,
        "b took over at {took_over_at} us, before a's lease expired at {a_expiry} us"
    );
    fx.wait(&mut b, Duration::from_secs(2), "leader with epoch 2", leads(2));
    // A crashed replica's heartbeat row stays, ageing.
    std::thread::sleep(CFG.renew_deadline);
    let status = cluster_status(&mut fx.admin).unwrap();
    let a_row = status
        .replicas
        .iter()
        .find(|r| r.name == "a")
        .expect("a's row stays");
    assert!(a_row.seen_ago >= CFG.renew_deadline, "{a_row:?}");
    let b_row = status.replicas.iter().find(|r| r.name == "b").unwrap();
    assert!(b_row.seen_ago < CFG.renew_deadline, "{b_row:?}");
}

#[test]
fn a_leader_cut_off_from_postgres_steps_down_before_its_lease_ends_and_its_epoch_is_fenced() {
    let Some(mut fx) = setup() else { return };
    let mut a = fx.start("a");
    fx.wait(&mut a, Duration::from_secs(5), "leader with epoch 1", leads(1));
    let mut b = fx.start("b");
    let a_replica = a.replica.clone();
    fx.wait(
        &mut b,
        Duration::from_secs(5),
        "following a",
        follows(&a_replica, 1),
    );
    let errors_before = renewals(LeaseRenewal::Error);

    // Cut a off: no new sessions for its role, its sessions ended.
    fx.admin
        .batch_execute(
            "ALTER ROLE elector_a CONNECTION LIMIT 0; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'elector_a';",
        )
        .unwrap();
    let cut = std::time::Instant::now();
    fx.wait(&mut a, Duration::from_secs(3), "stepped down", |r| !r.is_leader());
    let stepped_down_after = cut.elapsed();
    // By the database's clock, a's lease was still live when a stopped.
    let (live, epoch) = lease_live_now(&mut fx.admin);
    assert!(
        live,
        "a stepped down only after its lease expired ({})",
        fx.leader_row_text()
    );
    assert_eq!(epoch, 1);
    assert!(
        !b.role.borrow().is_leader(),
        "b cannot lead while a's lease is live"
    );
    assert!(
        stepped_down_after <= CFG.renew_deadline + Duration::from_millis(500),
        "a acted {stepped_down_after:?} after being cut off"
    );
    assert!(
        renewals(LeaseRenewal::Error) > errors_before,
        "failed renewals are counted"
    );

    // b takes over once the lease expired, with the next epoch.
    fx.wait(
        &mut b,
        CFG.lease + Duration::from_secs(3),
        "leader with epoch 2",
        leads(2),
    );
    assert_eq!(leader_row(&mut fx.admin).0, "b");

    // A write on behalf of a's term is refused; b's passes. Checked as the
    // store writer will: after the revision lock.
    let mut tx = fx.admin.transaction().unwrap();
    tx.query_one("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
        .unwrap();
    match check_epoch(&mut tx, 1) {
        Err(FenceError::Fenced(f)) => {
            assert_eq!(f, Fenced { mine: 1, current: 2 });
            let msg = f.to_string();
            assert!(msg.contains("epoch 1") && msg.contains("epoch 2"), "{msg}");
        }
        other => panic!("epoch 1 after the takeover: {other:?}"),
    }
    check_epoch(&mut tx, 2).unwrap();
    tx.rollback().unwrap();

    // Let a back in: it reconnects (a fresh connection after the failed
    // ones) and follows b.
    fx.admin
        .batch_execute("ALTER ROLE elector_a CONNECTION LIMIT -1")
        .unwrap();
    let b_replica = b.replica.clone();
    fx.wait(
        &mut a,
        Duration::from_secs(5),
        "following b",
        follows(&b_replica, 2),
    );
}

#[test]
fn a_leader_whose_renewal_is_blocked_steps_down_at_its_deadline_before_its_lease_ends() {
    let Some(mut fx) = setup() else { return };
    let mut a = fx.start("a");
    fx.wait(&mut a, Duration::from_secs(5), "leader with epoch 1", leads(1));
    // Let a renew once more, so its next renewal is the one that blocks.
    std::thread::sleep(CFG.renew_every * 2);

    // The renewal's UPDATE now waits behind this lock: PostgreSQL answers nothing.
    let mut locker = Client::connect(&fx.pg.url(), NoTls).unwrap();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE leader IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let locked = std::time::Instant::now();
    fx.wait(&mut a, Duration::from_secs(3), "stepped down", |r| !r.is_leader());
    let stepped_down_after = locked.elapsed();
    let (live, epoch) = lease_live_now(&mut tx);
    assert!(live, "a stepped down only after its lease expired");
    assert_eq!(epoch, 1);
    assert!(
        stepped_down_after <= CFG.renew_deadline + Duration::from_millis(500),
        "the step-down timer fired {stepped_down_after:?} after the lock"
    );
    tx.commit().unwrap();

    // The abandoned renewal was cancelled; with the lock gone the lease is
    // taken again (a takes its own lease back) with a new epoch.
    fx.wait(
        &mut a,
        CFG.lease + Duration::from_secs(3),
        "leader with epoch 2",
        leads(2),
    );
    let (holder, epoch, _) = leader_row(&mut fx.admin);
    assert_eq!((holder.as_str(), epoch), ("a", 2));
}

#[test]
fn check_epoch_reads_the_leader_row() {
    let Some(mut fx) = setup() else { return };
    let mut tx = fx.admin.transaction().unwrap();
    check_epoch(&mut tx, 0).expect("epoch 0 before any takeover");
    let e = check_epoch(&mut tx, 3).unwrap_err();
    assert!(
        matches!(e, FenceError::Fenced(Fenced { mine: 3, current: 0 })),
        "{e:?}"
    );
    tx.execute("DELETE FROM leader", &[]).unwrap();
    let e = check_epoch(&mut tx, 0).unwrap_err().to_string();
    assert!(e.contains("no leader row") && e.contains("migrate"), "{e}");
}

#[test]
fn the_step_down_timer_fires_at_the_deadline_even_between_two_renewal_attempts() {
    // Renewals 1 s apart, deadline 1.5 s, lease 1.8 s: once renewals fail,
    // the deadline falls between two attempts. A leader that noticed it
    // only at its next attempt (2 s after its last renewal) would still act
    // after its lease had expired.
    let sparse = LeaseConfig {
        lease: Duration::from_millis(1800),
        renew_every: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(1500),
    };
    let Some(mut fx) = setup() else { return };
    let mut a = fx.start_with("a", sparse);
    fx.wait(&mut a, Duration::from_secs(5), "leader with epoch 1", leads(1));
    fx.admin
        .batch_execute(
            "ALTER ROLE elector_a CONNECTION LIMIT 0; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'elector_a';",
        )
        .unwrap();
    fx.wait(&mut a, Duration::from_secs(4), "stepped down", |r| !r.is_leader());
    let (live, epoch) = lease_live_now(&mut fx.admin);
    assert!(
        live,
        "a stepped down only after its lease expired ({})",
        fx.leader_row_text()
    );
    assert_eq!(epoch, 1);
}

#[test]
fn a_takeover_waits_for_the_revision_lock_and_racing_takeovers_elect_one() {
    let Some(mut fx) = setup() else { return };
    // Hold the store's revision lock, as a store write in progress does.
    let mut writer = Client::connect(&fx.pg.url(), NoTls).unwrap();
    let mut write = writer.transaction().unwrap();
    write
        .query_one("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
        .unwrap();
    let mut electors: Vec<Running> = ["a", "b", "c"].iter().map(|n| fx.start(n)).collect();
    // All three find the lease vacant and wait for the lock in their
    // takeover transaction; none takes over meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let waiting: i64 = fx
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename LIKE 'elector_%' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of 3 takeovers wait for the revision lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        leader_row(&mut fx.admin).1,
        0,
        "no takeover while a write holds the revision lock"
    );
    assert!(electors.iter().all(|e| !e.role.borrow().is_leader()));
    write.commit().unwrap();

    // They run one after the other: the first takes epoch 1, the others
    // find the lease live and follow it.
    let (holder, epoch, _) = loop {
        let row = leader_row(&mut fx.admin);
        if row.1 > 0 {
            break row;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(epoch, 1);
    let leader = electors
        .iter()
        .find(|e| e.replica.name == holder)
        .unwrap()
        .replica
        .clone();
    for e in &mut electors {
        if e.replica.name == holder {
            fx.wait(e, Duration::from_secs(3), "leader with epoch 1", leads(1));
        } else {
            fx.wait(
                e,
                Duration::from_secs(3),
                "following the leader",
                follows(&leader, 1),
            );
        }
    }
    std::thread::sleep(CFG.renew_every * 3);
    assert_eq!(leader_row(&mut fx.admin).1, 1, "no second takeover");
}

#[test]
fn a_replica_restarted_under_the_same_name_takes_its_live_lease_back_with_a_new_epoch() {
    let Some(mut fx) = setup() else { return };
    let mut a = fx.start("a");
    fx.wait(&mut a, Duration::from_secs(5), "leader with epoch 1", leads(1));
    a.elector.abort();
    let (_, _, old_expiry) = leader_row(&mut fx.admin);
    // The same replica again (a restart): it need not wait for its own
    // lease to expire, and its new term has a new epoch, so writes of the
    // old process's term are fenced.
    let mut again = fx.start("a");
    fx.wait(
        &mut again,
        Duration::from_secs(3),
        "leader with epoch 2",
        leads(2),
    );
    let (holder, epoch, new_expiry) = leader_row(&mut fx.admin);
    assert_eq!((holder.as_str(), epoch), ("a", 2));
    let took_over_at = new_expiry.unwrap() - LEASE_US;
    assert!(
        took_over_at < old_expiry.unwrap(),
        "took back at {took_over_at} us, not before the old lease's expiry {} us",
        old_expiry.unwrap()
    );
}

#[test]
fn a_lease_taken_over_just_as_the_replica_stops_is_released() {
    let Some(mut fx) = setup() else { return };
    let mut writer = Client::connect(&fx.pg.url(), NoTls).unwrap();
    let mut write = writer.transaction().unwrap();
    write
        .query_one("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
        .unwrap();
    let a = fx.start("a");
    // a's takeover waits for the revision lock ...
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while fx
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'elector_a' AND wait_event_type = 'Lock'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a's takeover never waited for the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... when a is stopped; then the lock is free and the takeover commits.
    a.stop.cancel();
    std::thread::sleep(Duration::from_millis(100));
    write.commit().unwrap();
    let stopped = fx
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), a.elector.stopped()).await });
    assert!(stopped.is_ok(), "the stopped elector's tasks end");
    assert_eq!(
        leader_row(&mut fx.admin),
        ("a".to_string(), 1, None),
        "the lease a took as it stopped is released (-infinity), not left to expire"
    );
}
