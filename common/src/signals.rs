//! Unix signals as a typed enum: SIGTERM / SIGINT shut down, SIGHUP asks for
//! a reload: it wakes the daemon's reload [`Notify`] when it has one, and is
//! logged and ignored when it has none. The first shutdown
//! signal cancels the root token and lets the daemon drain within its grace
//! period; a second one means "now": [`spawn_handler`] exits the process.
use std::sync::Arc;

use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Install the handlers (needs a tokio runtime). From here on the process
    /// is no longer killed by these signals' default actions.
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

    /// Cancel `shutdown` on the first SIGTERM/SIGINT; on SIGHUP wake `reload`
    /// (or log that there is nothing to reload). Returns the name of a second
    /// SIGTERM/SIGINT that arrives once `shutdown` is cancelled (by a signal
    /// or by anything else).
    pub async fn run(mut self, shutdown: CancellationToken, reload: Option<Arc<Notify>>) -> &'static str {
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
                Signal::Reload => match &reload {
                    Some(r) => {
                        tracing::info!(signal = "SIGHUP", "reloading");
                        // A stored permit: a SIGHUP during a reload is not lost.
                        r.notify_one();
                    }
                    None => tracing::info!(
                        signal = "SIGHUP",
                        "this daemon reloads nothing; restart to apply changes"
                    ),
                },
            }
        }
    }
}

/// Run [`Signals::run`] in a task (span `signals`); on a second shutdown
/// signal, exit the process with `exit_code` without waiting for the grace
/// period. Abort the returned handle once the daemon has stopped.
pub fn spawn_handler(
    signals: Signals,
    shutdown: CancellationToken,
    reload: Option<Arc<Notify>>,
    exit_code: i32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            signals.run(shutdown, reload).await;
            std::process::exit(exit_code);
        }
        .instrument(tracing::info_span!("signals")),
    )
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::{Signal as Sig, raise};

    use super::*;

    // The only test in this crate that raises signals. The handlers are
    // installed before any signal is sent, so the test process catches them.
    #[tokio::test]
    async fn signals_become_typed_events_and_a_second_one_ends_the_run() {
        let mut s = Signals::new().unwrap();
        raise(Sig::SIGHUP).unwrap();
        assert_eq!(s.recv().await, Signal::Reload);
        raise(Sig::SIGTERM).unwrap();
        assert_eq!(s.recv().await, Signal::Shutdown("SIGTERM"));

        let shutdown = CancellationToken::new();
        let reload = Arc::new(Notify::new());
        let task = tokio::spawn(s.run(shutdown.clone(), Some(reload.clone())));
        raise(Sig::SIGHUP).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), reload.notified())
            .await
            .expect("SIGHUP wakes the reload");
        assert!(!shutdown.is_cancelled(), "SIGHUP does not stop the daemon");
        raise(Sig::SIGINT).unwrap();
        shutdown.cancelled().await;
        assert!(
            !task.is_finished(),
            "the first shutdown signal only starts the shutdown"
        );
        raise(Sig::SIGTERM).unwrap();
        assert_eq!(task.await.unwrap(), "SIGTERM");
    }
}
