//! gRPC health follows the store (issue 13, Operations; docs/ha.md §4): a
//! replica that cannot read its store answers NOT_SERVING, so a load
//! balancer or a Kubernetes readiness probe sends clients and agents to
//! another replica, and SERVING again once it can.
//!
//! [`watch_store`] reads the store's revision through its writer
//! (`Store::catch_up`, the path every write takes: on PostgreSQL it waits
//! for the revision lock, so a cluster whose writers are stuck shows) every
//! second. A read that fails, or has
//! not answered in 5 s, makes the listed services NOT_SERVING; the next read
//! that succeeds makes them SERVING. One read runs at a time: a read stuck on
//! an unreachable database is waited for, never stacked. Each change is
//! logged once.
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::{Store, StoreError};

/// How often [`watch_store`] reads, and how long a read may take before the
/// store counts as unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreProbe {
    pub every: Duration,
    pub unavailable_after: Duration,
}

impl Default for StoreProbe {
    /// Every 1 s; unavailable after 5 s (docs/ha.md §4, `unavailable_after`).
    fn default() -> StoreProbe {
        StoreProbe {
            every: Duration::from_secs(1),
            unavailable_after: Duration::from_secs(5),
        }
    }
}

/// [`watch_store_with`] at the default timing. Call it once the server has
/// set `names` SERVING; it returns when `stop` is cancelled, leaving the
/// statuses as they are (the server sets NOT_SERVING as it stops).
pub async fn watch_store(
    store: Store,
    reporter: HealthReporter,
    names: Vec<String>,
    stop: CancellationToken,
) {
    watch_store_with(store, reporter, names, StoreProbe::default(), stop).await;
}

/// Keeps the health of each service in `names` ("" is the whole server)
/// SERVING while the store answers reads, NOT_SERVING while it does not.
pub async fn watch_store_with(
    store: Store,
    reporter: HealthReporter,
    names: Vec<String>,
    probe: StoreProbe,
    stop: CancellationToken,
) {
    let mut health = Health {
        reporter,
        names,
        serving: true,
    };
    loop {
        let started = Instant::now();
        let s = store.clone();
        let mut read = tokio::spawn(async move { s.catch_up().await });
        let answer = tokio::select! {
            r = &mut read => Some(r),
            () = tokio::time::sleep(probe.unavailable_after) => None,
            () = stop.cancelled() => return,
        };
        let answer = match answer {
            Some(r) => r,
            None => {
                let why = format!("a store read has not answered in {:?}", probe.unavailable_after);
                health.set(false, &why).await;
                // Wait for that read (or its error) rather than stack another.
                tokio::select! {
                    r = &mut read => r,
                    () = stop.cancelled() => return,
                }
            }
        };
        match answer {
            Ok(Ok(_)) => health.set(true, "").await,
            Ok(Err(e)) => health.set(false, &reason(&e)).await,
            Err(join) => {
                health
                    .set(false, &format!("the store read task failed: {join}"))
                    .await
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(started + probe.every) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn reason(e: &StoreError) -> String {
    format!("a store read failed: {e}")
}

struct Health {
    reporter: HealthReporter,
    names: Vec<String>,
    /// What the services were last set to.
    serving: bool,
}

impl Health {
    async fn set(&mut self, serving: bool, why: &str) {
        if serving == self.serving {
            return;
        }
        self.serving = serving;
        let status = if serving {
            tracing::info!(services = ?self.names, "the store answers again: gRPC health SERVING");
            ServingStatus::Serving
        } else {
            tracing::warn!(services = ?self.names, reason = why, "the store is unavailable: gRPC health NOT_SERVING until it answers");
            ServingStatus::NotServing
        };
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
