//! The command journal, `<state_dir>/journal.json`: every command the agent
//! started and, once known, its final result. It is what makes "at most once
//! per id" survive a restart: on open, a command that was started but has no
//! result becomes INTERRUPTED (never re-run, never reported as success).
//! Entries are forgotten once an applied desired state no longer lists them.
//! The whole file is rewritten atomically on each change (it is small).
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use hostplane_proto::v1::{Command, CommandOutcome, CommandResult, FlashProgress};
use serde::{Deserialize, Serialize};

use super::persist::{StateError, read_optional, write_atomic};
use crate::exec::{action_name, now_ms, result};

pub const JOURNAL_FILE: &str = "journal.json";

/// Finished entries kept at most (the oldest are dropped first); running
/// entries are never dropped.
pub const DEFAULT_MAX_FINISHED: usize = 1000;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("command journal: {0}")]
    State(#[from] StateError),
    #[error(
        "command journal {path} has format version {found}, this agent reads {FORMAT_VERSION}; \
         move it aside to start fresh (commands in it could then run again)"
    )]
    Version { path: PathBuf, found: u32 },
}

/// One command as the journal remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub dpu: String,
    pub rshim: String,
    /// Action name (`flash_bfb`, ...).
    pub kind: String,
    pub started_at_ms: i64,
    /// Coarse progress, so an interrupted flash can say how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressNote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressNote {
    pub stage: String,
    pub bytes_pushed: u64,
    pub bytes_total: u64,
}

#[derive(Serialize, Deserialize)]
struct JournalFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    max_finished: usize,
}

impl Journal {
    /// Read the journal (an absent file is an empty journal) and turn every
    /// started-without-result entry into INTERRUPTED; returns the ids that were
    /// interrupted. The converted journal is saved before this returns.
    pub async fn open(state_dir: &Path, max_finished: usize) -> Result<(Journal, Vec<String>), JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        let entries = match read_optional(&path).await? {
            None => BTreeMap::new(),
            Some(bytes) => {
                let file: JournalFile =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if file.version != FORMAT_VERSION {
                    return Err(JournalError::Version {
                        path,
                        found: file.version,
                    });
                }
                file.entries
            }
        };
        let mut journal = Journal {
            path,
            entries,
            max_finished,
        };
        let mut interrupted = Vec::new();
        for (id, e) in &mut journal.entries {
            if e.result.is_none() {
                e.result = Some(result(CommandOutcome::Interrupted, interrupted_message(id, e)));
                interrupted.push(id.clone());
            }
        }
        if !interrupted.is_empty() {
            journal.bound();
            journal.save().await?;
        }
        Ok((journal, interrupted))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Record that `cmd` starts now (in memory; [`Journal::save`] before running it).
    pub fn start(&mut self, cmd: &Command) {
        self.entries.insert(
            cmd.id.clone(),
            Entry {
                dpu: cmd.dpu.clone(),
                rshim: cmd.rshim.clone(),
                kind: action_name(cmd.action.as_ref()).to_string(),
                started_at_ms: now_ms(),
                progress: None,
                result: None,
            },
        );
    }

    /// Record the final result of `id` (in memory). The first result wins.
    pub fn finish(&mut self, id: &str, res: CommandResult) {
        if let Some(e) = self.entries.get_mut(id)
            && e.result.is_none()
        {
            e.result = Some(res);
            self.bound();
        }
    }

    /// Note progress of a running command; true when the note changed enough
    /// (new stage, or another tenth of the bytes) to be worth saving.
    pub fn note_progress(&mut self, id: &str, p: &FlashProgress) -> bool {
        let Some(e) = self.entries.get_mut(id).filter(|e| e.result.is_none()) else {
            return false;
        };
        let worth = match &e.progress {
            None => true,
            Some(old) => {
                let step = (p.bytes_total / 10).max(1);
                old.stage != p.stage || p.bytes_pushed >= old.bytes_pushed.saturating_add(step)
            }
        };
        if worth {
            e.progress = Some(ProgressNote {
                stage: p.stage.clone(),
                bytes_pushed: p.bytes_pushed,
                bytes_total: p.bytes_total,
            });
        }
        worth
    }

    /// Forget finished entries whose id is not in `listed`; returns how many.
    pub fn forget_unlisted(&mut self, listed: &HashSet<&str>) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|id, e| e.result.is_none() || listed.contains(id.as_str()));
        before - self.entries.len()
    }

    /// Write the journal atomically.
    pub async fn save(&self) -> Result<(), JournalError> {
        let file = JournalFile {
            version: FORMAT_VERSION,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        Ok(write_atomic(self.path.clone(), bytes).await?)
    }

    /// Keep at most `max_finished` finished entries, dropping the oldest.
    fn bound(&mut self) {
        let mut finished: Vec<(i64, String)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| e.result.as_ref().map(|r| (r.finished_at_ms, id.clone())))
            .collect();
        if finished.len() <= self.max_finished {
            return;
        }
        finished.sort();
        let excess = finished.len() - self.max_finished;
        for (_, id) in finished.into_iter().take(excess) {
            self.entries.remove(&id);
        }
    }
}

/// What an interrupted command's result says, per kind.
fn interrupted_message(id: &str, e: &Entry) -> String {
    match e.kind.as_str() {
        "flash_bfb" => {
            let progress = match &e.progress {
                Some(p) if p.bytes_total > 0 => format!(
                    " after {} of {} bytes were pushed (last stage: {})",
                    p.bytes_pushed,
                    p.bytes_total,
                    if p.stage.is_empty() { "push" } else { &p.stage }
                ),
                Some(p) if !p.stage.is_empty() => format!(" (last stage: {})", p.stage),
                _ => String::new(),
            };
            format!(
                "agent restarted while flashing {} (dpu {}, command {id}){progress}; \
                 the DPU's state is unknown; reprovision to retry",
                e.rshim, e.dpu
            )
        }
        "prepare_bfb" => format!(
            "agent restarted while downloading the bfb for dpu {} (command {id}); nothing was flashed; \
             a retry resumes the download",
            e.dpu
        ),
        "reboot_host" => format!(
            "agent restarted while the host reboot it issued was in progress (command {id}); \
             the host's boot id shows whether it rebooted"
        ),
        kind => format!(
            "agent restarted while running {kind} for dpu {} (command {id}); its effect is unknown",
            e.dpu
        ),
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{FlashBfb, PrepareBfb, command::Action};

    use super::*;

    fn cmd(id: &str, action: Action) -> Command {
        Command {
            id: id.into(),
            dpu: format!("dpu-{id}"),
            rshim: "rshim0".into(),
            action: Some(action),
        }
    }

    fn flash(id: &str) -> Command {
        cmd(id, Action::FlashBfb(FlashBfb::default()))
    }

    fn done(outcome: CommandOutcome, at: i64) -> CommandResult {
        CommandResult {
            outcome: outcome as i32,
            message: "m".into(),
            finished_at_ms: at,
            power_cycle_required: false,
        }
    }

    #[tokio::test]
    async fn started_without_result_becomes_interrupted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, interrupted) = Journal::open(dir.path(), 10).await.unwrap();
        assert!(interrupted.is_empty() && j.is_empty());
        j.start(&flash("c1"));
        j.start(&cmd("c2", Action::PrepareBfb(PrepareBfb::default())));
        j.start(&flash("c3"));
        j.finish("c3", done(CommandOutcome::Succeeded, 5));
        let p = FlashProgress {
            bytes_pushed: 600,
            bytes_total: 1000,
            stage: "push".into(),
            ..Default::default()
        };
        assert!(j.note_progress("c1", &p));
        j.save().await.unwrap();

        let (j, mut interrupted) = Journal::open(dir.path(), 10).await.unwrap();
        interrupted.sort();
        assert_eq!(interrupted, ["c1", "c2"]);
        let r1 = j.get("c1").unwrap().result.clone().unwrap();
        assert_eq!(r1.outcome(), CommandOutcome::Interrupted);
        for want in ["rshim0", "dpu-c1", "c1", "600 of 1000 bytes", "state is unknown"] {
            assert!(r1.message.contains(want), "{:?} lacks {want:?}", r1.message);
        }
        let r2 = j.get("c2").unwrap().result.clone().unwrap();
        assert_eq!(r2.outcome(), CommandOutcome::Interrupted);
        assert!(r2.message.contains("downloading"), "{}", r2.message);
        assert_eq!(
            j.get("c3").unwrap().result.as_ref().unwrap().outcome(),
            CommandOutcome::Succeeded
        );

        // The conversion was saved: a second restart reports nothing new.
        let (_, again) = Journal::open(dir.path(), 10).await.unwrap();
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn first_result_wins_and_unlisted_finished_entries_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 10).await.unwrap();
        for id in ["a", "b", "c"] {
            j.start(&flash(id));
        }
        j.finish("a", done(CommandOutcome::Succeeded, 1));
        j.finish("a", done(CommandOutcome::Failed, 2));
        j.finish("b", done(CommandOutcome::Cancelled, 3));
        j.finish("unknown", done(CommandOutcome::Failed, 4));
        assert_eq!(
            j.get("a").unwrap().result.as_ref().unwrap().outcome(),
            CommandOutcome::Succeeded
        );
        assert!(j.get("unknown").is_none());
        // "b" is listed; "a" is not; "c" is still running and stays.
        assert_eq!(j.forget_unlisted(&HashSet::from(["b"])), 1);
        assert!(j.get("a").is_none() && j.get("b").is_some() && j.get("c").is_some());
    }

    #[tokio::test]
    async fn finished_entries_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 2).await.unwrap();
        j.start(&flash("running"));
        for (i, id) in ["x1", "x2", "x3"].into_iter().enumerate() {
            j.start(&flash(id));
            j.finish(id, done(CommandOutcome::Succeeded, 10 + i as i64));
        }
        assert!(j.get("x1").is_none(), "oldest finished entry dropped");
        assert!(j.get("x2").is_some() && j.get("x3").is_some() && j.get("running").is_some());
    }

    #[test]
    fn progress_notes_are_coarse() {
        let mut j = Journal {
            path: PathBuf::from("/x"),
            entries: BTreeMap::new(),
            max_finished: 10,
        };
        j.start(&flash("c"));
        let p = |stage: &str, bytes| FlashProgress {
            stage: stage.into(),
            bytes_pushed: bytes,
            bytes_total: 1000,
            ..Default::default()
        };
        assert!(j.note_progress("c", &p("push", 0)));
        assert!(!j.note_progress("c", &p("push", 50)));
        assert!(j.note_progress("c", &p("push", 100)));
        assert!(j.note_progress("c", &p("bl2", 100)));
        assert!(!j.note_progress("other", &p("push", 0)));
    }

    #[tokio::test]
    async fn unreadable_journal_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), "[").unwrap();
        let err = Journal::open(dir.path(), 10).await.unwrap_err();
        assert!(err.to_string().contains(JOURNAL_FILE), "{err}");
        std::fs::write(dir.path().join(JOURNAL_FILE), r#"{"version":9,"entries":{}}"#).unwrap();
        let err = Journal::open(dir.path(), 10).await.unwrap_err();
        assert!(matches!(err, JournalError::Version { found: 9, .. }), "{err}");
    }
}
