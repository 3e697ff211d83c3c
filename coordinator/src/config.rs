//! The coordinator's configuration: a YAML file (`/etc/hostplane/coordinator.yaml`
//! by default), then environment overrides, then command-line flags (applied by
//! the binary). Unknown fields are refused so a typo is not silently ignored.
//!
//! ```yaml
//! listen: 0.0.0.0:50051
//! store:
//!   path: /var/lib/hostplane-coordinator/coordinator.db
//!   history:               # watch history: the last 50,000 revisions, and
//!     min_revisions: 50000 # everything younger than 5m, at most 1,000,000
//!     min_age: 5m
//!     max_revisions: 1000000
//! fsm:
//!   resync: 60s
//! agents:
//!   lease: 15s
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
//! ```
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsm::FsmConfig;
use crate::power::PowerConfig;
use crate::stream::StreamConfig;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostplane/coordinator.yaml";
pub const DEFAULT_STORE_PATH: &str = "/var/lib/hostplane-coordinator/coordinator.db";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";

/// Environment variables read by [`Config::apply_env`].
pub const ENV_LISTEN: &str = "HOSTPLANE_LISTEN";
pub const ENV_STORE_PATH: &str = "HOSTPLANE_STORE_PATH";
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file; its directory is created if missing.
    pub path: PathBuf,
    /// Watch history kept for `Watch(from_version)`, watchers that fell
    /// behind, and paged List snapshots.
    pub history: crate::store::HistoryConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from(DEFAULT_STORE_PATH),
            history: Default::default(),
        }
    }
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

    /// `HOSTPLANE_LISTEN`, `HOSTPLANE_STORE_PATH`, `HOSTPLANE_LOG`, `HOSTPLANE_LOG_FORMAT`.
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
        if self.store.path.as_os_str().is_empty() {
            return invalid("store.path", "required");
        }
        if self.store.path.is_dir() {
            return invalid("store.path", "is a directory; name the database file");
        }
        if self.store.history.min_revisions == 0 {
            return invalid("store.history.min_revisions", "must be at least 1");
        }
        if self.store.history.max_revisions < self.store.history.min_revisions {
            return invalid(
                "store.history.max_revisions",
                "must be at least store.history.min_revisions",
            );
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
