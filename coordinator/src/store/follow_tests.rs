//! Replicas on one PostgreSQL database following each other's commits
//! (docs/ha.md §4): two `Store`s in one process, as two coordinators would
//! hold them.
use std::time::Duration;

use hostplane_proto::v1::{
    self, Command, CommandOutcome, CommandResult, EventType, Kind, ObjectMeta, Resource, WatchEvent,
};

use super::test_backend::Backend;
use super::*;

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

fn cmd(id: &str) -> Command {
    Command {
        id: id.into(),
        dpu: "d1".into(),
        rshim: "rshim0".into(),
        action: None,
    }
}

fn url(b: &Backend) -> PgOptions {
    match b {
        Backend::Postgres { url } => PgOptions::from_url(url.clone()),
        Backend::Sqlite { .. } => unreachable!("PostgreSQL only"),
    }
}

/// Wait until `s`'s view reaches `rev` (the change reader runs on its own).
async fn caught_up(s: &Store, rev: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.view().revision() < rev {
        assert!(
            tokio::time::Instant::now() < deadline,
            "view at {} never reached {rev}",
            s.view().revision()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn recv(rx: &mut tokio::sync::broadcast::Receiver<Arc<WatchEvent>>) -> (u64, String, i32) {
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event")
        .expect("no lag");
    (
        ev.resource_version,
        ev.resource.as_ref().unwrap().name().to_string(),
        ev.r#type,
    )
}

/// Writes on either replica reach the other's view, watch feed, watch cache
/// and desired feed, in revision order with no gap or repeat; each writes
/// on top of what the other committed.
#[tokio::test]
async fn two_replicas_see_each_others_commits_in_order() {
    let Some(b) = Backend::postgres() else { return };
    let a = b.open();
    let c = b.open();
    let mut feed = c.subscribe_shared();
    let mut desired = c.subscribe_desired();

    a.write(|t| t.insert(node("n1"))).await.unwrap();
    c.write(|t| t.insert(node("n2"))).await.unwrap();
    let v = a.write(|t| t.insert_command("n1", &cmd("c1"))).await.unwrap();
    let gone = a.write(|t| t.delete(Kind::Node, "n2")).await.unwrap().unwrap();
    caught_up(&c, gone.resource_version()).await;

    assert_eq!(recv(&mut feed).await, (1, "n1".into(), EventType::Added as i32));
    assert_eq!(recv(&mut feed).await, (2, "n2".into(), EventType::Added as i32));
    assert_eq!(recv(&mut feed).await, (4, "n2".into(), EventType::Deleted as i32));
    let d = tokio::time::timeout(Duration::from_secs(10), desired.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d,
        DesiredChanged {
            node: "n1".into(),
            version: v
        }
    );

    // The followers' view is what loading the store gives, on both.
    for s in [&a, &c] {
        caught_up(s, 4).await;
        let fresh = s.read(|t| View::load(t)).await.unwrap();
        assert_eq!(*s.view(), fresh);
    }
    assert_eq!(c.view().open_commands("n1").len(), 1);
    let (events, head) = c.recent_since(0, 100).unwrap();
    assert_eq!(head, 4);
    assert_eq!(
        events.iter().map(|e| e.resource_version).collect::<Vec<_>>(),
        [1, 2, 4]
    );

    // A command finished on the follower leaves the leader's desired state.
    let ok = CommandResult {
        outcome: CommandOutcome::Succeeded as i32,
        message: "done".into(),
        finished_at_ms: 0,
        power_cycle_required: false,
    };
    let rev = c
        .write(move |t| {
            t.finish_command("c1", &ok)?;
            t.revision()
        })
        .await
        .unwrap();
    caught_up(&a, rev).await;
    assert!(a.view().open_commands("n1").is_empty());
    assert_eq!(
        a.view().command("c1").unwrap().result.as_ref().unwrap().message,
        "done"
    );
    assert_eq!(a.view().desired_version("n1"), rev);
}

/// Pruned commands leave the followers' views by the pruning's cut-off.
#[tokio::test]
async fn pruned_commands_leave_the_followers_view() {
    let Some(b) = Backend::postgres() else { return };
    let a = b.open();
    let c = b.open();
    let finished = CommandResult {
        outcome: CommandOutcome::Succeeded as i32,
        message: String::new(),
        finished_at_ms: 1_000,
        power_cycle_required: false,
    };
    a.write(move |t| {
        t.insert_command("n1", &cmd("old"))?;
        t.insert_command("n1", &cmd("open"))?;
        t.finish_command("old", &finished)
    })
    .await
    .unwrap();
    let rev = a.read(|t| t.revision()).await.unwrap();
    caught_up(&c, rev).await;
    assert!(c.view().command("old").is_some());
    let n = a.write(|t| t.prune_commands(2_000)).await.unwrap();
    assert_eq!(n, 1);
    let rev = a.read(|t| t.revision()).await.unwrap();
    caught_up(&c, rev).await;
    assert!(c.view().command("old").is_none());
    assert!(c.view().command("open").is_some());
    let fresh = c.read(|t| View::load(t)).await.unwrap();
    assert_eq!(*c.view(), fresh);
}

/// A replica whose view is behind the kept history (it did not follow,
/// and the leader pruned) reloads the view when it next writes, and a
/// watcher behind it is told its version is too old.
#[tokio::test]
async fn a_replica_behind_the_history_reloads_its_view() {
    let Some(b) = Backend::postgres() else { return };
    let opts = url(&b);
    let a =
        Store::open_postgres_with(&opts, HistoryConfig::revisions(3), WATCH_CACHE_CAPACITY, true).unwrap();
    let c = Store::open_postgres_with(&opts, HistoryConfig::default(), WATCH_CACHE_CAPACITY, false).unwrap();
    // On PostgreSQL only the leader prunes; `a` leads here, `c` never prunes.
    a.set_prunes_history(true);
    for i in 0..10 {
        a.write(move |t| t.insert(node(&format!("n{i}")))).await.unwrap();
    }
    assert_eq!(c.view().revision(), 0, "c does not follow on its own");
    c.write(|t| t.insert(node("mine"))).await.unwrap();
    assert_eq!(c.view().revision(), 11);
    assert_eq!(c.view().nodes.len(), 11);
    let fresh = c.read(|t| View::load(t)).await.unwrap();
    assert_eq!(*c.view(), fresh);
    let e = c.events_since(0, vec![], 10).await.unwrap_err();
    assert!(matches!(e, StoreError::TooOld { .. }), "{e}");
    assert!(c.recent_since(0, 10).is_none());
}

/// Without the change reader, a replica still writes on top of the others:
/// its writer replays their commits first (under the revision lock), so
/// its own feed has every event in order.
#[tokio::test]
async fn a_writer_replays_others_commits_before_its_own() {
    let Some(b) = Backend::postgres() else { return };
    let opts = url(&b);
    let a = b.open();
    let c = Store::open_postgres_with(&opts, HistoryConfig::default(), WATCH_CACHE_CAPACITY, false).unwrap();
    let mut feed = c.subscribe_shared();
    a.write(|t| t.insert(node("a1"))).await.unwrap();
    a.write(|t| t.insert(node("a2"))).await.unwrap();
    c.write(|t| t.insert(node("c1"))).await.unwrap();
    assert_eq!(recv(&mut feed).await.0, 1);
    assert_eq!(recv(&mut feed).await.0, 2);
    assert_eq!(recv(&mut feed).await, (3, "c1".into(), EventType::Added as i32));
}

/// A write fenced with an epoch that is no longer the `leader` row's is
/// refused and changes nothing; the current epoch writes; unfenced writes
/// (agents, admins) are never refused; in one batch only the stale write fails.
#[test]
fn a_write_fenced_with_an_old_epoch_is_refused() {
    let Some(b) = Backend::postgres() else { return };
    let s = b.open();
    let mut c = postgres::Client::connect(&url(&b).url, postgres::NoTls).unwrap();
    c.batch_execute("UPDATE leader SET epoch = 2 WHERE id = 1")
        .unwrap();

    let old = s.fenced(1);
    let e = old.write_sync(|t| t.insert(node("late"))).unwrap_err();
    assert!(matches!(e, StoreError::Fenced { mine: 1, current: 2 }), "{e}");
    assert!(e.to_string().contains("epoch 1"), "{e}");
    assert_eq!(s.write_sync(|t| t.revision()).unwrap(), 0);
    assert!(s.view().nodes.is_empty());

    s.fenced(2).write_sync(|t| t.insert(node("now"))).unwrap();
    s.write_sync(|t| t.insert(node("admin"))).unwrap();
    assert_eq!(s.write_sync(|t| t.revision()).unwrap(), 2);

    // Queued together (one batch when the writer is busy), the stale write
    // fails alone.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a, b2) = rt.block_on(async {
        let old = s.fenced(1);
        let cur = s.fenced(2);
        tokio::join!(
            old.write(|t| t.insert(node("late2")).map(|_| ())),
            cur.write(|t| t.insert(node("on-time")).map(|_| ()))
        )
    });
    assert!(matches!(a, Err(StoreError::Fenced { .. })), "{a:?}");
    b2.unwrap();
    assert!(s.view().nodes.contains_key("on-time"));
    assert!(!s.view().nodes.contains_key("late2"));
}

/// On PostgreSQL only the replica that leads prunes the history; the others'
/// commits never do, whatever their retention says.
#[tokio::test]
async fn only_the_leader_prunes_the_history() {
    let Some(b) = Backend::postgres() else { return };
    let opts = url(&b);
    let follower =
        Store::open_postgres_with(&opts, HistoryConfig::revisions(2), WATCH_CACHE_CAPACITY, true).unwrap();
    for i in 0..6 {
        follower
            .write(move |t| t.insert(node(&format!("f{i}"))))
            .await
            .unwrap();
    }
    assert_eq!(follower.read(|t| t.history_floor()).await.unwrap(), 0);
    assert_eq!(follower.events_since(0, vec![], 100).await.unwrap().len(), 6);
    follower.set_prunes_history(true);
    follower.write(|t| t.insert(node("led"))).await.unwrap();
    assert_eq!(follower.read(|t| t.history_floor()).await.unwrap(), 5);
}

/// The admin API's reads on PostgreSQL (`read_snapshot`) run on the read
/// pool: they do not wait for the revision lock a writer holds, and they
/// see another replica's commit before this replica's view does.
#[tokio::test]
async fn snapshot_reads_skip_the_revision_lock_and_see_others_commits() {
    let Some(b) = Backend::postgres() else { return };
    let opts = url(&b);
    let a = b.open();
    let c = Store::open_postgres_with(&opts, HistoryConfig::default(), WATCH_CACHE_CAPACITY, false).unwrap();
    a.write(|t| t.insert(node("from-a"))).await.unwrap();
    assert!(c.view().nodes.is_empty(), "c follows only when it writes");
    let got = c.read_snapshot(|t| t.get(Kind::Node, "from-a")).await.unwrap();
    assert!(got.is_some());

    // Another session holds the revision lock: a snapshot read still answers.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let o = opts.clone();
    let holder = std::thread::spawn(move || {
        let mut cl = postgres::Client::connect(&o.url, postgres::NoTls).unwrap();
        let mut tx = cl.transaction().unwrap();
        tx.query("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE", &[])
            .unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        tx.rollback().unwrap();
    });
    locked_rx.recv().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_snapshot(|t| t.list(Kind::Node)))
        .await
        .expect("a snapshot read does not wait for the revision lock")
        .unwrap();
    assert_eq!(n.len(), 1);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
}
