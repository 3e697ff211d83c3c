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

    /// Cancel `shutdown` on the first SIGTERM/SIGINT; log SIGHUP. Returns
    /// once `shutdown` is cancelled, by a signal or by anyone else.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let sig = tokio::select! {
                () = shutdown.cancelled() => return,
                sig = self.recv() => sig,
            };
            match sig {
                Signal::Shutdown(name) => {
                    tracing::info!(signal = name, "shutting down");
                    shutdown.cancel();
                    return;
                }
                Signal::Reload => tracing::info!(
                    signal = "SIGHUP",
                    "reload not supported yet; restart to apply changes"
                ),
            }
        }
    }
}
