//! The `network:` section of the agent config: whether host networking is
//! managed, where sysfs is, the namespace, the drift debounce and the VF
//! wait. Defined and checked here; the config root
//! ([`crate::config::Config`]) only assembles the sections.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `network:` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// False: desired networks are not applied (InitializeInterface is
    /// SKIPPED saying so) and the host network is never touched. Read by the
    /// agent, which then does not start this module.
    pub enabled: bool,
    /// Where `bus/pci/devices/<bdf>/sriov_numvfs` and `class/net` are read and written.
    pub sysfs_root: PathBuf,
    /// Manage this named network namespace (`/run/netns/<name>`) instead of
    /// the agent's own (labs and tests).
    pub netns: Option<String>,
    /// Changes seen on netlink are collected this long before a repair.
    #[serde(with = "humantime_serde")]
    pub drift_debounce: Duration,
    /// After the VF count changes, how long to wait for the VF netdevs.
    #[serde(with = "humantime_serde")]
    pub vf_wait: Duration,
    /// The record of the addresses the agent added (see [`super::owned`]): the
    /// agent sets it to `<state_dir>/network-owned.json`; None keeps it in
    /// memory only (tests, benches). Not a config key.
    #[serde(skip)]
    pub owned_file: Option<PathBuf>,
}

/// The address record's file name under the agent's `state_dir`.
pub const OWNED_FILE: &str = "network-owned.json";

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enabled: true,
            sysfs_root: PathBuf::from("/sys"),
            netns: None,
            drift_debounce: Duration::from_millis(50),
            vf_wait: Duration::from_secs(10),
            owned_file: None,
        }
    }
}

impl NetConfig {
    /// The section's own checks: the field (as the config names it) and
    /// why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.sysfs_root.is_absolute() {
            return Err((
                "network.sysfs_root",
                format!("{} must be an absolute path", self.sysfs_root.display()),
            ));
        }
        if let Some(ns) = &self.netns
            && (ns.is_empty() || ns == "." || ns == ".." || ns.contains(['/', '\0']) || ns.len() > 255)
        {
            return Err((
                "network.netns",
                format!("{ns:?} is not a network namespace name (a file name under /run/netns)"),
            ));
        }
        Ok(())
    }
}
