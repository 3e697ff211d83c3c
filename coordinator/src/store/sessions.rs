//! Which replica serves each node's agent (`sessions`, PostgreSQL only;
//! docs/ha.md §5).
//!
//! Each replica records the nodes whose agents it holds a live lease for,
//! renewing them all in one statement every `agents.lease / 3`; before a
//! replica marks a node Unreachable it asks whether another replica serves
//! it now. The times are PostgreSQL's (`now()`), so replica clocks never
//! disagree about which rows are live.
//!
//! These rows are not store changes: they take no revision and make no
//! event (plain `exec`, never `next_revision`), so a renewal commits
//! nothing a watcher or a follower's change reader sees. On SQLite (one
//! coordinator, no `sessions` table) every method is a no-op.
//!
//! Node lists are bound as one text parameter holding a JSON array, unpacked
//! by `json_array_elements`: rusqlite has no `ToSql` for `Vec<String>`, so a
//! `text[]` parameter cannot pass through [`super::txn::Arg`], and a JSON
//! string carries any node name without escaping rules of our own.
//!
//! A row's `expires_at` is when the agent's lease ends as the replica that
//! heard it knows it, on PostgreSQL's clock, and a renewal takes a row from
//! another replica only when it ends later. So when an agent moves, the
//! replica it left (still renewing until its own lease lapses) cannot win
//! the row back from the one it now talks to: the most recent hearing wins.
use std::collections::HashMap;
use std::time::Duration;

use super::txn::args;
use super::{StoreError, Txn};

/// `v` as the JSON text the statements unpack.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("names and numbers always encode as JSON")
}

impl Txn<'_> {
    /// Whether this store shares agent sessions between replicas (it runs
    /// on PostgreSQL); false on SQLite, where the session methods are no-ops.
    pub fn shares_sessions(&self) -> bool {
        self.is_pg()
    }

    /// Record that `replica` serves each node of `sessions` until its
    /// duration from now (PostgreSQL's clock), in one statement. A node
    /// whose row another replica holds is taken only when this session ends
    /// later than that one (see the module doc); a node listed twice counts
    /// with its longest duration. Returns the rows written (0 on SQLite).
    pub fn renew_sessions(
        &mut self,
        replica: &str,
        sessions: &[(String, Duration)],
    ) -> Result<usize, StoreError> {
        if !self.is_pg() || sessions.is_empty() {
            return Ok(0);
        }
        let rows: Vec<(&str, i64)> = sessions
            .iter()
            .map(|(n, d)| (n.as_str(), i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            .collect();
        // DISTINCT ON: one node twice in the list would make ON CONFLICT
        // touch a row twice in one statement, which PostgreSQL refuses.
        self.exec(
            "INSERT INTO sessions (node, replica, expires_at) \
             SELECT DISTINCT ON (e->>0) e->>0, ?1::text, now() + (e->>1)::bigint * interval '1 millisecond' \
             FROM json_array_elements(?2::text::json) AS e \
             ORDER BY e->>0, (e->>1)::bigint DESC \
             ON CONFLICT (node) DO UPDATE SET replica = excluded.replica, expires_at = excluded.expires_at \
             WHERE sessions.replica = excluded.replica OR sessions.expires_at < excluded.expires_at",
            args![replica, json(&rows)],
        )
    }

    /// Of `nodes`, those a replica holds a live session for (its row has
    /// not expired by PostgreSQL's clock), with that replica's name. Empty
    /// on SQLite.
    pub fn live_sessions(&self, nodes: &[String]) -> Result<HashMap<String, String>, StoreError> {
        if !self.is_pg() || nodes.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self.all_rows(
            "SELECT node, replica FROM sessions \
             WHERE node IN (SELECT json_array_elements_text(?1::text::json)) AND expires_at > now()",
            args![json(nodes)],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// `replica` no longer serves `node`: its row goes, unless another
    /// replica has taken the node since. True when a row was deleted.
    pub fn end_session(&mut self, replica: &str, node: &str) -> Result<bool, StoreError> {
        if !self.is_pg() {
            return Ok(false);
        }
        Ok(self.exec(
            "DELETE FROM sessions WHERE node = ?1 AND replica = ?2",
            args![node, replica],
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::StoreError;
    use crate::store::test_backend::Backend;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn for_(v: &[&str], d: Duration) -> Vec<(String, Duration)> {
        v.iter().map(|s| (s.to_string(), d)).collect()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn sessions_are_renewed_taken_over_expire_and_end() {
        let Some(b) = Backend::postgres() else { return };
        let s = b.open();
        let rev = s.read(|t| t.revision()).await.unwrap();
        let n = s
            .write(|t| {
                assert!(t.shares_sessions());
                // A name JSON must escape, and one node listed twice.
                t.renew_sessions("a", &for_(&["n1", "n\"2\\,{}", "n1"], MINUTE))
            })
            .await
            .unwrap();
        assert_eq!(n, 2, "one row per distinct node");
        let live = s
            .read(|t| t.live_sessions(&names(&["n1", "n\"2\\,{}", "n3"])))
            .await
            .unwrap();
        assert_eq!(live.len(), 2, "{live:?}");
        assert_eq!(live["n1"], "a");
        assert_eq!(live["n\"2\\,{}"], "a");

        // Another replica whose agent's lease ends sooner does not take n1;
        // one whose lease ends later does.
        let n = s
            .write(|t| t.renew_sessions("b", &for_(&["n1"], MINUTE / 2)))
            .await
            .unwrap();
        assert_eq!(n, 0, "an earlier end does not take another replica's row");
        let live = s.read(|t| t.live_sessions(&names(&["n1"]))).await.unwrap();
        assert_eq!(live["n1"], "a");
        let n = s
            .write(|t| t.renew_sessions("b", &for_(&["n1"], 2 * MINUTE)))
            .await
            .unwrap();
        assert_eq!(n, 1);
        // b's own renewals always land, even ending sooner.
        let n = s
            .write(|t| t.renew_sessions("b", &for_(&["n1"], MINUTE / 2)))
            .await
            .unwrap();
        assert_eq!(n, 1);

        // a's end_session leaves b's row alone.
        assert!(!s.write(|t| t.end_session("a", "n1")).await.unwrap());
        let live = s.read(|t| t.live_sessions(&names(&["n1"]))).await.unwrap();
        assert_eq!(live["n1"], "b");
        assert!(s.write(|t| t.end_session("b", "n1")).await.unwrap());
        let live = s.read(|t| t.live_sessions(&names(&["n1"]))).await.unwrap();
        assert!(live.is_empty(), "{live:?}");

        // A row past its expiry is not live, and anyone may take it.
        s.write(|t| t.renew_sessions("a", &for_(&["n4"], Duration::from_millis(300))))
            .await
            .unwrap();
        let live = s.read(|t| t.live_sessions(&names(&["n4"]))).await.unwrap();
        assert_eq!(live.len(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let live = s.read(|t| t.live_sessions(&names(&["n4"]))).await.unwrap();
        assert!(live.is_empty(), "an expired row is not live: {live:?}");
        let n = s
            .write(|t| t.renew_sessions("b", &for_(&["n4"], Duration::from_millis(100))))
            .await
            .unwrap();
        assert_eq!(n, 1, "an expired row is taken");

        // None of this is a store change.
        assert_eq!(s.read(|t| t.revision()).await.unwrap(), rev);
    }

    #[tokio::test]
    async fn sessions_are_no_ops_on_sqlite() {
        let b = Backend::sqlite();
        let s = b.open();
        s.write(|t| {
            assert!(!t.shares_sessions());
            assert_eq!(t.renew_sessions("a", &for_(&["n1"], MINUTE))?, 0);
            assert!(t.live_sessions(&names(&["n1"]))?.is_empty());
            assert!(!t.end_session("a", "n1")?);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    }
}
