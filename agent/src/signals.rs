//! Unix signals as a typed stream: SIGTERM / SIGINT mean shut down, SIGHUP
//! means reload (not supported yet: logged, never fatal).
use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT; the name is for the log.
    Shutdown(&'static str),
    /// SIGHUP.
    Reload,
}

/// The signals the agent listens to. Create it before the work starts so no
/// signal is missed.
pub struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
}

impl Signals {
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
}

/// Spawn the task that turns signals into `shutdown.cancel()`. It ends once
/// `shutdown` is cancelled (by a signal or by anyone else).
pub fn spawn_handler(mut signals: Signals, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("signals");
    tokio::spawn(
        async move {
            loop {
                let sig = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    sig = signals.recv() => sig,
                };
                match sig {
                    Signal::Shutdown(name) => {
                        tracing::info!(signal = name, "shutting down");
                        shutdown.cancel();
                        return;
                    }
                    Signal::Reload => {
                        tracing::warn!(
                            signal = "SIGHUP",
                            "reload is not supported yet; restart the agent to apply config changes"
                        );
                    }
                }
            }
        }
        .instrument(span),
    )
}
