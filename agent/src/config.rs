//! The agent's configuration: YAML at `/etc/hostplane/agent.yaml` (or
//! `--config`), then `HOSTPLANE_*` environment overrides read through [`Env`],
//! then [`Config::validate`]. Errors name the field (or the variable) that is
//! wrong.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bfb_cache::CacheConfig;
use crate::flash::{FlashConfig, StageTimeouts};
use crate::net::NetConfig;

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
    #[error("invalid config: {0}")]
    Tls(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This host's Node name; empty means the host name (`<procfs_root>/sys/kernel/hostname`).
    pub node_name: String,
    /// Coordinator agent-stream URL: `https://HOST:PORT` (mTLS, with `tls`), or
    /// `http://HOST:PORT` only with `insecure: true` (logged as a warning).
    pub coordinator: String,
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
    /// Run for `reboot_host` commands (`reboot_method: agent`).
    pub reboot_command: Vec<String>,
    pub log_format: LogFormat,
    /// How long running commands get to stop after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// The agent's side of mTLS (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) the coordinator's server certificate must be signed by.
    pub ca_file: PathBuf,
    /// This node's client certificate; its subject CN must be `node_name`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// [`TlsConfig`]'s files, read and checked.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsConfig {
    /// Read and check the files; errors name the key and the path.
    pub fn load(&self) -> Result<LoadedTls, ConfigError> {
        use hostplane_common::tls::{load_certs, load_key};
        let tls = |e: hostplane_common::tls::TlsFileError| ConfigError::Tls(e.to_string());
        Ok(LoadedTls {
            ca: load_certs("tls.ca_file", &self.ca_file).map_err(tls)?.pem,
            cert: load_certs("tls.cert_file", &self.cert_file).map_err(tls)?.pem,
            key: load_key("tls.key_file", &self.key_file).map_err(tls)?.pem,
        })
    }
}

/// The coordinator stream: reconnect backoff, keepalive, lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// First reconnect delay bound; it doubles per failed attempt (full jitter).
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval and ack timeout.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Lease assumed until the coordinator grants one (heartbeat every lease/3).
    #[serde(with = "humantime_serde")]
    pub default_lease: Duration,
}

/// Flash stage timeouts and the `misc` poll interval (the rest of
/// [`FlashConfig`] keeps its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlashSettings {
    pub stage_timeouts: StageTimeouts,
    /// How often the DPU log is read from `misc`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            coordinator: "https://127.0.0.1:50051".to_string(),
            tls: None,
            insecure: false,
            state_dir: PathBuf::from("/var/lib/hostplane-agent"),
            host_root: PathBuf::from("/"),
            deprecated: Vec::new(),
            dev_root: PathBuf::from("/dev"),
            procfs_root: PathBuf::from("/proc"),
            cache: CacheConfig::default(),
            session: SessionConfig::default(),
            flash: FlashSettings::default(),
            network: NetConfig::default(),
            metrics: Default::default(),
            power: Default::default(),
            reboot_command: vec!["systemctl".to_string(), "reboot".to_string()],
            log_format: LogFormat::Plain,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            default_lease: Duration::from_secs(15),
        }
    }
}

impl Default for FlashSettings {
    fn default() -> Self {
        let d = FlashConfig::default();
        FlashSettings {
            stage_timeouts: d.stage_timeouts,
            poll_interval: d.poll_interval,
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
            self.coordinator = v;
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
        if let Err(reason) = check_coordinator_url(&self.coordinator) {
            return invalid("coordinator", reason);
        }
        self.validate_tls()?;
        for (field, path) in [
            ("state_dir", &self.state_dir),
            ("dev_root", &self.dev_root),
            ("procfs_root", &self.procfs_root),
            ("cache.dir", &self.cache.dir),
            ("network.sysfs_root", &self.network.sysfs_root),
        ] {
            if !path.is_absolute() {
                return invalid(field, format!("{} must be an absolute path", path.display()));
            }
        }
        if self.cache.max_bytes == 0 {
            return invalid("cache.max_bytes", "must be greater than 0".into());
        }
        if self.cache.max_attempts == 0 {
            return invalid("cache.max_attempts", "must be at least 1".into());
        }
        let s = &self.session;
        let t = &self.flash.stage_timeouts;
        for (field, d) in [
            ("session.backoff_initial", s.backoff_initial),
            ("session.connect_timeout", s.connect_timeout),
            ("session.keepalive_interval", s.keepalive_interval),
            ("session.keepalive_timeout", s.keepalive_timeout),
            ("cache.retry_backoff", self.cache.retry_backoff),
            ("cache.connect_timeout", self.cache.connect_timeout),
            ("cache.stall_timeout", self.cache.stall_timeout),
            ("flash.stage_timeouts.push_stall", t.push_stall),
            ("flash.stage_timeouts.boot", t.boot),
            ("flash.stage_timeouts.installer", t.installer),
            ("flash.stage_timeouts.install", t.install),
            ("flash.stage_timeouts.linux_up", t.linux_up),
            ("flash.poll_interval", self.flash.poll_interval),
        ] {
            if d.is_zero() {
                return invalid(field, "must be greater than 0".into());
            }
        }
        if s.backoff_max < s.backoff_initial {
            return invalid(
                "session.backoff_max",
                format!(
                    "{:?} is shorter than session.backoff_initial ({:?})",
                    s.backoff_max, s.backoff_initial
                ),
            );
        }
        if let Err((field, reason)) = self.power.bmc.validate() {
            return invalid(field, reason);
        }
        let p = &self.power;
        if p.interval < Duration::from_millis(100) {
            return invalid(
                "power.interval",
                format!("{:?} is too short: sample at most every 100ms", p.interval),
            );
        }
        for (field, d) in [
            ("power.telemetry.batch_interval", p.telemetry.batch_interval),
            ("power.caps.reverify_interval", p.caps.reverify_interval),
            ("power.caps.default_lease", p.caps.default_lease),
        ] {
            if d.is_zero() {
                return invalid(field, "must be greater than 0".into());
            }
        }
        for (field, n) in [
            ("power.telemetry.buffer_samples", p.telemetry.buffer_samples),
            ("power.telemetry.max_batch", p.telemetry.max_batch),
        ] {
            if n == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        if s.default_lease < Duration::from_secs(1) {
            return invalid("session.default_lease", "must be at least 1s".into());
        }
        if let Some(ns) = &self.network.netns
            && (ns.is_empty() || ns == "." || ns == ".." || ns.contains(['/', '\0']) || ns.len() > 255)
        {
            return invalid(
                "network.netns",
                format!("{ns:?} is not a network namespace name (a file name under /run/netns)"),
            );
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
        self.coordinator.starts_with("http://")
    }

    /// `https://` needs `tls` (its files readable and valid); `http://` needs
    /// `insecure: true`.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.is_insecure() {
            if !self.insecure {
                return invalid(
                    "coordinator",
                    format!(
                        "{:?} is plain http: the agent talks mTLS unless told otherwise; use \
                         https:// with a `tls:` section (ca_file, cert_file, key_file; see \
                         docs/operations.md, Certificates), or set `insecure: true` \
                         (HOSTPLANE_INSECURE=1) on a trusted network",
                        self.coordinator
                    ),
                );
            }
            if self.tls.is_some() {
                return invalid(
                    "tls",
                    "set, but coordinator is http://; use https:// or remove tls".into(),
                );
            }
            return Ok(());
        }
        let Some(t) = &self.tls else {
            return invalid(
                "tls",
                format!(
                    "required for {:?}: set tls.ca_file, tls.cert_file and tls.key_file (this node's \
                     certificate, CN = {:?}; `hostplanectl certs agent --node {}` makes one)",
                    self.coordinator, self.node_name, self.node_name
                ),
            );
        };
        for (field, p) in [
            ("tls.ca_file", &t.ca_file),
            ("tls.cert_file", &t.cert_file),
            ("tls.key_file", &t.key_file),
        ] {
            if !p.is_absolute() {
                return invalid(field, format!("{:?} must be an absolute path", p.display()));
            }
        }
        let files = t.load()?;
        if let Some(name) = hostplane_common::tls::pem_cert_name(&files.cert)
            && name != self.node_name
        {
            return invalid(
                "tls.cert_file",
                format!(
                    "{} was issued to {name:?}, not to this node ({:?}); the coordinator would refuse it",
                    t.cert_file.display(),
                    self.node_name
                ),
            );
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_coordinator_url(url: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "{url:?}: unsupported scheme {other:?}; expected https or http"
            ));
        }
        None => return Err(format!("{url:?}: missing scheme; expected https://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: missing host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{url:?}: must not have a path"));
    }
    Ok(())
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
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, Path::new("test.yaml"))
    }

    fn valid() -> Config {
        Config {
            node_name: "host-1".into(),
            coordinator: "http://127.0.0.1:50051".into(),
            insecure: true,
            ..Config::default()
        }
    }

    #[test]
    fn empty_yaml_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn yaml_sets_fields_and_keeps_defaults() {
        let cfg = parse(
            "node_name: n1\ncoordinator: http://10.0.0.1:50051\ninsecure: true\nstate_dir: /s\n\
             session:\n  backoff_max: 5s\nflash:\n  poll_interval: 250ms\n  stage_timeouts:\n    install: 2h\n\
             reboot_command: [/sbin/reboot, -f]\nlog_format: json\nshutdown_grace: 3s\n\
             network:\n  netns: lab1\n  sysfs_root: /fake/sys\n  drift_debounce: 20ms\n",
        )
        .unwrap();
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.coordinator, "http://10.0.0.1:50051");
        assert_eq!(cfg.state_dir, Path::new("/s"));
        assert_eq!(cfg.session.backoff_max, Duration::from_secs(5));
        assert_eq!(cfg.session.backoff_initial, Duration::from_millis(500));
        assert_eq!(cfg.flash.poll_interval, Duration::from_millis(250));
        assert_eq!(cfg.flash.stage_timeouts.install, Duration::from_secs(7200));
        assert_eq!(cfg.flash.stage_timeouts.boot, StageTimeouts::default().boot);
        let fc = cfg.flash_config();
        assert_eq!(
            (fc.dev_root.as_path(), fc.poll_interval),
            (Path::new("/dev"), Duration::from_millis(250))
        );
        assert_eq!(fc.stage_timeouts, cfg.flash.stage_timeouts);
        assert_eq!(cfg.reboot_command, ["/sbin/reboot", "-f"]);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(3));
        assert_eq!(cfg.dev_root, Path::new("/dev"));
        assert!(cfg.network.enabled, "enabled by default");
        let nc = cfg.net_config();
        assert_eq!(nc.netns.as_deref(), Some("lab1"));
        assert_eq!(nc.sysfs_root, Path::new("/fake/sys"));
        assert_eq!(nc.drift_debounce, Duration::from_millis(20));
        cfg.validate().unwrap();
        let off = parse("network:\n  enabled: false\n").unwrap();
        assert!(!off.network.enabled);
        assert_eq!(
            off.net_config(),
            NetConfig {
                enabled: false,
                // The address record lives under the state directory.
                owned_file: Some(off.state_dir.join(crate::net::OWNED_FILE)),
                ..NetConfig::default()
            }
        );
        let err = parse("network:\n  netnss: x\n").unwrap_err();
        assert!(err.to_string().contains("netnss"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = parse("node_name: n1\ncoordinatr: http://x:1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("coordinatr") && msg.contains("test.yaml"), "{msg}");
        let err = parse("session:\n  backof_max: 1s\n").unwrap_err();
        assert!(err.to_string().contains("backof_max"), "{err}");
    }

    #[test]
    fn env_overrides_the_file() {
        let mut cfg = parse("node_name: from-file\nstate_dir: /file\n").unwrap();
        let env = MapEnv::new([
            ("HOSTPLANE_NODE_NAME", "from-env"),
            ("HOSTPLANE_COORDINATOR", "http://c:1"),
            ("HOSTPLANE_STATE_DIR", "/env"),
            ("HOSTPLANE_DEV_ROOT", "/d"),
            ("HOSTPLANE_PROCFS_ROOT", "/p"),
            ("HOSTPLANE_CACHE_DIR", "/c"),
            ("HOSTPLANE_SYSFS_ROOT", "/s"),
            ("HOSTPLANE_CACHE_MAX_BYTES", "1024"),
            ("HOSTPLANE_LOG_FORMAT", "json"),
        ]);
        cfg.apply_env(&env).unwrap();
        assert_eq!(cfg.node_name, "from-env");
        assert_eq!(cfg.coordinator, "http://c:1");
        assert_eq!(cfg.state_dir, Path::new("/env"));
        assert_eq!(cfg.dev_root, Path::new("/d"));
        assert_eq!(cfg.procfs_root, Path::new("/p"));
        assert_eq!(cfg.cache.dir, Path::new("/c"));
        assert_eq!(cfg.network.sysfs_root, Path::new("/s"));
        assert_eq!(cfg.cache.max_bytes, 1024);
        assert_eq!(cfg.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        for (var, value) in [
            ("HOSTPLANE_CACHE_MAX_BYTES", "lots"),
            ("HOSTPLANE_LOG_FORMAT", "xml"),
        ] {
            let err = Config::default()
                .apply_env(&MapEnv::new([(var, value)]))
                .unwrap_err();
            assert!(
                matches!(err, ConfigError::Env { var: v, .. } if v == var),
                "{err}"
            );
            assert!(err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn validate_names_the_field() {
        type Mutate = fn(&mut Config);
        let cases: [(&str, Mutate); 27] = [
            ("node_name", |c| c.node_name.clear()),
            ("node_name", |c| c.node_name = "a b".into()),
            ("coordinator", |c| c.coordinator = "not a url".into()),
            ("coordinator", |c| c.coordinator = "ftp://x:1".into()),
            ("tls", |c| c.coordinator = "https://x:1".into()),
            ("coordinator", |c| c.insecure = false),
            ("tls", |c| {
                c.tls = Some(TlsConfig {
                    ca_file: "/ca".into(),
                    cert_file: "/c".into(),
                    key_file: "/k".into(),
                })
            }),
            ("coordinator", |c| c.coordinator = "http://x:1/api".into()),
            ("state_dir", |c| c.state_dir = "relative".into()),
            ("cache.dir", |c| c.cache.dir = "cache".into()),
            ("cache.max_bytes", |c| c.cache.max_bytes = 0),
            ("session.backoff_max", |c| {
                c.session.backoff_max = Duration::from_millis(100)
            }),
            ("session.default_lease", |c| {
                c.session.default_lease = Duration::from_millis(100)
            }),
            ("flash.poll_interval", |c| c.flash.poll_interval = Duration::ZERO),
            ("flash.stage_timeouts.boot", |c| {
                c.flash.stage_timeouts.boot = Duration::ZERO
            }),
            ("cache.max_attempts", |c| c.cache.max_attempts = 0),
            ("reboot_command", |c| c.reboot_command.clear()),
            ("network.sysfs_root", |c| c.network.sysfs_root = "sys".into()),
            ("network.netns", |c| c.network.netns = Some("a/b".into())),
            ("network.netns", |c| c.network.netns = Some(String::new())),
            ("power.interval", |c| c.power.interval = Duration::ZERO),
            ("power.interval", |c| c.power.interval = Duration::from_millis(99)),
            ("power.telemetry.batch_interval", |c| {
                c.power.telemetry.batch_interval = Duration::ZERO
            }),
            ("power.caps.reverify_interval", |c| {
                c.power.caps.reverify_interval = Duration::ZERO
            }),
            ("power.caps.default_lease", |c| {
                c.power.caps.default_lease = Duration::ZERO
            }),
            ("power.telemetry.buffer_samples", |c| {
                c.power.telemetry.buffer_samples = 0
            }),
            ("power.telemetry.max_batch", |c| c.power.telemetry.max_batch = 0),
        ];
        for (field, mutate) in cases {
            let mut cfg = valid();
            mutate(&mut cfg);
            match cfg.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected an error, got {other:?}"),
            }
        }
        valid().validate().unwrap();
    }

    #[test]
    fn load_reads_file_env_and_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::write(proc.join("sys/kernel/hostname"), "gpu-node-7\n").unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            format!(
                "procfs_root: {}\ncoordinator: http://127.0.0.1:50051\ninsecure: true\n",
                proc.display()
            ),
        )
        .unwrap();

        let cfg = Config::load(Some(&file), &MapEnv::default()).unwrap();
        assert_eq!(cfg.node_name, "gpu-node-7");
        assert!(cfg.is_insecure());

        let env = MapEnv::new([("HOSTPLANE_NODE_NAME", "n2")]);
        assert_eq!(Config::load(Some(&file), &env).unwrap().node_name, "n2");

        let missing = dir.path().join("nope.yaml");
        let err = Config::load(Some(&missing), &MapEnv::default()).unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if path == &missing),
            "{err}"
        );

        std::fs::write(&file, "procfs_root: /nonexistent-procfs\n").unwrap();
        let err = Config::load(Some(&file), &MapEnv::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-procfs/sys/kernel/hostname"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_are_checked_and_must_name_this_node() {
        use hostplane_ctl::certs::{Ca, Leaf, Validity, write_pair};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca, ca_pair) = Ca::generate("test CA", Validity::days(1)).unwrap();
        write_pair(d, "ca", &ca_pair, false).unwrap();
        for node in ["host-1", "host-2"] {
            let leaf = Leaf::Agent { node: node.into() };
            write_pair(
                d,
                &leaf.file_stem(),
                &ca.issue(&leaf, Validity::days(1)).unwrap(),
                false,
            )
            .unwrap();
        }
        let yaml = format!(
            "node_name: host-1\ncoordinator: https://coord:50051\ntls:\n  ca_file: {0}/ca.crt\n  \
             cert_file: {0}/agent-host-1.crt\n  key_file: {0}/agent-host-1.key\n",
            d.display()
        );
        let cfg = parse(&yaml).unwrap();
        cfg.validate().unwrap();
        assert!(!cfg.is_insecure());

        let mut other = cfg.clone();
        other.tls.as_mut().unwrap().cert_file = d.join("agent-host-2.crt");
        let e = other.validate().unwrap_err().to_string();
        assert!(
            e.contains("issued to \"host-2\", not to this node (\"host-1\")"),
            "{e}"
        );

        let mut missing = cfg.clone();
        missing.tls.as_mut().unwrap().key_file = d.join("nope.key");
        let e = missing.validate().unwrap_err().to_string();
        assert!(e.contains("tls.key_file") && e.contains("nope.key"), "{e}");

        let mut swapped = cfg.clone();
        swapped.tls.as_mut().unwrap().ca_file = d.join("agent-host-1.key");
        let e = swapped.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls.ca_file") && e.contains("no CERTIFICATE block"),
            "{e}"
        );

        let mut plain = cfg.clone();
        plain.coordinator = "http://coord:50051".into();
        let e = plain.validate().unwrap_err().to_string();
        assert!(e.contains("plain http") && e.contains("insecure: true"), "{e}");

        let mut env_insecure = Config { tls: None, ..plain };
        env_insecure
            .apply_env(&MapEnv::new([("HOSTPLANE_INSECURE", "1")]))
            .unwrap();
        env_insecure.validate().unwrap();
        let e = env_insecure
            .apply_env(&MapEnv::new([("HOSTPLANE_INSECURE", "sure")]))
            .unwrap_err();
        assert!(e.to_string().contains("HOSTPLANE_INSECURE"), "{e}");
    }
}
