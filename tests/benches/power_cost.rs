//! The agent's own cost of power telemetry at 1 Hz, against node_exporter-style
//! sampling that re-opens and re-reads every file each period.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p hostplane-tests --bench power_cost                     # 10 minutes
//! HOSTPLANE_POWER_BENCH_SECS=60 cargo bench -p hostplane-tests --bench power_cost
//! ```
//!
//! What runs, for the whole measured period, side by side:
//!
//! - **agent**: the real `hostplane-agent` binary (the release build next to
//!   the bench executable: `target/release`), connected to a real
//!   coordinator, with every power source enabled: RAPL and hwmon from a fake
//!   sysfs tree shaped like a two-socket server (9 RAPL zones, 4 hwmon
//!   sensors: `hostplane_tests::power::fake_sysfs`), a simulated DGX H100 BMC
//!   over Redfish (polled every 5 s), NVML where the host has it, `/metrics`
//!   served, telemetry batched to the coordinator every 5 s. Its cost is the
//!   whole agent process (tokio runtime, session, heartbeats, network watch
//!   included), so it is an upper bound on the sampling cost.
//! - **reopen**: this bench binary in a child process, doing what
//!   node_exporter's collectors do: every second, for each of the same 13
//!   files, `open` + `read` + `close`, parse, and turn energy counters into
//!   watts. No BMC, no metrics endpoint, no coordinator: only the file reads.
//!
//! CPU is utime + stime from `/proc/<pid>/stat` over the period (after a
//! 10 s warm-up), as a percentage of one core; memory is VmHWM (peak RSS) and
//! VmRSS at the end from `/proc/<pid>/status`.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostplane_proto::v1::RebootMethod;
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{power, wait_for};
use nix::unistd::{SysconfVar, sysconf};

const WARMUP: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--reopen") {
        reopen_loop(args[2..].iter().map(PathBuf::from).collect());
    }
    let secs = std::env::var("HOSTPLANE_POWER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(Duration::from_secs(secs))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("power_cost bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The baseline: re-open and re-read every file each second, forever.
fn reopen_loop(files: Vec<PathBuf>) -> ! {
    let mut last: HashMap<usize, (u64, Instant)> = HashMap::new();
    let mut watts: HashMap<usize, f64> = HashMap::new();
    let mut next = Instant::now();
    loop {
        for (i, f) in files.iter().enumerate() {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            let Ok(v) = text.trim().parse::<u64>() else {
                continue;
            };
            let now = Instant::now();
            if let Some((prev, at)) = last.insert(i, (v, now)) {
                let dt = now.duration_since(at).as_secs_f64();
                if dt > 0.0 {
                    watts.insert(i, v.saturating_sub(prev) as f64 / 1e6 / dt);
                }
            }
        }
        std::hint::black_box(&watts);
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

struct Sample {
    cpu: Duration,
    hwm_kib: u64,
    rss_kib: u64,
}

fn sample(pid: i32) -> Result<Sample> {
    let tck = sysconf(SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading stat")?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After ") ": state is field 3, utime 14, stime 15 (1-based) -> index 11, 12.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading status")?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample {
        cpu: Duration::from_nanos(ticks * 1_000_000_000 / tck),
        hwm_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1_000);
    tv(u.user_time()) + tv(u.system_time())
}

/// The file reading alone, in this process: the agent's sampler (files opened
/// once, `pread` each period) against re-open-and-read, `n` samples each.
fn sampling_only(root: &std::path::Path, files: &[PathBuf], n: u32) -> (Duration, Duration) {
    let mut sources = hostplane_agent::power::Sources::discover(root);
    let t0 = thread_cpu();
    for _ in 0..n {
        std::hint::black_box(sources.sample(Instant::now()));
    }
    let ours = (thread_cpu() - t0) / n;
    let t0 = thread_cpu();
    for _ in 0..n {
        let mut sum = 0u64;
        for f in files {
            if let Ok(t) = std::fs::read_to_string(f) {
                sum = sum.wrapping_add(t.trim().parse::<u64>().unwrap_or(0));
            }
        }
        std::hint::black_box(sum);
    }
    (ours, (thread_cpu() - t0) / n)
}

async fn run(period: Duration) -> Result<()> {
    {
        let tmp = tempfile::tempdir()?;
        let files = power::fake_sysfs(tmp.path())?;
        let sysfs = tmp.path();
        let (ours, reopen) = sampling_only(sysfs, &files, 20_000);
        println!(
            "file sampling alone, {} files, CPU per sample (20,000 samples each, one thread): \
             agent sampler (open once, pread) {:.1} µs, re-open-and-read {:.1} µs, ratio {:.2}",
            files.len(),
            ours.as_secs_f64() * 1e6,
            reopen.as_secs_f64() * 1e6,
            ours.as_secs_f64() / reopen.as_secs_f64()
        );
    }
    let mut world = World::start(WorldOpts {
        dpus: 1,
        ..Default::default()
    })
    .await?;
    world.add_node("n1", RebootMethod::External, &[], &[]).await?;
    let sysfs = world.dir.join("sysfs");
    let files = power::fake_sysfs(&sysfs)?;
    let bmc = hostplane_sim::bmc::BmcSim::spawn(hostplane_sim::bmc::BmcOptions::new(
        "bmc-n1",
        hostplane_sim::bmc::Model::DgxH100,
    ))?;
    let pw = world.dir.join("bmc-password");
    std::fs::write(&pw, "admin\n")?;
    let metrics_addr = hostplane_tests::free_addr()?;
    world.start_agent_with(
        "n1",
        &format!(
            "metrics:\n  listen: {metrics_addr}\n\
             power:\n  sysfs_root: {sysfs}\n  bmc:\n    url: {url}\n    username: admin\n    password_file: {pw}\n",
            sysfs = sysfs.display(),
            url = bmc.url(),
            pw = pw.display(),
        ),
    )?;
    let agent_pid = world.agents[0].1.pid().context("agent pid")?.as_raw();
    // Wait until the agent's telemetry reaches the coordinator.
    let mut admin = world.admin.clone();
    wait_for("the agent's first telemetry", Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .get_power_summary(hostplane_proto::v1::PowerSummaryRequest::default())
                .await
                .ok()?
                .into_inner();
            s.nodes
                .iter()
                .find(|n| n.node == "n1" && n.draw_watts.is_some())
                .map(|_| ())
        }
    })
    .await?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("--reopen")
        .args(&files)
        .spawn()
        .context("starting the reopen baseline")?;
    let base_pid = child.id() as i32;
    tokio::time::sleep(WARMUP).await;
    let (a0, b0) = (sample(agent_pid)?, sample(base_pid)?);
    let t0 = Instant::now();
    eprintln!("measuring for {period:?} ...");
    tokio::time::sleep(period).await;
    let (a1, b1) = (sample(agent_pid)?, sample(base_pid)?);
    let wall = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let s = admin
        .get_power_summary(hostplane_proto::v1::PowerSummaryRequest::default())
        .await?
        .into_inner();
    let pct = |a: &Sample, b: &Sample| (b.cpu - a.cpu).as_secs_f64() / wall.as_secs_f64() * 100.0;
    let mib = |k: u64| k as f64 / 1024.0;
    let (ap, bp) = (pct(&a0, &a1), pct(&b0, &b1));
    println!(
        "power telemetry cost over {:.0} s at 1 Hz ({} files each period)",
        wall.as_secs_f64(),
        files.len()
    );
    println!(
        "  agent (all sources, BMC, /metrics, telemetry to the coordinator): CPU {:.3}% of a core ({:.2} s), peak RSS {:.1} MiB, RSS {:.1} MiB",
        ap,
        (a1.cpu - a0.cpu).as_secs_f64(),
        mib(a1.hwm_kib),
        mib(a1.rss_kib)
    );
    println!(
        "  reopen-and-read baseline (files only):                         CPU {:.3}% of a core ({:.2} s), peak RSS {:.1} MiB, RSS {:.1} MiB",
        bp,
        (b1.cpu - b0.cpu).as_secs_f64(),
        mib(b1.hwm_kib),
        mib(b1.rss_kib)
    );
    println!(
        "  ratio agent/baseline: CPU {:.2}; goals: < 0.2% of a core and < 20 MiB RSS -> {}",
        if bp > 0.0 { ap / bp } else { f64::NAN },
        if ap < 0.2 && mib(a1.hwm_kib) < 20.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(n) = s.nodes.iter().find(|n| n.node == "n1") {
        println!(
            "  coordinator saw n1 drawing {:.0} W (sampled {} ms ago)",
            n.draw_watts.unwrap_or(0.0),
            now_ms() - n.sampled_at_ms
        );
    }
    drop(admin);
    bmc.shutdown().await;
    world.shutdown().await?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
