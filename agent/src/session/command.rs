//! One command's task: runs the executor, drains its progress (coalesced,
//! at most one event per [`PROGRESS_INTERVAL`], dropped when the agent is
//! backed up: a flash never waits for the network), and hands the final
//! result to the session owner.
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hostplane_proto::v1::{Command, CommandOutcome, CommandResult, FlashProgress};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, result};

/// Progress events per command go out at most this often (~4/s).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// What command tasks tell the session owner.
#[derive(Debug)]
pub enum Event {
    Progress { id: String, progress: FlashProgress },
    Finished { id: String, result: CommandResult },
}

/// Run `cmd` to its final result and report it on `events`.
pub async fn run(
    executor: Arc<dyn Executor>,
    cmd: Command,
    cancel: CancellationToken,
    events: mpsc::Sender<Event>,
) {
    let id = cmd.id.clone();
    tracing::info!("command started");
    let (progress_tx, mut progress_rx) = mpsc::channel::<FlashProgress>(16);
    let work = AssertUnwindSafe(executor.execute(cmd, progress_tx, cancel)).catch_unwind();
    tokio::pin!(work);
    let mut latest: Option<FlashProgress> = None;
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let res = loop {
        tokio::select! {
            res = &mut work => break res.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "command task panicked");
                result(CommandOutcome::Failed, format!("agent bug: command {id} crashed: {what}"))
            }),
            Some(p) = progress_rx.recv() => latest = Some(p),
            _ = tick.tick(), if latest.is_some() => {
                if let Some(progress) = latest.take() {
                    // Full means the session is backed up: drop this one, a newer one follows.
                    let _ = events.try_send(Event::Progress { id: id.clone(), progress });
                }
            }
        }
    };
    tracing::info!(outcome = res.outcome().as_str_name(), message = %res.message, "command finished");
    // Fails only when the session owner is gone (shutdown past its grace period).
    let _ = events.send(Event::Finished { id, result: res }).await;
}
