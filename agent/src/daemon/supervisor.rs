//! A subsystem's task owner: its cancellation token and the tracker that
//! holds every task it spawned, so a stop both asks and waits.
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One subsystem's tasks (host networking, the power sampler and BMC
/// poller, the caps enforcer, the metrics endpoint).
pub struct Subsystem {
    name: &'static str,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Subsystem {
    pub fn new(name: &'static str) -> Subsystem {
        Subsystem {
            name,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The token the subsystem's tasks stop on.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Where the subsystem spawns its tasks.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Cancel the subsystem and wait up to `deadline` for its tasks to end.
    /// True when they all ended; otherwise the stragglers are logged (and
    /// left to the runtime's shutdown). Calling it again is harmless.
    pub async fn stop(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait()).await.is_ok() {
            tracing::info!(subsystem = self.name, "stopped");
            return true;
        }
        tracing::warn!(
            subsystem = self.name,
            tasks = self.tasks.len(),
            ?deadline,
            "did not stop within the shutdown deadline; abandoned"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_the_tasks_and_gives_up_at_the_deadline() {
        let s = Subsystem::new("t");
        let token = s.token();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.tasks().spawn(async move {
            token.cancelled().await;
            // Cleanup that takes a while (a BMC logout).
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tx.send(());
        });
        assert!(
            s.stop(Duration::from_secs(5)).await,
            "the task ended within the deadline"
        );
        assert!(rx.await.is_ok(), "stop waited for the cleanup to finish");

        let stuck = Subsystem::new("stuck");
        stuck.tasks().spawn(std::future::pending::<()>());
        assert!(
            !stuck.stop(Duration::from_secs(1)).await,
            "a task that ignores cancellation is reported"
        );
        assert_eq!(stuck.tasks().len(), 1);
    }
}
