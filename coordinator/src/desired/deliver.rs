//! Delivery: a change to one node's desired state wakes that node's session
//! only. One task reads the store's desired-change channel and routes each
//! `(node, version)` to the node's registered session through a
//! `tokio::sync::watch`; a session wakes, composes, and sends when the
//! version is newer than what it sent. If the task falls behind the channel
//! (lagged), it cannot know which nodes changed, so it wakes every session:
//! each composes and sends only what is newer.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The node → session map. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// The session's id (a newer session of the node replaces the entry).
    id: u64,
    /// The latest version announced for the node.
    tx: watch::Sender<u64>,
    /// Wakes delivered to this session.
    wakes: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's registration: wakes when its node's desired state changes;
/// unregisters when dropped.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    node: String,
    id: u64,
    owner: Weak<Inner>,
}

impl Subscription {
    /// Wait for the next change. False when this registration no longer
    /// receives any (a newer session of the node replaced it).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// The latest version announced for the node (0 before any).
    pub fn version(&self) -> u64 {
        *self.rx.borrow()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.owner.upgrade() {
            let mut m = inner.lock();
            if m.get(&self.node).is_some_and(|e| e.id == self.id) {
                m.remove(&self.node);
            }
        }
    }
}

impl Delivery {
    pub fn new() -> Delivery {
        Delivery::default()
    }

    /// Route the store's desired changes to the registered sessions until
    /// `stop` is cancelled. Subscribes before returning, so every change
    /// committed after this call is routed. Needs a tokio runtime.
    pub fn start(&self, store: &Store, stop: CancellationToken) {
        let mut rx = store.subscribe_desired();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.recv() => r,
                };
                match r {
                    Ok(d) => {
                        me.notify(&d.node, d.version);
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "desired-state delivery fell behind the store; waking every session"
                        );
                        me.notify_all();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Register session `id` as `node`'s: it replaces any earlier one, which
    /// stops receiving wakes. Register before composing the first desired
    /// state, so no change falls in between.
    pub fn subscribe(&self, node: &str, id: u64) -> Subscription {
        let (tx, rx) = watch::channel(0);
        self.inner
            .lock()
            .insert(node.to_string(), Entry { id, tx, wakes: 0 });
        Subscription {
            rx,
            node: node.to_string(),
            id,
            owner: Arc::downgrade(&self.inner),
        }
    }

    /// Wake `node`'s session (if it has one) for `version`. True when one was woken.
    pub fn notify(&self, node: &str, version: u64) -> bool {
        let mut m = self.inner.lock();
        let Some(e) = m.get_mut(node) else {
            return false;
        };
        e.wakes += 1;
        e.tx.send_modify(|v| *v = (*v).max(version));
        true
    }

    /// Wake every session (after a lag: which nodes changed is unknown).
    pub fn notify_all(&self) {
        for e in self.inner.lock().values_mut() {
            e.wakes += 1;
            e.tx.send_modify(|_| ());
        }
    }

    /// Wakes delivered to `node`'s current session (None: no session).
    pub fn wakes(&self, node: &str) -> Option<u64> {
        self.inner.lock().get(node).map(|e| e.wakes)
    }

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(s: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_secs(10), s.changed())
            .await
            .expect("no wake within 10s")
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_nodes_session() {
        let store = Store::in_memory().unwrap();
        let stop = CancellationToken::new();
        let d = Delivery::new();
        d.start(&store, stop.clone());
        let mut a = d.subscribe("a", 1);
        let b = d.subscribe("b", 2);
        for _ in 0..3 {
            let v = store
                .write(|t| super::super::touch(t, "a", super::super::Why::Network))
                .await
                .unwrap();
            assert!(woken(&mut a).await);
            assert_eq!(a.version(), v);
        }
        // A node without a session: nobody wakes.
        store.write(|t| t.touch_desired("c")).await.unwrap();
        // The routing task takes changes in order: once a's next wake is
        // seen, c's change has been routed too.
        store.write(|t| t.touch_desired("a")).await.unwrap();
        assert!(woken(&mut a).await);
        assert_eq!(
            (d.wakes("a"), d.wakes("b"), d.wakes("c")),
            (Some(4), Some(0), None)
        );
        assert!(!b.rx.has_changed().unwrap());
        stop.cancel();
    }

    #[tokio::test]
    async fn a_newer_session_replaces_the_older_and_drop_unregisters() {
        let d = Delivery::new();
        let mut old = d.subscribe("a", 1);
        let mut new = d.subscribe("a", 2);
        assert_eq!(d.len(), 1);
        // The replaced one hears nothing more, and says so.
        assert!(!old.changed().await);
        assert!(d.notify("a", 7));
        assert!(new.changed().await);
        assert_eq!(new.version(), 7);
        // An older version does not move it back.
        d.notify("a", 3);
        assert_eq!(new.version(), 7);
        // Dropping the replaced registration leaves the newer in place.
        drop(old);
        assert_eq!(d.wakes("a"), Some(2));
        drop(new);
        assert!(d.is_empty());
        assert!(!d.notify("a", 8));
    }

    #[tokio::test]
    async fn a_lagged_channel_wakes_every_session() {
        let store = Store::in_memory().unwrap();
        let stop = CancellationToken::new();
        let d = Delivery::new();
        d.start(&store, stop.clone());
        let mut a = d.subscribe("a", 1);
        let mut b = d.subscribe("b", 2);
        // More changes than the channel keeps, with the routing task unable
        // to run in between (one thread, no await): it lags, and cannot tell
        // whose they were.
        for _ in 0..5_000 {
            store.write_sync(|t| t.touch_desired("c")).unwrap();
        }
        assert!(woken(&mut a).await);
        assert!(woken(&mut b).await);
        stop.cancel();
    }
}
