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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{Signal as Sig, raise};

    use super::*;

    // The only test in this binary that raises signals (SIGINT is left alone:
    // the flash CLI listens for it). Handlers are installed before raising,
    // so the default actions never run.
    #[tokio::test]
    async fn hup_is_reload_and_term_cancels_the_root_token() {
        let mut signals = Signals::new().unwrap();
        raise(Sig::SIGHUP).unwrap();
        assert_eq!(signals.recv().await, Signal::Reload);
        raise(Sig::SIGTERM).unwrap();
        assert_eq!(signals.recv().await, Signal::Shutdown("SIGTERM"));

        let shutdown = CancellationToken::new();
        let handler = spawn_handler(Signals::new().unwrap(), shutdown.clone());
        raise(Sig::SIGHUP).unwrap();
        raise(Sig::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(20), handler)
            .await
            .expect("the handler did not see SIGTERM")
            .unwrap();
        assert!(
            shutdown.is_cancelled(),
            "SIGTERM after SIGHUP cancels; SIGHUP did not end the handler"
        );
    }
}
