//! Coordinator at scale: the real `hostplane-coordinator` binary drives N Dpus
//! (1,000 by default: 250 nodes × 4 devices) through the whole state machine,
//! with one simulated agent per node on the real agent stream.
//!
//! ```text
//! cargo build --release -p hostplane-coordinator
//! cargo bench -p hostplane-tests --bench coordinator
//! HOSTPLANE_BENCH_DPUS=100 cargo bench -p hostplane-tests --bench coordinator
//! HOSTPLANE_BENCH_DPUS=250,1000,2000 ...            # one run each, one table row each
//! HOSTPLANE_BENCH_DPUS=10000 HOSTPLANE_BENCH_DPUS_PER_NODE=1 ...   # 10,000 agents
//! HOSTPLANE_BENCH_COORDINATOR=/path/to/hostplane-coordinator HOSTPLANE_BENCH_LABEL=before ...
//! # issue 13: 3 replicas on a throwaway PostgreSQL cluster, the leader SIGKILLed 20 times:
//! HOSTPLANE_BENCH_BACKEND=postgres HOSTPLANE_BENCH_REPLICAS=3 HOSTPLANE_BENCH_KILLS=20 ...
//! ```
//!
//! Settings (environment):
//! - `HOSTPLANE_BENCH_DPUS`: Dpus, 1..=10000, or a comma list (one run each; 1,000).
//! - `HOSTPLANE_BENCH_DPUS_PER_NODE`: 1..=4 (4); 1 makes as many agents as Dpus.
//! - `HOSTPLANE_BENCH_WATCHERS`: Watches on every Dpu during the walk, or a
//!   comma list (50 from 10,000 Dpus, else 0). `0,50` prints the walk with and without.
//! - `HOSTPLANE_BENCH_IDLE_SECS`: the idle window after the walk (20; 0 = none).
//! - `HOSTPLANE_BENCH_WALK_TIMEOUT`: seconds before the walk counts as failed (300).
//! - `HOSTPLANE_BENCH_METRICS=0`: do not set `metrics.listen` (a build without it).
//! - `HOSTPLANE_BENCH_PERF=1` (or `walk`): `perf record -g` the coordinator during the walk into
//!   `target/bench-perf.data` and print the top 15 of `perf report --no-children --sort symbol`;
//!   `idle`: the same over the idle window instead.
//! - `HOSTPLANE_BENCH_COORDINATOR`: another coordinator binary (e.g. the build before a
//!   change); `HOSTPLANE_BENCH_LABEL` names it in the table (default: its path).
//! - `HOSTPLANE_BENCH_BACKEND`: `sqlite` (default: one coordinator on a fresh file) or
//!   `postgres`: a throwaway PostgreSQL cluster (`hostplane_common::testing::pg`, the
//!   tests' fixture: initdb in a temporary directory, fsync off) and
//!   `HOSTPLANE_BENCH_REPLICAS` (1) coordinators on it (docs/ha.md), each with its own
//!   listen and metrics port and `ha.name` (`replica-0`, ...). Simulated agent i starts on
//!   replica i mod N and moves to the next one when its session breaks (counted as a
//!   failover, not a broken session). `HOSTPLANE_BENCH_LEASE`, `_RENEW_EVERY`,
//!   `_RENEW_DEADLINE` (humantime, e.g. `5s`) set `ha.lease`, `ha.renew_every`,
//!   `ha.renew_deadline` (default: the coordinator's, 15s / 2s / 10s).
//! - `HOSTPLANE_BENCH_KILLS`: SIGKILL the current leader (GetClusterStatus on a live
//!   replica) this many times during the walk, each after a random pause of up to
//!   `HOSTPLANE_BENCH_KILL_GAP_MS` (1000) counted from the previous kill's new leader
//!   (seeded: `HOSTPLANE_BENCH_SEED`, printed); after each kill the bench waits until a
//!   live replica reports another leader with a higher epoch and a live lease, then starts
//!   the killed replica again under its name. See `coordinator/chaos.rs`.
//! - `HOSTPLANE_BENCH_PHASE_WATCH`: 1 (the default with kills) opens one Watch of every Dpu
//!   that follows the walk across replicas (reopened on the next replica from the last
//!   revision it saw when its own goes) and checks every Dpu's transitions: none repeated,
//!   none lost (a gap in the history, or a phase the watch saw that the final history
//!   lacks), every Dpu on the path most took; each kill is timed to the first transition
//!   made after it (the transitions' `at_ms`). Set it on the run without kills too, so
//!   both carry the same load.
//!
//! Every run checks that each Dpu received exactly one FlashBFB command (the simulated
//! agents count new FlashBFB command ids per Dpu). With PostgreSQL the bench also prints
//! each replica's CPU over the walk (summed over its lives when it was killed and started
//! again) and peak RSS, and PostgreSQL's CPU: the postmaster's own and reaped children's
//! (`utime + stime + cutime + cstime`) plus every live child's, from `/proc`; then one
//! row of a second table (replicas, kills, failover p50/p99, lost/repeated transitions).
//!
//! Three processes share the machine's CPUs, unpinned: the coordinator (a
//! child), the simulated agents (a second child: this executable again, with
//! `HOSTPLANE_BENCH_ROLE=agents`, see `coordinator/agents.rs`; it sends its
//! latency samples over its stdout when told to stop) and this process (the
//! admin client, the watchers, the readings). Each one's CPU over the walk is
//! printed. The bench raises its RLIMIT_NOFILE soft limit to the hard limit
//! before starting either child (both inherit it): each agent holds its own
//! HTTP/2 connection, so 10,000 agents need 10,000 descriptors in each.
//!
//! The coordinator runs on 127.0.0.1 with a fresh store file and the default
//! `fsm:` and `agents:` settings (resync 60s — 5s before issue 12 —, batch delay 10ms, lease 15s,
//! status flush 1s); only `listen`, `store.path`, `insecure` and
//! `metrics.listen` are set. It logs at `info` (or `HOSTPLANE_LOG`) to a file,
//! as in production.
//!
//! Setup (not timed as part of the walk): a Bfb, a Flavor, and one
//! `CreateNodeWithDevices` per node with `reboot_method: AGENT` (16 at a
//! time); then the agents' process opens one HTTP/2 connection and `Session`
//! per node, sends Hello (its rshims as inventory) and waits. Then the
//! watchers (if any) open their Watches, and one Deployment (`node_effect:
//! AUTO`, `max_unavailable` = N) is created and the walk is timed until the
//! Deployment's status says N Dpus Ready (one Watch on that Deployment, opened
//! before it is created). Then: every watcher must have seen every event in
//! order and every Dpu's last phase be Ready; the coordinator's `/metrics` is
//! scraped; one paginated List of every Dpu (page_size 500) is timed and must
//! show them all Ready; the idle window measures the coordinator's CPU while
//! every agent only heartbeats (lease/3).
//!
//! The simulated agent answers each new command of each DesiredState at once:
//! InitializeInterface, ConfigFWParameters and DPUClusterConfig SKIPPED with a
//! reason, PrepareBFB SUCCEEDED, FlashBFB one progress event then SUCCEEDED,
//! RebootHost SUCCEEDED, after which it "reboots": it closes its stream and
//! connection and comes back at once on a new connection with a new boot_id,
//! which is what moves the coordinator's Rebooting on (the agent reboot rule).
//! It keeps a journal across reboots (results of listed commands it already
//! finished are re-sent, never re-run), ACKs every version, and heartbeats
//! every lease/3. AGENT reboots were chosen over EXTERNAL ones because the
//! reconnect (Hello, boot id, Device presence) is real coordinator work that an
//! external MarkRebooted call would replace with one admin write.
//!
//! Command latency is the coordinator's reaction time as an agent sees it: from
//! the moment the agent has queued a command's result on its stream until it
//! receives the DesiredState that carries that Dpu's next command; after a
//! reboot it is timed from the new session's Hello. The coordinator's own
//! `hostplane_coordinator_command_latency_seconds` (result recorded → next
//! command issued, without the streams) is printed beside it. Coordinator RSS
//! comes from `/proc/<pid>/status` (VmRSS, VmHWM), its CPU from
//! `/proc/<pid>/stat` (utime + stime, in clock ticks); the same for the
//! agents' process.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use hostplane_proto::v1::{self, Kind, NodeEffect, RebootMethod};
use hostplane_tests::{Admin, connect_admin, meta, phase_of};
use nix::unistd::{SysconfVar, sysconf};

#[path = "coordinator/agent.rs"]
mod agent;
#[path = "coordinator/agents.rs"]
mod agents;
#[path = "coordinator/chaos.rs"]
mod chaos;
#[path = "coordinator/cluster.rs"]
mod cluster;
#[path = "coordinator/figures.rs"]
mod figures;
#[path = "coordinator/perf.rs"]
mod perf;
#[path = "coordinator/scrape.rs"]
mod scrape;
#[path = "coordinator/watchers.rs"]
mod watchers;

use agent::{AgentReport, mono_ns};
use agents::AgentsProc;
use chaos::{Chaos, PhaseLog, PhaseWatch};
use cluster::{Backend, Cluster, Lease};
use figures::{Cpu, Figures, Run, own_cpu, sample};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use watchers::Watchers;

const MAX_DPUS_PER_NODE: usize = 4;
const DEFAULT_DPUS: usize = 1000;
/// Watchers by default from this many Dpus on (the issue's 10,000-Dpu goal).
const WATCHERS_FROM: usize = 10_000;
const DEFAULT_WATCHERS: usize = 50;
const LIST_PAGE: i32 = 500;
/// Admin calls in flight during the setup.
const SETUP_CONCURRENCY: usize = 16;

/// Everything the environment asks for.
struct Settings {
    runs: Vec<Run>,
    walk_timeout: Duration,
    metrics: bool,
    perf: Option<PerfWindow>,
    backend: Backend,
    replicas: usize,
    lease: Lease,
    /// Leader kills during the walk (chaos).
    kills: usize,
    /// The longest random pause before each kill.
    kill_gap: Duration,
    seed: u64,
    /// The phase watch (lost or repeated transitions, kill -> next transition).
    phase_watch: bool,
}

/// What `HOSTPLANE_BENCH_PERF` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerfWindow {
    Walk,
    Idle,
}

fn main() -> ExitCode {
    if std::env::var(agents::ROLE_ENV).as_deref() == Ok("agents") {
        return agents::child_main();
    }
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coordinator bench: {e:#}");
            return ExitCode::from(64);
        }
    };
    let bin = match coordinator_bin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("coordinator bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let most_nodes = settings.runs.iter().map(|r| r.nodes).max().unwrap_or(0);
    if let Err(e) = raise_nofile(most_nodes) {
        eprintln!("coordinator bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coordinator bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    let mut ha_rows = Vec::new();
    let mut walks = Vec::new();
    let mut failed = false;
    for run in &settings.runs {
        match rt.block_on(one_run(run, &settings, &bin)) {
            Ok(Outcome {
                row,
                ha_row,
                walk,
                problems,
            }) => {
                rows.push(row);
                ha_rows.extend(ha_row);
                walks.push((run, walk));
                for p in &problems {
                    eprintln!("coordinator bench: {} {}: {p}", run.size(), run.label);
                }
                failed |= !problems.is_empty();
            }
            Err(e) => {
                eprintln!("coordinator bench: {} {}: {e:#}", run.size(), run.label);
                rows.push(format!(
                    "| {} | {} | {} | fails: {} |",
                    run.size(),
                    run.label,
                    run.watchers,
                    format!("{e:#}").replace('|', "/")
                ));
                failed = true;
            }
        }
    }
    println!();
    println!("{}", figures::table_header());
    for r in rows {
        println!("{r}");
    }
    if !ha_rows.is_empty() {
        println!();
        println!("{}", figures::ha_table_header());
        for r in ha_rows {
            println!("{r}");
        }
    }
    // The walk with watchers against the same fleet without.
    for (run, walk) in &walks {
        let without = walks.iter().find(|(r, _)| {
            r.watchers == 0 && r.dpus == run.dpus && r.per_node == run.per_node && r.label == run.label
        });
        if let (true, Some((_, base))) = (run.watchers > 0, without) {
            println!(
                "{} {}: walk with {} watchers {:.2} s, without {:.2} s (ratio {:.2})",
                run.size(),
                run.label,
                run.watchers,
                walk.as_secs_f64(),
                base.as_secs_f64(),
                walk.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A comma list of numbers in `range`.
fn list(name: &str, v: &str, range: std::ops::RangeInclusive<usize>) -> Result<Vec<usize>> {
    v.split(',')
        .map(|x| {
            x.trim()
                .replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|n| range.contains(n))
                .with_context(|| format!("{name}={v:?}: expected numbers in {range:?}, comma-separated"))
        })
        .collect()
}

fn one(name: &str, default: usize, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
    match env(name) {
        None => Ok(default),
        Some(v) => match list(name, &v, range)?[..] {
            [n] => Ok(n),
            _ => bail!("{name}={v:?}: expected one number"),
        },
    }
}

fn settings() -> Result<Settings> {
    let dpus = match env("HOSTPLANE_BENCH_DPUS") {
        Some(v) => list("HOSTPLANE_BENCH_DPUS", &v, 1..=10_000)?,
        None => vec![DEFAULT_DPUS],
    };
    let per_node = one(
        "HOSTPLANE_BENCH_DPUS_PER_NODE",
        MAX_DPUS_PER_NODE,
        1..=MAX_DPUS_PER_NODE,
    )?;
    let watchers = env("HOSTPLANE_BENCH_WATCHERS")
        .map(|v| list("HOSTPLANE_BENCH_WATCHERS", &v, 0..=1000))
        .transpose()?;
    let idle = Duration::from_secs(one("HOSTPLANE_BENCH_IDLE_SECS", 20, 0..=3600)? as u64);
    // Each kill stalls the walk for about a lease: room for that by default.
    let walk_timeout = Duration::from_secs(one(
        "HOSTPLANE_BENCH_WALK_TIMEOUT",
        300 + 40
            * env("HOSTPLANE_BENCH_KILLS")
                .and_then(|k| k.parse::<usize>().ok())
                .unwrap_or(0),
        1..=86_400,
    )? as u64);
    let flag = |name: &str, default: bool| match env(name).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(v) => bail!("{name}={v:?}: expected 0 or 1"),
    };
    let backend = match env("HOSTPLANE_BENCH_BACKEND").as_deref() {
        None | Some("sqlite") => Backend::Sqlite,
        Some("postgres") => Backend::Postgres,
        Some(v) => bail!("HOSTPLANE_BENCH_BACKEND={v:?}: expected sqlite or postgres"),
    };
    let replicas = one("HOSTPLANE_BENCH_REPLICAS", 1, 1..=9)?;
    ensure!(
        backend == Backend::Postgres || replicas == 1,
        "HOSTPLANE_BENCH_REPLICAS={replicas} needs HOSTPLANE_BENCH_BACKEND=postgres (SQLite is one process)"
    );
    let kills = one("HOSTPLANE_BENCH_KILLS", 0, 0..=1000)?;
    ensure!(
        kills == 0 || replicas >= 2,
        "HOSTPLANE_BENCH_KILLS={kills} needs HOSTPLANE_BENCH_REPLICAS of 2 or more (someone must take over)"
    );
    let lease = Lease {
        lease: env("HOSTPLANE_BENCH_LEASE"),
        renew_every: env("HOSTPLANE_BENCH_RENEW_EVERY"),
        renew_deadline: env("HOSTPLANE_BENCH_RENEW_DEADLINE"),
    };
    let perf = match env("HOSTPLANE_BENCH_PERF").as_deref() {
        None | Some("0") => None,
        Some("1" | "walk") => Some(PerfWindow::Walk),
        Some("idle") => Some(PerfWindow::Idle),
        Some(v) => bail!("HOSTPLANE_BENCH_PERF={v:?}: expected 0, 1 (= walk) or idle"),
    };
    ensure!(
        perf.is_none() || replicas == 1,
        "HOSTPLANE_BENCH_PERF profiles one coordinator process: not with {replicas} replicas"
    );
    let label = env("HOSTPLANE_BENCH_LABEL")
        .or_else(|| env("HOSTPLANE_BENCH_COORDINATOR"))
        .unwrap_or_else(|| match backend {
            Backend::Sqlite => "target/release".into(),
            Backend::Postgres if kills > 0 => format!("postgres, {replicas} replicas, {kills} leader kills"),
            Backend::Postgres => format!("postgres, {replicas} replicas"),
        });
    let mut runs = Vec::new();
    for &d in &dpus {
        let default = vec![if d >= WATCHERS_FROM { DEFAULT_WATCHERS } else { 0 }];
        for &w in watchers.as_ref().unwrap_or(&default) {
            runs.push(Run {
                dpus: d,
                per_node,
                nodes: d.div_ceil(per_node),
                watchers: w,
                idle,
                label: label.clone(),
            });
        }
    }
    let seed = match env("HOSTPLANE_BENCH_SEED") {
        Some(v) => v
            .parse()
            .ok()
            .with_context(|| format!("HOSTPLANE_BENCH_SEED={v:?}: expected a number"))?,
        None => rand::random::<u32>() as u64,
    };
    Ok(Settings {
        runs,
        walk_timeout,
        metrics: flag("HOSTPLANE_BENCH_METRICS", true)?,
        perf,
        backend,
        replicas,
        lease,
        kills,
        kill_gap: Duration::from_millis(one("HOSTPLANE_BENCH_KILL_GAP_MS", 1000, 0..=600_000)? as u64),
        seed,
        phase_watch: flag("HOSTPLANE_BENCH_PHASE_WATCH", kills > 0)?,
    })
}

/// Soft RLIMIT_NOFILE up to the hard limit (the children inherit it): each
/// agent is one connection in the agents' process and one in the coordinator.
fn raise_nofile(nodes: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    // In each process: one connection per agent, plus the store, the watchers,
    // reconnects in flight and the runtime's own.
    let need = nodes as u64 + 1_000;
    ensure!(
        hard >= need,
        "RLIMIT_NOFILE hard limit {hard} < {need} descriptors for {nodes} agents: raise it (ulimit -Hn)"
    );
    Ok(())
}

/// The release coordinator next to this bench (`target/release/`), or
/// `HOSTPLANE_BENCH_COORDINATOR` (to compare a patched build).
fn coordinator_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOSTPLANE_BENCH_COORDINATOR") {
        let p = PathBuf::from(p);
        ensure!(
            p.exists(),
            "HOSTPLANE_BENCH_COORDINATOR={}: no such file",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut dir = exe
        .parent()
        .context("the bench executable has no parent dir")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("hostplane-coordinator");
    ensure!(
        p.exists(),
        "{} not found: run `cargo build --release -p hostplane-coordinator` first",
        p.display()
    );
    Ok(p)
}

/// One run: its own coordinator, store and agents.
async fn one_run(run: &Run, settings: &Settings, bin: &Path) -> Result<Outcome> {
    let tmp = tempfile::Builder::new()
        .prefix("hostplane-bench-coordinator-")
        .tempdir()?;
    let r = bench(run, settings, bin, tmp.path()).await;
    if r.is_err() {
        let kept = tmp.keep();
        eprintln!(
            "coordinator bench: files kept in {} (coordinator.log)",
            kept.display()
        );
    }
    r
}

/// The fleet: node name -> rshim names of its devices.
pub fn fleet(dpus: usize, per_node: usize) -> Vec<(String, Vec<String>)> {
    (0..dpus.div_ceil(per_node))
        .map(|n| {
            let here = per_node.min(dpus - n * per_node);
            (
                format!("node-{n:04}"),
                (0..here).map(|d| format!("rshim{d}")).collect(),
            )
        })
        .collect()
}

fn clk_tck() -> u64 {
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64
}

/// What one run gives back: its table row, the HA row (PostgreSQL), its walk
/// time and what failed without stopping it (watchers, the chaos checks).
struct Outcome {
    row: String,
    ha_row: Option<String>,
    walk: Duration,
    problems: Vec<String>,
}

async fn bench(run: &Run, settings: &Settings, bin: &Path, dir: &Path) -> Result<Outcome> {
    let dpus = run.dpus;
    let fleet = fleet(dpus, run.per_node);
    ensure!(
        run.watchers == 0 || settings.kills == 0,
        "HOSTPLANE_BENCH_WATCHERS with HOSTPLANE_BENCH_KILLS: the watchers do not follow a killed replica \
         (the phase watch does)"
    );
    let tck = clk_tck();
    let cluster = Cluster::start(
        bin,
        dir,
        settings.backend,
        settings.replicas,
        settings.metrics,
        &settings.lease,
        tck,
    )
    .await?;
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let r = bench_on(run, settings, bin, &fleet, tck, cluster.clone()).await;
    if r.is_err() {
        // PostgreSQL's log goes with its cluster: a copy beside the replicas' logs.
        cluster.lock().await.save_pg_log(dir);
    }
    r
}

async fn bench_on(
    run: &Run,
    settings: &Settings,
    bin: &Path,
    fleet: &[(String, Vec<String>)],
    tck: u64,
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
) -> Result<Outcome> {
    let dpus = run.dpus;
    let (addrs, urls, pid) = {
        let c = cluster.lock().await;
        let addrs: Vec<_> = c.replicas.iter().map(|r| r.addr).collect();
        (addrs, c.urls(), c.replicas[0].pid())
    };
    let addr = addrs[0];
    let mut admin = connect_admin(addr, Duration::from_secs(30)).await?;
    let at_start = cluster.lock().await.sample()?;

    let t = Instant::now();
    create_inputs(&admin, fleet).await?;
    let created_in = t.elapsed();

    let t = Instant::now();
    let agents = AgentsProc::start(&urls, fleet.len(), dpus, run.per_node).await?;
    let connected_in = t.elapsed();
    let agents_pid = agents.pid().context("the agents process has no pid")?;

    let (watchers, clock) = Watchers::open(addr, run.watchers, dpus).await?;
    // On the last replica: the agents' first is spread over all, the admin's is the first.
    let phase_watch = match settings.phase_watch {
        true => Some(PhaseWatch::open(addrs.clone(), addrs.len() - 1, dpus).await?),
        false => None,
    };
    let events = watch_deployment(&mut admin).await?;
    let (before, replicas_before, pg_before) = {
        let c = cluster.lock().await;
        (c.sample()?, c.readings()?, c.pg_cpu().transpose()?)
    };
    let agents_before = sample(agents_pid, tck)?;
    let self_before = own_cpu()?;
    let recorder = match settings.perf {
        Some(PerfWindow::Walk) => Some(perf::Perf::record(pid).await?),
        _ => None,
    };

    // PostgreSQL's backends sampled every 100 ms over the walk (the revision lock's wait).
    let sampler = cluster::LockSampler::start(&*cluster.lock().await, Duration::from_millis(100));
    let walk_start = clock.start();
    let walk_start_ns = mono_ns();
    let walk_done = CancellationToken::new();
    let killer = (settings.kills > 0).then(|| {
        chaos::spawn_killer(
            cluster.clone(),
            settings.kills,
            settings.kill_gap,
            settings.seed,
            Duration::from_secs(120),
            walk_done.clone(),
        )
    });
    let deployment = v1::Deployment {
        metadata: meta("bench"),
        spec: Some(v1::DeploymentSpec {
            bfb: "bench-bfb".into(),
            flavor: "bench-flavor".into(),
            max_unavailable: dpus as u32,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        }),
        status: None,
    };
    admin
        .create(v1::CreateRequest {
            resource: Some(deployment.into()),
        })
        .await
        .context("creating the deployment")?;
    let max_reopen = 20 + 2 * settings.kills * addrs.len();
    let walked = wait_ready(&addrs, events, dpus, settings.walk_timeout, max_reopen).await;
    let walk = walk_start.elapsed();
    walk_done.cancel();
    let lock_waits = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    // The kill in progress finishes (its new leader, the restart) before the readings.
    let chaos: Option<Chaos> = match killer {
        Some(k) => Some(k.await.context("the killer panicked")?),
        None => None,
    };
    let (after, replicas_after, pg_after) = {
        let c = cluster.lock().await;
        (c.sample()?, c.readings()?, c.pg_cpu().transpose()?)
    };
    let agents_after = sample(agents_pid, tck)?;
    let walk_cpu = Cpu {
        coordinator: after.cpu_since(&before),
        agents: agents_after.cpu_since(&agents_before),
        bench: own_cpu()?.saturating_sub(self_before),
    };
    let mut perf_top = perf_report(recorder).await;
    let reopened = match walked {
        Ok(r) => r,
        Err(e) => {
            let report = agents.finish().await.unwrap_or_default();
            let mut admin = connect_admin(addr, Duration::from_secs(10)).await?;
            let phases = list_dpus(&mut admin).await.map(|l| l.phases).unwrap_or_default();
            bail!(
                "{e:#}; Dpus by phase: {phases:?}; agent sessions that broke: {:?}; kills: {}",
                report.broken,
                chaos.map_or("none".into(), |c| format!("{} ({:?})", c.kills.len(), c.stopped))
            );
        }
    };
    // Every watcher has its events by now or soon: it is not part of the walk.
    let (watched, watch_failures) = watchers.join(Duration::from_secs(60) + walk / 2).await;
    let mut problems = watch_failures.clone();
    let phase_log: Option<PhaseLog> = match phase_watch {
        Some(w) => match w.join(Duration::from_secs(60) + walk / 2).await {
            Ok(l) => Some(l),
            Err(e) => {
                problems.push(format!("phase watch: {e:#}"));
                None
            }
        },
        None => None,
    };

    // The leader's /metrics (the reconciler's histograms are its own).
    let leader_at = {
        let c = cluster.lock().await;
        match c.backend {
            Backend::Sqlite => 0,
            Backend::Postgres => c
                .leader(0)
                .await
                .ok()
                .and_then(|l| c.index_of(&l.holder))
                .unwrap_or(0),
        }
    };
    let metrics_addr = cluster.lock().await.replicas[leader_at].metrics;
    let metrics = match settings.metrics {
        true => Some(scrape::scrape(metrics_addr).await.unwrap_or_else(|e| {
            eprintln!("coordinator bench: {e:#} (figures from /metrics left out)");
            scrape::Scrape::default()
        })),
        false => None,
    };

    // Replica 0 may have been killed and started again: a fresh connection.
    let mut admin = connect_admin(addr, Duration::from_secs(60)).await?;
    let listed = list_dpus(&mut admin).await?;
    ensure!(
        listed.phases.get("Ready") == Some(&dpus) && listed.phases.len() == 1,
        "the Deployment says all Ready, but the Dpus are {:?}",
        listed.phases
    );

    let (idle, pg_idle) = if run.idle.is_zero() {
        (None, None)
    } else {
        let recorder = match settings.perf {
            Some(PerfWindow::Idle) => Some(perf::Perf::record(pid).await?),
            _ => None,
        };
        let (c0, p0) = {
            let c = cluster.lock().await;
            (c.sample()?, c.pg_cpu().transpose()?)
        };
        let a0 = sample(agents_pid, tck)?;
        let s0 = own_cpu()?;
        let t = Instant::now();
        tokio::time::sleep(run.idle).await;
        let d = t.elapsed();
        let (c1, p1) = {
            let c = cluster.lock().await;
            (c.sample()?, c.pg_cpu().transpose()?)
        };
        let cpu = Cpu {
            coordinator: c1.cpu_since(&c0),
            agents: sample(agents_pid, tck)?.cpu_since(&a0),
            bench: own_cpu()?.saturating_sub(s0),
        };
        if recorder.is_some() {
            perf_top = perf_report(recorder).await;
        }
        let pg = match (p0, p1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        (Some((d, cpu)), pg)
    };
    let agents_last = sample(agents_pid, tck)?;
    let report: AgentReport = agents.finish().await?;
    ensure!(
        report.broken.is_empty(),
        "agent sessions broke: {:?}",
        report.broken
    );
    let mut c = cluster.lock().await;
    let last = c.sample()?;
    let replicas_last = c.readings()?;
    let store_bytes = c.store_bytes();
    let exits = c.stop().await;
    // Every replica ends cleanly on SIGTERM (the first that did not, else 0).
    let exit = exits.iter().copied().find(|e| *e != Some(0)).unwrap_or(Some(0));

    let figures = Figures {
        run: run.clone(),
        created_in,
        connected_in,
        walk,
        walk_start_ns,
        at_start,
        before,
        after,
        last,
        agents_after: agents_last,
        walk_cpu,
        watched,
        watch_failures,
        deployment_watch_reopened: reopened,
        list: (listed.took, listed.pages),
        idle,
        metrics,
        perf_top,
        perf_window: match settings.perf {
            Some(PerfWindow::Idle) => "the idle window",
            _ => "the walk",
        },
        store_bytes,
        exit,
    };
    figures.print(&report, bin);
    let ha = figures::Ha {
        backend: c.backend,
        lease: settings.lease.describe(),
        replicas_before,
        replicas_after,
        replicas_last,
        exits,
        pg_walk: match (pg_before, pg_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        pg_idle,
        chaos,
        kill_gap: settings.kill_gap,
        phase_log,
        lock_waits,
        dpus,
        leader_source: match c.leader_from_db() {
            true => "the database's leader row: GetClusterStatus does not report the cluster",
            false => "GetClusterStatus",
        },
    };
    let ha_problems = ha.print(&report);
    problems.extend(ha_problems);
    // Also for SQLite: the same columns for the single coordinator to compare with.
    let ha_row = Some(ha.row(&figures, &report));
    Ok(Outcome {
        row: figures.row(&report),
        ha_row,
        walk,
        problems,
    })
}

/// The top of the profile, or why there is none.
async fn perf_report(recorder: Option<perf::Perf>) -> Vec<String> {
    match recorder {
        Some(p) => match p.report(15).await {
            Ok(top) => top,
            Err(e) => vec![format!("perf failed: {e:#}")],
        },
        None => Vec::new(),
    }
}

async fn create(admin: &mut Admin, r: v1::Resource) -> Result<()> {
    let what = format!("{} {}", r.kind().noun(), r.name());
    admin
        .create(v1::CreateRequest { resource: Some(r) })
        .await
        .with_context(|| format!("creating {what}"))?;
    Ok(())
}

/// The Bfb, the Flavor, and every node with its devices (one call per node,
/// [`SETUP_CONCURRENCY`] at a time).
async fn create_inputs(admin: &Admin, fleet: &[(String, Vec<String>)]) -> Result<()> {
    let mut admin = admin.clone();
    let bfb = v1::Bfb {
        metadata: meta("bench-bfb"),
        spec: Some(v1::BfbSpec {
            // Never fetched: the simulated agents only answer.
            url: "http://127.0.0.1:9/bf-bundle-2.9.0.bfb".into(),
            sha256: "5e".repeat(32),
            version: "2.9.0".into(),
            size_bytes: 1_500_000_000,
        }),
    };
    create(&mut admin, bfb.into()).await?;
    let s = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let flavor = v1::Flavor {
        metadata: meta("bench-flavor"),
        spec: Some(v1::FlavorSpec {
            bf_cfg: s(&[
                ("UPDATE_DPU_OS", "yes"),
                ("ENABLE_SFC_HBN", "no"),
                ("DHCP_CLASS_ID", "bench"),
            ]),
            nic_firmware: s(&[("SRIOV_EN", "1"), ("NUM_OF_VFS", "16"), ("LINK_TYPE_P1", "2")]),
            host_network: Some(v1::HostNetwork {
                num_vfs: 16,
                mtu: 9000,
                bridges: vec![v1::Bridge {
                    name: "br-dpu".into(),
                    ports: vec!["pf0vf0".into()],
                    mtu: 9000,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    create(&mut admin, flavor.into()).await?;
    const PCI: [&str; MAX_DPUS_PER_NODE] = ["0000:04:00.0", "0000:21:00.0", "0000:81:00.0", "0000:c1:00.0"];
    let calls = fleet.iter().enumerate().map(|(n, (node, rshims))| {
        let mut admin = admin.clone();
        let devices = rshims
            .iter()
            .enumerate()
            .map(|(d, rshim)| v1::Device {
                metadata: meta(&format!("{node}-dpu{d}")),
                spec: Some(v1::DeviceSpec {
                    node: node.clone(),
                    serial: format!("MT{n:05}{d}BENCH"),
                    pci_address: PCI[d].into(),
                    rshim: rshim.clone(),
                    ..Default::default()
                }),
                status: None,
            })
            .collect();
        let req = v1::CreateNodeWithDevicesRequest {
            node: Some(v1::Node {
                metadata: meta(node),
                spec: Some(v1::NodeSpec {
                    reboot_method: RebootMethod::Agent as i32,
                }),
                status: None,
            }),
            devices,
        };
        async move {
            admin
                .create_node_with_devices(req)
                .await
                .with_context(|| format!("creating node {node} with its devices"))
        }
    });
    let mut calls = futures::stream::iter(calls).buffer_unordered(SETUP_CONCURRENCY);
    while let Some(r) = calls.next().await {
        r?;
    }
    Ok(())
}

/// Follow the Deployment (Watch, by name) until its status says every Dpu is Ready.
/// Returns the watch stream to read; open it before creating the Deployment.
async fn watch_deployment(admin: &mut Admin) -> Result<tonic::Streaming<v1::WatchEvent>> {
    let w = admin
        .watch(v1::WatchRequest {
            kinds: vec![Kind::Deployment as i32],
            from_version: 0,
            name: "bench".into(),
        })
        .await
        .context("watching the deployment")?;
    Ok(w.into_inner())
}

/// Follow the Deployment until its status says every Dpu is Ready. A watch
/// that ends or fails (e.g. it fell behind and its history was pruned) is
/// opened again, as the API asks ("list again and watch"): the snapshot
/// carries the Deployment's current status. Returns how many times.
async fn wait_ready(
    addrs: &[SocketAddr],
    mut events: tonic::Streaming<v1::WatchEvent>,
    dpus: usize,
    timeout: Duration,
    max_reopen: usize,
) -> Result<Vec<String>> {
    let mut last = v1::DeploymentStatus::default();
    let mut reopened = Vec::new();
    let follow = async {
        loop {
            let why = loop {
                let ev = match events.message().await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break "the watch ended".to_string(),
                    Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                };
                let Some(v1::Resource {
                    kind: Some(v1::resource::Kind::Deployment(d)),
                }) = ev.resource
                else {
                    continue;
                };
                last = d.status.unwrap_or_default();
                ensure!(
                    last.failed == 0,
                    "{} Dpus failed: {:?}",
                    last.failed,
                    last.conditions
                );
                if last.ready as usize == dpus {
                    return Ok(());
                }
            };
            reopened.push(why);
            ensure!(
                reopened.len() <= max_reopen,
                "the deployment watch failed {max_reopen} times: {reopened:?}"
            );
            // On the next replica that answers (its own may have been killed).
            let mut at = reopened.len();
            events = loop {
                let addr = addrs[at % addrs.len()];
                at += 1;
                let Ok(mut admin) = connect_admin(addr, Duration::from_millis(500)).await else {
                    continue;
                };
                match watch_deployment(&mut admin).await {
                    Ok(w) => break w,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
        }
    };
    let r = tokio::time::timeout(timeout, follow).await;
    match r {
        Ok(Ok(())) => Ok(reopened),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("only {} of {dpus} Dpus Ready after {timeout:?}", last.ready),
    }
}

/// One paginated List of every Dpu.
struct Listed {
    /// Dpus by phase name.
    phases: BTreeMap<&'static str, usize>,
    pages: usize,
    took: Duration,
}

async fn list_dpus(admin: &mut Admin) -> Result<Listed> {
    let t = Instant::now();
    let mut phases = BTreeMap::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let list = admin
            .list(v1::ListRequest {
                kind: Kind::Dpu as i32,
                page_size: LIST_PAGE,
                page_token,
                ..Default::default()
            })
            .await
            .context("listing dpus")?
            .into_inner();
        pages += 1;
        for r in list.items {
            if let Some(v1::resource::Kind::Dpu(d)) = r.kind {
                *phases.entry(phase_of(&d).display_name()).or_default() += 1;
            }
        }
        if list.next_page_token.is_empty() {
            return Ok(Listed {
                phases,
                pages,
                took: t.elapsed(),
            });
        }
        page_token = list.next_page_token;
    }
}
