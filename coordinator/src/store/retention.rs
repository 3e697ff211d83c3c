//! How much watch history the store keeps: by count AND by age, with a hard
//! cap. A watcher that fell behind the live feed reads the history from where
//! it was; at fleet scale a burst of changes (a reconcile pass over 10,000
//! Dpus) is tens of thousands of revisions in seconds, so a count alone is
//! used up while a watcher is still catching up. Everything younger than
//! `min_age` is kept too, unless that is more than `max_revisions`.
//!
//! Ages come from the commit times this process saw (one mark per second of
//! commits, in memory): history written before the store was opened counts as
//! written at the open, so a restart never prunes early.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Watch history kept (`store.history` in the coordinator config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// The newest revisions always kept.
    pub min_revisions: u64,
    /// Events younger than this are kept as well (`0s`: by count only).
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Never more revisions than this, however young (≥ `min_revisions`).
    pub max_revisions: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            min_revisions: super::DEFAULT_EVENT_RETENTION,
            min_age: Duration::from_secs(5 * 60),
            max_revisions: 1_000_000,
        }
    }
}

impl HistoryConfig {
    /// The last `n` revisions, by count only (tests of what happens when history runs out).
    pub fn revisions(n: u64) -> HistoryConfig {
        HistoryConfig {
            min_revisions: n,
            min_age: Duration::ZERO,
            max_revisions: n,
        }
    }
}

/// Commits closer together than this share one age mark.
const MARK_GRANULARITY: Duration = Duration::from_secs(1);

/// The retention rule and the commit times it ages history by.
#[derive(Debug)]
pub(super) struct Retention {
    cfg: HistoryConfig,
    /// (first commit time of the mark, newest revision committed in it), oldest first.
    marks: VecDeque<(Instant, u64)>,
    /// Every revision up to this one is older than `min_age`.
    aged: u64,
}

impl Retention {
    /// `revision`: the store's revision at open (its history counts as written now).
    pub(super) fn new(cfg: HistoryConfig, revision: u64, now: Instant) -> Retention {
        let mut marks = VecDeque::new();
        marks.push_back((now, revision));
        Retention { cfg, marks, aged: 0 }
    }

    /// A commit at `now` brought the store to `revision`: the revision that
    /// history may be pruned through (0: nothing). Never below what an
    /// earlier call returned is needed: pruning is idempotent.
    pub(super) fn commit(&mut self, revision: u64, now: Instant) -> u64 {
        match self.marks.back_mut() {
            Some((at, rev)) if now.saturating_duration_since(*at) < MARK_GRANULARITY => {
                *rev = (*rev).max(revision)
            }
            _ => self.marks.push_back((now, revision)),
        }
        let by_count = revision.saturating_sub(self.cfg.min_revisions);
        let cap = revision.saturating_sub(self.cfg.max_revisions.max(self.cfg.min_revisions));
        if self.cfg.min_age.is_zero() {
            return by_count;
        }
        // A mark is old once its first commit is older than min_age plus
        // the mark's width, i.e. once its newest commit surely is.
        while let Some(&(at, rev)) = self.marks.front() {
            if now.saturating_duration_since(at) < self.cfg.min_age + MARK_GRANULARITY {
                break;
            }
            self.aged = self.aged.max(rev);
            self.marks.pop_front();
        }
        cap.max(by_count.min(self.aged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u64, age_s: u64, max: u64) -> HistoryConfig {
        HistoryConfig {
            min_revisions: min,
            min_age: Duration::from_secs(age_s),
            max_revisions: max,
        }
    }

    #[test]
    fn by_count_only_keeps_the_last_n() {
        let t0 = Instant::now();
        let mut r = Retention::new(HistoryConfig::revisions(10), 0, t0);
        assert_eq!(r.commit(5, t0), 0);
        assert_eq!(r.commit(25, t0), 15);
        assert_eq!(r.commit(26, t0 + Duration::from_secs(3600)), 16);
    }

    #[test]
    fn young_events_are_kept_past_the_count_until_they_age() {
        let t0 = Instant::now();
        let mut r = Retention::new(cfg(10, 60, 1_000), 0, t0);
        // 500 revisions in the first second: all younger than a minute.
        assert_eq!(r.commit(500, t0), 0);
        // 30 s later, 100 more: still all young.
        assert_eq!(r.commit(600, t0 + Duration::from_secs(30)), 0);
        // Past a minute (and the mark's width) the first second's 500 age out;
        // the last 10 revisions and the young ones stay.
        assert_eq!(r.commit(601, t0 + Duration::from_secs(62)), 500);
        // Later still everything is old: the count decides.
        assert_eq!(r.commit(602, t0 + Duration::from_secs(200)), 592);
    }

    #[test]
    fn the_cap_wins_over_age() {
        let t0 = Instant::now();
        let mut r = Retention::new(cfg(10, 3600, 100), 0, t0);
        assert_eq!(r.commit(90, t0), 0);
        assert_eq!(r.commit(250, t0 + Duration::from_secs(1)), 150);
        // A cap below the count is raised to it.
        let mut r = Retention::new(cfg(50, 3600, 5), 0, t0);
        assert_eq!(r.commit(70, t0), 20);
    }

    #[test]
    fn history_from_before_the_open_counts_as_written_at_the_open() {
        let t0 = Instant::now();
        let mut r = Retention::new(cfg(10, 60, 1_000_000), 400, t0);
        assert_eq!(r.commit(401, t0 + Duration::from_secs(30)), 0);
        assert_eq!(r.commit(402, t0 + Duration::from_secs(60)), 0);
        assert_eq!(r.commit(403, t0 + Duration::from_secs(61)), 393);
    }

    #[test]
    fn marks_are_one_per_second_of_commits() {
        let t0 = Instant::now();
        let mut r = Retention::new(cfg(10, 60, 1_000_000), 0, t0);
        for i in 0..10_000u64 {
            r.commit(i + 1, t0 + Duration::from_millis(i));
        }
        assert!(r.marks.len() <= 11, "{} marks", r.marks.len());
    }
}

#[cfg(test)]
mod prune_tests {
    use hostplane_proto::v1::{self, ObjectMeta, Resource};

    use super::super::Store;

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

    /// Rows read by one commit of one change that prunes one event, in a
    /// store that keeps `kept` revisions (and has them).
    fn rows_to_prune_one(kept: u64) -> u64 {
        let s = Store::in_memory_with_retention(kept).unwrap();
        for i in 0..=kept {
            s.write_sync(|t| t.insert(node(&format!("n{i}")))).unwrap();
        }
        let before = s.stats().rows_read;
        s.write_sync(|t| t.insert(node("last"))).unwrap();
        s.stats().rows_read - before
    }

    #[test]
    fn pruning_reads_the_pruned_range_not_the_whole_history() {
        let (small, large) = (rows_to_prune_one(100), rows_to_prune_one(5_000));
        assert_eq!(
            small, large,
            "rows read to prune one event: {small} with 100 kept, {large} with 5,000"
        );
    }
}
