//! `hostplanectl`, the hostplane admin CLI, as a library: the binary's `main`
//! calls [`run`]; tests call the command functions in [`commands`] with a
//! client and a `Vec<u8>` writer.
//!
//! `hostplanectl <noun> <verb>`: nouns `node device bfb flavor deployment dpu`;
//! verbs `get list watch create apply update delete` plus the upstream flows
//! (`node approve|rebooted|reboot-status|create-with-devices`,
//! `dpu reprovision|ready`, `deployment set-image`). See `docs/cli.md`.
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

pub mod certs;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod input;
pub mod output;

pub use cli::Cli;
pub use error::{Error, exit};

/// Parse `args` (including the program name), run the command, print errors
/// as `error: <message>` on stderr, and return the documented exit code.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help / --version exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    if let cli::Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "hostplanectl", &mut script);
        return match std::io::stdout().write_all(&script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(source) => report(Error::WriteOutput { source }),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let mut stdout = tokio::io::stdout();
        commands::execute(cli, &mut stdout).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(e),
    }
}

/// Print `error: <message>` and return its exit code. A closed stdout (`| head`)
/// is a normal way to stop reading: it ends the command quietly with 0.
fn report(e: Error) -> ExitCode {
    if let Error::WriteOutput { source } = &e
        && source.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}
