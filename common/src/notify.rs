//! systemd service notifications (`Type=notify` units): `READY=1` once the
//! daemon serves, `STOPPING=1` when it begins to shut down, `STATUS=` lines,
//! and watchdog pings when the unit sets `WatchdogSec=`. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The daemon is ready: it serves. `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The daemon has begun to shut down.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A new `STATUS=` line.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this PID), if any.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// When systemd asked for a watchdog, ping it at half its period until
/// `stop` is cancelled. The pings come from the runtime the daemon's work
/// runs on, so a wedged runtime stops them and systemd restarts the daemon.
pub fn spawn_watchdog(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let period = watchdog_period()?;
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!(watchdog = ?period, ping_every = ?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }))
}
