//! The coordinator's configuration: a YAML file (`/etc/hostplane/coordinator.yaml`
//! by default), then environment overrides, then command-line flags (applied by
//! the binary). Unknown fields are refused so a typo is not silently ignored.
//!
//! ```yaml
//! listen: 0.0.0.0:50051
//! store:
//!   backend: sqlite        # sqlite | postgres (docs/postgres.md)
//!   path: /var/lib/hostplane-coordinator/coordinator.db   # sqlite only
//!   # postgres:           # with backend: postgres
//!   #   url: postgres://hostplane@db.example:5432/hostplane   # no password here
//!   #   password_file: /etc/hostplane/postgres/password
//!   #   sslmode: verify-full   # disable | prefer | require | verify-ca | verify-full
//!   #   ca_file: /etc/hostplane/postgres/ca.crt
//!   #   pool: 8
//!   #   connect_timeout: 5s
//!   history:               # watch history: the last 50,000 revisions, and
//!     min_revisions: 50000 # everything younger than 5m, at most 1,000,000
//!     min_age: 5m
//!     max_revisions: 1000000
//! fsm:
//!   resync: 60s
//! agents:
//!   lease: 15s
//!   auto_register_devices: false  # true: a Device for each reported rshim that has none
//! log:
//!   level: info          # an EnvFilter directive, e.g. "info,hostplane_coordinator=debug"
//!   format: plain        # plain | json
//! shutdown_grace: 10s
//! tls:                       # mTLS (required unless `insecure: true`)
//!   cert_file: /etc/hostplane/tls/server.crt
//!   key_file: /etc/hostplane/tls/server.key
//!   client_ca_file: /etc/hostplane/tls/ca.crt
//! power:
//!   recompute_interval: 5s   # telemetry triggers a recompute at most this often
//!   resync: 30s
//! ha:                        # replicas on PostgreSQL only (docs/ha.md)
//!   name: coordinator-0      # this replica (default: the host name)
//!   addr: 10.0.0.5:50051     # where other replicas reach it (default: name + listen port)
//!   lease: 15s               # leader lease; renewed every renew_every,
//!   renew_every: 2s          # and the leader stops acting renew_deadline
//!   renew_deadline: 10s      # after its last successful renewal was sent
//! ```
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsm::FsmConfig;
use crate::power::PowerConfig;
use crate::store::{PgOptions, SslMode};
use crate::stream::StreamConfig;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostplane/coordinator.yaml";
pub const DEFAULT_STORE_PATH: &str = "/var/lib/hostplane-coordinator/coordinator.db";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";

/// Environment variables read by [`Config::apply_env`].
pub const ENV_LISTEN: &str = "HOSTPLANE_LISTEN";
pub const ENV_STORE_PATH: &str = "HOSTPLANE_STORE_PATH";
/// `sqlite` or `postgres` (`store.backend`).
pub const ENV_STORE_BACKEND: &str = "HOSTPLANE_STORE_BACKEND";
/// `store.postgres.url` (no password in it).
pub const ENV_STORE_POSTGRES_URL: &str = "HOSTPLANE_STORE_POSTGRES_URL";
/// `store.postgres.password_file`.
pub const ENV_STORE_POSTGRES_PASSWORD_FILE: &str = "HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE";
/// `ha.name` (the Helm chart sets it to the pod's name).
pub const ENV_REPLICA_NAME: &str = "HOSTPLANE_REPLICA_NAME";
/// `ha.addr` (the Helm chart sets it to the pod's IP; the port of `listen`
/// is added when it has none).
pub const ENV_REPLICA_ADDR: &str = "HOSTPLANE_REPLICA_ADDR";
pub const ENV_LOG: &str = "HOSTPLANE_LOG";
pub const ENV_LOG_FORMAT: &str = "HOSTPLANE_LOG_FORMAT";
/// `1`/`true`/`yes`: serve plain TCP without TLS (trusted networks only).
pub const ENV_INSECURE: &str = "HOSTPLANE_INSECURE";

/// The longest shutdown grace accepted: a stuck shutdown should not outlast systemd's patience.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("config field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Tls(String),
}

pub use hostplane_common::env::{Env, ProcessEnv};
pub use hostplane_common::logging::LogFormat;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address (admin API, agent stream, health, reflection).
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub fsm: FsmConfig,
    pub agents: StreamConfig,
    pub log: LogConfig,
    /// The power policy engine.
    pub power: PowerConfig,
    /// How long shutdown waits for connections and background tasks to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// mTLS for every connection (admin API, agent stream, health). Required
    /// unless `insecure` is set.
    pub tls: Option<TlsConfig>,
    /// Serve plain TCP: no encryption, no client identity (any peer may speak
    /// for any node). Only for a trusted network or a test; logged as a warning.
    pub insecure: bool,
    /// Admin API bearer tokens and the audit log.
    pub auth: crate::api::auth::AuthConfig,
    /// Prometheus `/metrics` (off unless `metrics.listen` is set).
    pub metrics: crate::metrics::MetricsConfig,
    /// Several replicas on PostgreSQL: this replica's identity and the
    /// leader lease (docs/ha.md §3). Ignored on SQLite.
    pub ha: HaConfig,
}

/// `ha:` — this replica and the leader lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// This replica's name, unique among the replicas (default: the host name).
    pub name: Option<String>,
    /// `host:port` other replicas reach this one at (default: the name and
    /// the port of `listen`); a host without a port gets `listen`'s port.
    pub addr: Option<String>,
    /// How long a takeover or renewal holds the lease.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the leader renews and followers poll.
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// The leader stops acting this long after it sent its last successful
    /// renewal (shorter than `lease`).
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        let d = crate::ha::LeaseConfig::default();
        HaConfig {
            name: None,
            addr: None,
            lease: d.lease,
            renew_every: d.renew_every,
            renew_deadline: d.renew_deadline,
        }
    }
}

impl HaConfig {
    /// The lease's timing.
    pub fn lease_config(&self) -> crate::ha::LeaseConfig {
        crate::ha::LeaseConfig {
            lease: self.lease,
            renew_every: self.renew_every,
            renew_deadline: self.renew_deadline,
        }
    }

    /// This replica as the election names it, with `listen`'s port where
    /// `addr` has none.
    pub fn replica(&self, listen: SocketAddr) -> crate::ha::Replica {
        let name = self.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "coordinator".into())
        });
        let addr = match self.addr.as_deref().filter(|a| !a.is_empty()) {
            Some(a) if a.parse::<SocketAddr>().is_ok() => a.to_string(),
            // A bare IPv6 address, or a host name without a port.
            Some(a) if a.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{a}]:{}", listen.port()),
            Some(a) if !a.contains(':') => format!("{a}:{}", listen.port()),
            Some(a) => a.to_string(),
            None => format!("{name}:{}", listen.port()),
        };
        crate::ha::Replica { name, addr }
    }
}

/// The coordinator's certificate and the CA its clients' certificates must be signed by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM server certificate (chain); its names must match what agents put in `coordinator: https://NAME:PORT`.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA certificate(s) that sign agent and admin client certificates.
    pub client_ca_file: PathBuf,
    /// Accept connections without a client certificate (admins authenticated
    /// by bearer token only). Agent sessions still need one. Default false:
    /// every client must present a certificate signed by `client_ca_file`.
    #[serde(default)]
    pub client_auth_optional: bool,
}

impl TlsConfig {
    /// Read and check the three files (named in errors by their config key).
    pub fn load(&self) -> Result<LoadedTls, ConfigError> {
        use hostplane_common::tls::{load_certs, load_key};
        let tls = |e: hostplane_common::tls::TlsFileError| ConfigError::Tls(e.to_string());
        Ok(LoadedTls {
            cert: load_certs("tls.cert_file", &self.cert_file).map_err(tls)?.pem,
            key: load_key("tls.key_file", &self.key_file).map_err(tls)?.pem,
            client_ca: load_certs("tls.client_ca_file", &self.client_ca_file)
                .map_err(tls)?
                .pem,
        })
    }
}

/// The PEM bytes of [`TlsConfig`]'s files, checked.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address parses"),
            store: StoreConfig::default(),
            fsm: FsmConfig::default(),
            agents: StreamConfig::default(),
            log: LogConfig::default(),
            power: PowerConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            insecure: false,
            auth: Default::default(),
            metrics: Default::default(),
            ha: HaConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the store lives: one SQLite file (the default) or PostgreSQL.
    pub backend: StoreBackend,
    /// The SQLite file; its directory is created if missing. Unused on postgres.
    pub path: PathBuf,
    /// Watch history kept for `Watch(from_version)`, watchers that fell
    /// behind, and paged List snapshots.
    pub history: crate::store::HistoryConfig,
    /// The PostgreSQL connection (`backend: postgres`; docs/postgres.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::default(),
            path: PathBuf::from(DEFAULT_STORE_PATH),
            history: Default::default(),
            postgres: None,
        }
    }
}

/// `store.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One SQLite file (`store.path`), one coordinator process.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`store.postgres`), one or more replicas (docs/ha.md).
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StoreBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(StoreBackend::Sqlite),
            "postgres" => Ok(StoreBackend::Postgres),
            other => Err(format!(
                "unknown store backend {other:?}: expected sqlite or postgres"
            )),
        }
    }
}

/// Read connections each replica keeps besides its writer and listener.
pub const DEFAULT_PG_POOL: usize = 8;
/// How long opening one PostgreSQL connection may take.
pub const DEFAULT_PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `store.postgres`: how to reach the database. The password is never in
/// the file: `password_file` names a file holding it (its first line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DBNAME` (or libpq's `host=... user=...`), without a password.
    pub url: String,
    /// The password's file (its first line); unset when the server needs none (`cert`, `peer`).
    pub password_file: Option<PathBuf>,
    /// disable | prefer | require | verify-ca | verify-full (libpq's meanings).
    pub sslmode: SslMode,
    /// PEM CA certificate(s) that signed the server's certificate (verify-ca, verify-full).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for `cert` authentication (pg_hba.conf).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Read connections per replica (at least 1).
    pub pool: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            password_file: None,
            sslmode: SslMode::default(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            pool: DEFAULT_PG_POOL,
            connect_timeout: DEFAULT_PG_CONNECT_TIMEOUT,
        }
    }
}

impl PostgresConfig {
    /// The store's connection settings.
    pub fn options(&self) -> PgOptions {
        PgOptions {
            url: self.url.clone(),
            password_file: self.password_file.clone(),
            sslmode: self.sslmode,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            pool: self.pool,
            connect_timeout: self.connect_timeout,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL settings (`store.postgres`, defaults when the section is absent).
    pub fn postgres_options(&self) -> PgOptions {
        self.postgres.clone().unwrap_or_default().options()
    }

    /// The store for messages: the SQLite file, or `postgres user@host:port/db`
    /// (never the password).
    pub fn describe(&self) -> String {
        match self.backend {
            StoreBackend::Sqlite => format!("sqlite {}", self.path.display()),
            StoreBackend::Postgres => format!("postgres {}", self.postgres_options().describe()),
        }
    }

    /// `store.*` checks, naming the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.backend {
            StoreBackend::Sqlite => {
                if self.path.as_os_str().is_empty() {
                    return Err(("store.path", "required".into()));
                }
                if self.path.is_dir() {
                    return Err(("store.path", "is a directory; name the database file".into()));
                }
                if self.postgres.is_some() {
                    return Err((
                        "store.postgres",
                        "set while store.backend is sqlite (the default); set store.backend: postgres, \
                         or remove the section"
                            .into(),
                    ));
                }
            }
            StoreBackend::Postgres => check_postgres(&self.postgres_options())?,
        }
        if self.history.min_revisions == 0 {
            return Err(("store.history.min_revisions", "must be at least 1".into()));
        }
        if self.history.max_revisions < self.history.min_revisions {
            return Err((
                "store.history.max_revisions",
                "must be at least store.history.min_revisions".into(),
            ));
        }
        Ok(())
    }
}

/// The checks `validate` runs on `store.postgres` without connecting: the URL
/// parses and carries no password nor sslmode of its own, the files named
/// exist, the modes have what they need. `Err((field, reason))`.
fn check_postgres(opts: &PgOptions) -> Result<(), (&'static str, String)> {
    if opts.url.trim().is_empty() {
        return Err((
            "store.postgres.url",
            "required with store.backend postgres (e.g. postgres://hostplane@db.example:5432/hostplane)"
                .into(),
        ));
    }
    let cfg: postgres::Config = opts.url.parse().map_err(|e| {
        (
            "store.postgres.url",
            format!("not a PostgreSQL connection URL: {e}"),
        )
    })?;
    if cfg.get_password().is_some() {
        return Err((
            "store.postgres.url",
            "carries a password; remove it and put the password in store.postgres.password_file".into(),
        ));
    }
    if opts.url.contains("sslmode") {
        return Err((
            "store.postgres.url",
            "sets sslmode; remove it and set store.postgres.sslmode (the URL's own only knows disable, prefer and require)"
                .into(),
        ));
    }
    if opts.pool == 0 {
        return Err(("store.postgres.pool", "must be at least 1".into()));
    }
    if opts.connect_timeout.is_zero() {
        return Err(("store.postgres.connect_timeout", "must be greater than 0".into()));
    }
    for (field, file) in [
        ("store.postgres.password_file", &opts.password_file),
        ("store.postgres.ca_file", &opts.ca_file),
        ("store.postgres.cert_file", &opts.cert_file),
        ("store.postgres.key_file", &opts.key_file),
    ] {
        if let Some(path) = file {
            if path.as_os_str().is_empty() {
                return Err((field, "empty; leave it out or name a file".into()));
            }
            if !path.is_file() {
                return Err((field, format!("{}: no such file", path.display())));
            }
        }
    }
    // The PEM files are read and checked now, as the tls section's are, so
    // `validate` catches a key in the certificate's place or an expired one.
    let pem =
        |field: &'static str, path: &Option<PathBuf>, key: bool| -> Result<(), (&'static str, String)> {
            let Some(path) = path else { return Ok(()) };
            let loaded = if key {
                hostplane_common::tls::load_key(field, path)
            } else {
                hostplane_common::tls::load_certs(field, path)
            };
            loaded.map(|_| ()).map_err(|e| match e {
                hostplane_common::tls::TlsFileError::Read { path, source, .. } => {
                    (field, format!("{}: cannot read: {source}", path.display()))
                }
                hostplane_common::tls::TlsFileError::Invalid { path, reason, .. } => {
                    (field, format!("{}: {reason}", path.display()))
                }
            })
        };
    pem("store.postgres.ca_file", &opts.ca_file, false)?;
    pem("store.postgres.cert_file", &opts.cert_file, false)?;
    pem("store.postgres.key_file", &opts.key_file, true)?;
    if opts.sslmode.verifies() && opts.ca_file.is_none() {
        return Err((
            "store.postgres.ca_file",
            format!(
                "required with sslmode {} (the CA that signed the server's certificate)",
                opts.sslmode
            ),
        ));
    }
    match (&opts.cert_file, &opts.key_file) {
        (Some(_), None) => return Err(("store.postgres.key_file", "required with cert_file".into())),
        (None, Some(_)) => return Err(("store.postgres.cert_file", "required with key_file".into())),
        _ => {}
    }
    if opts.sslmode == SslMode::Disable && (opts.ca_file.is_some() || opts.cert_file.is_some()) {
        return Err((
            "store.postgres.sslmode",
            "is disable, yet ca_file or cert_file is set; choose require, verify-ca or verify-full".into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` EnvFilter directive (`info`, `warn,hostplane_coordinator=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

impl Config {
    /// Parse a YAML document (`origin` names it in errors).
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.into(),
            source,
        })
    }

    /// Read the file at `path`, or the default path when `None`. A missing
    /// default file means defaults; a missing file that was asked for is an error.
    pub fn read(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::from_yaml(&text, &path),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// The file, then the environment, then [`Config::validate`].
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut cfg = Config::read(path)?;
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `HOSTPLANE_LISTEN`, `HOSTPLANE_STORE_PATH`, `HOSTPLANE_STORE_BACKEND`,
    /// `HOSTPLANE_STORE_POSTGRES_URL`, `HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE`,
    /// `HOSTPLANE_LOG`, `HOSTPLANE_LOG_FORMAT`, `HOSTPLANE_INSECURE`.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let bad = |var, value: &str, reason: String| ConfigError::Env {
            var,
            value: value.into(),
            reason,
        };
        if let Some(v) = env.get(ENV_LISTEN) {
            self.listen = v
                .parse()
                .map_err(|e: std::net::AddrParseError| bad(ENV_LISTEN, &v, e.to_string()))?;
        }
        if let Some(v) = env.get(ENV_STORE_PATH) {
            if v.is_empty() {
                return Err(bad(ENV_STORE_PATH, &v, "must not be empty".into()));
            }
            self.store.path = PathBuf::from(v);
        }
        if let Some(v) = env.get(ENV_STORE_BACKEND) {
            self.store.backend = v.parse().map_err(|reason| bad(ENV_STORE_BACKEND, &v, reason))?;
        }
        if let Some(v) = env.get(ENV_STORE_POSTGRES_URL) {
            // The value is not echoed: a URL may (wrongly) carry a password.
            if v.is_empty() {
                return Err(bad(ENV_STORE_POSTGRES_URL, &v, "must not be empty".into()));
            }
            self.store.postgres.get_or_insert_with(Default::default).url = v;
        }
        if let Some(v) = env.get(ENV_STORE_POSTGRES_PASSWORD_FILE) {
            if v.is_empty() {
                return Err(bad(
                    ENV_STORE_POSTGRES_PASSWORD_FILE,
                    &v,
                    "must not be empty".into(),
                ));
            }
            self.store
                .postgres
                .get_or_insert_with(Default::default)
                .password_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.get(ENV_REPLICA_NAME)
            && !v.is_empty()
        {
            self.ha.name = Some(v);
        }
        if let Some(v) = env.get(ENV_REPLICA_ADDR)
            && !v.is_empty()
        {
            self.ha.addr = Some(v);
        }
        if let Some(v) = env.get(ENV_LOG)
            && !v.is_empty()
        {
            self.log.level = v;
        }
        if let Some(v) = env.get(ENV_LOG_FORMAT)
            && !v.is_empty()
        {
            self.log.format = v.parse().map_err(|reason| bad(ENV_LOG_FORMAT, &v, reason))?;
        }
        if let Some(v) = env.get(ENV_INSECURE) {
            self.insecure = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "" | "0" | "false" | "no" => false,
                _ => return Err(bad(ENV_INSECURE, &v, "expected 1/true/yes or 0/false/no".into())),
            };
        }
        Ok(())
    }

    /// Cross-field and range checks, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if let Err((field, reason)) = self.store.validate() {
            return invalid(field, &reason);
        }
        if self.fsm.resync.is_zero() {
            return invalid("fsm.resync", "must be greater than 0");
        }
        if self.agents.lease < Duration::from_secs(1) {
            return invalid("agents.lease", "must be at least 1s");
        }
        if self.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return invalid("shutdown_grace", "must be at most 5m");
        }
        if self.metrics.listen == Some(self.listen) {
            return invalid("metrics.listen", "must differ from listen (the gRPC address)");
        }
        if let Err((field, reason)) = self.power.validate() {
            return invalid(field, reason);
        }
        if self.store.backend == StoreBackend::Postgres {
            if let Err(e) = self.ha.lease_config().validate() {
                return Err(ConfigError::Invalid {
                    field: "ha",
                    reason: e.to_string(),
                });
            }
            if let Err(e) = self.ha.replica(self.listen).validate() {
                return Err(ConfigError::Invalid {
                    field: "ha",
                    reason: e.to_string(),
                });
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                field: "log.level",
                reason: e.to_string(),
            });
        }
        self.validate_tls()?;
        // Tokens are required with TLS; the tokens file is read and checked.
        self.auth
            .check(self.tls.is_some() && !self.insecure)
            .map_err(|e| ConfigError::Invalid {
                field: "auth",
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// mTLS unless explicitly insecure; the files are read and checked here,
    /// so `hostplane-coordinator validate` catches a bad path or an expired
    /// certificate before a restart does.
    pub fn validate_tls(&self) -> Result<(), ConfigError> {
        match (&self.tls, self.insecure) {
            (None, false) => Err(ConfigError::Invalid {
                field: "tls",
                reason: "not set, and the coordinator serves mTLS unless told otherwise: set \
                         tls.cert_file, tls.key_file and tls.client_ca_file (make a lab set with \
                         `hostplanectl certs`; see docs/operations.md, Certificates), or serve plain \
                         TCP on a trusted network with --insecure (HOSTPLANE_INSECURE=1, \
                         `insecure: true`)"
                    .into(),
            }),
            (Some(_), true) => Err(ConfigError::Invalid {
                field: "insecure",
                reason: "set together with tls; remove one of them".into(),
            }),
            (Some(t), false) => {
                for (field, p) in [
                    ("tls.cert_file", &t.cert_file),
                    ("tls.key_file", &t.key_file),
                    ("tls.client_ca_file", &t.client_ca_file),
                ] {
                    if p.as_os_str().is_empty() {
                        return Err(ConfigError::Invalid {
                            field,
                            reason: "required".into(),
                        });
                    }
                }
                t.load().map(|_| ())
            }
            (None, true) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let cfg = Config::default();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(
            cfg.store.path,
            Path::new("/var/lib/hostplane-coordinator/coordinator.db")
        );
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
        assert_eq!(
            cfg.log,
            LogConfig {
                level: "info".into(),
                format: LogFormat::Plain
            }
        );
        // No TLS and not insecure: refused, saying how to fix it.
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with("config field tls: not set"), "{e}");
        assert!(
            e.contains("--insecure") && e.contains("hostplanectl certs"),
            "{e}"
        );
        Config {
            insecure: true,
            ..cfg.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(
            Config::from_yaml("", Path::new("x")).unwrap(),
            cfg,
            "an empty file means defaults"
        );
    }

    #[test]
    fn device_auto_registration_is_off_unless_asked_for() {
        assert!(!Config::default().agents.auto_register_devices);
        let cfg = Config::from_yaml("agents:\n  auto_register_devices: true\n", Path::new("c.yaml")).unwrap();
        assert!(cfg.agents.auto_register_devices);
        assert_eq!(cfg.agents.lease, StreamConfig::default().lease);
        let err = Config::from_yaml("agents:\n  auto_register: true\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auto_register"), "{err}");
    }

    #[test]
    fn yaml_overrides_only_what_it_names() {
        let cfg = Config::from_yaml(
            "listen: 127.0.0.1:7000\nstore:\n  path: /tmp/c.db\nshutdown_grace: 2s\nlog:\n  format: json\nagents:\n  lease: 30s\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(cfg.store.path, Path::new("/tmp/c.db"));
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(2));
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.log.level, "info");
        assert_eq!(cfg.agents.lease, Duration::from_secs(30));
        assert_eq!(cfg.store.history, crate::store::HistoryConfig::default());
        assert_eq!(cfg.fsm, FsmConfig::default());
        assert_eq!(cfg.power, PowerConfig::default());
    }

    #[test]
    fn power_section() {
        let cfg = Config::from_yaml(
            "insecure: true\npower:\n  recompute_interval: 2s\n  headroom: 0.2\n  margin_watts: 0\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.power.recompute_interval, Duration::from_secs(2));
        assert_eq!((cfg.power.headroom, cfg.power.margin_watts), (0.2, 0.0));
        assert_eq!(cfg.power.resync, PowerConfig::default().resync);
        cfg.validate().unwrap();
        let e = Config::from_yaml("power:\n  recompute: 2s\n", Path::new("c.yaml")).unwrap_err();
        assert!(e.to_string().contains("recompute"), "{e}");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let cases = [
            ("listen: 1.2.3.4:5\nlisten_addr: x\n", "listen_addr"),
            ("store:\n  pth: /x\n", "pth"),
            ("shutdown_grace: soon\n", "shutdown_grace"),
            ("listen: not-an-address\n", "listen"),
            ("log:\n  format: xml\n", "xml"),
        ];
        for (yaml, want) in cases {
            let e = Config::from_yaml(yaml, Path::new("/etc/c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("parsing config /etc/c.yaml:"), "{e}");
            assert!(e.contains(want), "{yaml:?}: {e:?} does not mention {want:?}");
        }
    }

    #[test]
    fn env_overrides_the_file() {
        let mut cfg = Config::default();
        cfg.apply_env(&env(&[
            (ENV_LISTEN, "127.0.0.1:9"),
            (ENV_STORE_PATH, "/srv/c.db"),
            (ENV_LOG, "debug"),
            (ENV_LOG_FORMAT, "json"),
        ]))
        .unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9");
        assert_eq!(cfg.store.path, Path::new("/srv/c.db"));
        assert_eq!(
            cfg.log,
            LogConfig {
                level: "debug".into(),
                format: LogFormat::Json
            }
        );

        let mut cfg = Config::default();
        cfg.apply_env(&env(&[])).unwrap();
        assert_eq!(cfg, Config::default(), "no variables, no change");

        for (pairs, want) in [
            (&[(ENV_LISTEN, "localhost")][..], "HOSTPLANE_LISTEN=\"localhost\""),
            (
                &[(ENV_STORE_PATH, "")][..],
                "HOSTPLANE_STORE_PATH=\"\": must not be empty",
            ),
            (
                &[(ENV_LOG_FORMAT, "xml")][..],
                "HOSTPLANE_LOG_FORMAT=\"xml\": unknown log format \"xml\"",
            ),
        ] {
            let e = Config::default().apply_env(&env(pairs)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("environment variable {want}")),
                "{e:?} does not start with {want:?}"
            );
        }
    }

    #[test]
    fn validate_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        type Case = (&'static str, Box<dyn Fn(&mut Config)>);
        let cases: Vec<Case> = vec![
            (
                "store.path: required",
                Box::new(|c| c.store.path = PathBuf::new()),
            ),
            ("store.path: is a directory", {
                let d = dir.path().to_path_buf();
                Box::new(move |c| c.store.path = d.clone())
            }),
            (
                "store.history.min_revisions: must be at least 1",
                Box::new(|c| c.store.history.min_revisions = 0),
            ),
            (
                "store.history.max_revisions: must be at least store.history.min_revisions",
                Box::new(|c| c.store.history.max_revisions = 10),
            ),
            (
                "fsm.resync: must be greater than 0",
                Box::new(|c| c.fsm.resync = Duration::ZERO),
            ),
            (
                "agents.lease: must be at least 1s",
                Box::new(|c| c.agents.lease = Duration::from_millis(10)),
            ),
            (
                "shutdown_grace: must be at most 5m",
                Box::new(|c| c.shutdown_grace = Duration::from_secs(3600)),
            ),
            ("log.level:", Box::new(|c| c.log.level = "info,=[".into())),
            (
                "power.recompute_interval: must be greater than 0",
                Box::new(|c| c.power.recompute_interval = Duration::ZERO),
            ),
            (
                "power.headroom: must be a fraction",
                Box::new(|c| c.power.headroom = f64::NAN),
            ),
            (
                "power.hysteresis_percent: must be from 0 to 100",
                Box::new(|c| c.power.hysteresis_percent = 150.0),
            ),
        ];
        for (want, change) in cases {
            let mut cfg = Config {
                insecure: true,
                ..Config::default()
            };
            change(&mut cfg);
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config field {want}")),
                "{e:?} does not start with {want:?}"
            );
        }
    }

    #[test]
    fn load_reads_the_file_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:1234\ninsecure: true\n").unwrap();
        let cfg = Config::load(Some(&path), &env(&[(ENV_STORE_PATH, "/x/y.db")])).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(cfg.store.path, Path::new("/x/y.db"));
        let missing = dir.path().join("nope.yaml");
        let e = Config::load(Some(&missing), &env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.yaml"), "{e}");
    }

    /// A self-signed certificate and its key, PEM.
    fn test_pems() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["db.example".to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn store_backend_defaults_to_sqlite() {
        let cfg = Config::default();
        assert_eq!(cfg.store.backend, StoreBackend::Sqlite);
        assert_eq!(cfg.store.postgres, None);
        assert_eq!(
            cfg.store.describe(),
            "sqlite /var/lib/hostplane-coordinator/coordinator.db"
        );
        let cfg = Config::from_yaml(
            "store:\n  backend: sqlite\n  path: /tmp/c.db\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.store.path, Path::new("/tmp/c.db"));
        let e = Config::from_yaml("store:\n  backend: mysql\n", Path::new("c.yaml")).unwrap_err();
        assert!(e.to_string().contains("mysql"), "{e}");
    }

    #[test]
    fn postgres_section_becomes_pg_options() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pems = test_pems();
        std::fs::write(d.join("password"), "x\n").unwrap();
        std::fs::write(d.join("ca.crt"), &pems.0).unwrap();
        std::fs::write(d.join("client.crt"), &pems.0).unwrap();
        std::fs::write(d.join("client.key"), &pems.1).unwrap();
        let yaml = format!(
            "insecure: true\nstore:\n  backend: postgres\n  postgres:\n    url: postgres://hostplane@db.example:6432/hp\n    \
             password_file: {0}/password\n    sslmode: verify-full\n    ca_file: {0}/ca.crt\n    \
             cert_file: {0}/client.crt\n    key_file: {0}/client.key\n    pool: 3\n    connect_timeout: 2s\n",
            d.display()
        );
        let cfg = Config::from_yaml(&yaml, Path::new("c.yaml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.store.backend, StoreBackend::Postgres);
        assert_eq!(
            cfg.store.postgres_options(),
            PgOptions {
                url: "postgres://hostplane@db.example:6432/hp".into(),
                password_file: Some(d.join("password")),
                sslmode: SslMode::VerifyFull,
                ca_file: Some(d.join("ca.crt")),
                cert_file: Some(d.join("client.crt")),
                key_file: Some(d.join("client.key")),
                pool: 3,
                connect_timeout: Duration::from_secs(2),
            }
        );
        assert_eq!(cfg.store.describe(), "postgres hostplane@db.example:6432/hp");
        // Only the url: every other key at its default.
        let cfg = Config::from_yaml(
            "store:\n  backend: postgres\n  postgres:\n    url: postgres://u@h/d\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let o = cfg.store.postgres_options();
        assert_eq!(
            (o.sslmode, o.pool, o.connect_timeout, o.password_file),
            (SslMode::Disable, 8, Duration::from_secs(5), None)
        );
        // The section's keys are checked like every other.
        for (yaml, want) in [
            ("store:\n  postgres:\n    uri: x\n", "uri"),
            ("store:\n  postgres:\n    sslmode: verify_full\n", "verify_full"),
            ("store:\n  postgres:\n    password: hunter2\n", "password"),
            (
                "store:\n  postgres:\n    connect_timeout: soon\n",
                "connect_timeout",
            ),
        ] {
            let e = Config::from_yaml(yaml, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn postgres_validation_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (cert_pem, key_pem) = test_pems();
        let ca = d.join("ca.crt");
        std::fs::write(&ca, &cert_pem).unwrap();
        let key = d.join("client.key");
        std::fs::write(&key, &key_pem).unwrap();
        let pg = |url: &str| {
            let mut c = Config {
                insecure: true,
                ..Config::default()
            };
            c.store.backend = StoreBackend::Postgres;
            c.store.postgres = Some(PostgresConfig {
                url: url.into(),
                ..Default::default()
            });
            c
        };
        pg("postgres://u@h/d").validate().unwrap();
        // The SQLite path is not looked at on postgres.
        let mut c = pg("host=/run/postgresql user=u dbname=d");
        c.store.path = d.clone();
        c.validate().unwrap();
        type Case = (&'static str, Config);
        let with = |f: &dyn Fn(&mut PostgresConfig)| {
            let mut c = pg("postgres://u@h/d");
            f(c.store.postgres.as_mut().unwrap());
            c
        };
        let cases: Vec<Case> = vec![
            ("store.postgres.url: required with store.backend postgres", pg("")),
            ("store.postgres.url: required with store.backend postgres", {
                let mut c = pg("");
                c.store.postgres = None;
                c
            }),
            (
                "store.postgres.url: carries a password; remove it and put the password in \
                 store.postgres.password_file",
                pg("postgres://u:hunter2@h/d"),
            ),
            (
                "store.postgres.url: carries a password",
                pg("host=h user=u password=hunter2 dbname=d"),
            ),
            (
                "store.postgres.url: sets sslmode",
                pg("postgres://u@h/d?sslmode=require"),
            ),
            (
                "store.postgres.url: not a PostgreSQL connection URL",
                pg("postgres://u@h/d?bogus=1"),
            ),
            ("store.postgres.pool: must be at least 1", with(&|p| p.pool = 0)),
            (
                "store.postgres.connect_timeout: must be greater than 0",
                with(&|p| p.connect_timeout = Duration::ZERO),
            ),
            (
                "store.postgres.password_file: ",
                with(&|p| p.password_file = Some("/nonexistent/pw".into())),
            ),
            ("store.postgres.ca_file: ", {
                let missing = d.join("missing-ca.crt");
                with(&move |p| {
                    p.sslmode = SslMode::VerifyCa;
                    p.ca_file = Some(missing.clone());
                })
            }),
            (
                "store.postgres.ca_file: required with sslmode verify-full",
                with(&|p| p.sslmode = SslMode::VerifyFull),
            ),
            (
                "store.postgres.ca_file: required with sslmode verify-ca",
                with(&|p| p.sslmode = SslMode::VerifyCa),
            ),
            ("store.postgres.key_file: required with cert_file", {
                let ca = ca.clone();
                with(&move |p| {
                    p.sslmode = SslMode::Require;
                    p.cert_file = Some(ca.clone());
                })
            }),
            ("store.postgres.cert_file: required with key_file", {
                let key = key.clone();
                with(&move |p| {
                    p.sslmode = SslMode::Require;
                    p.key_file = Some(key.clone());
                })
            }),
            ("store.postgres.ca_file: ", {
                // A key where the CA certificate should be.
                let key = key.clone();
                with(&move |p| {
                    p.sslmode = SslMode::VerifyFull;
                    p.ca_file = Some(key.clone());
                })
            }),
            ("store.postgres.key_file: ", {
                let ca = ca.clone();
                with(&move |p| {
                    p.sslmode = SslMode::Require;
                    p.cert_file = Some(ca.clone());
                    p.key_file = Some(ca.clone());
                })
            }),
            ("store.postgres.sslmode: is disable, yet ca_file", {
                let ca = ca.clone();
                with(&move |p| p.ca_file = Some(ca.clone()))
            }),
            ("store.postgres: set while store.backend is sqlite", {
                let mut c = pg("postgres://u@h/d");
                c.store.backend = StoreBackend::Sqlite;
                c
            }),
        ];
        for (want, cfg) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config field {want}")),
                "{e:?} does not start with {want:?}"
            );
            assert!(!e.contains("hunter2"), "the password is printed: {e}");
        }
        // A missing file is named.
        let e = with(&|p| p.password_file = Some("/nonexistent/pw".into()))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/pw: no such file"), "{e}");
        let e = with(&|p| {
            p.sslmode = SslMode::VerifyFull;
            p.ca_file = Some(key.clone());
        })
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("{}: no CERTIFICATE block", key.display())),
            "{e}"
        );
        let e = with(&|p| {
            p.sslmode = SslMode::Require;
            p.cert_file = Some(ca.clone());
            p.key_file = Some(ca.clone());
        })
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn postgres_env_overrides() {
        let mut cfg = Config::default();
        cfg.apply_env(&env(&[
            (ENV_STORE_BACKEND, "postgres"),
            (ENV_STORE_POSTGRES_URL, "postgres://hp@db/hp"),
            (ENV_STORE_POSTGRES_PASSWORD_FILE, "/run/secrets/pg"),
        ]))
        .unwrap();
        assert_eq!(cfg.store.backend, StoreBackend::Postgres);
        let pg = cfg.store.postgres.clone().unwrap();
        assert_eq!(pg.url, "postgres://hp@db/hp");
        assert_eq!(pg.password_file, Some(PathBuf::from("/run/secrets/pg")));
        assert_eq!(pg.pool, DEFAULT_PG_POOL, "the rest keeps its defaults");
        // Over a file's section: only what the variables name changes.
        let mut cfg = Config::from_yaml(
            "store:\n  backend: postgres\n  postgres:\n    url: postgres://a@b/c\n    sslmode: require\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        cfg.apply_env(&env(&[(ENV_STORE_POSTGRES_URL, "postgres://x@y/z")]))
            .unwrap();
        let pg = cfg.store.postgres.clone().unwrap();
        assert_eq!(
            (pg.url.as_str(), pg.sslmode),
            ("postgres://x@y/z", SslMode::Require)
        );
        cfg.apply_env(&env(&[(ENV_STORE_BACKEND, "sqlite")])).unwrap();
        assert_eq!(cfg.store.backend, StoreBackend::Sqlite);
        for (pairs, want) in [
            (
                &[(ENV_STORE_BACKEND, "oracle")][..],
                "HOSTPLANE_STORE_BACKEND=\"oracle\": unknown store backend \"oracle\"",
            ),
            (
                &[(ENV_STORE_POSTGRES_URL, "")][..],
                "HOSTPLANE_STORE_POSTGRES_URL=\"\": must not be empty",
            ),
            (
                &[(ENV_STORE_POSTGRES_PASSWORD_FILE, "")][..],
                "HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE=\"\": must not be empty",
            ),
        ] {
            let e = Config::default().apply_env(&env(pairs)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("environment variable {want}")),
                "{e:?} does not start with {want:?}"
            );
        }
    }

    #[test]
    fn a_postgres_config_survives_a_yaml_round_trip() {
        let mut cfg = Config::default();
        cfg.store.backend = StoreBackend::Postgres;
        cfg.store.postgres = Some(PostgresConfig {
            url: "postgres://u@h/d".into(),
            sslmode: SslMode::VerifyCa,
            ca_file: Some("/etc/ca.crt".into()),
            ..Default::default()
        });
        let yaml = serde_norway::to_string(&cfg).unwrap();
        assert!(yaml.contains("sslmode: verify-ca"), "{yaml}");
        assert_eq!(Config::from_yaml(&yaml, Path::new("c.yaml")).unwrap(), cfg);
        let sqlite = serde_norway::to_string(&Config::default()).unwrap();
        assert!(!sqlite.contains("postgres:"), "{sqlite}");
    }

    #[test]
    fn tls_section_and_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let yaml = format!(
            "tls:\n  cert_file: {0}/server.crt\n  key_file: {0}/server.key\n  client_ca_file: {0}/ca.crt\n",
            d.display()
        );
        let cfg = Config::from_yaml(&yaml, Path::new("c.yaml")).unwrap();
        let tls = cfg.tls.clone().unwrap();
        assert_eq!(tls.cert_file, d.join("server.crt"));
        assert!(!tls.client_auth_optional);
        // Files missing: the key names the file.
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with("tls.cert_file ") && e.contains("server.crt"), "{e}");
        // A key where the certificate should be.
        std::fs::write(
            d.join("server.crt"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        // A missing field of the section.
        let e = Config::from_yaml("tls:\n  cert_file: /a\n", Path::new("c.yaml")).unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
        // Both tls and insecure: ambiguous.
        let both = Config {
            insecure: true,
            ..cfg.clone()
        };
        let e = both.validate().unwrap_err().to_string();
        assert!(e.starts_with("config field insecure:"), "{e}");
        // HOSTPLANE_INSECURE.
        let mut c = Config::default();
        c.apply_env(&env(&[(ENV_INSECURE, "true")])).unwrap();
        assert!(c.insecure);
        c.apply_env(&env(&[(ENV_INSECURE, "0")])).unwrap();
        assert!(!c.insecure);
        let e = c
            .apply_env(&env(&[(ENV_INSECURE, "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOSTPLANE_INSECURE=\"maybe\""), "{e}");
    }
}
