//! The host's BMC over Redfish (DSP0266): the node's power and each GPU's,
//! the power limits the BMC enforces, and the host's power cycle
//! (`ComputerSystem.Reset` `PowerCycle`, [`RedfishClient::power_cycle`]).
//!
//! Everything is found through links from the service root — the node
//! chassis (the chassis of the first ComputerSystem, or `power.bmc.chassis`),
//! its `EnvironmentMetrics`, `Power` and `Controls`, and the GPU chassis it
//! `Contains`. Readings come from `EnvironmentMetrics.PowerWatts` (and
//! `EnergykWh`) when the chassis links it, else from the older
//! `Power.PowerControl[0].PowerConsumedWatts`; limits are set through the
//! chassis's Power `Control` when it has one, else by a `Power` PATCH, and
//! read back afterwards. At most one request is in flight per BMC, spaced by
//! `power.bmc.min_request_interval`, so the agent never loads the BMC.
//! The password lives in a file, is read at each login, and is never in the
//! config, a log line, an error or a `Debug` output.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{Method as ReadMethod, Reading, Scope};
use discover::{find_gpus, find_node, http_client, origin, warn_if_readable_by_others};

mod discover;
mod http;
mod limit;
pub mod parse;
pub mod poll;
mod reset;

pub use http::{RequestCounts, RequestOutcome};
pub use limit::BmcNodeLimiter;
pub use poll::BmcLink;
pub use reset::{BmcPowerCycle, POWER_CYCLE_POST_TIMEOUT, PowerCycleError, PowerCycled};

/// The `power.bmc` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BmcConfig {
    /// `https://bmc.example` (or `http://`); empty: no BMC (the default).
    pub url: String,
    pub username: String,
    /// A file holding the password (one trailing newline is ignored). The
    /// password is never written in the config itself.
    pub password_file: Option<PathBuf>,
    /// Accept any certificate (self-signed BMCs); logged as a warning.
    pub insecure_tls: bool,
    /// PEM file of the CA (or the certificate) the BMC's certificate chains to.
    pub ca_file: Option<PathBuf>,
    /// How often the sampler reads the BMC.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The least time between the end of one request and the start of the
    /// next (at most one is in flight): the client's limit on the BMC's load.
    #[serde(with = "humantime_serde")]
    pub min_request_interval: Duration,
    /// Per request, connect included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The Id of the node's chassis in the Chassis collection, when the
    /// chassis of the first ComputerSystem is not the one to read.
    pub chassis: Option<String>,
}

impl Default for BmcConfig {
    fn default() -> Self {
        BmcConfig {
            url: String::new(),
            username: String::new(),
            password_file: None,
            insecure_tls: false,
            ca_file: None,
            poll_interval: Duration::from_secs(5),
            min_request_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
            chassis: None,
        }
    }
}

impl BmcConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Check the section: the error names the key (`power.bmc.url`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field: &'static str, reason: String| Err((field, reason));
        if !self.enabled() {
            return Ok(());
        }
        if let Err(RedfishError::Config { field, reason }) = origin(&self.url) {
            return bad(field, reason);
        }
        if self.username.is_empty() {
            return bad("power.bmc.username", "must be set when power.bmc.url is".into());
        }
        if self.password_file.is_none() {
            return bad(
                "power.bmc.password_file",
                "must be set when power.bmc.url is (a file holding the BMC password)".into(),
            );
        }
        for (field, d) in [
            ("power.bmc.poll_interval", self.poll_interval),
            ("power.bmc.timeout", self.timeout),
            ("power.bmc.min_request_interval", self.min_request_interval),
        ] {
            if d.is_zero() {
                return bad(field, "must be greater than 0".into());
            }
        }
        if self
            .chassis
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.contains('/'))
        {
            return bad(
                "chassis",
                format!(
                    "{:?} is not a chassis Id (e.g. DGX)",
                    self.chassis.as_deref().unwrap_or("")
                ),
            );
        }
        Ok(())
    }
}

/// A secret (password, session token): shown as `<redacted>` by `Debug`,
/// with no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    /// `power.bmc` is not usable as given.
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// No answer: connection refused, TLS, timeout.
    #[error("{method} {url}: {reason}")]
    Unreachable {
        method: String,
        url: String,
        reason: String,
    },
    /// The BMC answered with an error status; `message` starts with it
    /// (`401 Unauthorized: Base.1.18.NoValidSession: ...`).
    #[error("{method} {url}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// A resource lacks what the client needs (`<url> has no Chassis link`).
    #[error("{url} {what}")]
    Resource { url: String, what: String },
    /// A property the client reads is missing or malformed
    /// (`<url> has no PowerWatts.Reading`).
    #[error("{url} {error}")]
    Parse { url: String, error: parse::ParseError },
    /// A request refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

/// One chassis the client reads: the node, or a GPU.
#[derive(Debug)]
struct Chassis {
    /// The chassis's `Id`: the `device` of its readings.
    id: String,
    /// Its `@odata.id`.
    path: String,
    environment: Option<String>,
    power: Option<String>,
    controls: Option<String>,
    /// The Power control among `controls`, found at first use.
    limit_control: OnceCell<Option<String>>,
}

impl Chassis {
    fn from_resource(path: &str, v: &Value) -> Chassis {
        Chassis {
            id: parse::text(v, "/Id")
                .unwrap_or_else(|| parse::last_segment(path))
                .to_string(),
            path: parse::odata_id(v).unwrap_or(path).to_string(),
            environment: parse::link(v, "/EnvironmentMetrics").map(String::from),
            power: parse::link(v, "/Power").map(String::from),
            controls: parse::link(v, "/Controls").map(String::from),
            limit_control: OnceCell::new(),
        }
    }
}

/// A connected BMC: its node chassis and GPU chassis, found at connect.
pub struct RedfishClient {
    t: http::Transport,
    node: Chassis,
    gpus: Vec<Chassis>,
    /// The first `EnergykWh` read per chassis: energy is reported since then.
    first_kwh: std::sync::Mutex<HashMap<String, super::EnergySince>>,
}

impl std::fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishClient")
            .field("url", &self.t.url(""))
            .field("auth", &self.t.auth_kind())
            .field("node", &self.node.id)
            .field("gpus", &self.gpus.iter().map(|g| &g.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RedfishClient {
    /// Read the service root, log in (a session, or Basic when the BMC has
    /// no SessionService), and find the node chassis and its GPU chassis.
    pub async fn connect(cfg: &BmcConfig) -> Result<RedfishClient, RedfishError> {
        Self::connect_counted(cfg, http::RequestCounts::default()).await
    }

    /// [`Self::connect`], counting every request in `counts` (`/metrics`).
    pub async fn connect_counted(
        cfg: &BmcConfig,
        counts: http::RequestCounts,
    ) -> Result<RedfishClient, RedfishError> {
        if !cfg.enabled() {
            return Err(RedfishError::Config {
                field: "power.bmc.url",
                reason: "is not set: there is no BMC to read".into(),
            });
        }
        cfg.validate()
            .map_err(|(field, reason)| RedfishError::Config { field, reason })?;
        let origin = origin(&cfg.url)?;
        let password_file = cfg.password_file.clone().unwrap_or_default();
        // Both read files (the password file's mode, the CA bundle, the
        // system's roots): a blocking thread, never an async worker.
        let client = {
            let (cfg, password_file) = (cfg.clone(), password_file.clone());
            tokio::task::spawn_blocking(move || {
                warn_if_readable_by_others(&password_file);
                http_client(&cfg)
            })
            .await
            .unwrap_or_else(|e| {
                Err(RedfishError::Config {
                    field: "power.bmc.url",
                    reason: format!("the thread setting up the HTTP client failed: {e}"),
                })
            })?
        };
        let t = http::Transport::new(
            client,
            origin,
            cfg.username.clone(),
            password_file,
            cfg.min_request_interval,
            cfg.timeout,
            counts,
        )?;
        let root = t.get_anonymous("/redfish/v1").await?;
        let root_url = t.url("/redfish/v1");
        let chassis_coll = parse::link(&root, "/Chassis").ok_or_else(|| RedfishError::Resource {
            url: root_url.clone(),
            what: "has no Chassis link: the BMC does not expose chassis power".into(),
        })?;
        let sessions = match parse::link(&root, "/Links/Sessions") {
            Some(s) => Some(s.to_string()),
            None => match parse::link(&root, "/SessionService") {
                // The sessions collection is linked from the SessionService;
                // reading that needs credentials: Basic until the session exists.
                Some(svc) => {
                    t.login(None).await?;
                    let v = t.call(Method::GET, svc, None).await?;
                    parse::link(&v, "/Sessions").map(String::from)
                }
                None => None,
            },
        };
        match t.login(sessions.clone()).await {
            Err(RedfishError::Status {
                status: 404 | 405 | 501,
                ref message,
                ..
            }) => {
                tracing::warn!(%message, "the BMC refused to create a session; using HTTP Basic auth");
                t.login(None).await?;
            }
            r => r?,
        }
        let client = async {
            let (node, node_resource) = find_node(&t, cfg, &root, chassis_coll).await?;
            let gpus = find_gpus(&t, &node_resource).await?;
            Ok::<_, RedfishError>((node, gpus))
        }
        .await;
        match client {
            Ok((node, gpus)) => Ok(RedfishClient {
                t,
                node,
                gpus,
                first_kwh: std::sync::Mutex::new(HashMap::new()),
            }),
            Err(e) => {
                t.logout().await;
                Err(e)
            }
        }
    }

    /// The node chassis's Id (the `device` of the node reading).
    pub fn node_device(&self) -> &str {
        &self.node.id
    }

    /// The GPU chassis's Ids (the `device` of the GPU readings).
    pub fn gpu_devices(&self) -> Vec<&str> {
        self.gpus.iter().map(|g| g.id.as_str()).collect()
    }

    /// `session` or `basic`.
    pub fn auth_kind(&self) -> &'static str {
        self.t.auth_kind()
    }

    /// The node's reading, then one per GPU. A chassis that cannot be read
    /// gives a reading with `error` set, never a 0.
    pub async fn sample(&self) -> Vec<Reading> {
        let mut out = Vec::with_capacity(1 + self.gpus.len());
        out.push(self.read(&self.node, Scope::Node).await);
        for g in &self.gpus {
            out.push(self.read(g, Scope::Gpu).await);
        }
        out
    }

    async fn read(&self, ch: &Chassis, scope: Scope) -> Reading {
        let mut r = Reading {
            source: "redfish",
            scope,
            device: ch.id.clone(),
            watts: None,
            energy_joules: None,
            method: ReadMethod::Measured,
            window: None,
            age: None,
            error: None,
        };
        let got = match (&ch.environment, &ch.power) {
            (Some(em), _) => self.get_with(em, parse::environment_power).await,
            (None, Some(p)) => self.get_with(p, parse::power_consumed).await.map(|w| (w, None)),
            (None, None) => Err(RedfishError::Resource {
                url: self.t.url(&ch.path),
                what: "has neither EnvironmentMetrics nor Power".into(),
            }),
        };
        match got {
            Ok((watts, kwh)) => {
                r.watts = Some(watts);
                r.energy_joules = kwh.map(|k| self.energy_since_first(&ch.id, k));
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        r
    }

    /// Joules counted since the first `EnergykWh` read of this chassis: the
    /// sum of its increases, so a counter that went back (a BMC reset) adds
    /// nothing for that read and counts on from its new value.
    fn energy_since_first(&self, id: &str, kwh: f64) -> f64 {
        let mut all = self.first_kwh.lock().unwrap_or_else(|p| p.into_inner());
        // mJ: EnergykWh carries at most a few decimals; 1 kWh = 3.6e9 mJ.
        let mj = (kwh.max(0.0) * 3.6e9).round() as u64;
        all.entry(id.to_string()).or_default().add(mj)
    }

    async fn get_with<T>(
        &self,
        path: &str,
        f: impl Fn(&Value) -> Result<T, parse::ParseError>,
    ) -> Result<T, RedfishError> {
        let v = self.t.call(Method::GET, path, None).await?;
        f(&v).map_err(|error| RedfishError::Parse {
            url: self.t.url(path),
            error,
        })
    }

    /// The node's power limit now (None: not limited).
    pub async fn node_limit(&self) -> Result<Option<f64>, RedfishError> {
        Ok(self.limit_of(&self.node).await?.watts)
    }

    /// The range a node limit may be set in, in watts.
    pub async fn node_limit_range(&self) -> Result<(f64, f64), RedfishError> {
        self.range_of(&self.node).await
    }

    /// Set the node's power limit (None lifts it) and return the limit the
    /// BMC reports afterwards.
    pub async fn set_node_limit(&self, watts: Option<f64>) -> Result<Option<f64>, RedfishError> {
        self.set_limit_of(&self.node, watts).await
    }

    pub async fn gpu_limit(&self, gpu_device: &str) -> Result<Option<f64>, RedfishError> {
        Ok(self.limit_of(self.gpu(gpu_device)?).await?.watts)
    }

    pub async fn gpu_limit_range(&self, gpu_device: &str) -> Result<(f64, f64), RedfishError> {
        self.range_of(self.gpu(gpu_device)?).await
    }

    /// Set a GPU's power limit through its chassis's Power control.
    pub async fn set_gpu_limit(
        &self,
        gpu_device: &str,
        watts: Option<f64>,
    ) -> Result<Option<f64>, RedfishError> {
        self.set_limit_of(self.gpu(gpu_device)?, watts).await
    }

    fn gpu(&self, id: &str) -> Result<&Chassis, RedfishError> {
        self.gpus.iter().find(|g| g.id == id).ok_or_else(|| {
            RedfishError::Invalid(format!(
                "the BMC at {} has no GPU chassis {id:?} (it has: {})",
                self.t.url(""),
                if self.gpus.is_empty() {
                    "none".into()
                } else {
                    self.gpu_devices().join(", ")
                }
            ))
        })
    }

    /// Delete the session (call before dropping the client).
    pub async fn logout(&self) {
        self.t.logout().await;
    }

    /// The chassis's Power control, found among its Controls at first use.
    async fn limit_control(&self, ch: &Chassis) -> Result<Option<String>, RedfishError> {
        let Some(controls) = &ch.controls else {
            return Ok(None);
        };
        ch.limit_control
            .get_or_try_init(|| async {
                let coll = self.t.call(Method::GET, controls, None).await?;
                let mut members = parse::links(&coll, "/Members");
                // The power limit is usually `Controls/PowerLimit`: try likely names first.
                members.sort_by_key(|m| !parse::last_segment(m).contains("Power"));
                for m in members {
                    let c = self.t.call(Method::GET, &m, None).await?;
                    if parse::text(&c, "/ControlType") == Some("Power") {
                        return Ok(Some(m));
                    }
                }
                Ok(None)
            })
            .await
            .cloned()
    }

    async fn limit_of(&self, ch: &Chassis) -> Result<parse::Limit, RedfishError> {
        if let Some(c) = self.limit_control(ch).await? {
            return self.get_with(&c, parse::control_limit).await;
        }
        if let Some(p) = &ch.power {
            return self.get_with(p, parse::power_limit).await;
        }
        if let Some(em) = &ch.environment {
            return self.get_with(em, parse::environment_limit).await;
        }
        Err(RedfishError::Resource {
            url: self.t.url(&ch.path),
            what:
                "has no power limit: neither a Power control in Controls, nor Power, nor EnvironmentMetrics"
                    .into(),
        })
    }

    async fn range_of(&self, ch: &Chassis) -> Result<(f64, f64), RedfishError> {
        let mut l = self.limit_of(ch).await?;
        // `Power` gives only the maximum; EnvironmentMetrics may say both.
        if l.min.is_none()
            && let Some(em) = &ch.environment
            && let Ok(e) = self.get_with(em, parse::environment_limit).await
        {
            l.min = e.min;
            l.max = l.max.or(e.max);
        }
        match l.max {
            Some(max) => Ok((l.min.unwrap_or(0.0), max)),
            None => Err(RedfishError::Resource {
                url: self.t.url(&ch.path),
                what:
                    "does not say the highest power limit it accepts (no AllowableMax or PowerCapacityWatts)"
                        .into(),
            }),
        }
    }

    async fn set_limit_of(&self, ch: &Chassis, watts: Option<f64>) -> Result<Option<f64>, RedfishError> {
        if let Some(w) = watts
            && !(w.is_finite() && w > 0.0)
        {
            return Err(RedfishError::Invalid(format!(
                "a power limit must be a positive number of watts, not {w}"
            )));
        }
        if let Some(c) = self.limit_control(ch).await? {
            let body = match watts {
                Some(w) => json!({"SetPoint": w, "ControlMode": "Automatic"}),
                None => json!({"ControlMode": "Disabled"}),
            };
            self.t.call(Method::PATCH, &c, Some(&body)).await?;
            return Ok(self.get_with(&c, parse::control_limit).await?.watts);
        }
        if let Some(p) = &ch.power {
            let body = json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": watts}}]});
            self.t.call(Method::PATCH, p, Some(&body)).await?;
            return Ok(self.get_with(p, parse::power_limit).await?.watts);
        }
        Err(RedfishError::Resource {
            url: self.t.url(&ch.path),
            what: "cannot be limited: it has neither a Power control in Controls nor Power".into(),
        })
    }
}
