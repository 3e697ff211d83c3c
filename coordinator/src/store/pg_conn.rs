//! Connecting to PostgreSQL (`store.backend: postgres`, docs/ha.md §1).
//!
//! [`PgOptions`] is what the config's `store.postgres` section becomes;
//! [`connect`] opens one synchronous client from it. The store opens its
//! writer, its readers and its LISTEN connection through it, and reopens
//! them through it after PostgreSQL restarts.
use std::path::PathBuf;
use std::time::Duration;

use super::StoreError;

/// How TLS to PostgreSQL is used, named as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP (or a Unix socket).
    #[default]
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS, the server's certificate not checked.
    Require,
    /// TLS, the server's certificate checked against `ca_file`.
    VerifyCa,
    /// `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

/// The PostgreSQL backend's connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` or libpq key-value form; no password.
    pub url: String,
    /// A file holding the password (its first line); never in `url`.
    pub password_file: Option<PathBuf>,
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Read connections per replica, besides the writer and the listener.
    pub pool: usize,
    pub connect_timeout: Duration,
}

impl PgOptions {
    /// Options for `url` with every other setting at its default (tests).
    pub fn from_url(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password_file: None,
            sslmode: SslMode::Disable,
            ca_file: None,
            cert_file: None,
            key_file: None,
            pool: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Open one client with `opts`.
pub fn connect(opts: &PgOptions) -> Result<postgres::Client, StoreError> {
    let mut cfg: postgres::Config = opts.url.parse()?;
    cfg.connect_timeout(opts.connect_timeout);
    if let Some(file) = &opts.password_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| StoreError::Join(format!("store.postgres.password_file {}: {e}", file.display())))?;
        cfg.password(text.lines().next().unwrap_or_default());
    }
    match opts.sslmode {
        SslMode::Disable => Ok(cfg.connect(postgres::NoTls)?),
        other => Err(StoreError::Join(format!(
            "store.postgres.sslmode {other:?} is not supported yet"
        ))),
    }
}
