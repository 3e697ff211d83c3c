//! Watch: snapshot then live changes, resumption from a version, history
//! limits, catching up after falling behind, and shutdown.
mod api_common;

use std::time::Duration;

use api_common::*;
use hostplane_proto::v1::{
    DeleteRequest, EventType, Kind, ListRequest, Resource, UpdateRequest, WatchEvent, WatchRequest,
};
use tonic::{Code, Streaming};

/// Guards against a hang only; the events are expected at once.
const HANG: Duration = Duration::from_secs(20);

async fn next(s: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(HANG, s.message())
        .await
        .expect("no event (hang)")
        .expect("stream error")
        .expect("stream ended")
}

fn watch(kinds: &[Kind], from_version: u64, name: &str) -> WatchRequest {
    WatchRequest {
        kinds: kinds.iter().map(|k| *k as i32).collect(),
        from_version,
        name: name.into(),
    }
}

/// (type, kind, name) of an event, for comparisons.
fn sig(ev: &WatchEvent) -> (EventType, Kind, String) {
    let r = ev.resource.as_ref().expect("event carries the resource");
    (
        EventType::try_from(ev.r#type).unwrap(),
        r.kind(),
        r.name().to_string(),
    )
}

fn s(t: EventType, k: Kind, n: &str) -> (EventType, Kind, String) {
    (t, k, n.to_string())
}

async fn relabel(c: &mut Client, kind: Kind, name: &str, value: &str) -> Resource {
    let mut r = c
        .get(hostplane_proto::v1::GetRequest {
            kind: kind as i32,
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.metadata_mut().unwrap().labels.insert("v".into(), value.into());
    c.update(UpdateRequest {
        resource: Some(r),
        update_mask: None,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn from_zero_sends_the_state_then_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    let rev = c
        .list(ListRequest {
            kind: Kind::Node as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut w = c
        .watch(watch(&[Kind::Node, Kind::Device], 0, ""))
        .await
        .unwrap()
        .into_inner();
    let mut snap = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut w).await;
        assert_eq!(
            ev.resource_version, rev.resource_version,
            "snapshot events carry the snapshot's version"
        );
        snap.push(sig(&ev));
    }
    assert_eq!(
        snap,
        [
            s(EventType::Added, Kind::Node, "n1"),
            s(EventType::Added, Kind::Device, "d1"),
            s(EventType::Added, Kind::Device, "d2")
        ]
    );

    create(&mut c, bfb("b2")).await; // another kind: filtered out
    let n2 = create(&mut c, node("n2")).await;
    let n1 = relabel(&mut c, Kind::Node, "n1", "x").await;
    let del = DeleteRequest {
        kind: Kind::Device as i32,
        name: "d2".into(),
        ..Default::default()
    };
    c.delete(del).await.unwrap();

    let ev = next(&mut w).await;
    assert_eq!(sig(&ev), s(EventType::Added, Kind::Node, "n2"));
    assert_eq!(ev.resource_version, n2.resource_version());
    let ev = next(&mut w).await;
    assert_eq!(sig(&ev), s(EventType::Modified, Kind::Node, "n1"));
    assert_eq!(ev.resource, Some(n1));
    assert_eq!(
        sig(&next(&mut w).await),
        s(EventType::Deleted, Kind::Device, "d2")
    );
    srv.stop().await;
}

#[tokio::test]
async fn resume_after_reconnect_gets_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, node("n1")).await;

    let mut w = c.watch(watch(&[], 0, "")).await.unwrap().into_inner();
    assert_eq!(sig(&next(&mut w).await), s(EventType::Added, Kind::Node, "n1"));
    create(&mut c, node("n2")).await;
    let seen = next(&mut w).await;
    assert_eq!(sig(&seen), s(EventType::Added, Kind::Node, "n2"));
    drop(w); // the client goes away

    create(&mut c, bfb("b1")).await;
    relabel(&mut c, Kind::Node, "n1", "1").await;
    c.delete(DeleteRequest {
        kind: Kind::Node as i32,
        name: "n2".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut w = c
        .watch(watch(&[], seen.resource_version, ""))
        .await
        .unwrap()
        .into_inner();
    let mut missed = Vec::new();
    let mut last = seen.resource_version;
    for _ in 0..3 {
        let ev = next(&mut w).await;
        assert!(ev.resource_version > last, "versions grow");
        last = ev.resource_version;
        missed.push(sig(&ev));
    }
    assert_eq!(
        missed,
        [
            s(EventType::Added, Kind::Bfb, "b1"),
            s(EventType::Modified, Kind::Node, "n1"),
            s(EventType::Deleted, Kind::Node, "n2")
        ]
    );
    // And then live, with nothing repeated in between.
    create(&mut c, node("n3")).await;
    assert_eq!(sig(&next(&mut w).await), s(EventType::Added, Kind::Node, "n3"));

    // Name filter over history.
    let mut only_n1 = c
        .watch(watch(&[Kind::Node], seen.resource_version, "n1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sig(&next(&mut only_n1).await),
        s(EventType::Modified, Kind::Node, "n1")
    );
    relabel(&mut c, Kind::Node, "n3", "x").await;
    relabel(&mut c, Kind::Node, "n1", "2").await;
    let ev = next(&mut only_n1).await;
    assert_eq!(sig(&ev), s(EventType::Modified, Kind::Node, "n1"));
    assert_eq!(ev.resource.unwrap().metadata().unwrap().labels["v"], "2");
    srv.stop().await;
}

#[tokio::test]
async fn versions_outside_the_history_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let srv = start(&path).await;
    let mut c = srv.client().await;
    for i in 0..5 {
        create(&mut c, node(&format!("n{i}"))).await;
    }
    // Drop the oldest history, as retention would (the same statement on
    // either engine, from outside the coordinator).
    backend::execute_at(&path, "DELETE FROM events WHERE revision <= 3");

    let e = c.watch(watch(&[], 1, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message().starts_with("watch from version 1 is too old"),
        "{}",
        e.message()
    );
    let e = c.watch(watch(&[], 99, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message().contains("ahead of the store (version 5)"),
        "{}",
        e.message()
    );
    let e = c.watch(watch(&[Kind::Unspecified], 0, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("kinds[0]: required"), "{}", e.message());
    // From the oldest retained version it works.
    let mut w = c.watch(watch(&[], 3, "")).await.unwrap().into_inner();
    assert_eq!(sig(&next(&mut w).await), s(EventType::Added, Kind::Node, "n3"));
    srv.stop().await;
}

#[tokio::test]
async fn a_watcher_that_falls_behind_catches_up_from_history() {
    const N: usize = 10_000; // more than the live feed buffers (4096)
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    let start_rev = create(&mut c, node("n0")).await.resource_version();
    let mut w = c
        .watch(watch(&[Kind::Bfb], start_rev, ""))
        .await
        .unwrap()
        .into_inner();

    // One transaction: the events reach the live feed all at once, while the
    // client is not reading.
    srv.store
        .write(|t| {
            for i in 0..N {
                t.insert(bfb(&format!("b{i}")).into())?;
            }
            Ok::<_, hostplane_coordinator::store::StoreError>(())
        })
        .await
        .unwrap();
    create(&mut c, bfb("last")).await;

    let mut last = start_rev;
    for i in 0..N {
        let ev = next(&mut w).await;
        assert_eq!(ev.resource_version, last + 1, "event {i}: no gap, no repeat");
        last = ev.resource_version;
        assert_eq!(sig(&ev), s(EventType::Added, Kind::Bfb, &format!("b{i}")));
    }
    assert_eq!(sig(&next(&mut w).await), s(EventType::Added, Kind::Bfb, "last"));
    srv.stop().await;
}

#[tokio::test]
async fn open_watches_end_when_the_coordinator_stops() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, node("n1")).await;
    let mut w = c.watch(watch(&[], 0, "")).await.unwrap().into_inner();
    next(&mut w).await;
    srv.stop().await;
    match tokio::time::timeout(HANG, w.message())
        .await
        .expect("stream still open after stop")
    {
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), "coordinator is shutting down");
        }
        Ok(None) => {}
        Ok(Some(ev)) => panic!("unexpected event {ev:?}"),
    }
}
