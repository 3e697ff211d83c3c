//! Phase deadlines and the timeout message a person acts on.
use hostplane_proto::v1::DpuPhase;

use super::super::nicfw::{COND_EXTERNAL_POWER_CYCLE, external_power_cycle, power_cycle_required};
use super::super::util::{condition, fmt_duration, is_command_phase};
use super::{COND_REBOOT_HELD, COND_UNREACHABLE, StepCtx, Stepper};

impl Stepper<'_> {
    /// The phase's deadline: None when it has none or waits on an unreachable agent.
    /// Returns the Error transition when it has passed; otherwise records it for the timer.
    pub(super) fn check_deadline(&mut self, ctx: &mut StepCtx<'_>) -> Option<(&'static str, String)> {
        let phase = self.phase();
        let limit = ctx.cfg.phase_timeouts.get(phase)?;
        let unreachable = condition(&self.st().conditions, COND_UNREACHABLE)
            .filter(|c| c.status == "True")
            .is_some();
        if unreachable && self.waits_on_agent() {
            return None;
        }
        let mut entered = self.st().phase_entered_at_ms;
        if phase == DpuPhase::Rebooting {
            // A reboot held for siblings still installing is not late: their phases have their own
            // timeouts, and the Rebooting clock starts when the hold is released.
            if ctx.installing.get(&self.node()).is_some_and(|s| !s.is_empty()) {
                return None;
            }
            if let Some(c) = condition(&self.st().conditions, COND_REBOOT_HELD)
                && c.status == "False"
            {
                entered = entered.max(c.last_transition_time_ms);
            }
            // After the agent could not power-cycle the host, the wait for an external power cycle
            // gets the whole timeout.
            if let Some(c) = condition(&self.st().conditions, COND_EXTERNAL_POWER_CYCLE)
                && c.status == "True"
            {
                entered = entered.max(c.last_transition_time_ms);
            }
        }
        let mut deadline = entered.saturating_add(limit.as_millis() as i64);
        if let Some(c) = condition(&self.st().conditions, COND_UNREACHABLE)
            && c.status == "False"
            && c.last_transition_time_ms > entered
        {
            deadline = deadline.max(c.last_transition_time_ms + ctx.cfg.unreachable_grace.as_millis() as i64);
        }
        if ctx.now < deadline {
            ctx.step_deadline = Some(deadline);
            return None;
        }
        Some(("Timeout", self.timeout_message(phase, limit, ctx)))
    }

    pub(super) fn timeout_message(
        &self,
        phase: DpuPhase,
        limit: std::time::Duration,
        ctx: &StepCtx<'_>,
    ) -> String {
        let node = self.node();
        let head = format!(
            "{} timed out after {} on node {node} ({})",
            phase.display_name(),
            fmt_duration(limit),
            self.rshim(ctx)
        );
        let st = self.st();
        let tail = match phase {
            DpuPhase::Initializing => format!("{}; fix it, then reprovision", st.message),
            DpuPhase::Pending => {
                "no rollout slot became free; check the Dpus ahead of it, then reprovision".into()
            }
            DpuPhase::NodeEffect => {
                format!("maintenance was not approved; approve node {node}, then reprovision")
            }
            DpuPhase::Rebooting if external_power_cycle(self.cur()) => format!(
                "node {node} was not marked power-cycled after its agent could not power-cycle it; power-cycle \
                 it, MarkRebooted with power_cycled, and reprovision"
            ),
            DpuPhase::Rebooting if st.command_id.is_empty() && power_cycle_required(self.cur()) => {
                format!("node {node} was not marked power-cycled; power-cycle it and reprovision")
            }
            DpuPhase::Rebooting if st.command_id.is_empty() => {
                format!("node {node} was not marked rebooted; reboot it and reprovision")
            }
            DpuPhase::Rebooting => format!(
                "the host did not come back with a new boot_id (before: {:?}); check the host and its agent, \
                 then reprovision",
                self.boot_id_before().unwrap_or_default()
            ),
            p if is_command_phase(p) => match &st.progress {
                Some(pr) => format!(
                    "last stage '{}', last DPU log line '{}'; check the DPU console, then reprovision",
                    pr.stage, pr.last_log_line
                ),
                None => format!(
                    "no result from the agent for command {}; check the agent's log and the DPU console, then \
                     reprovision",
                    st.command_id
                ),
            },
            _ => "reprovision to retry".into(),
        };
        format!("{head}: {tail}")
    }
}
