//! The BMC poller: connects (re-probing with backoff while the BMC cannot
//! be used), reads it every `power.bmc.poll_interval`, and keeps the last
//! readings for the 1 Hz sampler, which reports them with their age. The
//! connected client is shared ([`BmcLink::client`]) so the caps enforcer
//! sets limits through the same session and the same rate limit.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{BmcConfig, RedfishClient, RedfishError};
use crate::power::{Reading, Scope};

/// The longest wait between two tries while the BMC fails (at least the poll interval).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// ... and while it refuses the credentials: BMCs lock an account out after
/// a few failed logins, so a wrong password is tried rarely.
const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(600);

/// A handle on the poller of one BMC. Cheap to clone.
#[derive(Clone)]
pub struct BmcLink {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    client: watch::Sender<Option<Arc<RedfishClient>>>,
    cache: std::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The last sample and when it was taken.
    readings: Vec<Reading>,
    at: Option<Instant>,
    /// Why the BMC cannot be used (connect failed), while that is so.
    down: Option<String>,
    /// The device a `down` reading is reported under: the node chassis
    /// once known, else `power.bmc.chassis`, else `bmc`.
    device: String,
}

impl BmcLink {
    /// The BMC's URL as configured.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The connected client; None until the BMC was reached and its chassis found.
    pub fn client(&self) -> Option<Arc<RedfishClient>> {
        self.shared.client.borrow().clone()
    }

    /// Wait until the client is connected; None when the poller has stopped.
    pub async fn wait_client(&self) -> Option<Arc<RedfishClient>> {
        let mut rx = self.shared.client.subscribe();
        rx.wait_for(Option::is_some).await.ok().and_then(|c| c.clone())
    }

    /// The cached readings with `age` set (how long before `now` they were
    /// taken), or one reading saying why the BMC cannot be used; nothing
    /// before the first try has ended.
    pub fn readings(&self, now: Instant) -> Vec<Reading> {
        let c = self.cache();
        if let Some(why) = &c.down {
            return vec![Reading::unavailable(
                "redfish",
                Scope::Node,
                c.device.clone(),
                why.clone(),
            )];
        }
        let Some(at) = c.at else { return Vec::new() };
        let age = now.saturating_duration_since(at);
        c.readings
            .iter()
            .map(|r| Reading {
                age: Some(age),
                ..r.clone()
            })
            .collect()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.shared.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Start polling the BMC of `cfg` (whose `url` is set) until `shutdown`, in
/// a task `tasks` owns; the session is deleted on the way out, so the owner
/// must wait for `tasks` (not just cancel) for the logout to happen.
pub fn spawn(
    cfg: BmcConfig,
    counts: super::http::RequestCounts,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> BmcLink {
    let (client, _) = watch::channel(None);
    let link = BmcLink {
        shared: Arc::new(Shared {
            url: cfg.url.clone(),
            client,
            cache: std::sync::Mutex::new(Cache {
                device: cfg.chassis.clone().unwrap_or_else(|| "bmc".into()),
                ..Default::default()
            }),
        }),
    };
    let span = tracing::info_span!("bmc", url = %cfg.url);
    tasks.spawn(run(link.clone(), cfg, counts, shutdown).instrument(span));
    link
}

async fn run(link: BmcLink, cfg: BmcConfig, counts: super::http::RequestCounts, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut refused = false;
    let mut client: Option<Arc<RedfishClient>> = None;
    loop {
        match &client {
            None => {
                let connect = RedfishClient::connect_counted(&cfg, counts.clone());
                tokio::pin!(connect);
                let r = tokio::select! {
                    r = &mut connect => r,
                    () = shutdown.cancelled() => {
                        // The login may already have made a session: dropping
                        // the connect here would leak it on the BMC. Let it
                        // end (each request is bounded by power.bmc.timeout;
                        // the daemon's drain deadline bounds the whole), then
                        // log out.
                        if let Ok(c) = connect.await {
                            c.logout().await;
                            tracing::info!("BMC session closed");
                        }
                        return;
                    }
                };
                match r {
                    Ok(c) => {
                        tracing::info!(
                            node = c.node_device(),
                            gpus = c.gpus.len(),
                            auth = c.auth_kind(),
                            "BMC connected"
                        );
                        let c = Arc::new(c);
                        {
                            let mut cache = link.cache();
                            cache.down = None;
                            cache.device = c.node_device().to_string();
                        }
                        link.shared.client.send_replace(Some(c.clone()));
                        client = Some(c);
                        failures = 0;
                        continue;
                    }
                    Err(e) => {
                        refused = matches!(
                            e,
                            RedfishError::Status {
                                status: 401 | 403,
                                ..
                            }
                        );
                        // Logged (once per change) by the sampler, from the reading.
                        let why = format!("cannot use the BMC at {}: {e}", cfg.url);
                        tracing::debug!(%why, "BMC connect failed");
                        link.cache().down = Some(why);
                        failures = failures.saturating_add(1);
                    }
                }
            }
            Some(c) => {
                let readings = tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = c.sample() => r,
                };
                let failed = readings.iter().all(|r| r.error.is_some());
                {
                    let mut cache = link.cache();
                    cache.readings = readings;
                    cache.at = Some(Instant::now());
                }
                if failed {
                    failures = failures.saturating_add(1);
                } else {
                    if failures > 0 {
                        tracing::info!("BMC readable again");
                    }
                    failures = 0;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff(cfg.poll_interval, failures, refused)) => {}
        }
    }
    if let Some(c) = client {
        c.logout().await;
        tracing::info!("BMC session closed");
    }
}

/// The wait before the next try: the poll interval, doubled per failure in
/// a row, at most [`MAX_BACKOFF`] ([`MAX_AUTH_BACKOFF`] after the BMC
/// `refused` the credentials), or the poll interval if longer.
pub fn backoff(poll: Duration, failures: u32, refused: bool) -> Duration {
    let cap = if refused { MAX_AUTH_BACKOFF } else { MAX_BACKOFF }.max(poll);
    poll.saturating_mul(1u32 << failures.min(16)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = Duration::from_secs(5);
        assert_eq!(backoff(p, 0, false), p);
        assert_eq!(backoff(p, 1, false), Duration::from_secs(10));
        assert_eq!(backoff(p, 3, false), Duration::from_secs(40));
        assert_eq!(backoff(p, 4, false), MAX_BACKOFF);
        assert_eq!(backoff(p, u32::MAX, false), MAX_BACKOFF);
        assert_eq!(backoff(p, 6, true), Duration::from_secs(320));
        assert_eq!(
            backoff(p, 7, true),
            MAX_AUTH_BACKOFF,
            "a refused login is retried rarely"
        );
        let slow = Duration::from_secs(300);
        assert_eq!(
            backoff(slow, 5, false),
            slow,
            "never more often than the poll interval"
        );
    }
}
