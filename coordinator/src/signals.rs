//! Unix signals as a typed enum: SIGTERM / SIGINT shut down, SIGHUP asks for
//! a reload (not supported yet: logged and ignored).
use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT; the name is for the log.
    Shutdown(&'static str),
    /// SIGHUP.
    Reload,
}

pub struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
}

impl Signals {
    /// Install the handlers (needs a tokio runtime).
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Shutdown("SIGTERM"),
            _ = self.int.recv() => Signal::Shutdown("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }

    /// Cancel `shutdown` on the first SIGTERM/SIGINT and log SIGHUP. Returns
    /// the name of a second SIGTERM/SIGINT that arrives once `shutdown` is
    /// cancelled: the caller then exits without waiting for the grace period.
    pub async fn run(mut self, shutdown: CancellationToken) -> &'static str {
        loop {
            match self.recv().await {
                Signal::Shutdown(name) if shutdown.is_cancelled() => {
                    tracing::warn!(signal = name, "second shutdown signal; exiting without waiting");
                    return name;
                }
                Signal::Shutdown(name) => {
                    tracing::info!(signal = name, "shutting down");
                    shutdown.cancel();
                }
                Signal::Reload => {
                    tracing::info!(
                        signal = "SIGHUP",
                        "reload not supported yet; restart to apply changes"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn raise(sig: &str) {
        let pid = std::process::id().to_string();
        let st = tokio::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }

    // The handlers are installed before any signal is sent, so the test
    // process catches them instead of dying.
    #[tokio::test]
    async fn signals_become_typed_events_and_a_second_one_forces_the_exit() {
        let mut s = Signals::new().unwrap();
        raise("-HUP").await;
        assert_eq!(s.recv().await, Signal::Reload);

        let shutdown = CancellationToken::new();
        let task = tokio::spawn(s.run(shutdown.clone()));
        raise("-HUP").await; // logged, nothing else
        raise("-INT").await;
        shutdown.cancelled().await;
        assert!(
            !task.is_finished(),
            "the first shutdown signal only starts the shutdown"
        );
        raise("-TERM").await;
        assert_eq!(task.await.unwrap(), "SIGTERM");
    }
}
