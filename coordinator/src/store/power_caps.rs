//! The power engine's caps per node, `power_caps` (docs/ha.md §5).
//!
//! The leader's engine writes a node's caps in the same write that gives
//! the node a new desired-state version, with that version as the row's
//! `revision`; every replica's agent stream reads them back (through
//! `power::caps_feed`) for the agents it serves, so a cap computed on the
//! leader reaches an agent connected to a follower. A node without caps
//! (no Topology or PowerPolicy covers it any more) keeps its row with an
//! empty `caps`, so a replica that reads the rows changed after a revision
//! sees the removal too; a deleted node's row is deleted.
//!
//! Bodies are proto3 JSON of `PowerCaps`, as resources are.
use hostplane_proto::v1::PowerCaps;

use super::txn::args;
use super::{StoreError, Txn};

impl Txn<'_> {
    /// Record `node`'s caps (None: uncapped) as announced by desired-state
    /// version `revision` (what [`Txn::touch_desired`] returned in this
    /// transaction).
    pub fn put_power_caps(
        &mut self,
        node: &str,
        caps: Option<&PowerCaps>,
        revision: u64,
    ) -> Result<(), StoreError> {
        let body = match caps {
            Some(c) => serde_json::to_string(c).map_err(|source| StoreError::Encode {
                kind: "power caps",
                name: node.into(),
                source,
            })?,
            None => String::new(),
        };
        self.exec(
            "INSERT INTO power_caps (node, caps, revision) VALUES (?1, ?2, ?3)
             ON CONFLICT (node) DO UPDATE SET caps = excluded.caps, revision = excluded.revision",
            args![node, body, revision as i64],
        )?;
        Ok(())
    }

    /// Forget a deleted node's caps row.
    pub fn delete_power_caps(&mut self, node: &str) -> Result<bool, StoreError> {
        Ok(self.exec("DELETE FROM power_caps WHERE node = ?1", args![node])? > 0)
    }

    /// The rows written after revision `after` (0: all), by revision: the
    /// node, its caps (None: uncapped), the revision of the desired-state
    /// version that announced them.
    #[allow(clippy::type_complexity)]
    pub fn power_caps_since(&self, after: u64) -> Result<Vec<(String, Option<PowerCaps>, u64)>, StoreError> {
        self.all_rows(
            "SELECT node, caps, revision FROM power_caps WHERE revision > ?1 ORDER BY revision, node",
            args![after as i64],
            |r| {
                let node: String = r.get(0)?;
                let body: String = r.get(1)?;
                let rev: i64 = r.get(2)?;
                let caps = if body.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::from_str::<PowerCaps>(&body).map_err(|source| StoreError::Corrupt {
                            kind: "power caps",
                            name: node.clone(),
                            source,
                        })?,
                    )
                };
                Ok((node, caps, rev as u64))
            },
        )
    }
}
