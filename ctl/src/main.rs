//! `hostplanectl`: see `docs/cli.md`.
use std::process::ExitCode;

fn main() -> ExitCode {
    hostplane_ctl::run(std::env::args_os())
}
