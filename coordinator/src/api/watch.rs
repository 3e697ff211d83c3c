//! Watch: the current state or the retained history, then live changes.
//!
//! The broadcast is subscribed to *before* the snapshot or history is read,
//! and events are deduplicated by revision, so nothing falls between the two.
//! The broadcast carries each event as one `Arc` that every watcher shares
//! (and the store's watch cache too): the filter is checked on it and only a
//! matching event is copied, once, to be sent. A watcher that falls behind
//! the broadcast (`Lagged`) catches up from the store's watch cache in
//! memory, and reads the store's history (SQLite) only when the cache no
//! longer reaches back, instead of losing events. The work stops when the
//! client goes away or the coordinator shuts down.
use std::sync::Arc;

use hostplane_proto::v1::{EventType, Kind, WatchEvent, WatchRequest};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::error::ApiError;
use super::{AdminApi, validate};
use crate::store::Store;

/// History events read per store transaction.
const PAGE: usize = 1000;
/// Events buffered per watcher before the sender waits for the client.
const BUFFER: usize = 256;

pub type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

#[derive(Debug, Clone)]
struct Filter {
    kinds: Vec<Kind>,
    name: String,
}

impl Filter {
    fn matches(&self, ev: &WatchEvent) -> bool {
        let Some(r) = &ev.resource else { return false };
        (self.kinds.is_empty() || self.kinds.contains(&r.kind()))
            && (self.name.is_empty() || r.name() == self.name)
    }
}

impl AdminApi {
    pub(super) async fn watch_resources(&self, req: WatchRequest) -> Result<WatchStream, ApiError> {
        let mut kinds = Vec::new();
        for (i, k) in req.kinds.iter().enumerate() {
            kinds.push(validate::kind(&format!("kinds[{i}]"), *k)?);
        }
        if !req.name.is_empty() {
            validate::name("name", &req.name)?;
        }
        let filter = Filter {
            kinds,
            name: req.name,
        };
        // Subscribe first: whatever commits after this point reaches us.
        let live = self.store.subscribe_shared();
        let mut w = Watcher {
            store: self.store.clone(),
            shutdown: self.shutdown.clone(),
            filter,
            last: 0,
            tx: None,
            _counted: Subscribed::new(),
        };
        // Errors (too old, ahead of the store) are the call's error, not the stream's.
        let start = if req.from_version == 0 {
            Start::Snapshot(w.snapshot().await?)
        } else {
            w.last = req.from_version;
            Start::History(w.history_page(false).await?)
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        w.tx = Some(tx);
        let span = tracing::info_span!("watch", kinds = ?w.filter.kinds, name = %w.filter.name, from_version = req.from_version);
        tokio::spawn(w.run(start, live).instrument(span));
        Ok(ReceiverStream::new(rx))
    }
}

enum Start {
    /// ADDED events of the current state, at `last`.
    Snapshot(Vec<WatchEvent>),
    /// The first page of history.
    History(Page),
}

/// Events after some revision, from the watch cache or read in one transaction.
struct Page {
    events: Vec<Arc<WatchEvent>>,
    /// The page is full: there may be more after its last event.
    more: bool,
    /// The store's revision when the page was read: when `more` is false,
    /// every event up to it was in the page.
    upto: u64,
}

/// Counts one running watch in the `watch_subscribers` gauge, until dropped.
struct Subscribed;

impl Subscribed {
    fn new() -> Subscribed {
        crate::metrics::hub().watch_subscribers.inc();
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        crate::metrics::hub().watch_subscribers.dec();
    }
}

struct Watcher {
    store: Store,
    shutdown: CancellationToken,
    filter: Filter,
    /// Revision of the newest event handled (sent or filtered out).
    last: u64,
    tx: Option<mpsc::Sender<Result<WatchEvent, Status>>>,
    /// In `watch_subscribers` from the call until the watch ends.
    _counted: Subscribed,
}

impl Watcher {
    /// Every matching object as ADDED, stamped with the snapshot's revision
    /// (so any event's resource_version is a valid point to resume from).
    async fn snapshot(&mut self) -> Result<Vec<WatchEvent>, ApiError> {
        let filter = self.filter.clone();
        let (rev, events) = self
            .store
            .read_snapshot(move |t| {
                let rev = t.revision()?;
                let kinds = if filter.kinds.is_empty() {
                    Kind::ALL.to_vec()
                } else {
                    filter.kinds.clone()
                };
                let mut out = Vec::new();
                for k in kinds {
                    for r in t.list(k)? {
                        let ev = WatchEvent {
                            r#type: EventType::Added as i32,
                            resource_version: rev,
                            resource: Some(r),
                        };
                        if filter.matches(&ev) {
                            out.push(ev);
                        }
                    }
                }
                Ok::<_, ApiError>((rev, out))
            })
            .await?;
        self.last = rev;
        Ok(events)
    }

    /// The next page of history after `last`: with `cache`, from the
    /// store's watch cache when it reaches back that far (no store read);
    /// else from the history, which also refuses a `last` too old or ahead
    /// of the store. A Watch's `from_version` is always judged by the
    /// history; the pages after it and a lagging watcher's use the cache.
    async fn history_page(&mut self, cache: bool) -> Result<Page, ApiError> {
        let from = self.last;
        if cache && let Some((events, upto)) = self.store.recent_since(from, PAGE) {
            let more = events.len() >= PAGE;
            return Ok(Page { events, more, upto });
        }
        let (rev, events) = self
            .store
            .read_snapshot(move |t| {
                let rev = t.revision()?;
                if from > rev {
                    return Err(ApiError::FromTheFuture {
                        requested: from,
                        current: rev,
                    });
                }
                Ok((rev, t.events_since(from, &[], PAGE)?))
            })
            .await?;
        let more = events.len() >= PAGE;
        Ok(Page {
            events: events.into_iter().map(Arc::new).collect(),
            more,
            upto: rev,
        })
    }

    /// Send one event unless it is a duplicate or filtered out; only an
    /// event sent is copied (when the Arc is shared). False when the client is gone.
    async fn offer(&mut self, ev: Arc<WatchEvent>) -> bool {
        if ev.resource_version <= self.last {
            return true;
        }
        self.last = ev.resource_version;
        if !self.filter.matches(&ev) {
            return true;
        }
        self.send(Ok(Arc::unwrap_or_clone(ev))).await
    }

    async fn send(&mut self, item: Result<WatchEvent, Status>) -> bool {
        let Some(tx) = &self.tx else { return false };
        tokio::select! {
            r = tx.send(item) => r.is_ok(),
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Read history from `last` until it is exhausted. False when the client is gone.
    async fn catch_up(&mut self, mut page: Page) -> Result<bool, ApiError> {
        loop {
            for ev in page.events {
                if !self.offer(ev).await {
                    return Ok(false);
                }
            }
            if !page.more {
                // Live events up to here were in the history: skip them.
                self.last = self.last.max(page.upto);
                return Ok(true);
            }
            page = self.history_page(true).await?;
        }
    }

    async fn run(mut self, start: Start, mut live: broadcast::Receiver<Arc<WatchEvent>>) {
        let caught_up = match start {
            Start::Snapshot(events) => {
                let mut ok = true;
                for ev in events {
                    if !self.send(Ok(ev)).await {
                        ok = false;
                        break;
                    }
                }
                Ok(ok)
            }
            Start::History(page) => self.catch_up(page).await,
        };
        if !self.settle(caught_up).await {
            return;
        }
        tracing::debug!(version = self.last, "watch following live changes");
        let Some(tx) = self.tx.clone() else { return };
        loop {
            let next = tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = tx.try_send(Err(ApiError::ShuttingDown.into()));
                    return;
                }
                () = tx.closed() => return,
                next = live.recv() => next,
            };
            let ok = match next {
                Ok(ev) => self.offer(ev).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        version = self.last,
                        "watch fell behind the live feed; catching up from the watch cache or history"
                    );
                    let r = match self.history_page(true).await {
                        Ok(page) => self.catch_up(page).await,
                        Err(e) => Err(e),
                    };
                    self.settle(r).await
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.try_send(Err(ApiError::ShuttingDown.into()));
                    return;
                }
            };
            if !ok {
                return;
            }
        }
    }

    /// Turn a catch-up result into "go on?"; an error is sent to the client and ends the watch.
    async fn settle(&mut self, r: Result<bool, ApiError>) -> bool {
        match r {
            Ok(go_on) => go_on,
            Err(e) => {
                tracing::info!(error = %e, "watch ended");
                self.send(Err(e.into())).await;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hostplane_proto::v1::{self, ObjectMeta, Resource};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::store::{HistoryConfig, StoreError, StoreStats};

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

    /// [`behind_cache`] with the store's own watch cache
    /// ([`crate::store::WATCH_CACHE_CAPACITY`] events).
    async fn behind(history: HistoryConfig, n: usize) -> (Vec<Result<WatchEvent, Status>>, u64) {
        let (got, from, _, _) = behind_cache(history, crate::store::WATCH_CACHE_CAPACITY, n).await;
        (got, from)
    }

    #[tokio::test]
    async fn a_watcher_behind_the_feed_gets_every_event_in_order_from_history_kept_by_age() {
        let history = HistoryConfig {
            min_revisions: 8,
            min_age: Duration::from_secs(3600),
            max_revisions: 1_000_000,
        };
        let (got, from) = behind(history, 500).await;
        assert_in_order(&got, from, 500);
    }

    /// A store whose live feed holds 4 events and whose watch cache holds
    /// `cache`, a Watch of everything from now, then `n` commits of one event
    /// each on this thread: the watch's task cannot run in between (a
    /// current-thread runtime), so it is `n - 4` events behind the feed
    /// before it reads any. Also the store's work counters after the `n`
    /// commits and after the watcher's catch-up.
    async fn behind_cache(
        history: HistoryConfig,
        cache: usize,
        n: usize,
    ) -> (Vec<Result<WatchEvent, Status>>, u64, StoreStats, StoreStats) {
        let store = Store::in_memory_with_cache_for_test(history, 4, cache).unwrap();
        store.write_sync(|t| t.insert(node("n0"))).unwrap();
        let api = AdminApi::new(store.clone(), CancellationToken::new());
        let mut w = api
            .watch_resources(WatchRequest {
                kinds: vec![],
                from_version: 0,
                name: String::new(),
            })
            .await
            .unwrap();
        let from = store.view().revision();
        for i in 1..=n {
            store.write_sync(|t| t.insert(node(&format!("n{i}")))).unwrap();
        }
        let written = store.stats();
        let mut got = Vec::new();
        while got.len() < n + 1 {
            let Some(item) = w.next().await else { break };
            let end = item.is_err();
            got.push(item);
            if end {
                break;
            }
        }
        (got, from, written, store.stats())
    }

    /// The snapshot's n0 at `from`, then n1..=n at from+1.. with no gap or repeat.
    fn assert_in_order(got: &[Result<WatchEvent, Status>], from: u64, n: usize) {
        assert_eq!(got.len(), n + 1, "{:?}", got.last());
        let first = got[0].as_ref().unwrap();
        assert_eq!(
            (first.resource.as_ref().unwrap().name(), first.resource_version),
            ("n0", from)
        );
        for (i, item) in got[1..].iter().enumerate() {
            let ev = item.as_ref().unwrap();
            assert_eq!(
                ev.resource_version,
                from + 1 + i as u64,
                "event {i}: no gap, no repeat"
            );
            assert_eq!(ev.resource.as_ref().unwrap().name(), format!("n{}", i + 1));
        }
    }

    #[tokio::test]
    async fn a_watcher_behind_the_feed_catches_up_from_the_watch_cache_without_reading_the_store() {
        let history = HistoryConfig {
            min_revisions: 8,
            min_age: Duration::from_secs(3600),
            max_revisions: 1_000_000,
        };
        // 496 events behind a feed of 4, within a cache of 1,000.
        let (got, from, written, after) = behind_cache(history, 1_000, 500).await;
        assert_in_order(&got, from, 500);
        assert_eq!(written, after, "no store read to catch up");
    }

    #[tokio::test]
    async fn a_watcher_behind_the_watch_cache_catches_up_from_history() {
        let history = HistoryConfig {
            min_revisions: 8,
            min_age: Duration::from_secs(3600),
            max_revisions: 1_000_000,
        };
        // The cache keeps the last 16 of 500: the history has the rest.
        let (got, from, written, after) = behind_cache(history, 16, 500).await;
        assert_in_order(&got, from, 500);
        assert!(
            after.transactions > written.transactions && after.rows_read > written.rows_read,
            "read the history: {written:?} -> {after:?}"
        );
    }

    #[tokio::test]
    async fn a_watcher_behind_pruned_history_gets_too_old() {
        let (got, from) = behind(HistoryConfig::revisions(8), 500).await;
        assert_eq!(got.len(), 2, "the snapshot, then the error: {got:?}");
        assert_eq!(got[0].as_ref().unwrap().resource_version, from);
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert_eq!(
            e.message(),
            StoreError::TooOld {
                requested: from,
                oldest: from + 500 - 8,
            }
            .to_string()
        );
    }
}
