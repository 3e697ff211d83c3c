//! `hostplane-agent power read [--watch]`: what every local source reads now,
//! and why a source gives nothing, with no coordinator.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{Reading, Sources};

#[derive(clap::Args, Debug)]
pub struct PowerArgs {
    #[command(subcommand)]
    pub cmd: PowerCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum PowerCmd {
    /// Sample every source twice, `--interval` apart (integrated sources need
    /// two readings), and print the readings; with `--watch`, keep sampling.
    Read(ReadArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReadArgs {
    #[arg(long)]
    pub watch: bool,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// `table` or `json` (one JSON object per reading and line).
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    #[arg(long, default_value = "/sys")]
    pub sysfs_root: PathBuf,
}

/// Format readings as a table.
pub fn table(readings: &[Reading]) -> String {
    let mut out = format!(
        "{:<6} {:<8} {:<44} {:>10} {:>12} {:<10} {}\n",
        "SOURCE", "SCOPE", "DEVICE", "WATTS", "ENERGY_J", "METHOD", "NOTE"
    );
    for r in readings {
        let scope = serde_json::to_value(r.scope)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let method = serde_json::to_value(r.method)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let watts = r.watts.map(|w| format!("{w:.1}")).unwrap_or_else(|| "-".into());
        let energy = r
            .energy_joules
            .map(|e| format!("{e:.1}"))
            .unwrap_or_else(|| "-".into());
        let note = match (&r.error, r.watts) {
            (Some(e), _) => e.clone(),
            (None, None) => "first sample: no rate yet".into(),
            (None, Some(_)) => r
                .window
                .map(|w| format!("over {}", humantime::format_duration(w)))
                .unwrap_or_default(),
        };
        out += &format!(
            "{:<6} {scope:<8} {:<44} {watts:>10} {energy:>12} {method:<10} {note}\n",
            r.source, r.device
        );
    }
    out
}

pub async fn run_power_cli(args: PowerArgs) -> ExitCode {
    let PowerCmd::Read(a) = args.cmd;
    if a.output != "table" && a.output != "json" {
        eprintln!(
            "hostplane-agent power: -o must be table or json, not {:?}",
            a.output
        );
        return ExitCode::from(64);
    }
    let root = a.sysfs_root.clone();
    let mut sources = match tokio::task::spawn_blocking(move || Sources::discover(&root)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostplane-agent power: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(why) = &sources.rapl.absent {
        eprintln!("rapl: unavailable: {why}");
    }
    if let Some(why) = &sources.gpus.absent {
        eprintln!("nvml: unavailable: {why}");
    }
    if sources.hwmon.is_empty() {
        eprintln!(
            "hwmon: unavailable: no power or energy sensors under {}",
            a.sysfs_root.join("class/hwmon").display()
        );
    }
    let mut first = true;
    loop {
        let s = tokio::task::spawn_blocking(move || {
            let r = sources.sample(Instant::now());
            (sources, r)
        })
        .await;
        let Ok((back, readings)) = s else {
            return ExitCode::FAILURE;
        };
        sources = back;
        if !first || !a.watch {
            // The first pass only primes integrated sources, unless it is all there will be.
            if !first {
                if a.output == "json" {
                    for r in &readings {
                        println!("{}", serde_json::to_string(r).expect("readings serialize"));
                    }
                } else {
                    print!("{}", table(&readings));
                }
                if !a.watch {
                    return ExitCode::SUCCESS;
                }
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
