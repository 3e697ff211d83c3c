//! Watchers: each a `Watch` on every Dpu, on its own connection, opened
//! before the Deployment exists; each checks that the events arrive in
//! order (resource_version strictly increasing: every store write has its own
//! revision) and follows until it has seen every Dpu's latest phase be Ready.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::{self, DpuPhase, Kind};
use hostplane_tests::{connect_admin, phase_of};
use tokio::task::JoinSet;

/// What one watcher saw.
#[derive(Debug)]
pub struct Watched {
    pub events: u64,
    /// From the Deployment's creation to this watcher seeing the last Dpu Ready.
    pub done_after: Duration,
}

/// The watchers, running.
pub struct Watchers {
    set: JoinSet<Result<Watched>>,
    pub count: usize,
}

impl Watchers {
    /// Open `n` watches (each on its own connection); they are following
    /// when this returns. `walk_start` is read when each first sees an event.
    pub async fn open(addr: SocketAddr, n: usize, dpus: usize) -> Result<(Watchers, WalkClock)> {
        let clock = WalkClock::default();
        let mut set = JoinSet::new();
        for i in 0..n {
            let mut admin = connect_admin(addr, Duration::from_secs(30)).await?;
            let stream = admin
                .watch(v1::WatchRequest {
                    kinds: vec![Kind::Dpu as i32],
                    from_version: 0,
                    name: String::new(),
                })
                .await
                .with_context(|| format!("opening watch {i}"))?
                .into_inner();
            let clock = clock.clone();
            set.spawn(async move {
                // The connection lives as long as the stream.
                let _admin = admin;
                follow(stream, dpus, clock)
                    .await
                    .with_context(|| format!("watcher {i}"))
            });
        }
        Ok((Watchers { set, count: n }, clock))
    }

    /// Wait (up to `wait`) for every watcher to have seen every Dpu Ready.
    /// Returns what each saw, and why each that failed did.
    pub async fn join(mut self, wait: Duration) -> (Vec<Watched>, Vec<String>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while !self.set.is_empty() {
            match tokio::time::timeout_at(deadline, self.set.join_next()).await {
                Ok(Some(Ok(Ok(w)))) => done.push(w),
                Ok(Some(Ok(Err(e)))) => failed.push(format!("{e:#}")),
                Ok(Some(Err(e))) => failed.push(format!("a watcher panicked: {e}")),
                Ok(None) => break,
                Err(_) => {
                    failed.push(format!(
                        "{} of {} watchers had not seen every Dpu Ready {wait:?} after the walk",
                        self.set.len(),
                        self.count
                    ));
                    break;
                }
            }
        }
        (done, failed)
    }
}

/// When the walk started, set by the bench just before it creates the Deployment.
#[derive(Clone, Default)]
pub struct WalkClock(std::sync::Arc<std::sync::OnceLock<Instant>>);

impl WalkClock {
    pub fn start(&self) -> Instant {
        *self.0.get_or_init(Instant::now)
    }
}

async fn follow(
    mut stream: tonic::Streaming<v1::WatchEvent>,
    dpus: usize,
    clock: WalkClock,
) -> Result<Watched> {
    let mut last = 0u64;
    let mut events = 0u64;
    let mut ready: HashMap<String, bool> = HashMap::with_capacity(dpus);
    let mut ready_count = 0usize;
    while let Some(ev) = stream.message().await.context("watch stream")? {
        events += 1;
        if ev.resource_version <= last {
            bail!(
                "event {events} out of order: resource_version {} after {last}",
                ev.resource_version
            );
        }
        last = ev.resource_version;
        let Some(v1::Resource {
            kind: Some(v1::resource::Kind::Dpu(d)),
        }) = ev.resource
        else {
            bail!("event {events} (resource_version {last}) is not a Dpu");
        };
        let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let is_ready = ev.r#type != v1::EventType::Deleted as i32 && phase_of(&d) == DpuPhase::Ready;
        let was = ready.insert(name, is_ready).unwrap_or(false);
        match (was, is_ready) {
            (false, true) => ready_count += 1,
            (true, false) => ready_count -= 1,
            _ => {}
        }
        if ready_count == dpus {
            return Ok(Watched {
                events,
                done_after: clock.start().elapsed(),
            });
        }
    }
    bail!("the watch ended after {events} events with {ready_count} of {dpus} Dpus Ready")
}
