//! End to end: coordinator replicas on one PostgreSQL database (issue 13,
//! docs/ha.md §7), over the real `hostplane-coordinator`, `hostplane-agent`
//! and `hostplane-sim` binaries, a real FUSE mount and a throwaway
//! PostgreSQL cluster (hostplane_common::testing::pg). Short leases: 3 s,
//! renewed every 500 ms, acted on until 2 s after the last renewal sent.
//! Agents get every replica's URL.
//!
//! - three replicas serve admin calls on any of them, a Watch on a follower
//!   delivers exactly the leader's events, an agent on a follower reaches Ready;
//! - the leader SIGKILLed while DPUs are flashing: another replica takes over
//!   within the lease with the next epoch, every Dpu walks to Ready once, no
//!   transition lost or repeated, every simulated DPU installed exactly once;
//! - PostgreSQL restarted (fast shutdown, same data and port) mid-rollout:
//!   every replica's gRPC health goes NOT_SERVING and back to SERVING, the
//!   replicas reconnect (each writes and sees the others' writes) and the
//!   rollout ends the same way.
//!
//! Each test skips, printing why, only when FUSE or the PostgreSQL binaries
//! are missing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostplane_common::testing::pg::PgCluster;
use hostplane_proto::v1::{self, DpuPhase, EventType, Kind, NodeEffect, RebootMethod};
use hostplane_tests::world::{PgStore, World, WorldOpts};
use hostplane_tests::{Admin, phase_of, require_fuse};
use tokio_stream::StreamExt;

/// The lease the replicas run with (PgStore::new).
const LEASE: Duration = Duration::from_secs(3);
const RENEW_EVERY: Duration = Duration::from_millis(500);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
/// How long a rollout may take.
const T: Duration = Duration::from_secs(45);

/// The tests take turns: each runs a PostgreSQL cluster, three replicas, the
/// simulator and agents, and times a 3 s lease, which three at once on a
/// small machine would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The throwaway cluster, or `None` (the reason printed) without the PostgreSQL binaries.
fn postgres() -> Option<PgCluster> {
    PgCluster::start().expect("start the throwaway PostgreSQL cluster")
}

/// One query's rows through `psql` (unaligned, `|` between columns), as the
/// fixture's superuser over TCP. The database is the truth the replicas'
/// answers are checked against.
fn sql(pg: &PgCluster, query: &str) -> Vec<Vec<String>> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query])
        .arg(pg.url_without_password())
        .env("PGPASSWORD", pg.password())
        .output()
        .unwrap_or_else(|e| {
            panic!("run psql (the postgresql-client package, which postgresql depends on): {e}")
        });
    assert!(
        out.status.success(),
        "psql {query:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// The `leader` row: holder, epoch, and whether its lease is live by the database's clock.
fn db_leader(pg: &PgCluster) -> (String, i64, bool) {
    let rows = sql(
        pg,
        "SELECT holder, epoch, expires_at > now() FROM leader WHERE id = 1",
    );
    let r = &rows[0];
    (r[0].clone(), r[1].parse().unwrap(), r[2] == "t")
}

/// Waits until the `leader` row names a live holder with an epoch of at
/// least `min_epoch`; returns the holder and epoch.
async fn wait_db_leader(pg: &PgCluster, min_epoch: i64, timeout: Duration) -> (String, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        let (holder, epoch, live) = db_leader(pg);
        if live && epoch >= min_epoch && !holder.is_empty() {
            return (holder, epoch);
        }
        assert!(
            Instant::now() < deadline,
            "no live leader with epoch >= {min_epoch} after {timeout:?}: leader row {:?}",
            (holder, epoch, live)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GetClusterStatus on every running replica agrees with the `leader` row:
/// backend postgres, the same holder and epoch, a live lease, `leader` as
/// the holder's own role and `follower` as everyone else's.
async fn assert_cluster_status(w: &World, holder: &str, epoch: i64) {
    for (i, r) in w.replicas.iter().enumerate() {
        if r.proc.is_none() {
            continue;
        }
        let st = w.cluster_status(i).await.unwrap();
        assert_eq!(st.backend, "postgres", "{}: {st:?}", r.name);
        assert_eq!(st.replica, r.name, "{st:?}");
        let lease = st.leader.clone().unwrap_or_default();
        assert_eq!(
            (lease.holder.as_str(), lease.epoch),
            (holder, epoch),
            "{}'s GetClusterStatus disagrees with the leader row: {st:?}",
            r.name
        );
        assert!(
            lease.expires_in_ms.is_some(),
            "{}: no live lease in {st:?}",
            r.name
        );
        let role = if r.name == holder { "leader" } else { "follower" };
        assert_eq!(st.role, role, "{}: {st:?}", r.name);
    }
    // World::wait_leader, which finds the leader through GetClusterStatus alone, agrees.
    let (found, _) = w.wait_leader(epoch, Duration::from_secs(5)).await.unwrap();
    assert_eq!(w.replicas[found].name, holder, "World::wait_leader");
}

/// Waits until every running replica's gRPC health is `status`.
async fn wait_health(w: &World, status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut last = Vec::new();
        for (i, r) in w.replicas.iter().enumerate() {
            if r.proc.is_some() {
                let h = w.replica_health(i).await.unwrap_or_else(|e| format!("{e:#}"));
                last.push((r.name.clone(), h));
            }
        }
        if last.iter().all(|(_, h)| h == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas' health is not {status} after {timeout:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ha_opts(pg: &PgCluster, replicas: usize, dpus: usize, faults: Vec<String>) -> WorldOpts {
    WorldOpts {
        dpus,
        faults,
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        postgres: Some(PgStore::new(
            pg.url_without_password(),
            pg.password().to_string(),
            replicas,
        )),
        ..Default::default()
    }
}

fn deployment(bfb: &str, max_unavailable: u32) -> v1::DeploymentSpec {
    v1::DeploymentSpec {
        device_selector: [("model".to_string(), "bf3".to_string())].into(),
        bfb: bfb.into(),
        flavor: "f1".into(),
        max_unavailable,
        node_effect: NodeEffect::Auto as i32,
        ..Default::default()
    }
}

/// `(device name, rshim)` for DPUs `range` of the simulator: `d<N>` on `rshim<N>`.
fn devices(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range.map(|n| (format!("d{n}"), format!("rshim{n}"))).collect()
}

async fn add_node(w: &mut World, node: &str, devs: &[(String, String)]) {
    let devs: Vec<(&str, &str)> = devs.iter().map(|(d, r)| (d.as_str(), r.as_str())).collect();
    w.add_node(node, RebootMethod::External, &devs, &[("model", "bf3")])
        .await
        .unwrap_or_else(|e| panic!("create node {node}: {e:#}"));
}

/// The upstream system: marks each of `nodes` rebooted whenever it waits,
/// through `admin` (a replica the test never stops).
fn rebooter(admin: Admin, nodes: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut admin = admin;
        loop {
            for n in &nodes {
                if let Ok(s) = admin
                    .get_node_reboot_status(v1::NodeRef { name: n.clone() })
                    .await
                    && s.into_inner().waiting_for_reboot
                {
                    let _ = admin
                        .mark_rebooted(v1::MarkRebootedRequest {
                            name: n.clone(),
                            power_cycled: false,
                        })
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The List revision of Dpus on `admin`: a Watch from it sees every later change.
async fn dpu_revision(admin: &mut Admin) -> u64 {
    admin
        .list(v1::ListRequest {
            kind: Kind::Dpu as i32,
            ..Default::default()
        })
        .await
        .expect("list dpus")
        .into_inner()
        .resource_version
}

/// A Watch of every Dpu, read by a task into a shared list. A broken stream
/// is recorded and reopened from the last revision seen on the same replica
/// (what a client does), so a test can tell a break apart from a loss.
struct Recorder {
    what: String,
    events: Arc<Mutex<Vec<v1::WatchEvent>>>,
    breaks: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Opens the Watch from `from` before returning, then reads it in a task.
    async fn start(what: &str, admin: Admin, from: u64) -> Recorder {
        let mut admin = admin;
        let first = open_watch(&mut admin, from)
            .await
            .unwrap_or_else(|e| panic!("open the watch on {what}: {e}"));
        let events = Arc::new(Mutex::new(Vec::<v1::WatchEvent>::new()));
        let breaks = Arc::new(Mutex::new(Vec::new()));
        let (ev, br) = (events.clone(), breaks.clone());
        let task = tokio::spawn(async move {
            let mut stream = Some(first);
            let mut last = from;
            loop {
                let mut s = match stream.take() {
                    Some(s) => s,
                    None => match open_watch(&mut admin, last).await {
                        Ok(s) => s,
                        Err(e) => {
                            br.lock().unwrap().push(format!("reopen from {last}: {e}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                loop {
                    match s.next().await {
                        Some(Ok(e)) => {
                            last = e.resource_version;
                            ev.lock().unwrap().push(e);
                        }
                        Some(Err(status)) => {
                            br.lock().unwrap().push(format!("after {last}: {status}"));
                            break;
                        }
                        None => {
                            br.lock().unwrap().push(format!("after {last}: the stream ended"));
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Recorder {
            what: what.into(),
            events,
            breaks,
            task,
        }
    }

    fn events(&self) -> Vec<v1::WatchEvent> {
        self.events.lock().unwrap().clone()
    }

    fn breaks(&self) -> Vec<String> {
        self.breaks.lock().unwrap().clone()
    }

    /// Every Dpu's last state as the events tell it.
    fn dpus(&self) -> BTreeMap<String, v1::Dpu> {
        latest(&self.events())
    }

    /// Waits until `n` Dpus are Ready with `bfb` installed; fails on a Dpu in Error.
    async fn wait_all_ready(&self, n: usize, bfb: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let dpus = self.dpus();
            for (name, d) in &dpus {
                let st = d.status.clone().unwrap_or_default();
                assert_ne!(st.phase(), DpuPhase::Error, "{name} failed: {}", st.message);
            }
            let ready = dpus
                .values()
                .filter(|d| {
                    let st = d.status.clone().unwrap_or_default();
                    st.phase() == DpuPhase::Ready && st.installed_bfb == bfb
                })
                .count();
            if ready == n && dpus.len() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {ready} of {n} Dpus Ready after {timeout:?}; phases {:?}; breaks {:?}",
                self.what,
                dpus.iter()
                    .map(|(n, d)| (n.clone(), phase_of(d)))
                    .collect::<Vec<_>>(),
                self.breaks()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some Dpu is OsInstalling with bytes pushed (an image is flashing).
    async fn wait_flashing(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, d) in self.dpus() {
                let st = d.status.unwrap_or_default();
                if st.phase() == DpuPhase::OsInstalling && st.progress.is_some_and(|p| p.bytes_pushed > 0) {
                    return name;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: no Dpu flashing after {timeout:?}: {:?}",
                self.what,
                self.dpus()
                    .iter()
                    .map(|(n, d)| (n.clone(), phase_of(d)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads on for `quiet` more, so that late events are in.
    async fn settle(&self, quiet: Duration) {
        tokio::time::sleep(quiet).await;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_watch(admin: &mut Admin, from: u64) -> Result<tonic::Streaming<v1::WatchEvent>, tonic::Status> {
    Ok(admin
        .watch(v1::WatchRequest {
            kinds: vec![Kind::Dpu as i32],
            from_version: from,
            name: String::new(),
        })
        .await?
        .into_inner())
}

/// Every Dpu a List on `admin` returns, by name.
async fn dpus_listed(admin: &mut Admin) -> BTreeMap<String, v1::Dpu> {
    admin
        .list(v1::ListRequest {
            kind: Kind::Dpu as i32,
            ..Default::default()
        })
        .await
        .expect("list dpus")
        .into_inner()
        .items
        .into_iter()
        .filter_map(|r| match r.kind {
            Some(v1::resource::Kind::Dpu(d)) => Some((name_of(&d), d)),
            _ => None,
        })
        .collect()
}

fn dpu_of(e: &v1::WatchEvent) -> Option<&v1::Dpu> {
    match e.resource.as_ref()?.kind.as_ref()? {
        v1::resource::Kind::Dpu(d) => Some(d),
        _ => None,
    }
}

fn name_of(d: &v1::Dpu) -> String {
    d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn latest(events: &[v1::WatchEvent]) -> BTreeMap<String, v1::Dpu> {
    let mut out = BTreeMap::new();
    for e in events {
        let Some(d) = dpu_of(e) else { continue };
        if e.r#type == EventType::Deleted as i32 {
            out.remove(&name_of(d));
        } else {
            out.insert(name_of(d), d.clone());
        }
    }
    out
}

/// The walk every Dpu takes from creation to Ready (docs/fsm.md; tests/e2e.rs):
/// its history starts with the creation (`Unspecified` to `Initializing`).
const WALK: [DpuPhase; 12] = [
    DpuPhase::Unspecified,
    DpuPhase::Initializing,
    DpuPhase::Pending,
    DpuPhase::NodeEffect,
    DpuPhase::InitializeInterface,
    DpuPhase::ConfigFwParameters,
    DpuPhase::PrepareBfb,
    DpuPhase::OsInstalling,
    DpuPhase::Rebooting,
    DpuPhase::DpuClusterConfig,
    DpuPhase::NodeEffectRemoval,
    DpuPhase::Ready,
];

/// Asserts that the Watch delivered every Dpu change once and in order, and
/// that no transition was lost or repeated:
/// - revisions never go back and no `(revision, Dpu)` comes twice;
/// - each Dpu's final history (`status.history`, the FSM's own record of its
///   transitions) is one unbroken chain (each `from` the previous `to`),
///   visits no phase twice (a repeated transition would, e.g. a second
///   OSInstalling) and is exactly [`WALK`];
/// - every state the Watch delivered is on that path: its phase is its
///   history's last `to`, its history is a prefix of the final one (nothing
///   the Watch saw was lost or rewritten later), and each next state's
///   history extends the previous one's (no state went back). The FSM takes
///   some steps in one write (Pending, NodeEffect, InitializeInterface with
///   node effect AUTO), so the Watch sees that write's last phase only.
fn assert_walks_once(what: &str, events: &[v1::WatchEvent], names: &[String]) {
    let mut seen = HashSet::new();
    let mut prev = 0;
    for e in events {
        let d = dpu_of(e).unwrap_or_else(|| panic!("{what}: an event without a Dpu: {e:?}"));
        assert!(
            e.resource_version >= prev,
            "{what}: revision {} after {prev}",
            e.resource_version
        );
        prev = e.resource_version;
        assert!(
            seen.insert((e.resource_version, name_of(d))),
            "{what}: {} at revision {} delivered twice",
            name_of(d),
            e.resource_version
        );
    }
    let finals = latest(events);
    for name in names {
        let d = finals
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no event for {name}"));
        let history = &d.status.as_ref().unwrap().history;
        assert!(!history.is_empty(), "{what}: {name} has no history");
        let mut chain = vec![history[0].from()];
        for t in history {
            assert_eq!(
                t.from(),
                *chain.last().unwrap(),
                "{what}: {name}'s history breaks (a transition lost): {history:?}"
            );
            chain.push(t.to());
        }
        let mut distinct = HashSet::new();
        assert!(
            chain.iter().all(|p| distinct.insert(*p)),
            "{what}: {name} visited a phase twice (a transition repeated): {chain:?}"
        );
        assert_eq!(chain, WALK.to_vec(), "{what}: {name} did not walk the usual way");

        let mut before: &[v1::PhaseTransition] = &[];
        let mut phases = Vec::new();
        for e in events {
            let Some(d) = dpu_of(e).filter(|d| name_of(d) == *name) else {
                continue;
            };
            let h = &d.status.as_ref().unwrap().history;
            let last = h.last().map(|t| t.to()).unwrap_or(DpuPhase::Unspecified);
            assert_eq!(
                phase_of(d),
                last,
                "{what}: {name} at revision {} is not where its history ends: {h:?}",
                e.resource_version
            );
            assert!(
                h.len() >= before.len() && h[..before.len()] == *before,
                "{what}: {name}'s history at revision {} does not extend the previous one's:\n{before:?}\n{h:?}",
                e.resource_version
            );
            assert!(
                h.len() <= history.len() && history[..h.len()] == h[..],
                "{what}: {name} at revision {} holds transitions the final history lost:\n{h:?}\n{history:?}",
                e.resource_version
            );
            before = h;
            if phases.last() != Some(&last) {
                phases.push(last);
            }
        }
        assert_eq!(
            phases.last(),
            Some(&DpuPhase::Ready),
            "{what}: {name}: the Watch's phases {phases:?}"
        );
    }
}

/// Asserts every simulated DPU in `rshims` installed exactly one OS, from one push, now at `version`.
fn assert_flashed_once(w: &World, rshims: &[String], version: &str) {
    let sim = w.sim_dpus().expect("read the simulator's .control");
    for r in rshims {
        let s = sim
            .iter()
            .find(|s| &s.name == r)
            .unwrap_or_else(|| panic!("{r} not in the simulator's status: {sim:?}"));
        assert_eq!(
            (s.installs, s.pushes),
            (1, 1),
            "{r} must be flashed exactly once: {s:?}"
        );
        assert_eq!(s.version, version, "{r}: {s:?}");
    }
}

/// The addresses of the replicas at `order`.
fn addrs(w: &World, order: &[usize]) -> Vec<SocketAddr> {
    order.iter().map(|i| w.replicas[*i].addr).collect()
}

/// Every `connected to the coordinator` line of `node`'s agent log.
fn agent_connections(w: &World, node: &str) -> Vec<String> {
    std::fs::read_to_string(w.log_path(&format!("agent-{node}")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("connected to the coordinator"))
        .map(str::to_string)
        .collect()
}

/// The replicas' log files, to show when a test fails.
fn replica_logs(w: &World) -> Vec<std::path::PathBuf> {
    (0..w.replicas.len()).map(|i| w.replica_log(i)).collect()
}

/// Runs `f`; on a panic prints the last lines of each of `logs` first (the
/// replicas' logs say more than the assertion alone).
async fn with_logs<F: std::future::Future<Output = ()>>(logs: Vec<std::path::PathBuf>, f: F) {
    use futures::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(f).catch_unwind().await {
        for path in logs {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- {} last lines:", path.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_admin_calls_watches_and_an_agent_on_a_follower() {
    require_fuse!();
    let _turn = SERIAL.lock().await;
    let Some(pg) = postgres() else { return };
    let mut w = World::start(ha_opts(&pg, 3, 2, Vec::new()))
        .await
        .expect("world starts");
    let (holder, epoch) = wait_db_leader(&pg, 1, Duration::from_secs(20)).await;
    assert_eq!(epoch, 1, "the first takeover");
    let l = w
        .replica_index(&holder)
        .expect("the leader is one of the replicas");
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (f1, f2) = (followers[0], followers[1]);
    let leader = w.replica_admin(l).await.unwrap();
    let mut follower = w.replica_admin(f1).await.unwrap();

    with_logs(replica_logs(&w), async {
        assert_cluster_status(&w, &holder, 1).await;
        // Admin calls on every replica: the node and its devices on one follower,
        // the images on the other, the deployment on the leader.
        w.admin = w.replica_admin(f1).await.unwrap();
        let devs = devices(0..2);
        add_node(&mut w, "n1", &devs).await;
        w.admin = w.replica_admin(f2).await.unwrap();
        w.add_bfb("bfb-1", 1 << 20, "4.9.0").await.unwrap();
        w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();

        // Watches from the same revision on a follower and on the leader, opened
        // before any Dpu exists.
        let from = dpu_revision(&mut follower).await;
        let on_follower = Recorder::start("the follower's watch", follower.clone(), from).await;
        let on_leader = Recorder::start("the leader's watch", leader.clone(), from).await;

        // The agent's first endpoint is a follower.
        let endpoints = addrs(&w, &[f1, l, f2]);
        w.start_agent_at("n1", &endpoints, "").unwrap();
        w.admin = w.replica_admin(l).await.unwrap();
        w.add_deployment("dep", deployment("bfb-1", 2)).await.unwrap();
        let reboots = rebooter(follower.clone(), vec!["n1".into()]);

        on_follower.wait_all_ready(2, "bfb-1", T).await;
        on_leader.wait_all_ready(2, "bfb-1", T).await;
        on_follower.settle(Duration::from_secs(1)).await;
        reboots.abort();

        // The follower delivered exactly the leader's events, in the same order.
        let (fe, le) = (on_follower.events(), on_leader.events());
        assert!(!fe.is_empty());
        assert_eq!(
            fe.len(),
            le.len(),
            "event counts: follower {} leader {}",
            fe.len(),
            le.len()
        );
        for (i, (a, b)) in fe.iter().zip(&le).enumerate() {
            assert_eq!(a, b, "event {i} differs between the follower and the leader");
        }
        assert!(on_follower.breaks().is_empty(), "{:?}", on_follower.breaks());
        assert!(on_leader.breaks().is_empty(), "{:?}", on_leader.breaks());
        let names: Vec<String> = devs.iter().map(|(d, _)| d.clone()).collect();
        assert_walks_once("the follower's watch", &fe, &names);

        // What the watch ends with is what a List on the follower returns.
        let list = follower
            .list(v1::ListRequest {
                kind: Kind::Dpu as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let listed: BTreeMap<String, v1::Dpu> = list
            .items
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(v1::resource::Kind::Dpu(d)) => Some((name_of(&d), d)),
                _ => None,
            })
            .collect();
        assert_eq!(
            listed,
            on_follower.dpus(),
            "the follower's List and its watch disagree"
        );
        assert!(list.resource_version >= fe.last().unwrap().resource_version);

        // The agent was served by the follower all along.
        let conns = agent_connections(&w, "n1");
        let want = format!("https://{}", w.replicas[f1].addr);
        assert!(!conns.is_empty(), "the agent never connected");
        assert!(
            conns.iter().all(|l| l.contains(&want)),
            "the agent connected elsewhere than the follower {want}: {conns:#?}"
        );
        // The agent's session row (docs/ha.md §5) names the follower too.
        assert_eq!(
            sql(&pg, "SELECT node, replica FROM sessions ORDER BY node"),
            vec![vec!["n1".to_string(), w.replicas[f1].name.clone()]],
            "the sessions table"
        );
        assert_flashed_once(&w, &["rshim0".into(), "rshim1".into()], "4.9.0");

        // The leader still leads with the first epoch: nothing above moved it.
        assert_eq!(db_leader(&pg), (holder.clone(), 1, true));
        assert_cluster_status(&w, &holder, 1).await;
    })
    .await;
    w.shutdown().await.unwrap();
    drop(pg);
}

/// Two nodes of three DPUs each behind a slow link (a 2 MiB image takes about
/// two seconds to push), n1's agent trying replica `first_n1` first and n2's
/// `first_n2`; the watch on replica `watch_on` opened before the rollout.
async fn rollout(
    w: &mut World,
    first_n1: usize,
    first_n2: usize,
    watch_on: usize,
) -> (Recorder, tokio::task::JoinHandle<()>, Vec<String>) {
    let n = w.replicas.len();
    let order = |first: usize| -> Vec<usize> { (0..n).map(|k| (first + k) % n).collect() };
    let mut admin = w.replica_admin(watch_on).await.unwrap();
    w.admin = admin.clone();
    add_node(w, "n1", &devices(0..3)).await;
    add_node(w, "n2", &devices(3..6)).await;
    w.add_bfb("bfb-1", 2 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();
    let e1 = addrs(w, &order(first_n1));
    let e2 = addrs(w, &order(first_n2));
    w.start_agent_at("n1", &e1, "").unwrap();
    w.start_agent_at("n2", &e2, "").unwrap();
    let from = dpu_revision(&mut admin).await;
    let rec = Recorder::start("the surviving replica's watch", admin.clone(), from).await;
    w.add_deployment("dep", deployment("bfb-1", 6)).await.unwrap();
    let reboots = rebooter(admin, vec!["n1".into(), "n2".into()]);
    let names = (0..6).map(|n| format!("d{n}")).collect();
    (rec, reboots, names)
}

fn slow_links() -> Vec<String> {
    (0..6).map(|n| format!("rshim{n}=slow:1000000")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_rollout_is_replaced_and_nothing_is_lost_or_flashed_twice() {
    require_fuse!();
    let _turn = SERIAL.lock().await;
    let Some(pg) = postgres() else { return };
    let mut w = World::start(ha_opts(&pg, 3, 6, slow_links()))
        .await
        .expect("world starts");
    let (holder, epoch) = wait_db_leader(&pg, 1, Duration::from_secs(20)).await;
    let l = w
        .replica_index(&holder)
        .expect("the leader is one of the replicas");
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let survivor = others[0];
    // n1's agent is on the leader (it must move when the leader dies), n2's on a follower.
    let (rec, reboots, names) = rollout(&mut w, l, others[1], survivor).await;

    with_logs(replica_logs(&w), async {
        assert_cluster_status(&w, &holder, epoch).await;
        let flashing = rec.wait_flashing(T).await;
        // No fault yet: the first leader still holds its first term.
        assert_eq!(
            db_leader(&pg),
            (holder.clone(), epoch, true),
            "the leader row changed before the kill"
        );
        let dead = format!("https://{}", w.replicas[l].addr);
        let n1_before = agent_connections(&w, "n1");
        assert!(
            n1_before.last().is_some_and(|c| c.contains(&dead)),
            "n1's agent is not on the leader before the kill: {n1_before:#?}"
        );
        let killed_at = Instant::now();
        w.stop_replica(l, true).await;
        eprintln!("killed the leader {holder} (epoch {epoch}) while {flashing} was flashing");
        let (new_holder, new_epoch) = wait_db_leader(&pg, epoch + 1, Duration::from_secs(15)).await;
        let failover = killed_at.elapsed();
        eprintln!("{new_holder} leads with epoch {new_epoch} {failover:?} after the kill");
        assert_ne!(new_holder, holder);
        assert_eq!(new_epoch, epoch + 1, "exactly one takeover");
        // Within the lease: it expires at most LEASE after the dead leader's last
        // renewal, and a follower tries to take it over every RENEW_EVERY (1 s
        // more for this test's polling on a busy machine).
        assert!(
            failover < LEASE + RENEW_EVERY + Duration::from_secs(1),
            "takeover took {failover:?}"
        );
        assert_cluster_status(&w, &new_holder, new_epoch).await;

        rec.wait_all_ready(6, "bfb-1", T).await;
        rec.settle(Duration::from_secs(1)).await;
        assert!(
            rec.breaks().is_empty(),
            "the survivor's watch broke: {:?}",
            rec.breaks()
        );
        assert_walks_once("the surviving replica's watch", &rec.events(), &names);
        let rshims: Vec<String> = (0..6).map(|n| format!("rshim{n}")).collect();
        assert_flashed_once(&w, &rshims, "4.9.0");
        // n1's agent left the dead leader for another replica.
        let conns = agent_connections(&w, "n1");
        assert!(
            conns.len() > n1_before.len() && !conns.last().unwrap().contains(&dead),
            "n1's agent did not move off the killed leader: {conns:#?}"
        );

        // The killed replica started again under its name joins as a follower:
        // the new leader keeps its term, and the returning replica's view holds
        // what happened while it was away.
        w.start_replica(l).unwrap();
        let mut back = w.replica_admin(l).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = dpus_listed(&mut back).await;
            if listed == rec.dpus() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{holder} restarted does not list the Dpus the others hold: {:?}",
                listed
                    .iter()
                    .map(|(n, d)| (n.clone(), phase_of(d)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            db_leader(&pg),
            (new_holder.clone(), new_epoch, true),
            "the returning replica took the lease"
        );
        assert_cluster_status(&w, &new_holder, new_epoch).await;
    })
    .await;
    reboots.abort();
    w.shutdown().await.unwrap();
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_rollout_the_replicas_reconnect_and_nothing_is_lost() {
    require_fuse!();
    let _turn = SERIAL.lock().await;
    let Some(mut pg) = postgres() else { return };
    let mut w = World::start(ha_opts(&pg, 3, 6, slow_links()))
        .await
        .expect("world starts");
    let (holder, _) = wait_db_leader(&pg, 1, Duration::from_secs(20)).await;
    let l = w
        .replica_index(&holder)
        .expect("the leader is one of the replicas");
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (rec, reboots, names) = rollout(&mut w, l, others[1], others[0]).await;

    with_logs(replica_logs(&w), async {
        let flashing = rec.wait_flashing(T).await;
        pg.stop_fast().expect("stop PostgreSQL");
        let stopped = Instant::now();
        eprintln!("PostgreSQL stopped while {flashing} was flashing");
        // Without their database the replicas say so to load balancers and
        // probes (docs/ha.md §4), and serve again once it is back.
        wait_health(&w, "NOT_SERVING", Duration::from_secs(10)).await;
        eprintln!("every replica NOT_SERVING {:?} after the stop", stopped.elapsed());
        // Down past renew_deadline: the leader cannot renew and must step down.
        tokio::time::sleep(RENEW_DEADLINE + Duration::from_millis(500)).await;
        pg.start_again().expect("start PostgreSQL again");
        let started = Instant::now();
        eprintln!("PostgreSQL started again after {:?}", stopped.elapsed());
        wait_health(&w, "SERVING", Duration::from_secs(15)).await;
        eprintln!("every replica SERVING {:?} after the start", started.elapsed());

        rec.wait_all_ready(6, "bfb-1", T).await;
        rec.settle(Duration::from_secs(1)).await;
        eprintln!("watch breaks: {:?}", rec.breaks());
        assert_walks_once("the watch", &rec.events(), &names);
        let rshims: Vec<String> = (0..6).map(|n| format!("rshim{n}")).collect();
        assert_flashed_once(&w, &rshims, "4.9.0");
        // Every replica is back on the database: each answers with the leader row's holder.
        // The first leader stepped down at its deadline, so leading again took
        // one takeover (by it or another replica): epoch 2.
        let (holder, epoch) = wait_db_leader(&pg, 1, Duration::from_secs(15)).await;
        eprintln!("after the restart {holder} leads with epoch {epoch}");
        assert_eq!(epoch, 2, "one takeover after the outage");
        assert_cluster_status(&w, &holder, epoch).await;
        // Each replica writes again (a flavor through each) and follows the
        // others' writes (each one's view holds all three).
        let mut admins = Vec::new();
        for i in 0..3 {
            let mut a = w.replica_admin(i).await.unwrap();
            let flavor = v1::Flavor {
                metadata: hostplane_tests::meta(&format!("after-restart-{i}")),
                spec: Some(v1::FlavorSpec::default()),
            };
            a.create(v1::CreateRequest {
                resource: Some(flavor.into()),
            })
            .await
            .unwrap_or_else(|e| panic!("create a flavor on {} after the restart: {e}", w.replicas[i].name));
            admins.push(a);
        }
        for (i, a) in admins.iter_mut().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let mut got = Vec::new();
                for k in 0..3 {
                    let r = a
                        .get(v1::GetRequest {
                            kind: Kind::Flavor as i32,
                            name: format!("after-restart-{k}"),
                        })
                        .await;
                    got.push(r.is_ok());
                }
                if got.iter().all(|g| *g) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} does not see the other replicas' writes after the restart: {got:?}",
                    w.replicas[i].name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    reboots.abort();
    w.shutdown().await.unwrap();
    drop(pg);
}
