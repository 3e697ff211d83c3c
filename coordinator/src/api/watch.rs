//! Watch: the current state or the retained history, then live changes.
//!
//! The broadcast is subscribed to *before* the snapshot or history is read,
//! and events are deduplicated by revision, so nothing falls between the two.
//! A watcher that falls behind the broadcast (`Lagged`) re-reads from the
//! store's history instead of losing events. The work stops when the client
//! goes away or the coordinator shuts down.
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
        let live = self.store.subscribe();
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
            Start::History(w.history_page().await?)
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

/// Events after some revision, read in one transaction.
struct Page {
    events: Vec<WatchEvent>,
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
            .read(move |t| {
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

    /// The next page of history after `last`.
    async fn history_page(&mut self) -> Result<Page, ApiError> {
        let from = self.last;
        let (rev, events) = self
            .store
            .read(move |t| {
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
            events,
            more,
            upto: rev,
        })
    }

    /// Send one event unless it is a duplicate or filtered out. False when the client is gone.
    async fn offer(&mut self, ev: WatchEvent) -> bool {
        if ev.resource_version <= self.last {
            return true;
        }
        self.last = ev.resource_version;
        if !self.filter.matches(&ev) {
            return true;
        }
        self.send(Ok(ev)).await
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
            page = self.history_page().await?;
        }
    }

    async fn run(mut self, start: Start, mut live: broadcast::Receiver<WatchEvent>) {
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
                        "watch fell behind the live feed; reading history"
                    );
                    let r = match self.history_page().await {
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
