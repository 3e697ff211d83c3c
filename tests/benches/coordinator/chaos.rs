//! The chaos run (`HOSTPLANE_BENCH_KILLS`, docs/ha.md §8): during the walk
//! the current leader is SIGKILLed at random moments, a new leader is awaited
//! and the killed replica started again under its name; and the phase watch,
//! one Watch of every Dpu that moves to another replica when its own goes
//! (from the last revision it saw), from which the bench checks that no Dpu
//! lost or repeated a transition and times each kill to the next transition.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::{self, DpuPhase, Kind, PhaseTransition};
use hostplane_tests::{connect_admin, phase_of};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One kill of the leader.
#[derive(Debug, Clone)]
pub struct Kill {
    pub victim: String,
    pub old_epoch: i64,
    pub new_leader: String,
    pub new_epoch: i64,
    /// Wall clock (Unix ms) just before the SIGKILL.
    pub at_ms: i64,
    /// SIGKILL -> GetClusterStatus on a live replica shows a new leader with a live lease.
    pub to_new_leader: Duration,
    /// The killed replica's restart until it served the admin API again
    /// (`None`: not awaited, the walk ended first).
    pub restart: Option<Duration>,
}

/// What the killer did.
#[derive(Debug, Default)]
pub struct Chaos {
    pub planned: usize,
    pub kills: Vec<Kill>,
    pub seed: u64,
    /// Why it stopped before `planned` kills (the walk ended first, or an error).
    pub stopped: Option<String>,
}

/// Kill the leader `kills` times, each after a random pause of up to
/// `gap_max` from the moment the previous kill's new leader was seen, until
/// `done`. The killed replica is started again at once (not awaited, except
/// with 2 replicas: then the next kill waits until it answers).
pub fn spawn_killer(
    cluster: Arc<Mutex<Cluster>>,
    kills: usize,
    gap_max: Duration,
    seed: u64,
    failover_timeout: Duration,
    done: CancellationToken,
) -> JoinHandle<Chaos> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Chaos {
            planned: kills,
            seed,
            ..Chaos::default()
        };
        // Each restart is timed on its own (until it answers); the next kill
        // waits for it only with 2 replicas (else none would be left to take over).
        let mut restarts: tokio::task::JoinSet<(usize, Result<Duration>)> = tokio::task::JoinSet::new();
        let replicas = cluster.lock().await.replicas.len();
        for k in 0..kills {
            let pause = Duration::from_millis(rng.random_range(0..=gap_max.as_millis() as u64));
            let t = Instant::now();
            if replicas <= 2 {
                while let Some(r) = restarts.join_next().await {
                    if let Ok((i, Ok(d))) = r
                        && let Some(kill) = out.kills.get_mut(i)
                    {
                        kill.restart = Some(d);
                    }
                }
            }
            // The pause runs from the new leader, whatever a restart took.
            tokio::select! {
                () = done.cancelled() => {
                    out.stopped = Some(format!("the walk ended after {k} of {kills} kills"));
                    break;
                }
                () = tokio::time::sleep(pause.saturating_sub(t.elapsed())) => {}
            }
            match kill_once(&cluster, k, failover_timeout).await {
                Ok((kill, addr)) => {
                    out.kills.push(kill);
                    let started = Instant::now();
                    restarts.spawn(async move {
                        let r = crate::cluster::serving(addr, Duration::from_secs(120)).await;
                        (k, r.map(|()| started.elapsed()))
                    });
                }
                Err(e) => {
                    out.stopped = Some(format!("kill {}: {e:#}", k + 1));
                    break;
                }
            }
        }
        while let Some(r) = restarts.join_next().await {
            match r {
                Ok((i, Ok(d))) => {
                    if let Some(kill) = out.kills.get_mut(i) {
                        kill.restart = Some(d);
                    }
                }
                Ok((i, Err(e))) => out.stopped = Some(format!("the replica killed by kill {}: {e:#}", i + 1)),
                Err(e) => out.stopped = Some(format!("a restart's wait panicked: {e}")),
            }
        }
        out
    })
}

/// Kill the leader, wait for the next, start the killed one again (not
/// waiting for it to serve); returns the kill and the killed replica's address.
async fn kill_once(
    cluster: &Mutex<Cluster>,
    k: usize,
    failover_timeout: Duration,
) -> Result<(Kill, SocketAddr)> {
    let mut c = cluster.lock().await;
    let leader = c.leader(k).await?;
    if !leader.live || leader.holder.is_empty() {
        bail!("no live leader to kill: {leader:?}");
    }
    let victim = c
        .index_of(&leader.holder)
        .with_context(|| format!("the leader {:?} is none of the bench's replicas", leader.holder))?;
    let at_ms = unix_ms();
    let t = Instant::now();
    c.kill(victim).await?;
    let new = c
        .wait_new_leader(&leader.holder, leader.epoch, failover_timeout)
        .await?;
    let to_new_leader = t.elapsed();
    c.restart(victim)?;
    let kill = Kill {
        victim: leader.holder,
        old_epoch: leader.epoch,
        new_leader: new.holder,
        new_epoch: new.epoch,
        at_ms,
        to_new_leader,
        restart: None,
    };
    Ok((kill, c.replicas[victim].addr))
}

/// What the phase watch saw of one Dpu.
#[derive(Debug, Default)]
struct Seen {
    /// Phases in the order the watch saw them (each change once).
    phases: Vec<i32>,
    /// The Dpu's transition history in its latest event.
    history: Vec<PhaseTransition>,
}

/// What the phase watch saw.
#[derive(Debug, Default)]
pub struct PhaseLog {
    pub events: u64,
    /// Why the watch was opened again (its replica went away), and where.
    pub reopened: Vec<String>,
    dpus: HashMap<String, Seen>,
    /// Events whose revision did not grow (there must be none).
    pub out_of_order: Vec<String>,
}

/// The phase watch, running.
pub struct PhaseWatch {
    handle: JoinHandle<Result<PhaseLog>>,
    stop: CancellationToken,
}

impl PhaseWatch {
    /// Open a Watch of every Dpu on `addrs[first]` (before the Deployment
    /// exists) and follow it until every Dpu is Ready, moving to the next
    /// replica from the last revision whenever the stream breaks.
    pub async fn open(addrs: Vec<SocketAddr>, first: usize, dpus: usize) -> Result<PhaseWatch> {
        let mut admin = connect_admin(addrs[first], Duration::from_secs(30)).await?;
        let stream = admin
            .watch(v1::WatchRequest {
                kinds: vec![Kind::Dpu as i32],
                from_version: 0,
                name: String::new(),
            })
            .await
            .context("opening the phase watch")?
            .into_inner();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(follow(addrs, first, stream, dpus, stop.clone()));
        Ok(PhaseWatch { handle, stop })
    }

    /// Wait up to `wait` for it to have seen every Dpu Ready.
    pub async fn join(self, wait: Duration) -> Result<PhaseLog> {
        let stop = self.stop.clone();
        let mut handle = self.handle;
        match tokio::time::timeout(wait, &mut handle).await {
            Ok(r) => r.context("the phase watch panicked")?,
            Err(_) => {
                stop.cancel();
                let log = handle.await.context("the phase watch panicked")??;
                bail!(
                    "the phase watch had not seen every Dpu Ready {wait:?} after the walk ({} events, reopened {} times)",
                    log.events,
                    log.reopened.len()
                )
            }
        }
    }
}

async fn follow(
    addrs: Vec<SocketAddr>,
    mut at: usize,
    mut stream: tonic::Streaming<v1::WatchEvent>,
    dpus: usize,
    stop: CancellationToken,
) -> Result<PhaseLog> {
    let mut log = PhaseLog::default();
    let mut last = 0u64;
    let mut ready = 0usize;
    loop {
        let why = tokio::select! {
            () = stop.cancelled() => return Ok(log),
            m = stream.message() => match m {
                Ok(Some(ev)) => {
                    log.events += 1;
                    if ev.resource_version <= last {
                        log.out_of_order.push(format!("revision {} after {last}", ev.resource_version));
                    }
                    last = last.max(ev.resource_version);
                    let Some(v1::Resource { kind: Some(v1::resource::Kind::Dpu(d)) }) = ev.resource else {
                        continue;
                    };
                    let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                    let phase = phase_of(&d) as i32;
                    let seen = log.dpus.entry(name).or_default();
                    let was_ready = seen.phases.last() == Some(&(DpuPhase::Ready as i32));
                    if seen.phases.last() != Some(&phase) {
                        seen.phases.push(phase);
                    }
                    seen.history = d.status.map(|s| s.history).unwrap_or_default();
                    match (was_ready, phase == DpuPhase::Ready as i32) {
                        (false, true) => ready += 1,
                        (true, false) => ready -= 1,
                        _ => {}
                    }
                    if ready == dpus {
                        return Ok(log);
                    }
                    continue;
                }
                Ok(None) => "the watch ended".to_string(),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            },
        };
        // Its replica went away: the next one, from the last revision seen.
        let t = Instant::now();
        let mut tries = Vec::new();
        stream = loop {
            at = (at + 1) % addrs.len();
            if stop.is_cancelled() {
                return Ok(log);
            }
            if t.elapsed() > Duration::from_secs(300) {
                bail!("the phase watch could not be opened again for 300 s after {why}: {tries:?}");
            }
            let Ok(mut admin) = connect_admin(addrs[at], Duration::from_millis(500)).await else {
                continue;
            };
            let req = v1::WatchRequest {
                kinds: vec![Kind::Dpu as i32],
                from_version: last,
                name: String::new(),
            };
            match admin.watch(req).await {
                Ok(s) => break s.into_inner(),
                // The history it needs is gone: a lost transition could not be told.
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    bail!(
                        "reopening the phase watch from revision {last} on {}: {}",
                        addrs[at],
                        s.message()
                    )
                }
                Err(s) => {
                    if tries.len() < 5 {
                        tries.push(format!("{}: {:?}: {}", addrs[at], s.code(), s.message()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        log.reopened.push(format!(
            "{why}; reopened on {} from revision {last} in {:?}",
            addrs[at],
            t.elapsed()
        ));
    }
}

/// The checks on what the phase watch saw.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The phase path most Dpus took, and how many.
    pub modal_path: Vec<i32>,
    pub modal_count: usize,
    /// Dpus whose history repeats a phase (a transition made twice).
    pub repeated: Vec<String>,
    /// Dpus with a transition missing: a gap in the history (a `from` that
    /// is not the previous `to`), a phase the watch saw that the final
    /// history lacks (a committed transition undone), or a path shorter
    /// than the modal one.
    pub lost: Vec<String>,
    /// Dpus whose path differs from the modal one in another way.
    pub other: Vec<String>,
    /// Dpus the watch never saw.
    pub unseen: usize,
    /// Every transition's time (Unix ms), sorted: for kill -> next transition.
    pub transition_ms: Vec<i64>,
}

pub fn phase_name(p: i32) -> String {
    DpuPhase::try_from(p)
        .map(|p| p.as_str_name().trim_start_matches("DPU_PHASE_").to_string())
        .unwrap_or_else(|_| p.to_string())
}

fn path_text(p: &[i32]) -> String {
    p.iter().map(|p| phase_name(*p)).collect::<Vec<_>>().join(" > ")
}

impl Verdict {
    pub fn of(log: &PhaseLog, dpus: usize) -> Verdict {
        let mut v = Verdict {
            unseen: dpus.saturating_sub(log.dpus.len()),
            ..Verdict::default()
        };
        // The path of each Dpu by its final history: the phase it was created
        // in, then every transition's `to`.
        let mut paths: BTreeMap<Vec<i32>, usize> = BTreeMap::new();
        let mut by_dpu = Vec::new();
        for (name, seen) in &log.dpus {
            let h = &seen.history;
            let mut path: Vec<i32> = h
                .first()
                .map(|t| t.from)
                .into_iter()
                .filter(|p| *p != 0)
                .collect();
            path.extend(h.iter().map(|t| t.to));
            for w in h.windows(2) {
                if w[1].from != w[0].to {
                    v.lost.push(format!(
                        "{name}: history jumps from {} to a transition out of {}",
                        phase_name(w[0].to),
                        phase_name(w[1].from)
                    ));
                }
            }
            let mut sorted = path.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != path.len() {
                v.repeated.push(format!("{name}: {}", path_text(&path)));
            }
            // Every phase the watch saw must be in the final history, in order.
            let mut rest = path.iter();
            if let Some(p) = seen.phases.iter().find(|p| !rest.any(|q| q == *p)) {
                v.lost.push(format!(
                    "{name}: the watch saw {} ({}) but the history is {}",
                    phase_name(*p),
                    path_text(&seen.phases),
                    path_text(&path)
                ));
            }
            v.transition_ms.extend(h.iter().map(|t| t.at_ms));
            *paths.entry(path.clone()).or_default() += 1;
            by_dpu.push((name, path));
        }
        if let Some((p, n)) = paths.iter().max_by_key(|(_, n)| **n) {
            v.modal_path = p.clone();
            v.modal_count = *n;
        }
        for (name, path) in by_dpu {
            if *path == v.modal_path {
                continue;
            }
            let what = format!("{name}: {}", path_text(&path));
            if path.len() < v.modal_path.len() && path.iter().all(|p| v.modal_path.contains(p)) {
                v.lost.push(what);
            } else if !v.repeated.iter().any(|r| r.starts_with(&format!("{name}:"))) {
                v.other.push(what);
            }
        }
        v.transition_ms.sort();
        v
    }

    pub fn modal_text(&self) -> String {
        path_text(&self.modal_path)
    }

    /// For each kill, the first Dpu transition made after it by the leader
    /// that followed, i.e. before the next kill (`None`: that leader made
    /// none before it was killed in turn).
    pub fn next_transition_after(&self, kills: &[Kill]) -> Vec<Option<Duration>> {
        kills
            .iter()
            .enumerate()
            .map(|(n, k)| {
                let i = self.transition_ms.partition_point(|t| *t <= k.at_ms);
                let t = *self.transition_ms.get(i)?;
                if kills.get(n + 1).is_some_and(|next| t > next.at_ms) {
                    return None;
                }
                Some(Duration::from_millis((t - k.at_ms) as u64))
            })
            .collect()
    }
}
