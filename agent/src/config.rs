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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This host's Node name; empty means the host name (`<procfs_root>/sys/kernel/hostname`).
    pub node_name: String,
    /// Coordinator agent-stream URL. `http://` is plaintext (logged as insecure);
    /// `https://` is reserved for mTLS, which this build does not have yet.
    pub coordinator: String,
    /// Journal and last applied desired state live here.
    pub state_dir: PathBuf,
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
            coordinator: "http://127.0.0.1:50051".to_string(),
            state_dir: PathBuf::from("/var/lib/hostplane-agent"),
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
        set_path("HOSTPLANE_STATE_DIR", &mut self.state_dir);
        set_path("HOSTPLANE_DEV_ROOT", &mut self.dev_root);
        set_path("HOSTPLANE_PROCFS_ROOT", &mut self.procfs_root);
        set_path("HOSTPLANE_CACHE_DIR", &mut self.cache.dir);
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
            ..FlashConfig::default()
        }
    }

    /// The network manager's settings.
    pub fn net_config(&self) -> NetConfig {
        self.network.clone()
    }

    /// True when the coordinator connection is plaintext.
    pub fn is_insecure(&self) -> bool {
        self.coordinator.starts_with("http://")
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
        Some("http") => {}
        // mTLS lands with its own change (client certificate = node identity);
        // until then an https URL would silently fail to connect.
        Some("https") => {
            return Err(format!(
                "{url:?}: TLS is not supported by this agent build yet; use http:// on a trusted network"
            ));
        }
        Some(other) => return Err(format!("{url:?}: unsupported scheme {other:?}; expected http")),
        None => return Err(format!("{url:?}: missing scheme; expected http://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: missing host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{url:?}: must not have a path"));
    }
    Ok(())
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
            "node_name: n1\ncoordinator: http://10.0.0.1:50051\nstate_dir: /s\n\
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
        let cases: [(&str, Mutate); 18] = [
            ("node_name", |c| c.node_name.clear()),
            ("node_name", |c| c.node_name = "a b".into()),
            ("coordinator", |c| c.coordinator = "not a url".into()),
            ("coordinator", |c| c.coordinator = "ftp://x:1".into()),
            ("coordinator", |c| c.coordinator = "https://x:1".into()),
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
        std::fs::write(&file, format!("procfs_root: {}\n", proc.display())).unwrap();

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
}
