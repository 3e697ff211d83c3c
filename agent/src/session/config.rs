//! The `session:` section of the agent config: the coordinator stream's
//! reconnect backoff, keepalive and lease. Defined and checked here; the
//! config root ([`crate::config::Config`]) only assembles the sections.
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

impl SessionConfig {
    /// The section's own checks: the field (as the config names it) and
    /// why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, d) in [
            ("session.backoff_initial", self.backoff_initial),
            ("session.connect_timeout", self.connect_timeout),
            ("session.keepalive_interval", self.keepalive_interval),
            ("session.keepalive_timeout", self.keepalive_timeout),
        ] {
            if d.is_zero() {
                return Err((field, "must be greater than 0".into()));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return Err((
                "session.backoff_max",
                format!(
                    "{:?} is shorter than session.backoff_initial ({:?})",
                    self.backoff_max, self.backoff_initial
                ),
            ));
        }
        if self.default_lease < Duration::from_secs(1) {
            return Err(("session.default_lease", "must be at least 1s".into()));
        }
        Ok(())
    }
}
