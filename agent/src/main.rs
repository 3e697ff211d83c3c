//! `hostplane-agent`: parse arguments, set up logging, load the config, hand
//! over to the library. Exit codes: 0 ok, 1 runtime failure, 64 usage, 78
//! config (the unit's `RestartPreventExitStatus=64 78`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hostplane_agent::config::{Config, ConfigError, LogFormat, ProcessEnv};
use hostplane_agent::daemon::{Daemon, DaemonError};
use hostplane_agent::exec::AGENT_VERSION;
use hostplane_agent::flash::cli::{self as flash_cli, FlashPassthrough};
use hostplane_agent::{AgentError, logging};
use hostplane_common::signals::{self, Signals};
use tokio_util::sync::CancellationToken;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "hostplane-agent",
    version,
    about = "hostplane node agent: runs the coordinator's commands on this host"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Config file [default: /etc/hostplane/agent.yaml, if it exists]: for
    /// run, validate, health and power; before or after the subcommand.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent daemon (the default).
    Run,
    /// Flash one DPU by hand, like bfb-install (same options; also run as
    /// `bfb-install`), and exit. See `hostplane-agent flash --help`.
    Flash(FlashPassthrough),
    /// Check the config and exit: 0 when valid, 78 when not.
    Validate,
    /// Read the node's power sources now (RAPL, hwmon), with no coordinator.
    Power(hostplane_agent::power::cli::PowerArgs),
    /// Apply, diff or show the host network by hand (no coordinator).
    Network(hostplane_agent::net::cli::NetworkArgs),
    /// Print the version and exit.
    Version,
    /// Check that a running agent answers on its /metrics endpoint
    /// (`metrics.listen`): exit 0 when it does, 1 when not. For container
    /// HEALTHCHECKs and exec probes.
    Health(HealthArgs),
}

#[derive(clap::Args, Clone, Debug)]
struct HealthArgs {
    /// Address of the endpoint [default: the config's metrics.listen; 0.0.0.0 and :: mean loopback].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<std::net::SocketAddr>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn main() -> ExitCode {
    // `bfb-install ...` and `hostplane-agent flash ...` take bfb-install's
    // command line (its -c is bf.cfg, not --config).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(flash) = flash_cli::flash_argv(&argv) {
        return flash_cli::main_with(flash);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let config = cli.config;
    let command = cli.command.unwrap_or(Cmd::Run);
    // --config is global so that it may come before the subcommand; the
    // subcommands that read no config refuse it rather than ignore it.
    if let Some(name) = match &command {
        Cmd::Flash(_) => Some("flash"),
        Cmd::Network(_) => Some("network"),
        Cmd::Version => Some("version"),
        _ => None,
    } && config.is_some()
    {
        eprintln!("hostplane-agent: --config does not apply to {name} (it reads no agent config)");
        return ExitCode::from(EXIT_USAGE);
    }
    match command {
        Cmd::Version => {
            println!("hostplane-agent {AGENT_VERSION}");
            ExitCode::SUCCESS
        }
        Cmd::Validate => validate(config.as_deref()),
        Cmd::Health(args) => health(&args, config.as_deref()),
        Cmd::Flash(p) => flash_cli::main_with(p.argv()),
        Cmd::Power(args) => {
            logging::init(&ProcessEnv, LogFormat::Plain);
            match runtime() {
                Ok(rt) => rt.block_on(hostplane_agent::power::cli::run_power_cli(args, config)),
                Err(code) => code,
            }
        }
        Cmd::Network(args) => {
            logging::init(&ProcessEnv, LogFormat::Plain);
            match runtime() {
                Ok(rt) => rt.block_on(hostplane_agent::net::cli::run_network_cli(args)),
                Err(code) => code,
            }
        }
        Cmd::Run => run_daemon(config.as_deref()),
    }
}

fn validate(config: Option<&Path>) -> ExitCode {
    match Config::load(config, &ProcessEnv) {
        Ok(cfg) => {
            println!(
                "config is valid: node {}, coordinator {}",
                cfg.node_name, cfg.coordinator
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostplane-agent: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `health`: one GET of /metrics from the running agent.
fn health(args: &HealthArgs, config: Option<&Path>) -> ExitCode {
    let mut addr = match args.addr {
        Some(a) => a,
        None => match Config::load(config, &ProcessEnv) {
            Ok(cfg) => match cfg.metrics.listen {
                Some(a) => a,
                None => {
                    eprintln!(
                        "hostplane-agent: metrics.listen is not set, so there is no endpoint to check \
                         (set it, or pass --addr)"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(e) => {
                eprintln!("hostplane-agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/metrics");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(args.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        resp.bytes().await.map(|_| status).map_err(|e| e.to_string())
    });
    match result {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostplane-agent: health of {url}: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_daemon(config: Option<&Path>) -> ExitCode {
    let loaded = Config::load(config, &ProcessEnv);
    logging::init(
        &ProcessEnv,
        loaded.as_ref().map_or(LogFormat::Plain, |c| c.log_format),
    );
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => return config_error(&e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        // A second SIGTERM/SIGINT exits at once, without the grace period.
        let signals = signals::spawn_handler(signals, shutdown.clone(), None, EXIT_FAILURE.into());
        let watchdog = hostplane_common::notify::spawn_watchdog(shutdown.child_token());
        let daemon = match Daemon::start(cfg).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "agent failed to start");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let code = match daemon.run(shutdown).await {
            Ok(()) => {
                tracing::info!("agent stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::from(match e {
                    DaemonError::Agent(AgentError::Connect(_)) => EXIT_CONFIG,
                    _ => EXIT_FAILURE,
                })
            }
        };
        signals.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        code
    });
    // A push thread stuck in a device write must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn config_error(e: &ConfigError) -> ExitCode {
    tracing::error!(error = %e, "invalid configuration");
    ExitCode::from(EXIT_CONFIG)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hostplane-agent")
        .build()
        .map_err(|e| {
            eprintln!("hostplane-agent: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        })
}
