//! The `hostplane-agent` subcommands: `run` (the daemon, the default),
//! `flash` (bfb-install's command line, in [`crate::flash::cli`]),
//! `validate`, `power`, `network`, `version` and `health`. `main.rs` parses
//! the command line and calls [`dispatch`]. Exit codes: 0 ok, 1 runtime
//! failure, 64 usage, 78 config (the unit's `RestartPreventExitStatus=64 78`).
mod health;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, ProcessEnv};
use crate::exec::AGENT_VERSION;
use crate::flash::cli::{self as flash_cli, FlashPassthrough};
use crate::logging;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "hostplane-agent",
    version,
    about = "hostplane node agent: runs the coordinator's commands on this host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// Config file [default: /etc/hostplane/agent.yaml, if it exists]: for
    /// run, validate, health and power; before or after the subcommand.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent daemon (the default).
    Run,
    /// Flash one DPU by hand, like bfb-install (same options; also run as
    /// `bfb-install`), and exit. See `hostplane-agent flash --help`.
    Flash(FlashPassthrough),
    /// Check the config and exit: 0 when valid, 78 when not.
    Validate,
    /// Read the node's power sources now (RAPL, hwmon), with no coordinator.
    Power(crate::power::cli::PowerArgs),
    /// Apply, diff or show the host network by hand (no coordinator).
    Network(crate::net::cli::NetworkArgs),
    /// Print the version and exit.
    Version,
    /// Check that a running agent answers on its /metrics endpoint
    /// (`metrics.listen`): exit 0 when it does, 1 when not. For container
    /// HEALTHCHECKs and exec probes.
    Health(health::HealthArgs),
}

/// Run the subcommand `cli` names (`run` when none).
pub fn dispatch(cli: Cli) -> ExitCode {
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
        Cmd::Validate => validate::validate(config.as_deref()),
        Cmd::Health(args) => health::health(&args, config.as_deref()),
        Cmd::Flash(p) => flash_cli::main_with(p.argv()),
        Cmd::Power(args) => {
            logging::init(&ProcessEnv, LogFormat::Plain);
            match runtime() {
                Ok(rt) => rt.block_on(crate::power::cli::run_power_cli(args, config)),
                Err(code) => code,
            }
        }
        Cmd::Network(args) => {
            logging::init(&ProcessEnv, LogFormat::Plain);
            match runtime() {
                Ok(rt) => rt.block_on(crate::net::cli::run_network_cli(args)),
                Err(code) => code,
            }
        }
        Cmd::Run => run::run_daemon(config.as_deref()),
    }
}

/// A command line clap refused (64), or `--help` / `--version` (0).
pub fn usage(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
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
