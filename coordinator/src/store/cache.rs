//! The watch cache: the most recent committed events in memory, in the
//! spirit of the Kubernetes apiserver's. Each event is one `Arc` shared by
//! this ring and the live feed of `Arc`s ([`super::Store::subscribe_shared`]),
//! so fifty watchers cost fifty pointer copies per event, not fifty copies
//! of the resource; a watcher that falls behind the feed catches up from the
//! ring without reading (and decoding) SQLite history, and reads the history
//! only when the ring no longer reaches back to where it was.
//!
//! The ring never reaches further back than the SQLite history: pruning
//! history prunes the ring too, so a watcher too old for the history is too
//! old for the ring and gets the history's `TooOld`.
use std::collections::VecDeque;
use std::sync::Arc;

use hostplane_proto::v1::WatchEvent;

/// Committed events the watch cache keeps (the newest; a watcher further
/// behind reads the store's history).
pub const WATCH_CACHE_CAPACITY: usize = 32_768;

#[derive(Debug)]
pub(super) struct WatchCache {
    events: VecDeque<Arc<WatchEvent>>,
    capacity: usize,
    /// Every event after this revision (up to `head`) is in `events`.
    from: u64,
    /// The store's revision as of the last commit the cache saw.
    head: u64,
}

impl WatchCache {
    /// An empty cache of a store at `revision` (history before it is SQLite's).
    pub(super) fn new(capacity: usize, revision: u64) -> WatchCache {
        WatchCache {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            from: revision,
            head: revision,
        }
    }

    /// A commit brought the store to `revision` with `events` (in revision
    /// order) and pruned history through `pruned` (0: nothing).
    pub(super) fn commit(&mut self, events: &[Arc<WatchEvent>], revision: u64, pruned: u64) {
        for ev in events {
            if self.events.len() == self.capacity
                && let Some(old) = self.events.pop_front()
            {
                self.from = self.from.max(old.resource_version);
            }
            self.events.push_back(ev.clone());
        }
        if pruned > self.from {
            while self.events.front().is_some_and(|e| e.resource_version <= pruned) {
                self.events.pop_front();
            }
            self.from = pruned;
        }
        self.head = self.head.max(revision);
    }

    /// The events after `rev`, oldest first, at most `limit`, and the
    /// revision the cache is at (when fewer than `limit` came back, every
    /// event up to it was among them). `None` when the cache does not reach
    /// back to `rev`, or when the history would refuse `rev` as too old
    /// (its oldest event is more than one revision after `rev`: then the
    /// history decides), or when `rev` is ahead of the cache.
    pub(super) fn since(&self, rev: u64, limit: usize) -> Option<(Vec<Arc<WatchEvent>>, u64)> {
        if rev < self.from || rev > self.head {
            return None;
        }
        if let Some(first) = self.events.front()
            && rev + 1 < first.resource_version
            && rev < self.head
        {
            return None;
        }
        let start = self.events.partition_point(|e| e.resource_version <= rev);
        let out = self.events.range(start..).take(limit).cloned().collect();
        Some((out, self.head))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: u64) -> Arc<WatchEvent> {
        Arc::new(WatchEvent {
            r#type: 1,
            resource_version: rev,
            resource: None,
        })
    }

    fn revs(c: &WatchCache, rev: u64, limit: usize) -> Option<(Vec<u64>, u64)> {
        c.since(rev, limit)
            .map(|(evs, head)| (evs.iter().map(|e| e.resource_version).collect(), head))
    }

    #[test]
    fn serves_what_it_holds_and_refuses_what_it_dropped() {
        let mut c = WatchCache::new(3, 10);
        assert_eq!(revs(&c, 10, 10), Some((vec![], 10)));
        assert_eq!(revs(&c, 9, 10), None, "before the open: the history's");
        // 11, 12 (a revision without an event: a desired-state bump), 13, 14.
        c.commit(&[ev(11)], 11, 0);
        c.commit(&[], 12, 0);
        c.commit(&[ev(13), ev(14)], 14, 0);
        assert_eq!(revs(&c, 10, 10), Some((vec![11, 13, 14], 14)));
        assert_eq!(revs(&c, 11, 1), Some((vec![13], 14)));
        assert_eq!(revs(&c, 14, 10), Some((vec![], 14)));
        assert_eq!(revs(&c, 15, 10), None, "ahead of the cache");
        // Full: 11 goes, so the cache reaches back to 11 and no further;
        // from 11 it leaves the history to judge (its oldest event, 13, is
        // more than one revision on, which the history may call too old).
        c.commit(&[ev(15)], 15, 0);
        assert_eq!(c.len(), 3);
        assert_eq!(revs(&c, 10, 10), None);
        assert_eq!(revs(&c, 11, 10), None);
        assert_eq!(revs(&c, 12, 10), Some((vec![13, 14, 15], 15)));
    }

    #[test]
    fn pruned_history_is_pruned_from_the_cache() {
        let mut c = WatchCache::new(100, 0);
        c.commit(&[ev(1), ev(2), ev(3)], 3, 0);
        c.commit(&[ev(4)], 4, 2);
        assert_eq!(revs(&c, 1, 10), None, "the history refuses it: so does the cache");
        assert_eq!(revs(&c, 2, 10), Some((vec![3, 4], 4)));
        // Pruned through 5; the oldest kept event is 8 (6 and 7 had none):
        // the history refuses 5 and 6 as too old, and the cache leaves them to it.
        c.commit(&[ev(5)], 7, 0);
        c.commit(&[ev(8)], 8, 5);
        assert_eq!(revs(&c, 6, 10), None);
        assert_eq!(revs(&c, 7, 10), Some((vec![8], 8)));
    }
}
