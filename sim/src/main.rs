//! `hostplane-sim`: simulated DPUs behind a FUSE rshim device, simulated Redfish BMCs,
//! and a test BFB writer.
//!
//! Exit codes: 0 ok, 64 usage error, 1 runtime error.

use std::process::ExitCode;

use clap::Parser;
use hostplane_sim::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn init_tracing() {
    let filter = EnvFilter::try_from_env("HOSTPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("HOSTPLANE_LOG_FORMAT").is_ok_and(|f| f == "json");
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing();
    match cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostplane-sim: {e}");
            ExitCode::from(if e.is_usage() { 64 } else { 1 })
        }
    }
}
