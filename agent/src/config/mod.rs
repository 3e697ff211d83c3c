//! The agent's configuration root: YAML at `/etc/hostplane/agent.yaml` (or
//! `--config`), then `HOSTPLANE_*` environment overrides read through [`Env`],
//! then [`Config::validate`]. Errors name the field (or the variable) that is
//! wrong.
//!
//! Each subsystem owns its section, defining and checking it: `cache:`
//! ([`CacheConfig`]), `session:` ([`SessionConfig`]), the coordinator
//! connection — `coordinator`, `insecure`, `tls:` ([`TlsConfig`], checked by
//! [`crate::session::validate_connection`]) — `flash:` ([`FlashSettings`]),
//! `network:` ([`NetConfig`]), `power:`
//! ([`crate::power::sampler::PowerConfig`]) and `nic_firmware:`
//! ([`crate::nicfw::NicFwConfig`]). This root only assembles them,
//! applies the environment overrides, re-roots the host paths under
//! `host_root`, checks its own keys and calls each section's `validate`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bfb_cache::CacheConfig;
use crate::flash::FlashConfig;
pub use crate::flash::FlashSettings;
use crate::net::NetConfig;
use crate::session::ConnectionConfigError;
pub use crate::session::{CoordinatorUrls, LoadedTls, SessionConfig, TlsConfig};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostplane/agent.yaml";

pub use hostplane_common::env::{Env, MapEnv, ProcessEnv};
pub use hostplane_common::logging::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("invalid environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("node_name is not set and the host name cannot be read from {path}: {source}")]
    Hostname { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// One entry of a list-valued key (`coordinator[1]`).
    #[error("invalid config: {field}[{index}]: {reason}")]
    InvalidEntry {
        field: &'static str,
        index: usize,
        reason: String,
    },
    #[error("invalid config: {0}")]
    Tls(String),
}

impl From<ConnectionConfigError> for ConfigError {
    fn from(e: ConnectionConfigError) -> ConfigError {
        match e {
            ConnectionConfigError::Invalid { field, reason } => ConfigError::Invalid { field, reason },
            ConnectionConfigError::InvalidEntry { field, index, reason } => {
                ConfigError::InvalidEntry { field, index, reason }
            }
            ConnectionConfigError::File(e) => ConfigError::Tls(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This host's Node name; empty means the host name (`<procfs_root>/sys/kernel/hostname`).
    pub node_name: String,
    /// Coordinator agent-stream URL: `https://HOST:PORT` (mTLS, with `tls`), or
    /// `http://HOST:PORT` only with `insecure: true` (logged as a warning); or
    /// a list of such URLs, one per replica (the agent rotates through them).
    pub coordinator: CoordinatorUrls,
    /// mTLS to the coordinator: the CA that signed its certificate, and this
    /// node's client certificate (subject CN = `node_name`) and key.
    pub tls: Option<TlsConfig>,
    /// Allow a plain `http://` coordinator: no encryption, no identity (a
    /// trusted network or a test only).
    pub insecure: bool,
    /// Journal and last applied desired state live here.
    pub state_dir: PathBuf,
    /// Where the host's filesystem is (`/`; `/host` in a container that
    /// mounts the host there; a fixture tree in tests). Every host path —
    /// `dev_root`, `procfs_root`, `network.sysfs_root`, `power.sysfs_root`
    /// and the flash locks' `/run/hostplane` — is taken under it, so this one
    /// setting re-roots every host facet. `state_dir` and `cache.dir` are the
    /// agent's own and are not re-rooted.
    pub host_root: PathBuf,
    /// What the config used that is deprecated (logged at start, printed
    /// by `validate`); not a config key.
    #[serde(skip)]
    pub deprecated: Vec<String>,
    /// Where `rshim<N>/` devices appear.
    pub dev_root: PathBuf,
    /// Hot-plug: watch `dev_root` and re-send the inventory when rshim
    /// devices come or go ([`crate::rshim::RshimWatchConfig`]).
    pub rshim_watch: crate::rshim::RshimWatchConfig,
    /// Where `sys/kernel/random/boot_id` and `sys/kernel/hostname` are read.
    pub procfs_root: PathBuf,
    pub cache: CacheConfig,
    pub session: SessionConfig,
    pub flash: FlashSettings,
    pub network: NetConfig,
    /// The Prometheus endpoint (`metrics.listen`; off when unset).
    pub metrics: crate::metrics::MetricsConfig,
    /// Local power telemetry (RAPL, hwmon) sampled onto `/metrics`.
    pub power: crate::power::sampler::PowerConfig,
    /// NIC firmware parameters (ConfigFwParameters): mstconfig, devlink.
    pub nic_firmware: crate::nicfw::NicFwConfig,
    /// Run for `reboot_host` commands (`reboot_method: agent`).
    pub reboot_command: Vec<String>,
    pub log_format: LogFormat,
    /// How long running commands get to stop after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            coordinator: "https://127.0.0.1:50051".into(),
            tls: None,
            insecure: false,
            state_dir: PathBuf::from("/var/lib/hostplane-agent"),
            host_root: PathBuf::from("/"),
            deprecated: Vec::new(),
            dev_root: PathBuf::from("/dev"),
            rshim_watch: Default::default(),
            procfs_root: PathBuf::from("/proc"),
            cache: CacheConfig::default(),
            session: SessionConfig::default(),
            flash: FlashSettings::default(),
            network: NetConfig::default(),
            metrics: Default::default(),
            power: Default::default(),
            nic_firmware: Default::default(),
            reboot_command: vec!["systemctl".to_string(), "reboot".to_string()],
            log_format: LogFormat::Plain,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Parse YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        // An empty file is the all-defaults config.
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_path_buf(),
            source,
        })
    }

    /// Load the config the daemon runs with: the file (`path`, or the default
    /// path when it exists), env overrides, the host name when `node_name` is
    /// empty, then [`Config::validate`]. Blocking (small file reads): call it
    /// before the runtime starts or from `spawn_blocking`.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Config::from_yaml(&read(p)?, p)?,
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(p) {
                    Ok(text) => Config::from_yaml(&text, p)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: p.to_path_buf(),
                            source,
                        });
                    }
                }
            }
        };
        cfg.apply_env(env)?;
        cfg.reroot()?;
        if cfg.node_name.is_empty() {
            let path = cfg.procfs_root.join("sys/kernel/hostname");
            let name = std::fs::read_to_string(&path).map_err(|source| ConfigError::Hostname {
                path: path.clone(),
                source,
            })?;
            cfg.node_name = name.trim().to_string();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Apply `HOSTPLANE_*` overrides.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let set_path = |var: &'static str, field: &mut PathBuf| {
            if let Some(v) = env.get(var) {
                *field = PathBuf::from(v);
            }
        };
        if let Some(v) = env.get("HOSTPLANE_NODE_NAME") {
            self.node_name = v;
        }
        if let Some(v) = env.get("HOSTPLANE_COORDINATOR") {
            self.coordinator = CoordinatorUrls::parse_list(&v);
        }
        if let Some(v) = env.get("HOSTPLANE_INSECURE") {
            self.insecure = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "" | "0" | "false" | "no" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "HOSTPLANE_INSECURE",
                        value: v.clone(),
                        reason: "expected 1/true/yes or 0/false/no".into(),
                    });
                }
            };
        }
        set_path("HOSTPLANE_STATE_DIR", &mut self.state_dir);
        set_path("HOSTPLANE_DEV_ROOT", &mut self.dev_root);
        set_path("HOSTPLANE_PROCFS_ROOT", &mut self.procfs_root);
        set_path("HOSTPLANE_CACHE_DIR", &mut self.cache.dir);
        set_path("HOSTPLANE_HOST_ROOT", &mut self.host_root);
        if env.get("HOSTPLANE_SYSFS_ROOT").is_some() {
            // Kept for one release: it only ever re-rooted networking.
            self.deprecated.push(
                "HOSTPLANE_SYSFS_ROOT is deprecated and re-roots network.sysfs_root only; \
                 set HOSTPLANE_HOST_ROOT (every host path: /sys, /dev, /proc, /run) or network.sysfs_root"
                    .into(),
            );
        }
        set_path("HOSTPLANE_SYSFS_ROOT", &mut self.network.sysfs_root);
        if let Some(v) = env.get("HOSTPLANE_CACHE_MAX_BYTES") {
            self.cache.max_bytes = v.parse().map_err(|e: std::num::ParseIntError| ConfigError::Env {
                var: "HOSTPLANE_CACHE_MAX_BYTES",
                value: v.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Some(v) = env.get("HOSTPLANE_LOG_FORMAT") {
            self.log_format = v.parse().map_err(|reason| ConfigError::Env {
                var: "HOSTPLANE_LOG_FORMAT",
                value: v.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// Take every host path under `host_root` (nothing changes when it is
    /// `/`). Called once, by [`Config::load`], after the env overrides.
    pub fn reroot(&mut self) -> Result<(), ConfigError> {
        if !self.host_root.is_absolute() {
            return Err(ConfigError::Invalid {
                field: "host_root",
                reason: format!("{} must be an absolute path", self.host_root.display()),
            });
        }
        for p in [
            &mut self.dev_root,
            &mut self.procfs_root,
            &mut self.network.sysfs_root,
            &mut self.power.sysfs_root,
        ] {
            *p = under(&self.host_root, p);
        }
        Ok(())
    }

    /// Cross-field and range checks; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.node_name.is_empty() {
            return invalid("node_name", "must not be empty".into());
        }
        if self.node_name.len() > 253
            || self
                .node_name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return invalid(
                "node_name",
                format!(
                    "{:?} is not a host name (at most 253 characters, no spaces)",
                    self.node_name
                ),
            );
        }
        crate::session::validate_coordinators(
            &self.coordinator,
            self.insecure,
            self.tls.as_ref(),
            &self.node_name,
        )?;
        for (field, path) in [
            ("state_dir", &self.state_dir),
            ("dev_root", &self.dev_root),
            ("procfs_root", &self.procfs_root),
        ] {
            if !path.is_absolute() {
                return invalid(field, format!("{} must be an absolute path", path.display()));
            }
        }
        // Each section checks itself; the root only adds what spans sections.
        let sections = [
            self.cache.validate(),
            self.session.validate(),
            self.flash.validate(),
            self.rshim_watch.validate(),
            self.network.validate(),
            self.power.validate(),
            self.nic_firmware.validate(),
        ];
        for r in sections {
            if let Err((field, reason)) = r {
                return invalid(field, reason);
            }
        }
        match self.reboot_command.first() {
            None => return invalid("reboot_command", "must name a program".into()),
            Some(p) if p.trim().is_empty() => {
                return invalid("reboot_command", "the program (first element) is empty".into());
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The flash engine's settings.
    pub fn flash_config(&self) -> FlashConfig {
        FlashConfig {
            dev_root: self.dev_root.clone(),
            stage_timeouts: self.flash.stage_timeouts,
            poll_interval: self.flash.poll_interval,
            run_dir: under(&self.host_root, Path::new(crate::flash::DEFAULT_RUN_DIR)),
            ..FlashConfig::default()
        }
    }

    /// The network manager's settings.
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            owned_file: Some(self.state_dir.join(crate::net::OWNED_FILE)),
            ..self.network.clone()
        }
    }

    /// True when the coordinator connection is plaintext.
    pub fn is_insecure(&self) -> bool {
        self.coordinator.is_plaintext()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `path` (a host path) under `root`: `/dev` under `/host` is `/host/dev`;
/// under `/` every path is itself.
fn under(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) if root != Path::new("/") => root.join(rel),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
