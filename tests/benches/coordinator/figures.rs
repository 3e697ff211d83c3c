//! Readings of the coordinator process and the printed summary.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::resource::{UsageWho, getrusage};

use crate::agent::{AgentReport, Step};
use crate::scrape::Scrape;
use crate::watchers::Watched;

const MIB: f64 = 1024.0;

/// One reading of a process's memory and CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu: Duration,
    pub threads: u64,
}

impl Sample {
    /// CPU time since `earlier`.
    pub fn cpu_since(&self, earlier: &Sample) -> Duration {
        self.cpu.saturating_sub(earlier.cpu)
    }

    /// This reading with another CPU total (a replica's, summed over its lives).
    pub fn with_cpu(self, cpu: Duration) -> Sample {
        Sample { cpu, ..self }
    }

    /// Several processes as one: CPU, RSS, peak RSS and threads summed.
    pub fn sum(all: &[Sample]) -> Sample {
        all.iter().fold(Sample::default(), |a, s| Sample {
            rss_kib: a.rss_kib + s.rss_kib,
            hwm_kib: a.hwm_kib + s.hwm_kib,
            cpu: a.cpu + s.cpu,
            threads: a.threads + s.threads,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / MIB
    }
}

pub fn sample(pid: i32, clk_tck: u64) -> Result<Sample> {
    let read = |f: &str| {
        let path = format!("/proc/{pid}/{f}");
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    };
    let status = read("status")?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    let stat = read("stat")?;
    // Fields after `(comm)`: the 3rd (state) comes first; utime is the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("short /proc/<pid>/stat")
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Sample {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        cpu: Duration::from_millis(ticks * 1000 / clk_tck),
        threads: field("Threads")?,
    })
}

/// CPU time of this process (the admin client and the watchers).
pub fn own_cpu() -> Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1_000);
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn dist(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "n={:<5} p50 {:>9}  p99 {:>9}  max {:>9}",
        v.len(),
        ms(pct(&v, 50.0)),
        ms(pct(&v, 99.0)),
        ms(v.last().copied().unwrap_or_default())
    )
}

/// 12345 -> "12,345".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU time of the three processes over one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub coordinator: Duration,
    pub agents: Duration,
    pub bench: Duration,
}

/// What one run was asked to do.
#[derive(Debug, Clone)]
pub struct Run {
    pub dpus: usize,
    pub per_node: usize,
    pub nodes: usize,
    pub watchers: usize,
    pub idle: Duration,
    pub label: String,
}

impl Run {
    /// "1,000 (250 × 4)".
    pub fn size(&self) -> String {
        format!(
            "{} ({} × {})",
            thousands(self.dpus),
            thousands(self.nodes),
            self.per_node
        )
    }
}

pub struct Figures {
    pub run: Run,
    pub created_in: Duration,
    pub connected_in: Duration,
    pub walk: Duration,
    /// CLOCK_MONOTONIC ns at the Deployment's creation.
    pub walk_start_ns: u64,
    pub at_start: Sample,
    pub before: Sample,
    pub after: Sample,
    /// At the end, before SIGTERM (the peak includes the List and the idle window).
    pub last: Sample,
    pub agents_after: Sample,
    pub walk_cpu: Cpu,
    pub watched: Vec<Watched>,
    /// Why each watcher that failed did (out of order, ended, too slow).
    pub watch_failures: Vec<String>,
    /// Why the bench's own watch on the Deployment had to be opened again.
    pub deployment_watch_reopened: Vec<String>,
    /// The timed List of every Dpu: wall time and pages.
    pub list: (Duration, usize),
    /// The idle window: its length and the CPU spent in it.
    pub idle: Option<(Duration, Cpu)>,
    pub metrics: Option<Scrape>,
    pub perf_top: Vec<String>,
    /// What perf recorded: "the walk" or "the idle window".
    pub perf_window: &'static str,
    pub store_bytes: u64,
    pub exit: Option<i32>,
}

/// The latency histogram as the coordinator itself measured it.
const LATENCY: &str = "hostplane_coordinator_command_latency_seconds";

impl Figures {
    pub fn latencies(r: &AgentReport) -> Vec<Duration> {
        let mut v: Vec<Duration> = r.latencies.iter().map(|l| l.2).collect();
        v.sort();
        v
    }

    fn cpu_per_dpu(&self) -> f64 {
        self.walk_cpu.coordinator.as_secs_f64() * 1e3 / self.run.dpus as f64
    }

    fn idle_pct(&self) -> Option<f64> {
        let (d, cpu) = self.idle?;
        Some(cpu.coordinator.as_secs_f64() * 100.0 / d.as_secs_f64())
    }

    /// The coordinator's own p50 / p99 (ms), when it has the series and observations.
    fn metrics_latency(&self) -> Option<(f64, f64)> {
        let h = self.metrics.as_ref()?.histogram(LATENCY)?;
        Some((h.quantile(0.5)? * 1e3, h.quantile(0.99)? * 1e3))
    }

    /// One row of the Markdown table (see [`table_header`]).
    pub fn row(&self, r: &AgentReport) -> String {
        let lat = Self::latencies(r);
        let metrics = match self.metrics_latency() {
            Some((p50, p99)) => format!("{p50:.0} / {p99:.0} ms"),
            None => "—".into(),
        };
        let last = self.watched.iter().map(|w| w.done_after).max();
        let watch = match (self.watch_failures.first(), last) {
            _ if self.run.watchers == 0 => "0".into(),
            (None, Some(last)) => format!(
                "{}: all in order, last Ready seen at {:.2} s",
                self.run.watchers,
                last.as_secs_f64()
            ),
            (Some(e), _) => format!(
                "{}: **{} failed** ({})",
                self.run.watchers,
                self.watch_failures.len(),
                e.replace('|', "/")
            ),
            (None, None) => format!("{}: none finished", self.run.watchers),
        };
        let idle = match self.idle_pct() {
            Some(p) => format!("{p:.1} %"),
            None => "—".into(),
        };
        let c = self.walk_cpu;
        format!(
            "| {} | {} | {watch} | {:.2} s | {:.0} / {:.0} ms | {metrics} | {:.2} ms | {:.1} MiB | {:.3} s | {idle} | \
             {:.2} / {:.2} / {:.2} s |",
            self.run.size(),
            self.run.label,
            self.walk.as_secs_f64(),
            pct(&lat, 50.0).as_secs_f64() * 1e3,
            pct(&lat, 99.0).as_secs_f64() * 1e3,
            self.cpu_per_dpu(),
            self.last.hwm_kib as f64 / MIB,
            self.list.0.as_secs_f64(),
            c.coordinator.as_secs_f64(),
            c.agents.as_secs_f64(),
            c.bench.as_secs_f64()
        )
    }

    pub fn print(&self, r: &AgentReport, bin: &Path) {
        let n = self.run.dpus as f64;
        let mib = |k: u64| k as f64 / MIB;
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!(
            "coordinator at scale: {} Dpus ({} nodes x {}), reboot_method AGENT, node_effect AUTO, \
             max_unavailable {}, {} watchers",
            self.run.dpus, self.run.nodes, self.run.per_node, self.run.dpus, self.run.watchers
        );
        println!(
            "binary {} ({}; default fsm/agents config)",
            bin.display(),
            self.run.label
        );
        println!(
            "CPU: {cpus} cores shared, unpinned, by three processes: the coordinator, the simulated agents' \
             process ({} agents, each on its own HTTP/2 connection) and this bench (admin client, watchers, readings)",
            self.run.nodes
        );
        println!("setup");
        println!(
            "  Bfb, Flavor, {} CreateNodeWithDevices  {:>8.2} s",
            self.run.nodes,
            self.created_in.as_secs_f64()
        );
        println!(
            "  {} agent sessions opened              {:>8.2} s",
            self.run.nodes,
            self.connected_in.as_secs_f64()
        );
        println!("walk: Deployment created -> {0}/{0} Dpus Ready", self.run.dpus);
        println!(
            "  wall time                              {:>8.2} s",
            self.walk.as_secs_f64()
        );
        let cmds: u64 = r.commands.values().sum();
        let kinds: Vec<String> = r
            .commands
            .iter()
            .map(|(k, v)| format!("{} {v}", k.name()))
            .collect();
        println!(
            "  commands run                           {cmds:>8}  ({})",
            kinds.join(", ")
        );
        println!(
            "  desired states delivered               {:>8}  ({:.1} per Dpu)",
            r.desired,
            r.desired as f64 / n
        );
        println!("  results re-sent (journal)              {:>8}", r.resent);
        println!(
            "  host reboots / agent sessions          {:>8} / {}",
            r.reboots, r.sessions
        );
        let per_node: Vec<String> = (r.reboots_per_node.iter())
            .map(|(times, nodes)| format!("{nodes} nodes x{times}"))
            .collect();
        println!("  host reboots per node                  {}", per_node.join(", "));
        if r.open_retries > 0 {
            println!(
                "  connection or session opens retried    {:>8}  (e.g. {})",
                r.open_retries,
                r.open_failures.first().map_or("", String::as_str)
            );
        }
        if !self.deployment_watch_reopened.is_empty() {
            println!(
                "  the bench's Deployment watch reopened  {:>8}  (first: {})",
                self.deployment_watch_reopened.len(),
                self.deployment_watch_reopened[0]
            );
        }
        println!("command latency (agent sends result -> receives the Dpu's next command)");
        println!(
            "  all                                    {}",
            dist(r.latencies.iter().map(|l| l.2).collect())
        );
        let mut pairs: BTreeMap<(Step, Step), Vec<Duration>> = BTreeMap::new();
        for (a, b, d) in &r.latencies {
            pairs.entry((*a, *b)).or_default().push(*d);
        }
        for ((a, b), v) in pairs {
            let label = format!("{} -> {}", a.name(), b.name());
            println!("  {label:<38} {}", dist(v));
        }
        let first =
            (r.first_command_at.iter()).map(|t| Duration::from_nanos(t.saturating_sub(self.walk_start_ns)));
        println!(
            "  Deployment created -> first command    {}",
            dist(first.collect())
        );
        if self.run.watchers > 0 {
            let events: u64 = self.watched.iter().map(|w| w.events).sum();
            println!(
                "watchers: {} Watches on every Dpu, each on its own connection",
                self.run.watchers
            );
            println!(
                "  events delivered                       {events:>8}  ({:.0} per watcher that finished)",
                events as f64 / self.watched.len().max(1) as f64
            );
            println!(
                "  in order and every Dpu Ready seen      {:>8} of {}",
                self.watched.len(),
                self.run.watchers
            );
            for e in &self.watch_failures {
                println!("  FAILED: {e}");
            }
            println!(
                "  Deployment created -> watcher saw all Ready  {}",
                dist(self.watched.iter().map(|w| w.done_after).collect())
            );
        }
        println!(
            "List of every Dpu (page_size 500)        {:>8.3} s  ({} pages)",
            self.list.0.as_secs_f64(),
            self.list.1
        );
        println!("CPU during the walk (utime + stime)");
        let c = self.walk_cpu;
        println!(
            "  coordinator                            {:>8.2} s  ({:.2} ms per Dpu; {:.0}% of one core)",
            c.coordinator.as_secs_f64(),
            self.cpu_per_dpu(),
            c.coordinator.as_secs_f64() * 100.0 / self.walk.as_secs_f64()
        );
        println!(
            "  simulated agents' process              {:>8.2} s  ({:.0}% of one core)",
            c.agents.as_secs_f64(),
            c.agents.as_secs_f64() * 100.0 / self.walk.as_secs_f64()
        );
        println!(
            "  bench process (admin, watchers)        {:>8.2} s  ({:.0}% of one core)",
            c.bench.as_secs_f64(),
            c.bench.as_secs_f64() * 100.0 / self.walk.as_secs_f64()
        );
        if let Some((d, idle)) = self.idle {
            println!(
                "idle window: {:.0} s, every agent heartbeating at lease/3",
                d.as_secs_f64()
            );
            println!(
                "  coordinator CPU                        {:>8.3} s  ({:.2}% of one core)",
                idle.coordinator.as_secs_f64(),
                self.idle_pct().unwrap_or_default()
            );
            println!(
                "  agents' process CPU                    {:>8.3} s  ({:.2}% of one core)",
                idle.agents.as_secs_f64(),
                idle.agents.as_secs_f64() * 100.0 / d.as_secs_f64()
            );
        }
        println!("coordinator process (pid's /proc)");
        println!(
            "  CPU since start                        {:>8.2} s",
            self.last.cpu.as_secs_f64()
        );
        println!(
            "  RSS at start / before walk / after walk / at end  {:.1} / {:.1} / {:.1} / {:.1} MiB",
            mib(self.at_start.rss_kib),
            mib(self.before.rss_kib),
            mib(self.after.rss_kib),
            mib(self.last.rss_kib)
        );
        println!(
            "  peak RSS (VmHWM)                       {:>8.1} MiB  ({:.1} KiB per Dpu over the idle RSS)",
            mib(self.last.hwm_kib),
            self.last.hwm_kib.saturating_sub(self.at_start.rss_kib) as f64 / n
        );
        println!(
            "  threads at end                         {:>8}",
            self.last.threads
        );
        println!(
            "  store (db + wal + shm; PostgreSQL: its data directory) {:>8.1} MiB",
            self.store_bytes as f64 / (1024.0 * 1024.0)
        );
        println!(
            "  exit status after SIGTERM              {:>8}",
            match self.exit {
                Some(c) => c.to_string(),
                None => "killed".into(),
            }
        );
        println!(
            "agents' process peak RSS (VmHWM)         {:>8.1} MiB",
            mib(self.agents_after.hwm_kib)
        );
        self.print_metrics();
        if !self.perf_top.is_empty() {
            println!(
                "perf: the coordinator during {} (perf report --no-children --sort symbol), top {}",
                self.perf_window,
                self.perf_top.len()
            );
            for l in &self.perf_top {
                println!("  {l}");
            }
        }
    }

    fn print_metrics(&self) {
        let Some(m) = &self.metrics else {
            println!("coordinator /metrics: not scraped (HOSTPLANE_BENCH_METRICS=0)");
            return;
        };
        if m.is_empty() {
            println!("coordinator /metrics: the scrape failed (see above)");
            return;
        }
        println!("coordinator /metrics after the walk (absent = this build has no such series)");
        let p = "hostplane_coordinator_";
        let ms = |v: Option<f64>| v.map_or("absent".to_string(), |v| format!("{:.1} ms", v * 1e3));
        for (name, what) in [
            ("command_latency_seconds", "command latency"),
            ("reconcile_pass_seconds", "reconcile pass"),
            ("store_write_seconds", "store write"),
        ] {
            match m.histogram(&format!("{p}{name}")) {
                Some(h) => println!(
                    "  {what:<22} n={:<8} p50 {:>10}  p99 {:>10}  mean {:>10}",
                    h.count,
                    ms(h.quantile(0.5)),
                    ms(h.quantile(0.99)),
                    ms(h.mean())
                ),
                None => println!("  {what:<22} absent"),
            }
        }
        match m.histogram(&format!("{p}store_batch_writes")) {
            Some(h) => println!(
                "  store batch writes     n={:<8} p50 {:>10.1}  p99 {:>10.1}  mean {:>10.1}",
                h.count,
                h.quantile(0.5).unwrap_or_default(),
                h.quantile(0.99).unwrap_or_default(),
                h.mean().unwrap_or_default()
            ),
            None => println!("  store batch writes     absent"),
        }
        for (name, what) in [
            ("agents_connected", "agents connected"),
            ("watch_subscribers", "watch subscribers"),
            ("desired_states_sent_total", "desired states sent"),
            ("nacks_total", "NACKs"),
        ] {
            let v = m.value(&format!("{p}{name}"));
            println!(
                "  {what:<22} {}",
                v.map_or("absent".to_string(), |v| format!("{v}"))
            );
        }
        let phases: Vec<String> = m
            .with_prefix(&format!("{p}dpus{{phase=\""))
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| {
                let phase = k.rsplit_once("=\"").map_or(k, |(_, p)| p.trim_end_matches("\"}"));
                format!("{phase} {v}")
            })
            .collect();
        println!("  Dpus by phase          {}", phases.join(", "));
    }
}

/// The Markdown table's header (docs/benchmarks.md, coordinator section).
pub fn table_header() -> String {
    "| Dpus (nodes × per node) | build | watchers | walk | latency p50 / p99 (agents) | \
     latency p50 / p99 (/metrics) | CPU per Dpu | peak RSS | List of all Dpus | idle CPU | \
     walk CPU: coordinator / agents / bench |\n|---|---|---|---|---|---|---|---|---|---|---|"
        .to_string()
}

/// The replicas, PostgreSQL and the chaos run (printed after [`Figures`]).
pub struct Ha {
    pub backend: crate::cluster::Backend,
    pub lease: String,
    pub replicas_before: Vec<crate::cluster::ReplicaReading>,
    pub replicas_after: Vec<crate::cluster::ReplicaReading>,
    pub replicas_last: Vec<crate::cluster::ReplicaReading>,
    pub exits: Vec<Option<i32>>,
    /// PostgreSQL's CPU over the walk and over the idle window.
    pub pg_walk: Option<Duration>,
    pub pg_idle: Option<Duration>,
    pub chaos: Option<crate::chaos::Chaos>,
    pub kill_gap: Duration,
    pub phase_log: Option<crate::chaos::PhaseLog>,
    /// `pg_stat_activity` over the walk (PostgreSQL).
    pub lock_waits: Option<crate::cluster::LockWaits>,
    pub dpus: usize,
    /// Where the leader was read: GetClusterStatus, or the database's row.
    pub leader_source: &'static str,
}

fn p50_p99(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return "—".into();
    }
    format!(
        "{:.0} / {:.0} ms",
        pct(&v, 50.0).as_secs_f64() * 1e3,
        pct(&v, 99.0).as_secs_f64() * 1e3
    )
}

impl Ha {
    /// Each replica's CPU over the walk (every life of it).
    fn walk_cpu(&self) -> Vec<(String, Duration)> {
        self.replicas_after
            .iter()
            .map(|a| {
                let b = self.replicas_before.iter().find(|b| b.name == a.name);
                (
                    a.name.clone(),
                    a.cpu.saturating_sub(b.map_or(Duration::ZERO, |b| b.cpu)),
                )
            })
            .collect()
    }

    fn verdict(&self) -> Option<crate::chaos::Verdict> {
        self.phase_log
            .as_ref()
            .map(|l| crate::chaos::Verdict::of(l, self.dpus))
    }

    /// Dpus flashed other than exactly once: (never, more than once).
    fn flash_faults(&self, r: &AgentReport) -> (usize, Vec<String>) {
        let never = self.dpus.saturating_sub(r.flashes.len());
        let more = r
            .flashes
            .iter()
            .filter(|(_, n)| **n != 1)
            .map(|(d, n)| format!("{d} x{n}"))
            .collect();
        (never, more)
    }

    /// (kill -> new leader, kill -> next Dpu transition) of every kill.
    fn failovers(&self, v: Option<&crate::chaos::Verdict>) -> (Vec<Duration>, Vec<Option<Duration>>) {
        let Some(c) = &self.chaos else {
            return (Vec::new(), Vec::new());
        };
        let leader = c.kills.iter().map(|k| k.to_new_leader).collect();
        let next = match v {
            Some(v) => v.next_transition_after(&c.kills),
            None => vec![None; c.kills.len()],
        };
        (leader, next)
    }

    /// Print the section; returns what failed (lost or repeated transitions,
    /// Dpus not flashed exactly once, fewer kills than asked).
    pub fn print(&self, r: &AgentReport) -> Vec<String> {
        let mut problems = Vec::new();
        let secs = |d: Duration| d.as_secs_f64();
        match self.backend {
            crate::cluster::Backend::Postgres => println!(
                "replicas: {} on PostgreSQL ({})",
                self.replicas_last.len(),
                self.lease
            ),
            crate::cluster::Backend::Sqlite => println!("one coordinator on SQLite"),
        }
        let walk_cpu = self.walk_cpu();
        for (i, last) in self.replicas_last.iter().enumerate() {
            println!(
                "  {:<12} CPU over the walk {:>7.2} s   RSS at end {:>7.1} MiB   peak RSS {:>7.1} MiB   lives {}   exit {}",
                last.name,
                secs(walk_cpu.get(i).map_or(Duration::ZERO, |c| c.1)),
                last.now.rss_mib(),
                last.hwm_kib as f64 / MIB,
                last.lives,
                match self.exits.get(i).copied().flatten() {
                    Some(c) => c.to_string(),
                    None => "killed".into(),
                }
            );
        }
        if let Some(pg) = self.pg_walk {
            println!(
                "PostgreSQL CPU (postmaster and children) over the walk {:>7.2} s",
                secs(pg)
            );
        }
        if let Some(w) = &self.lock_waits {
            println!(
                "PostgreSQL backends over the walk ({} samples, 100 ms apart): active {:.2}, waiting on a lock {:.2} \
                 (mean per sample; at least one waiting in {:.0}% of samples)",
                w.samples,
                w.mean_active(),
                w.mean_waiting(),
                w.share_with_waiter()
            );
            let mut events: Vec<(&String, &u64)> = w.events.iter().collect();
            events.sort_by(|a, b| b.1.cmp(a.1));
            let top: Vec<String> = events.iter().take(6).map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "  wait events of active backends (backend-samples): {}",
                top.join(", ")
            );
            if let Some(e) = &w.error {
                println!("  sampler stopped: {e}");
            }
        }
        if let Some(pg) = self.pg_idle {
            println!(
                "PostgreSQL CPU over the idle window                    {:>7.3} s",
                secs(pg)
            );
        }
        println!(
            "agents: failovers to another replica {} {}",
            r.failovers,
            r.failover_reasons
                .first()
                .map_or(String::new(), |f| format!("(e.g. {f})"))
        );
        let (never, more) = self.flash_faults(r);
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for n in r.flashes.values() {
            *counts.entry(*n).or_default() += 1;
        }
        println!(
            "FlashBFB commands per Dpu (count: Dpus): {counts:?}; never flashed {never}; more than once {}",
            more.len()
        );
        if never > 0 || !more.is_empty() {
            problems.push(format!(
                "{never} Dpus never flashed, {} flashed more than once (e.g. {:?})",
                more.len(),
                more.iter().take(5).collect::<Vec<_>>()
            ));
        }
        let verdict = self.verdict();
        if let Some(c) = &self.chaos {
            println!(
                "chaos: {} of {} leader kills (seed {}, random pause up to {:?} before each)",
                c.kills.len(),
                c.planned,
                c.seed,
                self.kill_gap
            );
            if let Some(why) = &c.stopped {
                println!("  STOPPED: {why}");
                problems.push(format!("chaos: {why}"));
            }
            let (leader, next) = self.failovers(verdict.as_ref());
            for (i, k) in c.kills.iter().enumerate() {
                println!(
                    "  kill {:>2}: {} (epoch {}) -> {} (epoch {}): new leader after {:>6.0} ms, next Dpu transition after {}, the killed replica served again after {}",
                    i + 1,
                    k.victim,
                    k.old_epoch,
                    k.new_leader,
                    k.new_epoch,
                    secs(k.to_new_leader) * 1e3,
                    next[i].map_or("none before the next kill".to_string(), |d| format!(
                        "{:.0} ms",
                        secs(d) * 1e3
                    )),
                    k.restart.map_or("(not awaited)".to_string(), |d| format!(
                        "{:.0} ms",
                        secs(d) * 1e3
                    ))
                );
            }
            println!(
                "  kill -> new leader with a live lease ({})  {}",
                self.leader_source,
                dist(leader)
            );
            println!(
                "  kill -> the next leader's first Dpu transition (at_ms; {} of {} leaders made one before being killed)  {}",
                next.iter().flatten().count(),
                next.len(),
                dist(next.iter().flatten().copied().collect())
            );
        }
        if let (Some(l), Some(v)) = (&self.phase_log, &verdict) {
            println!(
                "phase watch: {} events, reopened {} times{}",
                l.events,
                l.reopened.len(),
                l.reopened
                    .first()
                    .map_or(String::new(), |w| format!(" (first: {w})"))
            );
            println!(
                "  path of {} of {} Dpus: {}",
                v.modal_count,
                self.dpus,
                v.modal_text()
            );
            println!(
                "  repeated transitions {}   lost transitions {}   other paths {}   Dpus never seen {}   events out of order {}",
                v.repeated.len(),
                v.lost.len(),
                v.other.len(),
                v.unseen,
                l.out_of_order.len()
            );
            for (what, list) in [
                ("repeated", &v.repeated),
                ("lost", &v.lost),
                ("other path", &v.other),
                ("out of order", &l.out_of_order),
            ] {
                for e in list.iter().take(5) {
                    println!("  {what}: {e}");
                }
                if !list.is_empty() {
                    problems.push(format!(
                        "{} Dpus with a {what} transition (e.g. {})",
                        list.len(),
                        list[0]
                    ));
                }
            }
            if v.unseen > 0 {
                problems.push(format!("the phase watch never saw {} Dpus", v.unseen));
            }
        }
        problems
    }

    /// One row of the HA table (see [`ha_table_header`]).
    pub fn row(&self, f: &Figures, r: &AgentReport) -> String {
        let lat = Figures::latencies(r);
        let cpu: Vec<String> = self
            .walk_cpu()
            .iter()
            .map(|(_, c)| format!("{:.1}", c.as_secs_f64()))
            .collect();
        let rss: Vec<String> = self
            .replicas_last
            .iter()
            .map(|l| format!("{:.0}", l.hwm_kib as f64 / MIB))
            .collect();
        let verdict = self.verdict();
        let (leader, next) = self.failovers(verdict.as_ref());
        let terms = next.len();
        let next: Vec<Duration> = next.into_iter().flatten().collect();
        let next_text = match terms {
            0 => "—".to_string(),
            _ => format!("{} ({} of {terms} leaders)", p50_p99(&next), next.len()),
        };
        let kills = match &self.chaos {
            Some(c) => format!("{} of {}", c.kills.len(), c.planned),
            None => "0".into(),
        };
        let checks = match &verdict {
            Some(v) => format!("{} / {}", v.lost.len(), v.repeated.len() + v.other.len()),
            None => "not watched".into(),
        };
        let (never, more) = self.flash_faults(r);
        format!(
            "| {} | {} | {:.2} s | {:.0} / {:.0} ms | {} s | {} MiB | {} | {kills} | {} | {} | {checks} | {} |",
            f.run.size(),
            f.run.label,
            f.walk.as_secs_f64(),
            pct(&lat, 50.0).as_secs_f64() * 1e3,
            pct(&lat, 99.0).as_secs_f64() * 1e3,
            cpu.join(" / "),
            rss.join(" / "),
            self.pg_walk
                .map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            p50_p99(&leader),
            next_text,
            never + more.len()
        )
    }
}

/// The HA table's header (docs/benchmarks.md, issue 13).
pub fn ha_table_header() -> String {
    "| Dpus (nodes × per node) | run | walk | latency p50 / p99 (agents) | walk CPU per replica | \
     peak RSS per replica | PostgreSQL walk CPU | leader kills | kill → new leader p50 / p99 | \
     kill → the next leader's first transition p50 / p99 | lost / repeated transitions | Dpus not flashed exactly once |\n\
     |---|---|---|---|---|---|---|---|---|---|---|---|"
        .to_string()
}
