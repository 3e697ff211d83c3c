//! Running a parsed command line against the coordinator.
//!
//! Each command is an async function that takes the client, the output
//! settings and a writer, and returns the exit code (or an [`Error`], whose
//! own exit code applies). Tests pass a `Vec<u8>` as the writer.
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::cli::{Cli, Command};
use crate::client::{self, Client};
use crate::error::Error;
use crate::output::Format;

pub mod bfb;
pub mod certs;
pub mod deployment;
pub mod device;
pub mod dpu;
pub mod flavor;
pub mod node;
pub mod policy;
pub mod power;
pub mod resource;
pub mod status;
pub mod token;
pub mod topology;
pub mod watch;

/// Limit for commands that do not stream, when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where command output goes (stdout in the binary).
pub type Out = dyn AsyncWrite + Unpin + Send;

/// Output settings shared by every command.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub format: Format,
    /// Wall clock in Unix milliseconds, for AGE columns (tests fix it).
    pub now: fn() -> i64,
}

impl Ctx {
    pub fn new(format: Format) -> Self {
        Ctx { format, now: now_ms }
    }
}

pub use hostplane_common::time::now_ms;

/// Where to connect; commands connect only once their local input is read and valid.
#[derive(Debug, Clone)]
pub struct Conn {
    pub server: String,
    pub token: Option<String>,
    pub tls: client::TlsFiles,
}

impl Conn {
    pub async fn client(&self) -> Result<Client, Error> {
        client::connect_with(&self.server, self.token.as_deref(), &self.tls).await
    }
}

/// Write `s` and flush, so a watch shows each row as it comes.
pub async fn emit(out: &mut Out, s: &str) -> Result<(), Error> {
    out.write_all(s.as_bytes())
        .await
        .map_err(|source| Error::WriteOutput { source })?;
    out.flush().await.map_err(|source| Error::WriteOutput { source })
}

/// Run `cli` (not `completion`, which needs no server) under its time limit.
pub async fn execute(cli: Cli, out: &mut Out) -> Result<u8, Error> {
    let limit = cli
        .timeout
        .or((!cli.command.is_streaming()).then_some(DEFAULT_TIMEOUT));
    let ctx = Ctx::new(cli.output);
    let conn = Conn {
        server: cli.server,
        token: cli.token,
        tls: client::TlsFiles {
            ca_file: cli.ca_file,
            cert_file: cli.cert_file,
            key_file: cli.key_file,
        },
    };
    let work = dispatch(&conn, &ctx, cli.command, out);
    match limit {
        None => work.await,
        Some(after) => tokio::time::timeout(after, work)
            .await
            .map_err(|_| Error::Timeout { after })?,
    }
}

async fn dispatch(conn: &Conn, ctx: &Ctx, cmd: Command, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        Command::Node { cmd } => node::run(conn, ctx, cmd, out).await,
        Command::Device { cmd } => device::run(conn, ctx, cmd, out).await,
        Command::Bfb { cmd } => bfb::run(conn, ctx, cmd, out).await,
        Command::Flavor { cmd } => flavor::run(conn, ctx, cmd, out).await,
        Command::Deployment { cmd } => deployment::run(conn, ctx, cmd, out).await,
        Command::Dpu { cmd } => dpu::run(conn, ctx, cmd, out).await,
        Command::Power { cmd } => power::run(conn, ctx, cmd, out).await,
        Command::Topology { cmd } => topology::run(conn, ctx, cmd, out).await,
        Command::Policy { cmd } => policy::run(conn, ctx, cmd, out).await,
        Command::Status => status::run(conn, ctx, out).await,
        Command::Create(f) => {
            let items = resource::load(&f.file, None).await?;
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
        Command::Apply(f) => {
            let items = resource::load(&f.file, None).await?;
            resource::apply(&mut conn.client().await?, ctx, items, out).await
        }
        Command::Update(f) => {
            let items = resource::load(&f.file, None).await?;
            resource::update(&mut conn.client().await?, ctx, items, out).await
        }
        Command::Certs { cmd } => certs::run(cmd, out).await,
        Command::Token { cmd } => token::run(cmd, out).await,
        Command::Completion { .. } => Err(Error::Usage {
            reason: "completion is handled before connecting".into(),
        }),
    }
}
