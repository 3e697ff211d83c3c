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
    rss_kib: u64,
    hwm_kib: u64,
    cpu: Duration,
    threads: u64,
}

impl Sample {
    /// CPU time since `earlier`.
    pub fn cpu_since(&self, earlier: &Sample) -> Duration {
        self.cpu.saturating_sub(earlier.cpu)
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
    fn latencies(r: &AgentReport) -> Vec<Duration> {
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
            "  store file (db + wal + shm)            {:>8.1} MiB",
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
