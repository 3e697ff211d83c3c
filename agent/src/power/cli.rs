//! `hostplane-agent power read [--watch]`: what every local source and the
//! BMC (when `power.bmc` is configured) read now, and why a source gives
//! nothing, with no coordinator.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::redfish::{BmcConfig, RedfishClient};
use super::{Reading, Scope, Sources};

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
    /// The agent config whose `power.bmc` says which BMC to read [default:
    /// /etc/hostplane/agent.yaml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Read this BMC instead (`https://bmc.example`; "" reads none).
    #[arg(long, value_name = "URL")]
    pub bmc_url: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub bmc_username: Option<String>,
    /// A file holding the BMC password.
    #[arg(long, value_name = "PATH")]
    pub bmc_password_file: Option<PathBuf>,
    /// Accept a self-signed BMC certificate.
    #[arg(long)]
    pub bmc_insecure_tls: bool,
    /// The node chassis's Id, when the BMC's own choice is not the one.
    #[arg(long, value_name = "ID")]
    pub bmc_chassis: Option<String>,
}

impl ReadArgs {
    /// `power.bmc` from the config file, then the `--bmc-*` flags.
    fn bmc_config(&self) -> Result<BmcConfig, String> {
        let default = Path::new(crate::config::DEFAULT_CONFIG_PATH);
        let path = match &self.config {
            Some(p) => Some(p.as_path()),
            None => default.exists().then_some(default),
        };
        let mut bmc = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                crate::config::Config::from_yaml(&text, p)
                    .map_err(|e| e.to_string())?
                    .power
                    .bmc
            }
            None => BmcConfig::default(),
        };
        if let Some(u) = &self.bmc_url {
            bmc.url.clone_from(u);
        }
        if let Some(u) = &self.bmc_username {
            bmc.username.clone_from(u);
        }
        if let Some(p) = &self.bmc_password_file {
            bmc.password_file = Some(p.clone());
        }
        if self.bmc_chassis.is_some() {
            bmc.chassis.clone_from(&self.bmc_chassis);
        }
        bmc.insecure_tls |= self.bmc_insecure_tls;
        bmc.validate()
            .map_err(|(field, reason)| format!("{field}: {reason}"))?;
        Ok(bmc)
    }
}

/// Format readings as a table.
pub fn table(readings: &[Reading]) -> String {
    let mut out = format!(
        "{:<8} {:<8} {:<44} {:>10} {:>12} {:<10} {}\n",
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
            (None, Some(_)) => [
                r.window
                    .map(|w| format!("over {}", humantime::format_duration(w))),
                r.age
                    .map(|a| format!("read {} ago", humantime::format_duration(round_ms(a)))),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
        };
        out += &format!(
            "{:<8} {scope:<8} {:<44} {watts:>10} {energy:>12} {method:<10} {note}\n",
            r.source, r.device
        );
    }
    out
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The BMC's readings, or one saying why there are none.
async fn bmc_readings(client: &Result<RedfishClient, String>) -> Vec<Reading> {
    match client {
        Ok(c) => c.sample().await,
        Err(why) => vec![Reading::unavailable(
            "redfish",
            Scope::Node,
            "bmc".into(),
            why.clone(),
        )],
    }
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
    let bmc_cfg = match a.bmc_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostplane-agent power: {e}");
            return ExitCode::from(78);
        }
    };
    let root = a.sysfs_root.clone();
    let sources = match tokio::task::spawn_blocking(move || Sources::discover(&root)).await {
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
    let bmc = if bmc_cfg.enabled() {
        Some(
            RedfishClient::connect(&bmc_cfg)
                .await
                .map_err(|e| format!("cannot use the BMC at {}: {e}", bmc_cfg.url)),
        )
    } else {
        eprintln!("redfish: unavailable: no BMC configured (power.bmc.url, or --bmc-url)");
        None
    };
    let code = read_loop(&a, sources, bmc.as_ref()).await;
    if let Some(Ok(c)) = &bmc {
        c.logout().await;
    }
    code
}

async fn read_loop(
    a: &ReadArgs,
    mut sources: Sources,
    bmc: Option<&Result<RedfishClient, String>>,
) -> ExitCode {
    let mut first = true;
    loop {
        let s = tokio::task::spawn_blocking(move || {
            let r = sources.sample(Instant::now());
            (sources, r)
        })
        .await;
        let Ok((back, mut readings)) = s else {
            return ExitCode::FAILURE;
        };
        sources = back;
        if !first || !a.watch {
            // The first pass only primes integrated sources, unless it is all there will be.
            if !first {
                if let Some(b) = bmc {
                    readings.extend(bmc_readings(b).await);
                }
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
