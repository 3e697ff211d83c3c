//! The `flash:` section of the agent config: the stage timeouts and the
//! `misc` poll interval. Defined and checked here; the config root
//! ([`crate::config::Config`]) only assembles the sections and builds the
//! engine's [`FlashConfig`] from this one and the host paths.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FlashConfig, StageTimeouts};

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

impl Default for FlashSettings {
    fn default() -> Self {
        let d = FlashConfig::default();
        FlashSettings {
            stage_timeouts: d.stage_timeouts,
            poll_interval: d.poll_interval,
        }
    }
}

impl FlashSettings {
    /// The section's own checks: the field (as the config names it) and
    /// why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let t = &self.stage_timeouts;
        for (field, d) in [
            ("flash.stage_timeouts.push_stall", t.push_stall),
            ("flash.stage_timeouts.boot", t.boot),
            ("flash.stage_timeouts.installer", t.installer),
            ("flash.stage_timeouts.install", t.install),
            ("flash.stage_timeouts.linux_up", t.linux_up),
            ("flash.poll_interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return Err((field, "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}
