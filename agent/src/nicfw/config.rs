//! The `nic_firmware:` section of the agent config: how ConfigFwParameters
//! commands are applied. Defined and checked here; the config root only
//! assembles the sections.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether parameters the kernel exposes as devlink parameters are set
/// through devlink (`auto`) or everything goes through mstconfig (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevlinkMode {
    #[default]
    Auto,
    Off,
}

/// The `nic_firmware:` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NicFwConfig {
    /// false: ConfigFwParameters commands with parameters are SKIPPED, saying so.
    pub enabled: bool,
    /// The `mstconfig` binary (Debian's `mstflint` package): a path, or a
    /// name looked up on `PATH`.
    pub mstconfig_path: PathBuf,
    /// How long one mstconfig or devlink invocation may run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub devlink: DevlinkMode,
}

impl Default for NicFwConfig {
    fn default() -> Self {
        NicFwConfig {
            enabled: true,
            mstconfig_path: PathBuf::from("mstconfig"),
            timeout: super::Mstconfig::DEFAULT_TIMEOUT,
            devlink: DevlinkMode::Auto,
        }
    }
}

impl NicFwConfig {
    /// The section's own checks: the field (as the config names it) and
    /// why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let path = self.mstconfig_path.as_os_str();
        if path.is_empty() || self.mstconfig_path.to_string_lossy().trim().is_empty() {
            return Err((
                "nic_firmware.mstconfig_path",
                "must name the mstconfig binary (a path, or a name on PATH)".into(),
            ));
        }
        if self
            .mstconfig_path
            .to_string_lossy()
            .chars()
            .any(char::is_control)
        {
            return Err((
                "nic_firmware.mstconfig_path",
                format!("{:?} contains a control character", self.mstconfig_path),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("nic_firmware.timeout", "must be greater than 0".into()));
        }
        Ok(())
    }
}
