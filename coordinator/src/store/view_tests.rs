//! The view against the store it mirrors, group commit, and the work
//! counters.
use std::cell::RefCell;

use hostplane_proto::v1::{
    self, Command, CommandOutcome, CommandResult, DpuPhase, EventType, Kind, ObjectMeta, Resource,
};
use proptest::prelude::*;

use super::test_backend::{Backend, backend_tests};
use super::*;

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn node(name: &str, v: u8) -> Resource {
    v1::Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [("v".to_string(), v.to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn device(name: &str, node: &str) -> Resource {
    v1::Device {
        metadata: meta(name),
        spec: Some(v1::DeviceSpec {
            node: node.into(),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

fn dpu(name: &str, node: &str, deployment: &str, phase: i32) -> Resource {
    v1::Dpu {
        metadata: meta(name),
        spec: Some(v1::DpuSpec {
            node: node.into(),
            deployment: deployment.into(),
            device: name.into(),
            ..Default::default()
        }),
        status: Some(v1::DpuStatus {
            phase,
            ..Default::default()
        }),
    }
    .into()
}

fn deployment(name: &str, v: u8) -> Resource {
    v1::Deployment {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [("v".to_string(), v.to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn cmd(id: &str, dpu: &str) -> Command {
    Command {
        id: id.into(),
        dpu: dpu.into(),
        rshim: "rshim0".into(),
        action: None,
    }
}

const NODES: [&str; 4] = ["n0", "n1", "n2", ""];
const DEPLOYMENTS: [&str; 3] = ["dep0", "dep1", ""];

#[derive(Debug, Clone)]
enum Op {
    PutNode(u8, u8),
    PutDevice(u8, u8),
    PutDpu {
        dpu: u8,
        node: u8,
        deployment: u8,
        phase: i32,
    },
    PutDeployment(u8, u8),
    Delete(Kind, u8),
    InsertCommand {
        node: u8,
        dpu: u8,
    },
    FinishCommand {
        pick: u8,
        finished_ms: i64,
    },
    CancelDpu(u8),
    Prune(i64),
    Touch(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(Kind::Node),
        Just(Kind::Device),
        Just(Kind::Dpu),
        Just(Kind::Deployment)
    ];
    prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(i, v)| Op::PutNode(i, v)),
        (0u8..6, 0u8..4).prop_map(|(i, n)| Op::PutDevice(i, n)),
        (0u8..6, 0u8..4, 0u8..3, 0i32..14).prop_map(|(dpu, node, deployment, phase)| {
            Op::PutDpu {
                dpu,
                node,
                deployment,
                phase,
            }
        }),
        (0u8..3, any::<u8>()).prop_map(|(i, v)| Op::PutDeployment(i, v)),
        (kind, 0u8..6).prop_map(|(k, i)| Op::Delete(k, i)),
        (0u8..4, 0u8..6).prop_map(|(node, dpu)| Op::InsertCommand { node, dpu }),
        (any::<u8>(), 0i64..50).prop_map(|(pick, finished_ms)| Op::FinishCommand { pick, finished_ms }),
        (0u8..6).prop_map(Op::CancelDpu),
        prop_oneof![0i64..60, Just(i64::MAX)].prop_map(Op::Prune),
        (0u8..4).prop_map(Op::Touch),
    ]
}

/// Command ids handed out so far (some rolled back: finishing those finds nothing).
#[derive(Default)]
struct Ids(RefCell<Vec<String>>);

fn upsert(t: &mut Txn<'_>, r: Resource) -> Result<(), StoreError> {
    if t.get(r.kind(), r.name())?.is_some() {
        t.update(r)?;
    } else {
        t.insert(r)?;
    }
    Ok(())
}

fn run_op(t: &mut Txn<'_>, op: &Op, ids: &Ids) -> Result<(), StoreError> {
    let node_of = |i: u8| NODES[i as usize % NODES.len()];
    match op {
        Op::PutNode(i, v) => upsert(t, node(&format!("n{i}"), *v)),
        Op::PutDevice(i, n) => upsert(t, device(&format!("v{i}"), node_of(*n))),
        Op::PutDpu {
            dpu: i,
            node: n,
            deployment: d,
            phase,
        } => upsert(
            t,
            dpu(
                &format!("d{i}"),
                node_of(*n),
                DEPLOYMENTS[*d as usize % DEPLOYMENTS.len()],
                *phase,
            ),
        ),
        Op::PutDeployment(i, v) => upsert(t, deployment(&format!("dep{i}"), *v)),
        Op::Delete(kind, i) => {
            let name = match kind {
                Kind::Node => format!("n{i}"),
                Kind::Device => format!("v{i}"),
                Kind::Deployment => format!("dep{i}"),
                _ => format!("d{i}"),
            };
            t.delete(*kind, &name).map(|_| ())
        }
        Op::InsertCommand { node: n, dpu: i } => {
            let id = {
                let mut ids = ids.0.borrow_mut();
                let id = format!("c{:03}", ids.len());
                ids.push(id.clone());
                id
            };
            t.insert_command(node_of(*n), &cmd(&id, &format!("d{i}")))
                .map(|_| ())
        }
        Op::FinishCommand { pick, finished_ms } => {
            let id = {
                let ids = ids.0.borrow();
                if ids.is_empty() {
                    return Ok(());
                }
                ids[*pick as usize % ids.len()].clone()
            };
            let result = CommandResult {
                outcome: CommandOutcome::Succeeded as i32,
                message: format!("done {pick}"),
                finished_at_ms: *finished_ms,
                power_cycle_required: false,
            };
            t.finish_command(&id, &result).map(|_| ())
        }
        Op::CancelDpu(i) => t.cancel_commands_for_dpu(&format!("d{i}"), "gone").map(|_| ()),
        Op::Prune(before) => t.prune_commands(*before).map(|_| ()),
        Op::Touch(n) => t.touch_desired(node_of(*n)).map(|_| ()),
    }
}

/// A closure of a step: its ops, and whether it fails after the first half of them.
type Closure = (Vec<Op>, bool);

fn run_closure(t: &mut Txn<'_>, (ops, fail): &Closure, ids: &Ids) -> Result<(), StoreError> {
    let stop = if *fail { ops.len() / 2 } else { ops.len() };
    for op in &ops[..stop] {
        run_op(t, op, ids)?;
    }
    if *fail {
        return Err(StoreError::Join("the closure failed midway".into()));
    }
    Ok(())
}

/// The view equals a fresh listing of the store, and every query of it
/// answers what SQL answers.
fn check(s: &Store) -> Result<(), TestCaseError> {
    let fresh = s.write_sync(|t| View::load(t)).unwrap();
    // A copy: the SQL reads below commit, and a commit waits for the view's readers.
    let v = s.view().clone();
    prop_assert_eq!(&v, &fresh);
    prop_assert_eq!(v.revision(), s.write_sync(|t| t.revision()).unwrap());
    let names = |it: &mut dyn Iterator<Item = &str>| it.map(str::to_string).collect::<Vec<_>>();
    let mut all_nodes: Vec<&str> = NODES.to_vec();
    all_nodes.push("nowhere");
    for n in all_nodes {
        let want = s.write_sync(|t| t.list_on_node(Kind::Dpu, n)).unwrap();
        let got: Vec<Resource> = v.dpus_on_node(n).cloned().map(Into::into).collect();
        prop_assert_eq!(got, want, "dpus on {:?}", n);
        let want = s.write_sync(|t| t.list_on_node(Kind::Device, n)).unwrap();
        let got: Vec<Resource> = v.devices_on_node(n).cloned().map(Into::into).collect();
        prop_assert_eq!(got, want, "devices on {:?}", n);
        let want = s.write_sync(|t| t.open_commands(n)).unwrap();
        let got: Vec<Command> = v.open_commands(n).into_iter().cloned().collect();
        prop_assert_eq!(got, want, "open commands of {:?}", n);
        prop_assert_eq!(
            v.desired_version(n),
            s.write_sync(|t| t.desired_version(n)).unwrap()
        );
    }
    for d in DEPLOYMENTS.iter().chain(&["other"]) {
        let want = names(
            &mut v
                .dpus
                .iter()
                .filter(|(_, x)| x.spec.as_ref().is_some_and(|s| s.deployment == *d))
                .map(|(n, _)| n.as_str()),
        );
        prop_assert_eq!(
            names(
                &mut v
                    .dpus_of_deployment(d)
                    .map(|x| x.metadata.as_ref().unwrap().name.as_str())
            ),
            want
        );
        for p in 0..14 {
            let phase = DpuPhase::try_from(p).unwrap();
            let want = v
                .dpus
                .values()
                .filter(|x| x.spec.as_ref().is_some_and(|s| s.deployment == *d))
                .filter(|x| x.status.as_ref().is_some_and(|s| s.phase == p))
                .count();
            prop_assert_eq!(v.count_in_phase(d, phase), want);
        }
    }
    for p in 0..14 {
        let phase = DpuPhase::try_from(p).unwrap();
        let want = names(
            &mut v
                .dpus
                .iter()
                .filter(|(_, x)| x.status.as_ref().is_some_and(|s| s.phase == p))
                .map(|(n, _)| n.as_str()),
        );
        let got = names(
            &mut v
                .dpus_in_phase(phase)
                .map(|x| x.metadata.as_ref().unwrap().name.as_str()),
        );
        prop_assert_eq!(got, want);
    }
    for kind in [Kind::Node, Kind::Device, Kind::Dpu, Kind::Deployment] {
        for r in s.write_sync(|t| t.list(kind)).unwrap() {
            prop_assert_eq!(v.get(kind, r.name()), Some(r));
        }
    }
    prop_assert_eq!(v.get(Kind::Dpu, "missing"), None);
    for i in 0..200 {
        let id = format!("c{i:03}");
        let want = s.write_sync(|t| t.command(&id)).unwrap();
        prop_assert_eq!(v.command(&id), want.as_ref(), "command {}", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// See [`view_is_store`].
    #[test]
    fn the_view_is_the_store(steps in steps()) {
        view_is_store(&Backend::sqlite(), &steps)?;
    }
}

proptest! {
    // Fewer cases: each is a database, and every step reads the whole
    // store back over the network.
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The same on PostgreSQL (a fresh database per case).
    #[test]
    fn the_view_is_the_store_on_postgres(steps in steps()) {
        if let Some(b) = Backend::postgres() {
            view_is_store(&b, &steps)?;
        }
    }
}

type Steps = Vec<Vec<Closure>>;

fn steps() -> impl Strategy<Value = Steps> {
    proptest::collection::vec(
        proptest::collection::vec(
            (
                proptest::collection::vec(op(), 1..5),
                proptest::bool::weighted(0.25),
            ),
            1..4,
        ),
        1..25,
    )
}

/// After any sequence of changes, committed alone or as group commits in
/// which some closures fail midway, the view is the store (every map,
/// index, command row and desired version); and a reopened store loads the
/// same view.
fn view_is_store(b: &Backend, steps: &Steps) -> Result<(), TestCaseError> {
    let s = b.open();
    let ids = Ids::default();
    for closures in steps {
        if let [one] = closures.as_slice() {
            let r = s.write_sync(|t| run_closure(t, one, &ids));
            prop_assert_eq!(r.is_err(), one.1);
        } else {
            let fs: Vec<TestWrite<'_>> = closures
                .iter()
                .map(|c| {
                    let ids = &ids;
                    Box::new(move |t: &mut Txn<'_>| run_closure(t, c, ids)) as Box<_>
                })
                .collect();
            let out = s.write_group_for_test(fs);
            for (r, c) in out.iter().zip(closures) {
                prop_assert_eq!(r.is_err(), c.1, "{:?}", r);
            }
        }
        check(&s)?;
    }
    let before = s.view().clone();
    drop(s);
    let s = b.open();
    prop_assert_eq!(&*s.view(), &before);
    check(&s)
}

backend_tests! {
    /// Run the same changes one closure at a time and as one group commit with
    /// a failing closure in the middle: the group leaves what the successful
    /// closures alone leave, and emits their events only.
    fn a_failing_closure_in_a_group_changes_nothing(b) {
        let s = b.open();
        let mut rx = s.subscribe();
        let mut drx = s.subscribe_desired();
        let fs: Vec<TestWrite<'static>> = vec![
            Box::new(|t| t.insert(node("a", 1)).map(|_| ())),
            Box::new(|t| {
                t.insert(node("bad", 1))?;
                t.insert_command("n1", &cmd("c-bad", "d1"))?;
                Err(StoreError::Join("no".into()))
            }),
            Box::new(|t| {
                t.insert(node("b", 1))?;
                t.insert_command("n1", &cmd("c1", "d1")).map(|_| ())
            }),
        ];
        let out = s.write_group_for_test(fs);
        assert!(out[0].is_ok() && out[1].is_err() && out[2].is_ok(), "{out:?}");
        let names: Vec<String> = s
            .write_sync(|t| t.list(Kind::Node))
            .unwrap()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(s.write_sync(|t| t.command("c-bad")).unwrap().is_none());
        // Revisions stay dense and in order: the failed closure's were reused.
        let revs: Vec<(u64, String)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.resource_version, e.resource.unwrap().name().to_string()))
            .collect();
        assert_eq!(revs, [(1, "a".to_string()), (2, "b".to_string())]);
        assert_eq!(
            drx.try_recv().unwrap(),
            DesiredChanged {
                node: "n1".into(),
                version: 3
            }
        );
        assert!(drx.try_recv().is_err());
        assert_eq!(s.view().revision(), 3);
        assert!(s.view().command("c-bad").is_none());
        assert_eq!(s.view().open_commands("n1").len(), 1);
        let fresh = s.write_sync(|t| View::load(t)).unwrap();
        assert_eq!(*s.view(), fresh);
    }
}

backend_tests! {
    /// A commit that fails fails every caller of its batch: nothing is kept,
    /// nothing is announced.
    fn a_failed_commit_fails_the_whole_batch(b) {
        let s = b.open();
        s.write_sync(|t| t.insert(node("before", 1))).unwrap();
        let mut rx = s.subscribe();
        let view_before = s.view().clone();
        let fs: Vec<TestWrite<'static>> = vec![
            Box::new(|t| t.insert(node("a", 1)).map(|_| ())),
            // A deferred foreign key violated: only COMMIT notices.
            Box::new(|t| {
                t.batch(
                    "CREATE TEMP TABLE p (id INTEGER PRIMARY KEY);
                     CREATE TEMP TABLE c (x INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);
                     INSERT INTO c VALUES (1);",
                )?;
                Ok(())
            }),
            Box::new(|t| t.insert_command("n1", &cmd("c1", "d1")).map(|_| ())),
        ];
        let out = s.write_group_for_test(fs);
        assert!(out.iter().all(|r| r.is_err()), "{out:?}");
        assert!(s.write_sync(|t| t.get(Kind::Node, "a")).unwrap().is_none());
        assert!(s.write_sync(|t| t.command("c1")).unwrap().is_none());
        assert_eq!(s.write_sync(|t| t.revision()).unwrap(), 1);
        assert!(rx.try_recv().is_err());
        assert_eq!(*s.view(), view_before);
        // The store goes on.
        s.write_sync(|t| t.insert(node("after", 1))).unwrap();
        assert_eq!(s.view().revision(), 2);
    }
}

backend_tests! {
    /// Writes queued while a transaction runs commit together, in one
    /// transaction; a failing or panicking one among them changes nothing and
    /// the others still commit, with their events in revision order.
    async fn queued_writes_commit_in_one_transaction(b) {
        let s = b.open();
        const N: usize = 20;
        let mut rx = s.subscribe();
        // Hold the writer with a synchronous write on another thread.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.write_sync(|t| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    t.insert(node("held", 0))
                })
            })
        };
        entered_rx.recv().unwrap();
        let before = s.stats();
        let mut tasks = Vec::new();
        for i in 0..N {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.write(move |t| -> Result<u64, StoreError> {
                    let r = t.insert(node(&format!("w{i:02}"), 0))?;
                    match i {
                        3 => Err(StoreError::Join("refused".into())),
                        7 => panic!("a bug in one write"),
                        _ => Ok(r.resource_version()),
                    }
                })
                .await
            }));
        }
        while s.queued_for_test() < N {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        holder.join().unwrap().unwrap();
        let mut ok = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match (i, task.await.unwrap()) {
                (3, Err(e)) => assert!(e.to_string().contains("refused"), "{e}"),
                (7, Err(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
                (i, Ok(rev)) => ok.push((i, rev)),
                (i, r) => panic!("write {i}: {r:?}"),
            }
        }
        assert_eq!(ok.len(), N - 2);
        assert_eq!(
            s.stats().transactions - before.transactions,
            2,
            "the held write and one batch of {N}"
        );
        // Queue order is revision order.
        assert!(ok.windows(2).all(|w| w[0].1 < w[1].1), "{ok:?}");
        let names: Vec<String> = s
            .read(|t| t.list(Kind::Node))
            .await
            .unwrap()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert!(!names.contains(&"w03".to_string()) && !names.contains(&"w07".to_string()));
        assert_eq!(names.len(), N - 2 + 1);
        let mut revs = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            assert_eq!(ev.r#type, EventType::Added as i32);
            revs.push(ev.resource_version);
        }
        assert_eq!(revs.len(), N - 2 + 1);
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        assert_eq!(s.view().nodes.len(), N - 2 + 1);
        // The writer is not stuck after the panic.
        s.write(|t| t.insert(node("later", 0))).await.unwrap();
        assert!(s.view().nodes.contains_key("later"));
    }
}

/// A store of `nodes` nodes, each with 2 Devices and 2 Dpus.
fn fleet(nodes: usize) -> Store {
    let s = Store::in_memory().unwrap();
    s.write_sync(|t| -> Result<(), StoreError> {
        for n in 0..nodes {
            let name = format!("node-{n:04}");
            t.insert(node(&name, 0))?;
            for i in 0..2 {
                t.insert(device(&format!("dev-{n:04}-{i}"), &name))?;
                t.insert(dpu(&format!("dpu-{n:04}-{i}"), &name, "dep", 1))?;
            }
        }
        Ok(())
    })
    .unwrap();
    s
}

/// Rows read by one read transaction.
fn rows_read<T>(s: &Store, f: impl FnOnce(&mut Txn<'_>) -> Result<T, StoreError>) -> u64 {
    let before = s.stats().rows_read;
    s.write_sync(f).unwrap();
    s.stats().rows_read - before
}

/// Listing one node's Devices and Dpus (an agent's Hello) reads as many
/// rows in a store of 2,000 nodes as in one of 100; a whole-kind listing
/// (which the counter must see grow) does not.
#[test]
fn list_on_node_reads_the_same_rows_whatever_the_fleet() {
    let small = fleet(100);
    let large = fleet(2000);
    for kind in [Kind::Dpu, Kind::Device] {
        let n = |s: &Store| {
            rows_read(s, |t| {
                let got = t.list_on_node(kind, "node-0042")?;
                assert_eq!(got.len(), 2);
                Ok(())
            })
        };
        let (a, b) = (n(&small), n(&large));
        assert!(a > 0);
        assert_eq!(a, b, "{kind:?}: rows read with 100 nodes vs 2,000");
    }
    let list = |s: &Store| rows_read(s, |t| t.list(Kind::Dpu));
    assert!(list(&large) > 10 * list(&small));
}

/// A store written by schema 2 gets the indexed node column, filled from
/// the bodies; lookups use the index.
#[test]
fn a_schema_2_store_migrates_to_the_node_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'revision'", [])
            .unwrap();
        let rows = [
            node("n1", 0),
            device("v1", "n1"),
            dpu("d1", "n1", "dep", 1),
            dpu("d2", "n2", "dep", 1),
            dpu("d0", "", "dep", 1),
        ];
        for (rv, r) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO resources (kind, name, resource_version, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    r.kind().noun(),
                    r.name(),
                    rv as i64,
                    serde_json::to_string(r).unwrap()
                ],
            )
            .unwrap();
        }
    }
    let s = Store::open(&path).unwrap();
    let names = |kind, n: &'static str| -> Vec<String> {
        s.write_sync(|t| t.list_on_node(kind, n))
            .unwrap()
            .iter()
            .map(|r| r.name().to_string())
            .collect()
    };
    assert_eq!(names(Kind::Dpu, "n1"), ["d1"]);
    assert_eq!(names(Kind::Dpu, "n2"), ["d2"]);
    assert_eq!(names(Kind::Device, "n1"), ["v1"]);
    assert!(names(Kind::Dpu, "").is_empty(), "no node is no row, as before");
    assert!(names(Kind::Node, "n1").is_empty());
    assert_eq!(s.view().dpus_on_node("n1").count(), 1);
    assert_eq!(s.view().revision(), 4);
    // A Dpu moved by a later write moves in the column too.
    let mut d2 = s.write_sync(|t| t.get(Kind::Dpu, "d2")).unwrap().unwrap();
    if let Some(v1::resource::Kind::Dpu(d)) = &mut d2.kind {
        d.spec.as_mut().unwrap().node = "n1".into();
    }
    s.write_sync(move |t| t.update(d2)).unwrap();
    assert_eq!(names(Kind::Dpu, "n1"), ["d1", "d2"]);
    assert!(names(Kind::Dpu, "n2").is_empty());
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, super::schema::SCHEMA_VERSION);
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT name, body FROM resources WHERE kind = 'dpu' AND node = 'n1' ORDER BY name",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("resources_node"), "{plan}");
}

/// Finding the Devices with a serial (creating a Device checks it) goes
/// through the serial index of schema 4: as many rows read in a store of
/// 2,000 nodes as in one of 100.
#[test]
fn devices_with_serial_reads_the_same_rows_whatever_the_fleet() {
    let with_serials = |nodes: usize| {
        let s = fleet(nodes);
        s.write_sync(|t| -> Result<(), StoreError> {
            for n in 0..nodes {
                for i in 0..2 {
                    let name = format!("dev-{n:04}-{i}");
                    let Some(mut r) = t.get(Kind::Device, &name)? else {
                        continue;
                    };
                    if let Some(v1::resource::Kind::Device(d)) = r.kind.as_mut() {
                        d.spec.get_or_insert_default().serial = format!("SN{n:04}{i}");
                    }
                    t.update(r)?;
                }
            }
            Ok(())
        })
        .unwrap();
        s
    };
    let (small, large) = (with_serials(100), with_serials(2000));
    let find = |s: &Store, serial: &'static str, want: &'static [&'static str]| {
        rows_read(s, move |t| {
            let got: Vec<String> = t
                .devices_with_serial(serial)?
                .iter()
                .map(|r| r.name().to_string())
                .collect();
            assert_eq!(got, want, "devices with serial {serial}");
            Ok(())
        })
    };
    let (a, b) = (
        find(&small, "SN00421", &["dev-0042-1"]),
        find(&large, "SN00421", &["dev-0042-1"]),
    );
    assert!(a > 0);
    assert_eq!(a, b, "rows read with 100 nodes vs 2,000");
    assert_eq!(find(&small, "SN9999", &[]), find(&large, "SN9999", &[]));
}
