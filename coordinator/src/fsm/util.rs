//! Small helpers over the generated types: conditions, phases, labels.
use std::collections::HashMap;
use std::time::Duration;

use hostplane_proto::v1::{Condition, Dpu, DpuPhase, ObjectMeta};

/// Set (or refresh) a condition. `last_transition_time_ms` only moves when the
/// status changes. Returns true when anything changed.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now_ms: i64,
) -> bool {
    if let Some(c) = conds.iter_mut().find(|c| c.r#type == ty) {
        if c.status == status && c.reason == reason && c.message == message {
            return false;
        }
        if c.status != status {
            c.last_transition_time_ms = now_ms;
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        return true;
    }
    conds.push(Condition {
        r#type: ty.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time_ms: now_ms,
    });
    true
}

pub fn condition<'a>(conds: &'a [Condition], ty: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.r#type == ty)
}

/// True when the labels contain every key/value of the selector (empty matches all).
pub fn selector_matches(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn being_deleted(m: &Option<ObjectMeta>) -> bool {
    m.as_ref().is_some_and(|m| m.deletion_requested_at_ms > 0)
}

pub fn phase_of(raw: i32) -> DpuPhase {
    DpuPhase::try_from(raw).unwrap_or(DpuPhase::Unspecified)
}

/// The phases during which a Dpu holds a rollout slot (NodeEffect ..= NodeEffectRemoval).
pub fn holds_slot(p: DpuPhase) -> bool {
    (DpuPhase::NodeEffect as i32..=DpuPhase::NodeEffectRemoval as i32).contains(&(p as i32))
}

/// The phases that need the node's maintenance window (NodeEffect ..= DPUClusterConfig).
pub fn needs_window(p: DpuPhase) -> bool {
    (DpuPhase::NodeEffect as i32..=DpuPhase::DpuClusterConfig as i32).contains(&(p as i32))
}

/// Phases in which a Dpu is being provisioned through its host: while any Dpu
/// of a node is in one of them, the host must not be rebooted.
pub fn mid_install(p: DpuPhase) -> bool {
    (DpuPhase::InitializeInterface as i32..=DpuPhase::OsInstalling as i32).contains(&(p as i32))
}

/// True when the Dpu's phase puts its Flavor's host network in its node's
/// desired state (`DesiredState.networks`): InitializeInterface through
/// Ready, and Error when the Dpu failed in one of those (the network it had
/// stays until the Dpu is deleted or reprovisioned; an Error does not tear
/// down the host side). A Dpu marked for deletion is left out by the reader
/// as well (see `stream::network`); this is the phase part only, which the
/// reconciler compares to know when to give the node a new desired version.
pub fn network_phase(d: &Dpu) -> bool {
    let Some(st) = d.status.as_ref() else {
        return false;
    };
    let keeps =
        |p: DpuPhase| (DpuPhase::InitializeInterface as i32..=DpuPhase::Ready as i32).contains(&(p as i32));
    match phase_of(st.phase) {
        DpuPhase::Error => st
            .history
            .iter()
            .rev()
            .find(|t| t.to == DpuPhase::Error as i32)
            .is_some_and(|t| keeps(phase_of(t.from))),
        p => keeps(p),
    }
}

/// Phases that end on an agent command result.
pub fn is_command_phase(p: DpuPhase) -> bool {
    matches!(
        p,
        DpuPhase::InitializeInterface
            | DpuPhase::ConfigFwParameters
            | DpuPhase::PrepareBfb
            | DpuPhase::OsInstalling
            | DpuPhase::DpuClusterConfig
    )
}

/// The phase after `p` on the happy path.
pub fn next_phase(p: DpuPhase) -> DpuPhase {
    match p {
        DpuPhase::Unspecified | DpuPhase::Initializing => DpuPhase::Pending,
        DpuPhase::Pending => DpuPhase::NodeEffect,
        DpuPhase::NodeEffect => DpuPhase::InitializeInterface,
        DpuPhase::InitializeInterface => DpuPhase::ConfigFwParameters,
        DpuPhase::ConfigFwParameters => DpuPhase::PrepareBfb,
        DpuPhase::PrepareBfb => DpuPhase::OsInstalling,
        DpuPhase::OsInstalling => DpuPhase::Rebooting,
        DpuPhase::Rebooting => DpuPhase::DpuClusterConfig,
        DpuPhase::DpuClusterConfig => DpuPhase::NodeEffectRemoval,
        DpuPhase::NodeEffectRemoval | DpuPhase::Ready => DpuPhase::Ready,
        DpuPhase::Deleting => DpuPhase::Deleting,
        DpuPhase::Error => DpuPhase::Error,
    }
}

/// The condition a SKIPPED command leaves on the Dpu, per phase.
pub fn skipped_condition(p: DpuPhase) -> &'static str {
    match p {
        DpuPhase::InitializeInterface => "InterfaceInitialized",
        DpuPhase::ConfigFwParameters => "FirmwareConfigured",
        DpuPhase::PrepareBfb => "BfbPrepared",
        DpuPhase::OsInstalling => "OsInstalled",
        DpuPhase::DpuClusterConfig => "DpuClusterConfigured",
        _ => "CommandSkipped",
    }
}

/// "45m", "1h 30m", "300ms".
pub fn fmt_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        assert!(set_condition(&mut c, "A", "False", "R", "m", 10));
        assert!(!set_condition(&mut c, "A", "False", "R", "m", 20));
        assert!(set_condition(&mut c, "A", "False", "R2", "m2", 30));
        assert_eq!(c[0].last_transition_time_ms, 10);
        assert!(set_condition(&mut c, "A", "True", "R2", "m2", 40));
        assert_eq!(c[0].last_transition_time_ms, 40);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn phase_ranges() {
        assert!(holds_slot(DpuPhase::NodeEffect) && holds_slot(DpuPhase::NodeEffectRemoval));
        assert!(
            !holds_slot(DpuPhase::Pending) && !holds_slot(DpuPhase::Ready) && !holds_slot(DpuPhase::Error)
        );
        assert!(needs_window(DpuPhase::DpuClusterConfig) && !needs_window(DpuPhase::NodeEffectRemoval));
        let mut p = DpuPhase::Initializing;
        let mut walk = vec![p];
        while p != DpuPhase::Ready {
            p = next_phase(p);
            walk.push(p);
        }
        assert_eq!(walk.len(), 11);
    }

    #[test]
    fn network_phases() {
        use hostplane_proto::v1::{DpuStatus, PhaseTransition};
        let dpu = |phase: DpuPhase, history: &[(DpuPhase, DpuPhase)]| Dpu {
            status: Some(DpuStatus {
                phase: phase as i32,
                history: history
                    .iter()
                    .map(|(from, to)| PhaseTransition {
                        from: *from as i32,
                        to: *to as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (p, want) in [
            (DpuPhase::Initializing, false),
            (DpuPhase::Pending, false),
            (DpuPhase::NodeEffect, false),
            (DpuPhase::InitializeInterface, true),
            (DpuPhase::OsInstalling, true),
            (DpuPhase::Rebooting, true),
            (DpuPhase::NodeEffectRemoval, true),
            (DpuPhase::Ready, true),
            (DpuPhase::Deleting, false),
        ] {
            assert_eq!(network_phase(&dpu(p, &[])), want, "{p:?}");
        }
        assert!(!network_phase(&Dpu::default()));
        let failed_in = |from| {
            dpu(
                DpuPhase::Error,
                &[(DpuPhase::Pending, from), (from, DpuPhase::Error)],
            )
        };
        assert!(network_phase(&failed_in(DpuPhase::InitializeInterface)));
        assert!(network_phase(&failed_in(DpuPhase::OsInstalling)));
        assert!(!network_phase(&failed_in(DpuPhase::NodeEffect)));
        assert!(
            !network_phase(&dpu(DpuPhase::Error, &[])),
            "no history: it never had one"
        );
    }

    #[test]
    fn selectors() {
        let sel: HashMap<String, String> = [("rack".into(), "r1".into())].into();
        let yes: HashMap<String, String> = [("rack".into(), "r1".into()), ("x".into(), "y".into())].into();
        let no: HashMap<String, String> = [("rack".into(), "r2".into())].into();
        assert!(selector_matches(&sel, &yes));
        assert!(!selector_matches(&sel, &no));
        assert!(selector_matches(&HashMap::new(), &no));
    }
}
