//! `run`: the daemon. Logging first, then the config, the runtime, the
//! signal handler and the watchdog; [`crate::daemon::Daemon`] does the rest.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hostplane_common::signals::{self, Signals};
use tokio_util::sync::CancellationToken;

use super::{EXIT_CONFIG, EXIT_FAILURE, runtime};
use crate::AgentError;
use crate::config::{Config, ConfigError, LogFormat, ProcessEnv};
use crate::daemon::{Daemon, DaemonError};
use crate::logging;

pub fn run_daemon(config: Option<&Path>) -> ExitCode {
    let loaded = Config::load(config, &ProcessEnv);
    logging::init(
        &ProcessEnv,
        loaded.as_ref().map_or(LogFormat::Plain, |c| c.log_format),
    );
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => return config_error(&e),
    };
    for note in &cfg.deprecated {
        tracing::warn!("{note}");
    }
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
