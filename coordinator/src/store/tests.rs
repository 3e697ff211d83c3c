use hostplane_proto::v1::{
    self, Command, CommandOutcome, CommandResult, EventType, Kind, ObjectMeta, Resource,
};

use super::test_backend::backend_tests;
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

fn cmd(id: &str, dpu: &str) -> Command {
    Command {
        id: id.into(),
        dpu: dpu.into(),
        rshim: "rshim0".into(),
        action: None,
    }
}

backend_tests! {
    async fn revisions_grow_and_events_follow(b) {
        let s = b.open();
        let mut rx = s.subscribe();
        let a = s.write(|t| t.insert(node("a"))).await.unwrap();
        let b = s.write(|t| t.insert(node("b"))).await.unwrap();
        assert!(b.resource_version() > a.resource_version());
        assert_eq!(a.metadata().unwrap().generation, 1);
        assert!(a.metadata().unwrap().created_at_ms > 0);
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.r#type, EventType::Added as i32);
        assert_eq!(ev.resource.unwrap().name(), "a");

        let mut a2 = a.clone();
        a2.metadata_mut().unwrap().labels.insert("x".into(), "y".into());
        let a2 = s.write(move |t| t.update(a2)).await.unwrap();
        assert!(a2.resource_version() > b.resource_version());
        let gone = s.write(|t| t.delete(Kind::Node, "a")).await.unwrap().unwrap();
        assert!(gone.resource_version() > a2.resource_version());
        assert!(s.read(|t| t.get(Kind::Node, "a")).await.unwrap().is_none());
        let names: Vec<String> = s
            .read(|t| t.list(Kind::Node))
            .await
            .unwrap()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert_eq!(names, ["b"]);

        let hist = s.events_since(a.resource_version(), vec![], 100).await.unwrap();
        let types: Vec<i32> = hist.iter().map(|e| e.r#type).collect();
        assert_eq!(
            types,
            [
                EventType::Added as i32,
                EventType::Modified as i32,
                EventType::Deleted as i32
            ]
        );
        let only_dpus = s.events_since(0, vec![Kind::Dpu], 100).await.unwrap();
        assert!(only_dpus.is_empty());
    }
}

backend_tests! {
    async fn failed_transaction_changes_nothing_and_emits_nothing(b) {
        let s = b.open();
        let mut rx = s.subscribe();
        let r: Result<(), StoreError> = s
            .write(|t| {
                t.insert(node("a"))?;
                Err(StoreError::Join("boom".into()))
            })
            .await;
        assert!(r.is_err());
        assert!(s.read(|t| t.get(Kind::Node, "a")).await.unwrap().is_none());
        assert_eq!(s.read(|t| t.revision()).await.unwrap(), 0);
        assert!(rx.try_recv().is_err());
    }
}

backend_tests! {
    fn a_reopened_store_has_what_was_committed(b) {
        let (rev, view) = {
            let s = b.open();
            s.write_sync(|t| t.insert(node("n1"))).unwrap();
            s.write_sync(|t| t.insert_command("n1", &cmd("c1", "d1"))).unwrap();
            (s.write_sync(|t| t.revision()).unwrap(), s.view().clone())
        };
        let s = b.open();
        assert_eq!(s.write_sync(|t| t.revision()).unwrap(), rev);
        assert_eq!(*s.view(), view);
        let n = s.write_sync(|t| t.get(Kind::Node, "n1")).unwrap().unwrap();
        assert_eq!(n.name(), "n1");
        assert_eq!(s.write_sync(|t| t.open_commands("n1")).unwrap().len(), 1);
    }
}

#[test]
fn store_survives_reopen_and_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/c.db");
    {
        let s = Store::open(&path).unwrap();
        s.write_sync(|t| t.insert(node("n1"))).unwrap();
        s.write_sync(|t| t.insert_command("n1", &cmd("c1", "d1")))
            .unwrap();
    }
    let s = Store::open(&path).unwrap();
    let n = s.write_sync(|t| t.get(Kind::Node, "n1")).unwrap().unwrap();
    assert_eq!(n.name(), "n1");
    assert_eq!(s.write_sync(|t| t.open_commands("n1")).unwrap().len(), 1);
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = Store::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::SchemaTooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade the coordinator"));
}

backend_tests! {
    async fn commands_make_the_desired_state(b) {
        let s = b.open();
        let mut drx = s.subscribe_desired();
        let v1 = s
            .write(|t| t.insert_command("n1", &cmd("c1", "d1")))
            .await
            .unwrap();
        let v2 = s
            .write(|t| t.insert_command("n1", &cmd("c2", "d2")))
            .await
            .unwrap();
        assert!(v2 > v1);
        assert_eq!(
            drx.recv().await.unwrap(),
            DesiredChanged {
                node: "n1".into(),
                version: v1
            }
        );
        assert_eq!(s.read(|t| t.desired_version("n1")).await.unwrap(), v2);
        assert_eq!(s.read(|t| t.desired_version("other")).await.unwrap(), 0);

        let ok = CommandResult {
            outcome: CommandOutcome::Succeeded as i32,
            message: "done".into(),
            finished_at_ms: 5,
            power_cycle_required: true,
        };
        let first = s.write(move |t| t.finish_command("c1", &ok)).await.unwrap();
        assert!(first);
        let again = CommandResult {
            outcome: CommandOutcome::Failed as i32,
            message: "late".into(),
            finished_at_ms: 9,
            power_cycle_required: false,
        };
        let second = s.write(move |t| t.finish_command("c1", &again)).await.unwrap();
        assert!(!second, "a repeated result is ignored");
        let row = s.read(|t| t.command("c1")).await.unwrap().unwrap();
        let r = row.result.unwrap();
        assert_eq!(r.message, "done");
        assert!(r.power_cycle_required, "the result's power_cycle_required is kept");
        let loaded = s.read(|t| t.all_commands()).await.unwrap();
        let c1 = loaded.iter().find(|c| c.command.id == "c1").unwrap();
        assert!(c1.result.as_ref().unwrap().power_cycle_required);
        let open: Vec<String> = s
            .read(|t| t.open_commands("n1"))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(open, ["c2"]);
        assert!(s.read(|t| t.desired_version("n1")).await.unwrap() > v2);

        let ids = s
            .write(|t| t.cancel_commands_for_dpu("d2", "dpu deleted"))
            .await
            .unwrap();
        assert_eq!(ids, ["c2"]);
        assert!(s.read(|t| t.open_commands("n1")).await.unwrap().is_empty());
        let row = s.read(|t| t.command("c2")).await.unwrap().unwrap();
        assert_eq!(row.result.unwrap().outcome, CommandOutcome::Cancelled as i32);
    }
}

backend_tests! {
    async fn touching_the_desired_state_gives_a_new_version_without_commands(b) {
        let s = b.open();
        let mut drx = s.subscribe_desired();
        let v1 = s
            .write(|t| t.insert_command("n1", &cmd("c1", "d1")))
            .await
            .unwrap();
        let v2 = s.write(|t| t.touch_desired("n1")).await.unwrap();
        assert!(v2 > v1);
        assert_eq!(s.read(|t| t.desired_version("n1")).await.unwrap(), v2);
        assert_eq!(drx.recv().await.unwrap().version, v1);
        assert_eq!(
            drx.recv().await.unwrap(),
            DesiredChanged {
                node: "n1".into(),
                version: v2
            }
        );
        let open = s.read(|t| t.open_commands("n1")).await.unwrap();
        assert_eq!(open.len(), 1, "touching changes no command");
        // Two touches in one transaction announce only the last version.
        let v3 = s
            .write(|t| {
                t.touch_desired("n2")?;
                t.touch_desired("n2")
            })
            .await
            .unwrap();
        assert_eq!(
            drx.recv().await.unwrap(),
            DesiredChanged {
                node: "n2".into(),
                version: v3
            }
        );
        assert!(drx.try_recv().is_err());
    }
}

backend_tests! {
    async fn old_history_is_pruned_and_too_old_watch_is_refused(b) {
        let s = b.open();
        for i in 0..5 {
            s.write(move |t| t.insert(node(&format!("n{i}")))).await.unwrap();
        }
        // Prune by hand through a tiny retention.
        s.write(|t| t.commit_retention_for_test(2)).await.unwrap();
        let e = s.events_since(1, vec![], 10).await.unwrap_err();
        assert!(matches!(e, StoreError::TooOld { requested: 1, .. }), "{e}");
        assert_eq!(s.events_since(4, vec![], 10).await.unwrap().len(), 1);
        // Watching from the current revision is always fine.
        assert!(s.events_since(5, vec![], 10).await.unwrap().is_empty());
    }
}

backend_tests! {
    async fn list_on_node_filters_by_spec_node(b) {
        let s = b.open();
        let dev = |name: &str, node: &str| -> Resource {
            v1::Device {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                spec: Some(v1::DeviceSpec {
                    node: node.into(),
                    ..Default::default()
                }),
                status: None,
            }
            .into()
        };
        s.write(move |t| {
            t.insert(dev("b", "n1"))?;
            t.insert(dev("a", "n1"))?;
            t.insert(dev("c", "n2"))?;
            t.insert(node("n1"))
        })
        .await
        .unwrap();
        let names = |v: Vec<Resource>| v.iter().map(|r| r.name().to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(s.read(|t| t.list_on_node(Kind::Device, "n1")).await.unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            names(s.read(|t| t.list_on_node(Kind::Device, "n2")).await.unwrap()),
            ["c"]
        );
        assert!(
            s.read(|t| t.list_on_node(Kind::Dpu, "n1"))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// A store written by schema 1 whose history was already pruned: after the
/// migration it serves snapshots it can prove (and the current state), and
/// refuses, rather than guesses, one that needs an object's pruned past.
#[test]
fn a_pruned_schema_1_store_migrates_and_refuses_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let body = |name: &str, rv: u64, v: &str| {
        let mut r = node(name);
        let m = r.metadata_mut().unwrap();
        m.resource_version = rv;
        m.labels.insert("v".into(), v.into());
        serde_json::to_string(&r).unwrap()
    };
    {
        // Revision 10: "a" created at 2 (event pruned) and changed at 8
        // (event kept); "b" created at 3 (event pruned), unchanged since.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("UPDATE meta SET value = 10 WHERE key = 'revision'", [])
            .unwrap();
        for (name, rv, v) in [("a", 8, "2"), ("b", 3, "1")] {
            conn.execute(
                "INSERT INTO resources (kind, name, resource_version, body) VALUES ('node', ?1, ?2, ?3)",
                rusqlite::params![name, rv, body(name, rv, v)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO events (revision, kind, name, type, body) VALUES (8, 'node', 'a', ?1, ?2)",
            rusqlite::params![EventType::Modified as i32, body("a", 8, "2")],
        )
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    let all = PageLimit {
        items: 100,
        bytes: usize::MAX,
    };
    let names_at = |at: u64| -> Result<Vec<(String, String)>, StoreError> {
        let page = s.write_sync(|t| t.list_page(Kind::Node, at, "", all, &|_| true))?;
        Ok(page
            .items
            .iter()
            .map(|r| (r.name().to_string(), r.metadata().unwrap().labels["v"].clone()))
            .collect())
    };
    assert_eq!(s.write_sync(|t| t.history_floor()).unwrap(), 7);
    let now = vec![("a".to_string(), "2".to_string()), ("b".into(), "1".into())];
    assert_eq!(names_at(10).unwrap(), now);
    assert_eq!(names_at(8).unwrap(), now);
    // At 7 "a" was as its pruned event 2 left it: not kept, so refused.
    assert!(matches!(names_at(7), Err(StoreError::SnapshotGone { at: 7, .. })));
    assert!(matches!(
        names_at(6),
        Err(StoreError::SnapshotGone { at: 6, floor: 7 })
    ));

    // A change to "b", whose own history is gone, keeps its earlier state.
    let mut b = s.write_sync(|t| t.get(Kind::Node, "b")).unwrap().unwrap();
    b.metadata_mut().unwrap().labels.insert("v".into(), "9".into());
    s.write_sync(move |t| t.update(b)).unwrap();
    assert_eq!(
        names_at(10).unwrap(),
        now,
        "the snapshot at 10 still has the old b"
    );
    assert_eq!(
        names_at(11).unwrap(),
        vec![("a".to_string(), "2".to_string()), ("b".into(), "9".into())]
    );
}
