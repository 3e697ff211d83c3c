//! The `power:` section of the agent config, with its `telemetry`, `caps`
//! and `bmc` subsections: defined and checked here; the config root only
//! assembles the sections.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bmc::BmcConfig;
use super::caps::CapsConfig;
use super::telemetry::TelemetryConfig;

/// The `power:` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where `class/powercap` and `class/hwmon` are read.
    pub sysfs_root: PathBuf,
    /// Samples sent to the coordinator (`power.telemetry`).
    pub telemetry: TelemetryConfig,
    /// Enforcing the coordinator's caps (`power.caps`).
    pub caps: CapsConfig,
    /// The host's BMC over Redfish (`power.bmc`; off while `url` is empty).
    pub bmc: BmcConfig,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            sysfs_root: PathBuf::from("/sys"),
            telemetry: TelemetryConfig::default(),
            caps: CapsConfig::default(),
            bmc: BmcConfig::default(),
        }
    }
}

impl PowerConfig {
    /// The section's own checks: the field (as the config names it) and
    /// why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.bmc.validate()?;
        if self.interval < Duration::from_millis(100) {
            return Err((
                "power.interval",
                format!("{:?} is too short: sample at most every 100ms", self.interval),
            ));
        }
        for (field, d) in [
            ("power.telemetry.batch_interval", self.telemetry.batch_interval),
            ("power.caps.reverify_interval", self.caps.reverify_interval),
            ("power.caps.default_lease", self.caps.default_lease),
        ] {
            if d.is_zero() {
                return Err((field, "must be greater than 0".into()));
            }
        }
        for (field, n) in [
            ("power.telemetry.buffer_samples", self.telemetry.buffer_samples),
            ("power.telemetry.max_batch", self.telemetry.max_batch),
        ] {
            if n == 0 {
                return Err((field, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}
