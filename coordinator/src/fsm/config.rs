//! The `fsm:` section of the coordinator config.
use std::time::Duration;

use hostplane_proto::v1::DpuPhase;
use serde::{Deserialize, Serialize};

/// Reconciler settings (the `fsm:` section of the coordinator config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsmConfig {
    /// Full resync period: a pass over every Dpu, every command result
    /// re-read and every phase deadline re-checked. Passes in between plan
    /// only what changed (store events, command results, due deadlines), so
    /// this is a safety net, not what moves Dpus on.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// After a change wakes the reconciler, it waits this long to collect
    /// more changes into the same pass (keeps 1,000 Dpus from costing 1,000 passes).
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// How long each phase may take before the Dpu goes to Error (0 = no limit).
    pub phase_timeouts: PhaseTimeouts,
    /// When a node comes back after being Unreachable, a phase that waits on
    /// its agent gets at least this long before its timeout can fire.
    #[serde(with = "humantime_serde")]
    pub unreachable_grace: Duration,
    /// Transitions kept in `status.history` (newest last).
    pub history_limit: usize,
    /// Finished agent commands older than this are pruned from the store (0 = keep).
    #[serde(with = "humantime_serde")]
    pub command_retention: Duration,
}

impl Default for FsmConfig {
    fn default() -> Self {
        FsmConfig {
            resync: Duration::from_secs(60),
            batch_delay: Duration::from_millis(10),
            phase_timeouts: PhaseTimeouts::default(),
            unreachable_grace: Duration::from_secs(10 * 60),
            history_limit: 32,
            command_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Per-phase timeouts. `0s` disables a phase's timeout. Ready and Error never time out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseTimeouts {
    #[serde(with = "humantime_serde")]
    pub initializing: Duration,
    /// Pending waits for a rollout slot, which may legitimately take as long
    /// as the Dpus ahead of it take: no limit by default.
    #[serde(with = "humantime_serde")]
    pub pending: Duration,
    #[serde(with = "humantime_serde")]
    pub node_effect: Duration,
    #[serde(with = "humantime_serde")]
    pub initialize_interface: Duration,
    #[serde(with = "humantime_serde")]
    pub config_fw_parameters: Duration,
    #[serde(with = "humantime_serde")]
    pub prepare_bfb: Duration,
    #[serde(with = "humantime_serde")]
    pub os_installing: Duration,
    #[serde(with = "humantime_serde")]
    pub rebooting: Duration,
    #[serde(with = "humantime_serde")]
    pub dpu_cluster_config: Duration,
    #[serde(with = "humantime_serde")]
    pub node_effect_removal: Duration,
    #[serde(with = "humantime_serde")]
    pub deleting: Duration,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        PhaseTimeouts {
            initializing: Duration::from_secs(10 * MIN),
            pending: Duration::ZERO,
            node_effect: Duration::from_secs(7 * 24 * 60 * MIN),
            initialize_interface: Duration::from_secs(10 * MIN),
            config_fw_parameters: Duration::from_secs(10 * MIN),
            prepare_bfb: Duration::from_secs(30 * MIN),
            os_installing: Duration::from_secs(45 * MIN),
            rebooting: Duration::from_secs(30 * MIN),
            dpu_cluster_config: Duration::from_secs(10 * MIN),
            node_effect_removal: Duration::from_secs(10 * MIN),
            deleting: Duration::from_secs(10 * MIN),
        }
    }
}

impl PhaseTimeouts {
    /// Every phase set to `d` (tests and labs).
    pub fn all(d: Duration) -> PhaseTimeouts {
        PhaseTimeouts {
            initializing: d,
            pending: d,
            node_effect: d,
            initialize_interface: d,
            config_fw_parameters: d,
            prepare_bfb: d,
            os_installing: d,
            rebooting: d,
            dpu_cluster_config: d,
            node_effect_removal: d,
            deleting: d,
        }
    }

    /// The limit for `phase`, or None when it has none.
    pub fn get(&self, phase: DpuPhase) -> Option<Duration> {
        let d = match phase {
            DpuPhase::Initializing => self.initializing,
            DpuPhase::Pending => self.pending,
            DpuPhase::NodeEffect => self.node_effect,
            DpuPhase::InitializeInterface => self.initialize_interface,
            DpuPhase::ConfigFwParameters => self.config_fw_parameters,
            DpuPhase::PrepareBfb => self.prepare_bfb,
            DpuPhase::OsInstalling => self.os_installing,
            DpuPhase::Rebooting => self.rebooting,
            DpuPhase::DpuClusterConfig => self.dpu_cluster_config,
            DpuPhase::NodeEffectRemoval => self.node_effect_removal,
            DpuPhase::Deleting => self.deleting,
            DpuPhase::Unspecified | DpuPhase::Ready | DpuPhase::Error => Duration::ZERO,
        };
        (!d.is_zero()).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_humantime_and_refuses_unknown_fields() {
        let cfg: FsmConfig =
            serde_json::from_str(r#"{"resync":"2s","phase_timeouts":{"os_installing":"1h","pending":"0s"}}"#)
                .unwrap();
        assert_eq!(cfg.resync, Duration::from_secs(2));
        assert_eq!(
            cfg.phase_timeouts.get(DpuPhase::OsInstalling),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cfg.phase_timeouts.get(DpuPhase::Pending), None);
        // Untouched phases keep their defaults.
        assert_eq!(
            cfg.phase_timeouts.get(DpuPhase::PrepareBfb),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(cfg.phase_timeouts.get(DpuPhase::Ready), None);
        let e = serde_json::from_str::<FsmConfig>(r#"{"phase_timeouts":{"osinstalling":"1h"}}"#).unwrap_err();
        assert!(e.to_string().contains("osinstalling"), "{e}");
    }
}
