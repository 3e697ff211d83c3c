//! `hostplane_coordinator_watch_subscribers` counts the Watch streams open
//! now: up when a Watch is accepted, down when its client goes away or the
//! coordinator shuts down. One test in its own binary: the gauge is
//! process-wide.
mod api_common;

use std::time::Duration;

use api_common::*;
use hostplane_coordinator::metrics::hub;
use hostplane_proto::v1::{Kind, WatchRequest};

/// Guards against a hang only: the watch task ends as soon as it sees the close.
const HANG: Duration = Duration::from_secs(20);

async fn until_subscribers(n: i64) {
    let waited = tokio::time::timeout(HANG, async {
        while hub().watch_subscribers.get() != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "watch_subscribers stayed {} (expected {n})",
        hub().watch_subscribers.get()
    );
}

#[tokio::test]
async fn the_gauge_follows_watches_opened_closed_and_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    assert_eq!(hub().watch_subscribers.get(), 0);
    let req = |kind: Kind| WatchRequest {
        kinds: vec![kind as i32],
        from_version: 0,
        name: String::new(),
    };
    let first = c.watch(req(Kind::Dpu)).await.unwrap().into_inner();
    assert_eq!(
        hub().watch_subscribers.get(),
        1,
        "counted once the call is answered"
    );
    let _second = c.watch(req(Kind::Node)).await.unwrap().into_inner();
    assert_eq!(hub().watch_subscribers.get(), 2);
    // A refused Watch is never counted.
    let refused = c.watch(WatchRequest {
        from_version: u64::MAX,
        ..req(Kind::Dpu)
    });
    assert!(refused.await.is_err(), "a version from the future is refused");
    assert_eq!(hub().watch_subscribers.get(), 2);
    drop(first);
    until_subscribers(1).await;
    srv.stop().await;
    until_subscribers(0).await;
}
