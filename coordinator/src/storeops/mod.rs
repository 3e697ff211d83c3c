//! Store maintenance commands: `store copy` between engines and `store backup`.
//!
//! `hostplane-coordinator store copy --from STORE --to STORE` moves a store
//! between SQLite and PostgreSQL (either way, or between two of one kind):
//! both sides are migrated to this binary's schema, the source is read in one
//! consistent read transaction, the target written in one transaction, and
//! the copy is verified by each table's row count and a SHA-256 over its rows
//! ([`copy`]). `hostplane-coordinator store backup` writes an online backup of
//! a SQLite store while a coordinator may be running ([`backup`]).
//!
//! [`run`] is what `main.rs` calls with the parsed [`StoreCommand`]; the
//! library functions ([`copy::copy`], [`copy::verify`], [`backup::backup`])
//! are what it prints from, and what the tests drive.
//!
//! Exit codes follow `main.rs`: 0 done, 1 failed (or refused: a target that
//! holds data, a verification that differs, an existing backup file), 64 a
//! usage error, 78 a config file that cannot be read.

pub mod backup;
pub mod copy;
mod endpoint;

use std::path::PathBuf;
use std::process::ExitCode;

pub use endpoint::{Endpoint, PgSettings};

use crate::store::SslMode;

/// Exit status: the command failed or refused (main.rs's `EXIT_RUNTIME`).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the command line is wrong (main.rs's `EXIT_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit status: the config file could not be read (main.rs's `EXIT_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// `hostplane-coordinator store ...`.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a whole store into an empty one, between SQLite and PostgreSQL
    /// in either direction (docs/postgres.md). Both sides are migrated to
    /// this binary's schema first; the source is read in one consistent read
    /// transaction, the target written in one transaction; then every
    /// table's row count and SHA-256 are compared between the two. Stop the
    /// coordinators of both stores first: writes made to the source after
    /// its read began are not copied. Exit 0 when copied and verified, 1 on
    /// a failure or refusal (the target already holds data, the
    /// verification differs), 64 on a usage error.
    Copy(CopyArgs),
    /// Write an online backup of a SQLite store, also while a coordinator
    /// is running on it, into a new file; check the copy with
    /// `PRAGMA integrity_check` and print its revision and object count.
    /// A store on PostgreSQL is refused: back it up with pg_dump
    /// (docs/postgres.md). Exit 0 when written and checked, 1 on a failure
    /// (DEST exists, the store is missing, the check fails), 64 on a usage
    /// error, 78 when the config cannot be read.
    Backup(BackupArgs),
}

/// `store copy`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy: `sqlite:PATH` or `postgres:URL` (the URL without a
    /// password; see --password-file).
    #[arg(long, value_name = "STORE")]
    pub from: Endpoint,
    /// The store to copy into, which must hold no data (see --replace):
    /// `sqlite:PATH` (created when missing) or `postgres:URL`.
    #[arg(long, value_name = "STORE")]
    pub to: Endpoint,
    /// Delete whatever the target holds (resources, events, commands,
    /// desired versions, power caps), in the copy's own transaction.
    #[arg(long)]
    pub replace: bool,
    /// The PostgreSQL side's password: the file's first line.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// TLS to PostgreSQL: disable, prefer, require, verify-ca or verify-full
    /// (as store.postgres.sslmode).
    #[arg(long, value_name = "MODE", default_value = "disable")]
    pub sslmode: SslMode,
    /// The CA that signed the PostgreSQL server's certificate (PEM), for
    /// verify-ca and verify-full.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for PostgreSQL (PEM), with --key-file.
    #[arg(long, value_name = "PEM", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

/// `store backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The SQLite store file to back up.
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Read the store's path from this coordinator config instead (its
    /// store.path, HOSTPLANE_STORE_PATH applied, as the coordinator reads it)
    /// [default without --store: /etc/hostplane/coordinator.yaml, if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The backup file to write; refused when it exists.
    #[arg(long, value_name = "DEST")]
    pub to: PathBuf,
}

/// Run a `store` command: prints its result on stdout, its error on stderr,
/// and returns the exit status.
pub fn run(cmd: StoreCommand) -> ExitCode {
    ExitCode::from(run_status(cmd))
}

/// [`run`]'s exit status as a number (tests compare it).
pub fn run_status(cmd: StoreCommand) -> u8 {
    match cmd {
        StoreCommand::Copy(args) => copy::run(args),
        StoreCommand::Backup(args) => backup::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    /// What `main.rs` will hold: its global flags (`--config`, `--store`, ...)
    /// next to the `store` subcommand.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Option<Cmd>,
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, global = true, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        #[arg(long, global = true, value_name = "PATH")]
        store: Option<PathBuf>,
        #[arg(long, global = true)]
        insecure: bool,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Run,
        Store {
            #[command(subcommand)]
            cmd: StoreCommand,
        },
    }

    fn parse(args: &[&str]) -> Result<StoreCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("hostplane-coordinator").chain(args.iter().copied()))?;
        match cli.cmd {
            Some(Cmd::Store { cmd }) => Ok(cmd),
            other => panic!("not a store command: {other:?}"),
        }
    }

    #[test]
    fn the_commands_fit_main_rs_global_flags() {
        Cli::command().debug_assert();
    }

    #[test]
    fn copy_parses_both_endpoints_and_the_tls_settings() {
        let cmd = parse(&[
            "store",
            "copy",
            "--from",
            "sqlite:/var/lib/hostplane/coordinator.db",
            "--to",
            "postgres:postgres://hostplane@db:5432/hostplane",
            "--password-file",
            "/etc/hostplane/pg-password",
            "--sslmode",
            "verify-full",
            "--ca-file",
            "/etc/hostplane/pg-ca.pem",
            "--replace",
        ])
        .unwrap();
        let StoreCommand::Copy(a) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            a.from,
            Endpoint::Sqlite("/var/lib/hostplane/coordinator.db".into())
        );
        assert_eq!(
            a.to,
            Endpoint::Postgres("postgres://hostplane@db:5432/hostplane".into())
        );
        assert!(a.replace);
        assert_eq!(a.sslmode, SslMode::VerifyFull);
        assert_eq!(
            a.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/hostplane/pg-ca.pem"))
        );
    }

    #[test]
    fn copy_usage_errors_name_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["store", "copy", "--from", "mysql:x", "--to", "sqlite:/b"],
                "sqlite:PATH or postgres:URL",
            ),
            (
                &["store", "copy", "--from", "sqlite:", "--to", "sqlite:/b"],
                "names no file",
            ),
            (
                &[
                    "store",
                    "copy",
                    "--from",
                    "sqlite:/a",
                    "--to",
                    "postgres:postgres://u:secret@h/db",
                ],
                "--password-file",
            ),
            (
                &[
                    "store",
                    "copy",
                    "--from",
                    "sqlite:/a",
                    "--to",
                    "postgres:postgres://h:notaport/db",
                ],
                "postgres:",
            ),
            (
                &[
                    "store",
                    "copy",
                    "--from",
                    "sqlite:/a",
                    "--to",
                    "sqlite:/b",
                    "--sslmode",
                    "strict",
                ],
                "verify-full",
            ),
            (&["store", "copy", "--from", "sqlite:/a"], "--to"),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err();
            assert!(e.use_stderr(), "{args:?}");
            let msg = e.to_string();
            assert!(msg.contains(want), "{args:?}: {msg:?} does not mention {want:?}");
        }
    }

    #[test]
    fn backup_takes_its_store_or_config_before_or_after_the_subcommand() {
        let cmd = parse(&["store", "backup", "--store", "/s.db", "--to", "/b.db"]).unwrap();
        let StoreCommand::Backup(a) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (a.store.as_deref(), a.config.as_deref()),
            (Some("/s.db".as_ref()), None)
        );
        assert_eq!(a.to, PathBuf::from("/b.db"));

        // main.rs's --config and --store are global: given before `store`,
        // they reach the backup's own arguments.
        let cmd = parse(&["--config", "/c.yaml", "store", "backup", "--to", "/b.db"]).unwrap();
        let StoreCommand::Backup(a) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (a.store.as_deref(), a.config.as_deref()),
            (None, Some("/c.yaml".as_ref()))
        );
        let cmd = parse(&["--store", "/s.db", "store", "backup", "--to", "/b.db"]).unwrap();
        let StoreCommand::Backup(a) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(a.store.as_deref(), Some("/s.db".as_ref()));

        // Both, in any place, are refused when it runs (exit 64, before
        // reading anything): clap cannot see a global given before `store`.
        for args in [
            &[
                "store", "backup", "--store", "/s.db", "--config", "/c.yaml", "--to", "/b.db",
            ][..],
            &[
                "--config", "/c.yaml", "store", "backup", "--store", "/s.db", "--to", "/b.db",
            ],
        ] {
            let cmd = parse(args).unwrap();
            assert_eq!(run_status(cmd), EXIT_USAGE, "{args:?}");
        }
        let e = parse(&["store", "backup", "--store", "/s.db"]).unwrap_err();
        assert!(e.use_stderr() && e.to_string().contains("--to"), "{e}");
    }
}
