//! Snapshot reads: one kind's objects as they stood at a past store
//! revision, a page at a time (the paged List reads every page of a listing
//! at its first page's revision).
//!
//! The state at revision `at` comes from two places. An object whose row has
//! not changed since `at` (`resource_version <= at`) is read from
//! `resources`. An object with an event after `at` (changed, deleted or
//! created since) is read from the `events` history: its newest event at or
//! before `at` holds its state then (DELETED: it did not exist); when that
//! event was pruned, its first event after `at` carries the state it
//! replaced in `prev_body` (copied there when the older event was pruned);
//! when that first event is ADDED, the object did not exist at `at`.
//!
//! This needs every event after `at`: a snapshot older than the history's
//! floor (`meta.history_floor`, raised as the retention prunes) is refused
//! with [`StoreError::SnapshotGone`], and the caller lists again.
use std::collections::{BTreeMap, BTreeSet};

use hostplane_proto::v1::{EventType, Kind, Resource};
use prost::Message;

use super::txn::args;
use super::{StoreError, Txn};

/// One page of a snapshot read.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// In name order.
    pub items: Vec<Resource>,
    /// At least one more object after the last item matches.
    pub more: bool,
}

/// What a page may hold: at most `items` objects, and no more than `bytes`
/// of encoded objects (a single larger object still makes a page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub items: usize,
    pub bytes: usize,
}

impl Txn<'_> {
    /// The revision after which every event is kept.
    pub fn history_floor(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = self.one_row(
            "SELECT value FROM meta WHERE key = 'history_floor'",
            args![],
            |r| r.get(0),
        )?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// The stored body of an object about to change, when none of its
    /// events is kept (its last one was pruned): the event of the change
    /// carries it as `prev_body`, so a snapshot from before the change can
    /// still read it.
    pub(super) fn prev_body_to_keep(&self, kind: Kind, name: &str) -> Result<Option<String>, StoreError> {
        let kept: Option<i32> = self.one_row(
            "SELECT 1 FROM events WHERE kind = ?1 AND name = ?2 LIMIT 1",
            args![kind.noun(), name],
            |r| r.get(0),
        )?;
        if kept.is_some() {
            return Ok(None);
        }
        self.one_row(
            "SELECT body FROM resources WHERE kind = ?1 AND name = ?2",
            args![kind.noun(), name],
            |r| r.get(0),
        )
    }

    /// Drop the events at or before `through`. An object that keeps a later
    /// event gets, on its first kept event, the state its last dropped event
    /// wrote (`prev_body`), so snapshot reads after `through` still see it.
    pub(super) fn prune_history(&self, through: u64) -> Result<(), StoreError> {
        if through <= self.history_floor()? {
            return Ok(());
        }
        // NOT INDEXED: else SQLite serves the GROUP BY from `events_object`,
        // a scan of the whole history per prune, not of the pruned range.
        let dropped: Vec<(String, String, i64)> = self.all_rows(
            "SELECT kind, name, MAX(revision) FROM events NOT INDEXED WHERE revision <= ?1 GROUP BY kind, name",
            args![through as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        for (kind, name, last) in dropped {
            let next: Option<(i64, i32, bool)> = self.one_row(
                "SELECT revision, type, prev_body IS NULL FROM events
                 WHERE kind = ?1 AND name = ?2 AND revision > ?3 ORDER BY revision LIMIT 1",
                args![kind, name, through as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some((next_rev, next_type, no_prev)) = next else {
                continue;
            };
            // After an ADDED the object did not exist before: nothing to keep.
            if next_type == EventType::Added as i32 || !no_prev {
                continue;
            }
            self.exec(
                "UPDATE events SET prev_body = (SELECT body FROM events WHERE revision = ?1 AND type != ?3)
                 WHERE revision = ?2",
                args![last, next_rev, EventType::Deleted as i32],
            )?;
        }
        self.exec("DELETE FROM events WHERE revision <= ?1", args![through as i64])?;
        self.exec(
            "UPDATE meta SET value = ?1 WHERE key = 'history_floor'",
            args![through as i64],
        )?;
        Ok(())
    }

    /// The objects of `kind` named after `after` (all when empty), as they
    /// stood at revision `at`, in name order; only those `keep` accepts, at
    /// most what `limit` allows.
    pub fn list_page(
        &self,
        kind: Kind,
        at: u64,
        after: &str,
        limit: PageLimit,
        keep: &dyn Fn(&Resource) -> bool,
    ) -> Result<Page, StoreError> {
        let floor = self.history_floor()?;
        if at < floor {
            return Err(StoreError::SnapshotGone { at, floor });
        }
        let changed = self.changed_since(kind, at, after)?;
        let changed_names: BTreeSet<&str> = changed.keys().map(String::as_str).collect();
        let mut from_history = changed
            .iter()
            .filter_map(|(n, r)| r.as_ref().map(|r| (n.as_str(), r)))
            .peekable();

        let mut page = Page {
            items: Vec::new(),
            more: false,
        };
        let mut bytes = 0;
        // Add one object to the page; false once the page is full.
        let mut push = |item: &Resource| -> bool {
            if !keep(item) {
                return true;
            }
            let size = item.encoded_len();
            if page.items.len() >= limit.items || (!page.items.is_empty() && bytes + size > limit.bytes) {
                page.more = true;
                return false;
            }
            bytes += size;
            page.items.push(item.clone());
            true
        };
        // Merge the two name-ordered sources; a row that changed after `at`
        // is replaced by its state from history (maybe none).
        let mut full = false;
        self.each_row(
            "SELECT name, body FROM resources WHERE kind = ?1 AND name > ?2 ORDER BY name",
            args![kind.noun(), after],
            |r| {
                let (name, body): (String, String) = (r.get(0)?, r.get(1)?);
                while let Some((hn, _)) = from_history.peek()
                    && *hn < name.as_str()
                {
                    let (_, h) = from_history.next().expect("peeked");
                    if !push(h) {
                        full = true;
                        return Ok(false);
                    }
                }
                if changed_names.contains(name.as_str()) {
                    return Ok(true);
                }
                if !push(&Self::decode(kind, &name, &body)?) {
                    full = true;
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        if !full {
            for (_, h) in from_history {
                if !push(h) {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Every object of `kind` named after `after` with an event after `at`,
    /// with its state at `at` (`None`: it did not exist then).
    fn changed_since(
        &self,
        kind: Kind,
        at: u64,
        after: &str,
    ) -> Result<BTreeMap<String, Option<Resource>>, StoreError> {
        let names: Vec<String> = self.all_rows(
            "SELECT DISTINCT name FROM events WHERE revision > ?1 AND kind = ?2 AND name > ?3",
            args![at as i64, kind.noun(), after],
            |r| r.get(0),
        )?;
        let mut out = BTreeMap::new();
        for name in names {
            let state = self.state_at(kind, &name, at)?;
            out.insert(name, state);
        }
        Ok(out)
    }

    /// An object with an event after `at`, as it was at `at`.
    fn state_at(&self, kind: Kind, name: &str, at: u64) -> Result<Option<Resource>, StoreError> {
        let before: Option<(i32, String)> = self.one_row(
            "SELECT type, body FROM events WHERE kind = ?1 AND name = ?2 AND revision <= ?3
             ORDER BY revision DESC LIMIT 1",
            args![kind.noun(), name, at as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some((ty, body)) = before {
            return if ty == EventType::Deleted as i32 {
                Ok(None)
            } else {
                Self::decode(kind, name, &body).map(Some)
            };
        }
        let (rev, ty, prev): (i64, i32, Option<String>) = self
            .one_row(
                "SELECT revision, type, prev_body FROM events WHERE kind = ?1 AND name = ?2 AND revision > ?3
                 ORDER BY revision LIMIT 1",
                args![kind.noun(), name, at as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .ok_or_else(|| {
                StoreError::Join(format!(
                    "{} {name:?} has no event after revision {at}",
                    kind.noun()
                ))
            })?;
        match prev {
            _ if ty == EventType::Added as i32 => Ok(None),
            Some(body) => Self::decode(kind, name, &body).map(Some),
            // Pruned before prev_body was kept (history from before schema
            // 2): this object's history starts at `rev`.
            None => Err(StoreError::SnapshotGone {
                at,
                floor: (rev as u64).saturating_sub(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hostplane_proto::v1::{self, Kind, ObjectMeta, Resource};
    use proptest::prelude::*;

    use super::PageLimit;
    use crate::store::{Store, StoreError};

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

    /// Apply one operation; returns the store's revision after it.
    fn step(s: &Store, op: u8, name: &str, v: u8) -> u64 {
        s.write_sync(|t| -> Result<u64, StoreError> {
            let stored = t.get(Kind::Node, name)?;
            match (op, stored) {
                (0, None) | (1, None) => {
                    t.insert(node(name, v))?;
                }
                (0, Some(mut r)) | (1, Some(mut r)) => {
                    r.metadata_mut().unwrap().labels.insert("v".into(), v.to_string());
                    t.update(r)?;
                }
                (2, _) => {
                    t.delete(Kind::Node, name)?;
                }
                _ => {
                    // A revision without an event (a desired-state bump).
                    t.touch_desired("host")?;
                }
            }
            t.revision()
        })
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever was pruned, a snapshot read at any revision at or after
        /// the history floor is the state the store had then, page by page;
        /// older ones are refused.
        #[test]
        fn snapshot_reads_are_the_past_state(
            ops in proptest::collection::vec((0u8..4, 0usize..6, any::<u8>()), 1..80),
            retention in 1u64..30,
            page in 1usize..5,
        ) {
            let s = Store::in_memory_with_retention(retention).unwrap();
            let names = ["a", "b", "c", "d", "e", "f"];
            let mut states: Vec<(u64, BTreeMap<String, Resource>)> = vec![(0, BTreeMap::new())];
            for (op, i, v) in ops {
                let rev = step(&s, op, names[i], v);
                let now: BTreeMap<String, Resource> = s
                    .write_sync(|t| t.list(Kind::Node))
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.name().to_string(), r))
                    .collect();
                states.push((rev, now));
            }
            let floor = s.write_sync(|t| t.history_floor()).unwrap();
            for (at, want) in &states {
                let mut got = Vec::new();
                let mut after = String::new();
                let limit = PageLimit { items: page, bytes: usize::MAX };
                let res = loop {
                    match s.write_sync(|t| t.list_page(Kind::Node, *at, &after, limit, &|_| true)) {
                        Err(e) => break Err(e),
                        Ok(p) => {
                            prop_assert!(p.items.len() <= page);
                            got.extend(p.items.iter().cloned());
                            match (p.more, p.items.last()) {
                                (true, Some(last)) => after = last.name().to_string(),
                                _ => break Ok(()),
                            }
                        }
                    }
                };
                if *at < floor {
                    prop_assert!(matches!(res, Err(StoreError::SnapshotGone { .. })), "{at} < {floor}: {res:?}");
                } else {
                    prop_assert!(res.is_ok(), "{at} >= {floor}: {res:?}");
                    let want: Vec<Resource> = want.values().cloned().collect();
                    prop_assert_eq!(got, want, "snapshot at {}", at);
                }
            }
        }
    }
}
