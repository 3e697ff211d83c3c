//! `hostplane-agent`: parse the command line and dispatch to the
//! subcommand ([`hostplane_agent::cli`]); `bfb-install ...` and
//! `hostplane-agent flash ...` take bfb-install's command line instead.
use std::process::ExitCode;

use clap::Parser;
use hostplane_agent::cli::{self, Cli};
use hostplane_agent::flash::cli as flash_cli;

fn main() -> ExitCode {
    // bfb-install's -c is bf.cfg, not --config: its command line is its own.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(flash) = flash_cli::flash_argv(&argv) {
        return flash_cli::main_with(flash);
    }
    match Cli::try_parse() {
        Ok(cli) => cli::dispatch(cli),
        Err(e) => cli::usage(&e),
    }
}
