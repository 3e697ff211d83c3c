//! `hostplane-coordinator`: parse the command line, load the config, start
//! logging, run. The logic lives in the library (`server::run`).
//!
//! Exit codes: 0 ok, 1 runtime error, 64 usage error, 78 config error
//! (the unit sets `RestartPreventExitStatus=64 78`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostplane_common::signals::{self, Signals};
use hostplane_coordinator::config::{Config, ConfigError, LogConfig, ProcessEnv};
use hostplane_coordinator::server;
use tokio_util::sync::CancellationToken;

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "hostplane-coordinator",
    version,
    about = "hostplane coordinator: desired state, DPU state machine, admin API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Config file [default: /etc/hostplane/coordinator.yaml, if present].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides the file and HOSTPLANE_LISTEN).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Store file (overrides the file and HOSTPLANE_STORE_PATH).
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the coordinator (the default).
    Run,
    /// Check the config and exit: 0 when valid, 78 when not.
    Validate,
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(cli.cmd, Some(Cmd::Version)) {
        println!("hostplane-coordinator {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Loading the config logs nothing; logging starts right after, from the
    // config's `log` section with HOSTPLANE_LOG / HOSTPLANE_LOG_FORMAT applied.
    let loaded = load(&cli);
    let log = match &loaded {
        Ok(cfg) => cfg.log.clone(),
        Err(_) => log_from_env(),
    };
    init_tracing(&log);
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("hostplane-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.cmd, Some(Cmd::Validate)) {
        println!(
            "config OK: listen {}, store {}",
            cfg.listen,
            cfg.store.path.display()
        );
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "coordinator failed");
            eprintln!("hostplane-coordinator: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The file, the environment, then the flags.
fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let mut cfg = Config::read(cli.config.as_deref())?;
    cfg.apply_env(&ProcessEnv)?;
    if let Some(addr) = cli.listen {
        cfg.listen = addr;
    }
    if let Some(path) = &cli.store {
        cfg.store.path = path.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Log settings when the config could not be loaded: the environment or the defaults.
fn log_from_env() -> LogConfig {
    let mut log = LogConfig::default();
    if let Ok(level) = std::env::var("HOSTPLANE_LOG") {
        log.level = level;
    }
    if let Some(format) = std::env::var("HOSTPLANE_LOG_FORMAT")
        .ok()
        .and_then(|f| f.parse().ok())
    {
        log.format = format;
    }
    log
}

fn init_tracing(log: &LogConfig) {
    hostplane_common::logging::init(&log.level, log.format);
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = Signals::new()?;
        // A second SIGTERM/SIGINT: do not wait for the grace period.
        let watcher = signals::spawn_handler(signals, shutdown.clone(), EXIT_RUNTIME.into());
        let result = server::run(cfg, shutdown).await;
        watcher.abort();
        result.map_err(anyhow::Error::from)
    })
}
