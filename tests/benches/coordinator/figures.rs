//! Readings of the coordinator process and the printed summary.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::resource::{UsageWho, getrusage};

use crate::DPUS_PER_NODE;
use crate::agent::{AgentReport, Step};

const MIB: f64 = 1024.0;

/// One reading of a process's memory and CPU.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu: Duration,
    threads: u64,
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

/// CPU time of this process (the simulated agents and the admin client).
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

pub struct Figures {
    pub dpus: usize,
    pub nodes: usize,
    pub created_in: Duration,
    pub connected_in: Duration,
    pub walk: Duration,
    pub walk_start: Instant,
    pub at_start: Sample,
    pub before: Sample,
    pub after: Sample,
    pub self_cpu: Duration,
    pub store_bytes: u64,
    pub exit: Option<i32>,
}

impl Figures {
    pub fn print(&self, r: &AgentReport, bin: &Path) {
        let n = self.dpus as f64;
        let mib = |k: u64| k as f64 / MIB;
        let cpu = self.after.cpu.saturating_sub(self.before.cpu);
        println!();
        println!(
            "coordinator at scale: {} Dpus ({} nodes x {DPUS_PER_NODE}), reboot_method AGENT, node_effect AUTO, \
             max_unavailable {}",
            self.dpus, self.nodes, self.dpus
        );
        println!("binary {} (default fsm/agents config)", bin.display());
        println!("setup");
        println!(
            "  Bfb, Flavor, {} CreateNodeWithDevices  {:>8.2} s",
            self.nodes,
            self.created_in.as_secs_f64()
        );
        println!(
            "  {} agent sessions opened              {:>8.2} s",
            self.nodes,
            self.connected_in.as_secs_f64()
        );
        println!("walk: Deployment created -> {0}/{0} Dpus Ready", self.dpus);
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
        let first = r
            .first_command_at
            .iter()
            .map(|t| t.saturating_duration_since(self.walk_start));
        println!(
            "  Deployment created -> first command    {}",
            dist(first.collect())
        );
        println!("coordinator process (pid's /proc)");
        println!(
            "  CPU during the walk                    {:>8.2} s  ({:.2} ms per Dpu; {:.0}% of one core)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 / n,
            cpu.as_secs_f64() * 100.0 / self.walk.as_secs_f64()
        );
        println!(
            "  CPU since start                        {:>8.2} s",
            self.after.cpu.as_secs_f64()
        );
        println!(
            "  RSS at start / before walk / at end    {:.1} / {:.1} / {:.1} MiB",
            mib(self.at_start.rss_kib),
            mib(self.before.rss_kib),
            mib(self.after.rss_kib)
        );
        println!(
            "  peak RSS (VmHWM)                       {:>8.1} MiB  ({:.1} KiB per Dpu over the idle RSS)",
            mib(self.after.hwm_kib),
            self.after.hwm_kib.saturating_sub(self.at_start.rss_kib) as f64 / n
        );
        println!(
            "  threads at end                         {:>8}",
            self.after.threads
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
            "bench process (simulated agents + admin client) CPU during the walk: {:.2} s",
            self.self_cpu.as_secs_f64()
        );
    }
}
