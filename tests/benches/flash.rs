//! Flash throughput: the agent's push path against `cat image > boot`, both
//! into the same simulated DPU, for the same valid BFB (1 GiB by default).
//!
//! ```text
//! cargo build --release -p hostplane-sim
//! cargo bench -p hostplane-tests --bench flash
//! HOSTPLANE_BENCH_SIZE=256MiB HOSTPLANE_BENCH_RUNS=5 cargo bench -p hostplane-tests --bench flash
//! HOSTPLANE_BENCH_WRITE_KIB=1024 cargo bench -p hostplane-tests --bench flash   # another write bound
//! ```
//!
//! The simulator runs as a separate process (`target/release/hostplane-sim`),
//! so this process holds only the pusher and its CPU time is the agent's.
//! Each round pushes once with `sh -c 'cat IMAGE > boot'` and once through
//! `Flasher::flash` (no bf.cfg, so both push exactly the image bytes), in
//! alternating order, and checks that the simulated DPU installed the image
//! every time. The agent's push is timed from its `push` progress report
//! (`boot` is open) to its final byte report (`boot` is closed); its image
//! verification before the push and the log following after it are not part
//! of the push, and are shown separately as "whole flash" CPU.
//!
//! CPU: `cat` (and its `sh`) through `getrusage(RUSAGE_CHILDREN)` deltas;
//! the agent through `getrusage(RUSAGE_SELF)` deltas (every thread of this
//! process: the push threads, the tokio runtime polling `misc`); the
//! simulator through `/proc/<pid>/stat` (in clock ticks: 10 ms steps). The
//! simulator's reset delay is set to 0 so that `cat`'s wall time (which
//! includes starting `sh` and `cat` and opening `boot`; printed as start-up
//! overhead) and the agent's (which starts once `boot` is open) measure the
//! same transfer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostplane_agent::bfb_cache::{BfbCache, CacheConfig};
use hostplane_agent::bfcfg::BfCfg;
use hostplane_agent::flash::{FlashConfig, FlashRequest, Flasher, ImageSource, Stage};
use hostplane_proto::v1::FlashProgress;
use hostplane_tests::{Proc, fuse_unavailable};
use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::{Pid, SysconfVar, sysconf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
/// How long a pushed image may take to install on the simulated DPU.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let settings = match Settings::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flash bench: {e:#}");
            return ExitCode::from(64);
        }
    };
    if let Some(why) = fuse_unavailable() {
        println!("flash bench SKIPPED: {why}");
        return ExitCode::SUCCESS;
    }
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flash bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to run, from `HOSTPLANE_BENCH_SIZE`, `HOSTPLANE_BENCH_RUNS` and
/// `HOSTPLANE_BENCH_WRITE_KIB` (the agent's bytes per `write` to `boot`,
/// [`FlashConfig::push_write_max`]; 256 by default, as in production).
#[derive(Debug, Clone, Copy)]
struct Settings {
    size: u64,
    runs: usize,
    write_max: usize,
}

impl Settings {
    fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let size = match get("HOSTPLANE_BENCH_SIZE") {
            Some(s) => parse_size(&s).with_context(|| format!("HOSTPLANE_BENCH_SIZE={s:?}"))?,
            None => 1 << 30,
        };
        ensure!(
            size >= 1 << 20,
            "HOSTPLANE_BENCH_SIZE: at least 1MiB, got {size} bytes"
        );
        let runs = match get("HOSTPLANE_BENCH_RUNS") {
            Some(s) => s
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=50).contains(n))
                .with_context(|| format!("HOSTPLANE_BENCH_RUNS={s:?}: expected 1..=50"))?,
            None => 9,
        };
        let write_max = match get("HOSTPLANE_BENCH_WRITE_KIB") {
            Some(s) => {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (4..=16384).contains(n))
                    .with_context(|| format!("HOSTPLANE_BENCH_WRITE_KIB={s:?}: expected 4..=16384"))?
                    << 10
            }
            None => FlashConfig::default().push_write_max,
        };
        Ok(Settings {
            size,
            runs,
            write_max,
        })
    }
}

/// `1073741824`, `256MiB`, `1GiB`, `512KiB` (binary), `100MB`, `1GB` (decimal).
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().context("expected a number of bytes, e.g. 256MiB")?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => bail!("unknown unit {other:?}: use KiB, MiB, GiB, KB, MB or GB"),
    };
    n.checked_mul(mult).context("size overflows u64")
}

/// One push: wall time, CPU of the pusher, CPU of the simulator meanwhile.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    sim_cpu: Duration,
}

impl Sample {
    fn mib_s(&self, bytes: u64) -> f64 {
        bytes as f64 / MIB / self.wall.as_secs_f64()
    }
}

/// The simulator process and how to ask it about `rshim0`.
struct Sim {
    proc: Proc,
    pid: Pid,
    root: PathBuf,
    log: PathBuf,
    clk_tck: f64,
}

fn run(s: &Settings) -> Result<()> {
    let sim_bin = sim_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("hostplane-flash-bench")
        .tempdir()?;
    let image = dir.path().join("bench.bfb");
    let t = Instant::now();
    write_image(&image, s.size)?;
    let bytes = std::fs::metadata(&image)?.len();
    println!(
        "flash bench: wrote {} ({bytes} bytes, {:.0} MiB) in {:.1} s; {} round(s), {} CPU(s)",
        image.display(),
        bytes as f64 / MIB,
        t.elapsed().as_secs_f64(),
        s.runs,
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _guard = rt.enter();
    let sim = start_sim(&sim_bin, dir.path())?;
    let res = rounds(&rt, &sim, &image, bytes, dir.path(), (s.runs, s.write_max));
    if res.is_err() {
        eprintln!("flash bench: simulator log: {}", sim.log.display());
        eprintln!("{}", tail(&sim.log, 20));
    }
    let (cat, agent) = res?;
    drop(sim.proc); // unmounts before the temp dir goes
    report(bytes, &cat, &agent);
    let startup = startup_overhead()?;
    println!(
        "(cat's wall time includes starting sh + cat and opening boot: `sh -c 'cat /dev/null > /dev/null'` \
         takes {:.1} ms here; the agent's starts once boot is open)",
        startup.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Median wall time of starting `sh -c 'cat /dev/null > /dev/null'`.
fn startup_overhead() -> Result<Duration> {
    let mut walls = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let status = std::process::Command::new("sh")
            .args(["-c", "cat /dev/null > /dev/null"])
            .status()
            .context("running sh -c 'cat /dev/null > /dev/null'")?;
        ensure!(status.success(), "sh -c 'cat /dev/null > /dev/null': {status}");
        walls.push(t.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(walls)))
}

fn rounds(
    rt: &tokio::runtime::Runtime,
    sim: &Sim,
    image: &Path,
    bytes: u64,
    dir: &Path,
    (runs, write_max): (usize, usize),
) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let cache = BfbCache::new(CacheConfig {
        dir: dir.join("cache"),
        ..CacheConfig::default()
    })
    .context("creating the agent's BFB cache")?;
    let flasher = Flasher::new(
        FlashConfig {
            dev_root: sim.root.clone(),
            run_dir: dir.join("run"),
            push_write_max: write_max,
            ..FlashConfig::default()
        },
        Arc::new(cache),
    );
    println!("agent writes at most {} KiB per write to boot", write_max >> 10);
    println!(
        "{:<6}{:<7}{:>9}{:>10}{:>9}{:>11}{:>10}  note",
        "round", "push", "wall s", "MiB/s", "cpu s", "cpu s/GiB", "sim cpu s"
    );
    let (mut cat, mut agent) = (Vec::new(), Vec::new());
    for round in 1..=runs {
        // Alternate the order, so neither always runs on a warmer system.
        for agent_turn in [round % 2 == 0, round % 2 == 1] {
            let before = sim.status()?;
            if agent_turn {
                let (sample, whole_cpu, own_rate) = rt.block_on(agent_push(&flasher, sim, image, bytes))?;
                sim.settle(&before, "agent")?;
                let note = format!(
                    "agent's own rate {:.0} MiB/s; whole flash (verify+push+follow) cpu {:.2} s",
                    own_rate / MIB,
                    whole_cpu.as_secs_f64()
                );
                print_row(round, "agent", bytes, &sample, &note);
                agent.push(sample);
            } else {
                let sample = cat_push(sim, image)?;
                sim.settle(&before, "cat")?;
                print_row(round, "cat", bytes, &sample, "sh + cat");
                cat.push(sample);
            }
        }
    }
    Ok((cat, agent))
}

fn print_row(round: usize, what: &str, bytes: u64, s: &Sample, note: &str) {
    println!(
        "{round:<6}{what:<7}{:>9.2}{:>10.0}{:>9.2}{:>11.2}{:>10.2}  {note}",
        s.wall.as_secs_f64(),
        s.mib_s(bytes),
        s.cpu.as_secs_f64(),
        per_gib(s.cpu, bytes),
        s.sim_cpu.as_secs_f64(),
    );
}

fn per_gib(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() * GIB / bytes as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(bytes: u64, cat: &[Sample], agent: &[Sample]) {
    let rates = |v: &[Sample]| v.iter().map(|s| s.mib_s(bytes)).collect::<Vec<_>>();
    let cpu = |v: &[Sample]| median(v.iter().map(|s| per_gib(s.cpu, bytes)).collect());
    let sim = |v: &[Sample]| median(v.iter().map(|s| per_gib(s.sim_cpu, bytes)).collect());
    let (ra, rc) = (median(rates(agent)), median(rates(cat)));
    let (ca, cc) = (cpu(agent), cpu(cat));
    println!();
    println!(
        "median of {} run(s) each, {:.0} MiB image:",
        cat.len(),
        bytes as f64 / MIB
    );
    println!(
        "{:<8}{:>10}{:>18}{:>12}{:>16}",
        "push", "MiB/s", "(min..max)", "cpu s/GiB", "sim cpu s/GiB"
    );
    for (name, v, r, c) in [("cat", cat, rc, cc), ("agent", agent, ra, ca)] {
        let all = rates(v);
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = all.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<8}{r:>10.0}{:>18}{c:>12.2}{:>16.2}",
            format!("({lo:.0}..{hi:.0})"),
            sim(v)
        );
    }
    let ratio = ra / rc;
    let verdict = if ratio >= 1.0 {
        format!("agent is {:.0}% faster than cat", (ratio - 1.0) * 100.0)
    } else {
        format!("agent is {:.0}% SLOWER than cat", (1.0 - ratio) * 100.0)
    };
    println!("ratio agent/cat {ratio:.2}: {verdict}");
    // The same comparison within each round (adjacent in time), which drifts
    // in the machine's load affect less than the medians over all rounds.
    let paired: Vec<f64> = agent
        .iter()
        .zip(cat)
        .map(|(a, c)| a.mib_s(bytes) / c.mib_s(bytes))
        .collect();
    let lo = paired.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = paired.iter().copied().fold(0.0, f64::max);
    let wins = paired.iter().filter(|r| **r >= 1.0).count();
    println!(
        "per-round ratio agent/cat: median {:.2} ({lo:.2}..{hi:.2}); agent at least as fast in {wins} of {} rounds",
        median(paired.clone()),
        paired.len()
    );
    println!(
        "agent push: {ra:.0} MiB/s vs cat: {rc:.0} MiB/s (ratio {ratio:.2}), agent CPU {ca:.2} s/GiB, cat CPU {cc:.2} s/GiB"
    );
}

/// `target/<profile>/hostplane-sim`, next to this bench's `deps/` dir.
fn sim_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("bench executable has no parent dir")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("hostplane-sim");
    if !p.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p hostplane-sim`",
            p.display()
        );
    }
    Ok(p)
}

fn write_image(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    hostplane_bfb::write_test_bfb(&mut w, size, "4.9.0", 7)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut w).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn start_sim(bin: &Path, dir: &Path) -> Result<Sim> {
    let root = dir.join("dev");
    let log = dir.join("sim.log");
    let root_s = root.display().to_string();
    // Short boot stages: the bench measures the push, not the simulated install.
    let args = [
        "rshim",
        "--root",
        &root_s,
        "--dpus",
        "1",
        "--reset-delay",
        "0s",
        "--stage-delay",
        "5ms",
        "--install-delay",
        "20ms",
        "--reboot-delay",
        "20ms",
    ];
    let proc = Proc::spawn("sim", bin, &args, &log)?;
    let pid = proc.pid().context("simulator exited at once")?;
    let clk_tck = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let sim = Sim {
        proc,
        pid,
        root,
        log,
        clk_tck,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.status().is_err() || !sim.root.join("rshim0/boot").exists() {
        if Instant::now() > deadline {
            bail!(
                "the simulator did not mount {} within 20 s: {}",
                root_s,
                tail(&sim.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("simulator: {} (pid {}), root {}", bin.display(), sim.pid, root_s);
    Ok(sim)
}

/// `rshim0`'s line of `<root>/.control`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DpuStatus {
    phase: String,
    installs: u64,
    pushes: u64,
    last_error: String,
}

impl Sim {
    fn boot(&self) -> PathBuf {
        self.root.join("rshim0/boot")
    }

    fn status(&self) -> Result<DpuStatus> {
        let path = self.root.join(".control");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        parse_status(&text).with_context(|| format!("{}: no rshim0 line in {text:?}", path.display()))
    }

    /// User + system CPU time of the simulator process so far.
    fn cpu(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the `(comm)`: state is the 3rd field, utime the 14th, stime the 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            let v: u64 = f.get(i).context("short stat line")?.parse()?;
            Ok(v as f64)
        };
        Ok(Duration::from_secs_f64((ticks(11)? + ticks(12)?) / self.clk_tck))
    }

    /// Wait until the image pushed after `before` is installed and the DPU is up again.
    fn settle(&self, before: &DpuStatus, who: &str) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let s = self.status()?;
            if s.installs > before.installs && s.phase == "up" {
                ensure!(
                    s.pushes > before.pushes,
                    "{who}: installed without a push? before {before:?}, now {s:?}"
                );
                return Ok(());
            }
            if s.phase == "failed" {
                bail!("{who}: the simulated DPU failed after the push: {}", s.last_error);
            }
            if Instant::now() > deadline {
                bail!("{who}: the simulated DPU did not install the image within {SETTLE_TIMEOUT:?}: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn parse_status(text: &str) -> Option<DpuStatus> {
    let line = text.lines().find(|l| l.starts_with("rshim0 "))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(DpuStatus {
        phase: field("phase")?,
        installs: field("installs")?.parse().ok()?,
        pushes: field("pushes")?.parse().ok()?,
        // last_error is quoted and followed by the dpu_os fields.
        last_error: line
            .split_once("last_error=")
            .map_or("", |(_, e)| e.split(" dpu_os=").next().unwrap_or(e))
            .to_string(),
    })
}

fn cpu_of(who: UsageWho) -> Result<Duration> {
    let u = getrusage(who).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1_000);
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// `sh -c 'cat IMAGE > boot'`: wall time of the whole command, CPU of sh + cat.
fn cat_push(sim: &Sim, image: &Path) -> Result<Sample> {
    let (cpu0, sim0) = (cpu_of(UsageWho::RUSAGE_CHILDREN)?, sim.cpu()?);
    let t0 = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$1" > "$2""#)
        .arg("sh")
        .arg(image)
        .arg(sim.boot())
        .status()
        .context("running sh -c 'cat IMAGE > boot'")?;
    let wall = t0.elapsed();
    let (cpu1, sim1) = (cpu_of(UsageWho::RUSAGE_CHILDREN)?, sim.cpu()?);
    ensure!(
        status.success(),
        "cat {} > {}: {status}",
        image.display(),
        sim.boot().display()
    );
    Ok(Sample {
        wall,
        cpu: cpu1.saturating_sub(cpu0),
        sim_cpu: sim1.saturating_sub(sim0),
    })
}

/// A point in time with this process's and the simulator's CPU time.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: Duration,
    sim_cpu: Duration,
}

impl Mark {
    fn now(sim: &Sim) -> Result<Mark> {
        Ok(Mark {
            at: Instant::now(),
            cpu: cpu_of(UsageWho::RUSAGE_SELF)?,
            sim_cpu: sim.cpu()?,
        })
    }
}

/// The agent's real flash of `image` (no bf.cfg). Returns the push sample,
/// the CPU time of the whole flash, and the push rate the agent reported.
async fn agent_push(
    flasher: &Flasher,
    sim: &Sim,
    image: &Path,
    bytes: u64,
) -> Result<(Sample, Duration, f64)> {
    let (tx, mut rx) = mpsc::channel::<FlashProgress>(4096);
    let flash_start = Mark::now(sim)?;
    let flash = flasher.flash(
        FlashRequest {
            rshim: "rshim0".into(),
            image: ImageSource::LocalFile(image.to_path_buf()),
            bf_cfg: BfCfg::None,
        },
        tx,
        CancellationToken::new(),
    );
    // Follow the progress reports while the flash runs; they end when it returns.
    let watch = async {
        let mut start: Option<Mark> = None;
        // Every report that says all bytes are pushed, with its rate: the push
        // has ended at the first one carrying the final rate (a timer report
        // may see every byte written before `boot` is closed).
        let mut full: Vec<(f64, Mark)> = Vec::new();
        let mut last_rate = 0.0;
        while let Some(p) = rx.recv().await {
            if start.is_none() && p.stage == Stage::Push.as_str() {
                start = Some(Mark::now(sim)?);
            }
            if p.bytes_total > 0 && p.bytes_pushed == p.bytes_total {
                if full.last().is_none_or(|(r, _)| *r != p.rate_bytes_per_sec) {
                    full.push((p.rate_bytes_per_sec, Mark::now(sim)?));
                }
                last_rate = p.rate_bytes_per_sec;
            }
        }
        let end = full.iter().find(|(r, _)| *r == last_rate).map(|(_, m)| *m);
        anyhow::Ok((start, end, last_rate))
    };
    let (report, marks) = tokio::join!(flash, watch);
    let flash_end = Mark::now(sim)?;
    let report = report.context("the agent's flash failed")?;
    let (start, end, own_rate) = marks?;
    ensure!(
        report.bytes_pushed == bytes,
        "the agent pushed {} of {bytes} bytes",
        report.bytes_pushed
    );
    let (Some(start), Some(end)) = (start, end) else {
        bail!("no `push` stage report or no final byte report from the agent");
    };
    let sample = Sample {
        wall: end.at - start.at,
        cpu: end.cpu.saturating_sub(start.cpu),
        sim_cpu: end.sim_cpu.saturating_sub(start.sim_cpu),
    };
    Ok((sample, flash_end.cpu.saturating_sub(flash_start.cpu), own_rate))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
