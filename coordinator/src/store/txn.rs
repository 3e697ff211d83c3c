//! One store transaction: reads, writes, revisions and the events they make.
use hostplane_proto::v1::{Command, CommandOutcome, CommandResult, EventType, Kind, Resource, WatchEvent};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{DesiredChanged, StoreError, now_ms};

/// A stored agent command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub command: Command,
    pub node: String,
    pub created_ms: i64,
    /// `None` while the command is open (part of the node's desired state).
    pub result: Option<CommandResult>,
}

pub struct Txn<'a> {
    pub(super) tx: Transaction<'a>,
    events: Vec<WatchEvent>,
    desired: Vec<DesiredChanged>,
}

fn kind_key(kind: Kind) -> &'static str {
    kind.noun()
}

impl<'a> Txn<'a> {
    pub(super) fn new(tx: Transaction<'a>) -> Self {
        Txn {
            tx,
            events: Vec::new(),
            desired: Vec::new(),
        }
    }

    pub(super) fn commit(self, retention: u64) -> Result<(Vec<WatchEvent>, Vec<DesiredChanged>), StoreError> {
        if !self.events.is_empty() {
            let rev = self.revision()?;
            if rev > retention {
                self.prune_history(rev - retention)?;
            }
        }
        self.tx.commit()?;
        Ok((self.events, self.desired))
    }

    /// The store's current revision (the resource_version of the newest change).
    pub fn revision(&self) -> Result<u64, StoreError> {
        let v: i64 = self
            .tx
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| r.get(0))?;
        Ok(v as u64)
    }

    fn next_revision(&mut self) -> Result<u64, StoreError> {
        self.tx
            .execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'", [])?;
        self.revision()
    }

    pub(super) fn decode(kind: Kind, name: &str, body: &str) -> Result<Resource, StoreError> {
        serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
            kind: kind.noun(),
            name: name.into(),
            source,
        })
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let body: Option<String> = self
            .tx
            .query_row(
                "SELECT body FROM resources WHERE kind = ?1 AND name = ?2",
                params![kind_key(kind), name],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| Self::decode(kind, name, &b)).transpose()
    }

    /// Every object of a kind, ordered by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name, body FROM resources WHERE kind = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![kind_key(kind)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row?;
            out.push(Self::decode(kind, &name, &body)?);
        }
        Ok(out)
    }

    fn put(&mut self, mut r: Resource, ty: EventType) -> Result<Resource, StoreError> {
        let kind = r.kind();
        let rev = self.next_revision()?;
        let now = now_ms();
        {
            let m = r.metadata_mut().expect("resource has a kind");
            m.resource_version = rev;
            m.updated_at_ms = now;
            if ty == EventType::Added {
                m.created_at_ms = now;
                m.generation = m.generation.max(1);
            }
        }
        let name = r.name().to_string();
        let body = serde_json::to_string(&r).map_err(|source| StoreError::Encode {
            kind: kind.noun(),
            name: name.clone(),
            source,
        })?;
        let prev = if ty == EventType::Added {
            None
        } else {
            self.prev_body_to_keep(kind, &name)?
        };
        if ty == EventType::Added {
            self.tx.execute(
                "INSERT INTO resources (kind, name, resource_version, body) VALUES (?1, ?2, ?3, ?4)",
                params![kind_key(kind), name, rev as i64, body],
            )?;
        } else {
            self.tx.execute(
                "UPDATE resources SET resource_version = ?3, body = ?4 WHERE kind = ?1 AND name = ?2",
                params![kind_key(kind), name, rev as i64, body],
            )?;
        }
        self.record_event(rev, kind, &name, ty, (&body, prev), &r)?;
        Ok(r)
    }

    /// `(body, prev_body)`: `prev_body` is the object's state before this
    /// event when no kept event holds it (see snapshot.rs).
    fn record_event(
        &mut self,
        rev: u64,
        kind: Kind,
        name: &str,
        ty: EventType,
        (body, prev_body): (&str, Option<String>),
        r: &Resource,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO events (revision, kind, name, type, body, prev_body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![rev as i64, kind_key(kind), name, ty as i32, body, prev_body],
        )?;
        self.events.push(WatchEvent {
            r#type: ty as i32,
            resource_version: rev,
            resource: Some(r.clone()),
        });
        Ok(())
    }

    /// Insert a new object; sets resource_version, created/updated times and generation 1.
    /// The caller checks that it does not exist yet.
    pub fn insert(&mut self, r: Resource) -> Result<Resource, StoreError> {
        self.put(r, EventType::Added)
    }

    /// Replace a stored object; sets resource_version and updated time. The
    /// caller handles `generation` (it grows with spec changes only).
    pub fn update(&mut self, r: Resource) -> Result<Resource, StoreError> {
        self.put(r, EventType::Modified)
    }

    /// Remove an object; returns what was stored (with the deletion's revision).
    pub fn delete(&mut self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let Some(mut r) = self.get(kind, name)? else {
            return Ok(None);
        };
        let rev = self.next_revision()?;
        let prev = self.prev_body_to_keep(kind, name)?;
        self.tx.execute(
            "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
            params![kind_key(kind), name],
        )?;
        if let Some(m) = r.metadata_mut() {
            m.resource_version = rev;
        }
        let body = serde_json::to_string(&r).map_err(|source| StoreError::Encode {
            kind: kind.noun(),
            name: name.into(),
            source,
        })?;
        self.record_event(rev, kind, name, EventType::Deleted, (&body, prev), &r)?;
        Ok(Some(r))
    }

    /// Retained events after `from_version`, oldest first.
    pub fn events_since(
        &self,
        from_version: u64,
        kinds: &[Kind],
        limit: usize,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        let oldest: Option<i64> = self
            .tx
            .query_row("SELECT MIN(revision) FROM events", [], |r| r.get(0))?;
        let current = self.revision()?;
        if let Some(oldest) = oldest
            && from_version + 1 < oldest as u64
            && from_version < current
        {
            return Err(StoreError::TooOld {
                requested: from_version,
                oldest: oldest as u64 - 1,
            });
        }
        let mut stmt = self.tx.prepare_cached(
            "SELECT revision, kind, name, type, body FROM events WHERE revision > ?1 ORDER BY revision LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from_version as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i32>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rev, kind_s, name, ty, body) = row?;
            let kind = Kind::from_noun(&kind_s).unwrap_or(Kind::Unspecified);
            if !kinds.is_empty() && !kinds.contains(&kind) {
                continue;
            }
            let resource = Self::decode(kind, &name, &body)?;
            out.push(WatchEvent {
                r#type: ty,
                resource_version: rev as u64,
                resource: Some(resource),
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------------ commands

    fn bump_desired(&mut self, node: &str) -> Result<u64, StoreError> {
        let version = self.next_revision()?;
        self.tx.execute(
            "INSERT INTO desired (node, version) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET version = excluded.version",
            params![node, version as i64],
        )?;
        self.desired.retain(|d| d.node != node);
        self.desired.push(DesiredChanged {
            node: node.into(),
            version,
        });
        Ok(version)
    }

    /// Give a node's desired state a new version without changing its
    /// commands: for changes the version must announce that are not command
    /// rows (a Dpu's host network joining or leaving the node's desired
    /// state). Sessions resend on the new version. Returns it.
    pub fn touch_desired(&mut self, node: &str) -> Result<u64, StoreError> {
        self.bump_desired(node)
    }

    /// The version of a node's desired state (0 if it never had one).
    pub fn desired_version(&self, node: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .tx
            .query_row(
                "SELECT version FROM desired WHERE node = ?1",
                params![node],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Add an open command to `node`'s desired state. Returns the new desired version.
    pub fn insert_command(&mut self, node: &str, command: &Command) -> Result<u64, StoreError> {
        let body = serde_json::to_string(command).map_err(|source| StoreError::Encode {
            kind: "command",
            name: command.id.clone(),
            source,
        })?;
        self.tx.execute(
            "INSERT INTO commands (id, node, dpu, body, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![command.id, node, command.dpu, body, now_ms()],
        )?;
        self.bump_desired(node)
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        let row = self
            .tx
            .query_row(
                "SELECT node, body, created_ms, outcome, message, finished_ms FROM commands WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i32>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((node, body, created_ms, outcome, message, finished)) = row else {
            return Ok(None);
        };
        let command: Command = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
            kind: "command",
            name: id.into(),
            source,
        })?;
        let result = outcome.map(|o| CommandResult {
            outcome: o,
            message: message.unwrap_or_default(),
            finished_at_ms: finished.unwrap_or(0),
        });
        Ok(Some(CommandRow {
            command,
            node,
            created_ms,
            result,
        }))
    }

    /// The open commands of a node, oldest first: its desired state.
    pub fn open_commands(&self, node: &str) -> Result<Vec<Command>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, body FROM commands WHERE node = ?1 AND outcome IS NULL ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map(params![node], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                kind: "command",
                name: id,
                source,
            })?);
        }
        Ok(out)
    }

    /// Record a command's final result. Returns false (and changes nothing) if
    /// the command is unknown or already has a result: results are idempotent by id.
    /// A recorded result takes the command out of the node's desired state.
    pub fn finish_command(&mut self, id: &str, result: &CommandResult) -> Result<bool, StoreError> {
        let node: Option<String> = self
            .tx
            .query_row(
                "SELECT node FROM commands WHERE id = ?1 AND outcome IS NULL",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(node) = node else { return Ok(false) };
        let finished = if result.finished_at_ms > 0 {
            result.finished_at_ms
        } else {
            now_ms()
        };
        self.tx.execute(
            "UPDATE commands SET outcome = ?2, message = ?3, finished_ms = ?4 WHERE id = ?1",
            params![id, result.outcome, result.message, finished],
        )?;
        self.bump_desired(&node)?;
        Ok(true)
    }

    /// Withdraw every open command of a Dpu (the agent cancels them). Returns their ids.
    pub fn cancel_commands_for_dpu(&mut self, dpu: &str, why: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT id FROM commands WHERE dpu = ?1 AND outcome IS NULL")?;
        let ids: Vec<String> = stmt
            .query_map(params![dpu], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        for id in &ids {
            let result = CommandResult {
                outcome: CommandOutcome::Cancelled as i32,
                message: why.to_string(),
                finished_at_ms: 0,
            };
            self.finish_command(id, &result)?;
        }
        Ok(ids)
    }

    /// Drop finished commands older than `before_ms` (history housekeeping).
    pub fn prune_commands(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.tx.execute(
            "DELETE FROM commands WHERE outcome IS NOT NULL AND finished_ms < ?1",
            params![before_ms],
        )?)
    }

    /// Devices or Dpus whose `spec.node` is `node`, ordered by name (filtered in SQL,
    /// so an agent's Hello does not decode every device of the fleet).
    pub fn list_on_node(&self, kind: Kind, node: &str) -> Result<Vec<Resource>, StoreError> {
        let path = format!("$.{}.spec.node", kind.noun());
        let mut stmt = self.tx.prepare_cached(
            "SELECT name, body FROM resources WHERE kind = ?1 AND json_extract(body, ?2) = ?3 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![kind_key(kind), path, node], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row?;
            out.push(Self::decode(kind, &name, &body)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
impl Txn<'_> {
    pub fn commit_retention_for_test(&mut self, keep: u64) -> Result<(), StoreError> {
        let rev = self.revision()?;
        self.prune_history(rev.saturating_sub(keep))
    }
}
