//! `hostplane-agent power read [--watch]`: what every local source and the
//! BMC (when `power.bmc` is configured) read now, and why a source gives
//! nothing, with no coordinator. `-o json` prints one JSON document per
//! pass: `{"readings": [...], "unavailable": [{"source", "device", "reason"}]}`.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::bmc::{BmcConfig, RedfishClient, RedfishError};
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

#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    #[arg(long)]
    pub watch: bool,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// `table`, or `json`: one document per pass (one line each with
    /// `--watch`), the readings and the sources that gave none with why.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    #[arg(long, default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Read this BMC instead (`https://bmc.example`; "" reads none).
    #[arg(long, value_name = "URL")]
    pub bmc_url: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub bmc_username: Option<String>,
    /// A file holding the BMC password.
    #[arg(long, value_name = "PATH")]
    pub bmc_password_file: Option<PathBuf>,
    /// Trust this PEM CA bundle for the BMC's certificate (besides the
    /// system's roots), e.g. the BMC simulator's `ca.crt`.
    #[arg(long, value_name = "PATH")]
    pub bmc_ca_file: Option<PathBuf>,
    /// Accept a self-signed BMC certificate.
    #[arg(long)]
    pub bmc_insecure_tls: bool,
    /// The node chassis's Id, when the BMC's own choice is not the one.
    #[arg(long, value_name = "ID")]
    pub bmc_chassis: Option<String>,
}

/// Why `power.bmc`, as the config file and the `--bmc-*` flags give it,
/// cannot be used (`hostplane-agent power` exits 78).
#[derive(Debug, thiserror::Error)]
pub enum BmcConfigError {
    /// The config file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// The config file does not parse or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A `power.bmc` key is wrong: the error names it (`power.bmc.url`).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Why `power read` has no BMC to read: the client could not connect.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the BMC at {url}: {error}")]
pub struct BmcUnusable {
    /// `power.bmc.url`.
    pub url: String,
    pub error: RedfishError,
}

impl ReadArgs {
    /// `power.bmc` from the config file (the global `--config`, whose
    /// `power.bmc` says which BMC to read [default: /etc/hostplane/agent.yaml,
    /// if it exists]), then the `--bmc-*` flags.
    fn bmc_config(&self, config: Option<&Path>) -> Result<BmcConfig, BmcConfigError> {
        let default = Path::new(crate::config::DEFAULT_CONFIG_PATH);
        let path = match config {
            Some(p) => Some(p),
            None => default.exists().then_some(default),
        };
        let mut bmc = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| BmcConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?;
                crate::config::Config::from_yaml(&text, p)?.power.bmc
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
        if let Some(p) = &self.bmc_ca_file {
            bmc.ca_file = Some(p.clone());
        }
        if self.bmc_chassis.is_some() {
            bmc.chassis.clone_from(&self.bmc_chassis);
        }
        bmc.insecure_tls |= self.bmc_insecure_tls;
        bmc.validate()
            .map_err(|(field, reason)| BmcConfigError::Invalid { field, reason })?;
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

/// A source that gave nothing, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Unavailable {
    pub source: &'static str,
    /// The device, when one was found but cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub reason: String,
}

/// What `power read -o json` prints per pass: always one document, even
/// when every source is missing.
#[derive(Debug, serde::Serialize)]
pub struct ReadDocument<'a> {
    pub readings: Vec<&'a Reading>,
    pub unavailable: Vec<Unavailable>,
}

/// The document of one pass: readings with an error count as unavailable.
pub fn document<'a>(readings: &'a [Reading], absent: &[Unavailable]) -> ReadDocument<'a> {
    let mut unavailable = absent.to_vec();
    unavailable.extend(readings.iter().filter_map(|r| {
        r.error.as_ref().map(|e| Unavailable {
            source: r.source,
            device: Some(r.device.clone()),
            reason: e.clone(),
        })
    }));
    ReadDocument {
        readings: readings.iter().filter(|r| r.error.is_none()).collect(),
        unavailable,
    }
}

/// The local sources that found nothing, and why.
fn absent_sources(sources: &Sources, sysfs_root: &Path) -> Vec<Unavailable> {
    let mut out = Vec::new();
    let mut add = |source, reason: String| {
        out.push(Unavailable {
            source,
            device: None,
            reason,
        })
    };
    if let Some(why) = &sources.rapl.absent {
        add("rapl", why.clone());
    }
    if let Some(why) = &sources.gpus.absent {
        add("nvml", why.clone());
    }
    if sources.hwmon.is_empty() {
        add(
            "hwmon",
            format!(
                "no power or energy sensors under {}",
                sysfs_root.join("class/hwmon").display()
            ),
        );
    }
    out
}

/// The BMC's readings, or one saying why there are none. A chassis read for
/// the first time has no energy yet (`energy_joules` null, not 0): energy is
/// counted from a first read, so it needs two.
async fn bmc_readings(
    client: &Result<RedfishClient, BmcUnusable>,
    seen: &mut HashSet<String>,
) -> Vec<Reading> {
    match client {
        Ok(c) => {
            let mut readings = c.sample().await;
            for r in &mut readings {
                if r.error.is_none() && !seen.insert(r.device.clone()) {
                    continue;
                }
                r.energy_joules = None;
            }
            readings
        }
        Err(why) => vec![Reading::unavailable(
            "redfish",
            Scope::Node,
            "bmc".into(),
            why.to_string(),
        )],
    }
}

pub async fn run_power_cli(args: PowerArgs, config: Option<PathBuf>) -> ExitCode {
    let PowerCmd::Read(a) = args.cmd;
    if a.output != "table" && a.output != "json" {
        eprintln!(
            "hostplane-agent power: -o must be table or json, not {:?}",
            a.output
        );
        return ExitCode::from(64);
    }
    // Reads the config file: a blocking thread, never an async worker.
    let bmc_cfg = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || a.bmc_config(config.as_deref())).await
    };
    let bmc_cfg = match bmc_cfg {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("hostplane-agent power: {e}");
            return ExitCode::from(78);
        }
        Err(e) => {
            eprintln!("hostplane-agent power: {e}");
            return ExitCode::FAILURE;
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
    let mut absent = absent_sources(&sources, &a.sysfs_root);
    let bmc = if bmc_cfg.enabled() {
        Some(
            RedfishClient::connect(&bmc_cfg)
                .await
                .map_err(|error| BmcUnusable {
                    url: bmc_cfg.url.clone(),
                    error,
                }),
        )
    } else {
        absent.push(Unavailable {
            source: "redfish",
            device: None,
            reason: "no BMC configured (power.bmc.url, or --bmc-url)".into(),
        });
        None
    };
    if a.output == "table" {
        // JSON carries these in its document; a table says them once, here.
        for u in &absent {
            eprintln!("{}: unavailable: {}", u.source, u.reason);
        }
    }
    let code = read_loop(&a, sources, bmc.as_ref(), &absent).await;
    if let Some(Ok(c)) = &bmc {
        c.logout().await;
    }
    code
}

async fn read_loop(
    a: &ReadArgs,
    mut sources: Sources,
    bmc: Option<&Result<RedfishClient, BmcUnusable>>,
    absent: &[Unavailable],
) -> ExitCode {
    let mut seen = HashSet::new();
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
        if let Some(b) = bmc {
            readings.extend(bmc_readings(b, &mut seen).await);
        }
        // The first pass only primes integrated sources (and the BMC's
        // energy count): the readings printed come from the second.
        if !first {
            if a.output == "json" {
                let doc = document(&readings, absent);
                println!("{}", serde_json::to_string(&doc).expect("readings serialize"));
            } else {
                print!("{}", table(&readings));
            }
            if !a.watch {
                return ExitCode::SUCCESS;
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::Method;

    fn reading(source: &'static str, device: &str, watts: Option<f64>, error: Option<&str>) -> Reading {
        Reading {
            source,
            scope: Scope::Node,
            device: device.into(),
            watts,
            energy_joules: None,
            method: Method::Measured,
            window: None,
            age: None,
            error: error.map(String::from),
        }
    }

    #[test]
    fn the_document_lists_readings_and_every_missing_source() {
        let absent = vec![Unavailable {
            source: "rapl",
            device: None,
            reason: "no /sys/class/powercap".into(),
        }];
        let readings = vec![
            reading("hwmon", "hwmon0/power1", Some(450.0), None),
            reading("redfish", "DGX", None, Some("HTTP 503")),
        ];
        let v = serde_json::to_value(document(&readings, &absent)).unwrap();
        assert_eq!(v["readings"].as_array().unwrap().len(), 1);
        assert_eq!(v["readings"][0]["watts"], 450.0);
        assert_eq!(
            v["unavailable"],
            serde_json::json!([
                {"source": "rapl", "reason": "no /sys/class/powercap"},
                {"source": "redfish", "device": "DGX", "reason": "HTTP 503"},
            ])
        );
        let empty = serde_json::to_value(document(&[], &[])).unwrap();
        assert_eq!(empty, serde_json::json!({"readings": [], "unavailable": []}));
    }
}
