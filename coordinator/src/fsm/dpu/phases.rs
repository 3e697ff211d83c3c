//! The phases that wait on the agent: command phases and Rebooting.
use hostplane_proto::v1::{Command, CommandOutcome, DpuPhase, RebootHost, RebootKind, command};

use super::super::commands::{agent_reboots, command_for};
use super::super::nicfw::{self, COND_EXTERNAL_POWER_CYCLE};
use super::super::util::{condition, next_phase, skipped_condition};
use super::{BOOT_ID_MARK, COND_REBOOT_HELD, Next, StepCtx, Stepper};

impl Stepper<'_> {
    /// The final result of the current phase's command, if it has one.
    pub(super) fn result(
        &self,
        ctx: &StepCtx<'_>,
    ) -> Result<Option<hostplane_proto::v1::CommandResult>, String> {
        let id = &self.st().command_id;
        match ctx.cmds.row(id) {
            None if ctx.issued.contains(id) => Ok(None),
            None => Err(format!("command {id} is missing from the store")),
            Some(row) => Ok(row.result.clone()),
        }
    }

    /// Error when the agent refused (NACK) the desired-state version that carried this Dpu's
    /// open command, and no later version was ACKed: the agent keeps its old state, so the command
    /// would never run.
    pub(super) fn nacked(&self, ctx: &StepCtx<'_>) -> Option<Next> {
        let id = &self.st().command_id;
        let node = self.node();
        let ns = ctx.view.nodes.get(&node)?.status.as_ref()?;
        let refused = !ns.nack_error.is_empty()
            && ns.acked_version < ns.nacked_version
            && ns.nacked_commands.iter().any(|c| c == id)
            && ctx.cmds.row(id).is_some_and(|row| row.result.is_none());
        refused.then(|| Next::Go {
            to: DpuPhase::Error,
            reason: "Nacked",
            message: format!(
                "the agent on node {node} rejected desired state version {}: {}; fix it and reprovision",
                ns.nacked_version, ns.nack_error
            ),
        })
    }

    pub(super) fn command_phase(&mut self, phase: DpuPhase, ctx: &mut StepCtx<'_>) -> Next {
        let (node, rshim, pname) = (self.node(), self.rshim(ctx), phase.display_name());
        if self.st().command_id.is_empty() {
            // Entered without a command (cannot happen through `go`): issue it now, once.
            if let Ok(Some(cmd)) = command_for(phase, self.cur(), ctx.view, uuid::Uuid::new_v4().to_string())
            {
                self.w().status.get_or_insert_default().command_id = cmd.id.clone();
                ctx.issued.insert(cmd.id.clone());
                self.insert.push(cmd);
            }
            return Next::Stay;
        }
        if let Some(next) = self.nacked(ctx) {
            return next;
        }
        let r = match self.result(ctx) {
            Ok(Some(r)) => r,
            Ok(None) => return Next::Stay,
            Err(e) => {
                let message = format!("{pname} on node {node} ({rshim}): {e}; reprovision to retry");
                return Next::Go {
                    to: DpuPhase::Error,
                    reason: "CommandMissing",
                    message,
                };
            }
        };
        if phase == DpuPhase::ConfigFwParameters {
            self.record_power_cycle(&r, ctx.now);
        }
        let agent_msg = r.message;
        let next = next_phase(phase);
        match CommandOutcome::try_from(r.outcome).unwrap_or(CommandOutcome::Unspecified) {
            CommandOutcome::Succeeded => {
                if phase == DpuPhase::OsInstalling {
                    self.mark_installed();
                    return Next::Go {
                        to: next,
                        reason: "OsInstalled",
                        message: self.rebooting_message(ctx),
                    };
                }
                let message = format!("{pname} succeeded on node {node} ({rshim}): {agent_msg}");
                Next::Go {
                    to: next,
                    reason: "Succeeded",
                    message,
                }
            }
            CommandOutcome::Skipped => {
                // Never silent: the agent's reason stays on the Dpu as a condition.
                self.cond(skipped_condition(phase), "True", "Skipped", &agent_msg, ctx.now);
                if phase == DpuPhase::OsInstalling {
                    // "Nothing to do" for a flash: the DPU already runs this image.
                    self.mark_installed();
                    return Next::Go {
                        to: next,
                        reason: "Skipped",
                        message: self.rebooting_message(ctx),
                    };
                }
                let message = format!("{pname} skipped by the agent on node {node} ({rshim}): {agent_msg}");
                Next::Go {
                    to: next,
                    reason: "Skipped",
                    message,
                }
            }
            CommandOutcome::Failed | CommandOutcome::Unspecified => {
                let message =
                    format!("{pname} failed on node {node} ({rshim}): {agent_msg}; fix it, then reprovision");
                Next::Go {
                    to: DpuPhase::Error,
                    reason: "CommandFailed",
                    message,
                }
            }
            CommandOutcome::Interrupted => {
                // The agent's own message may already say what to do.
                let advice = if agent_msg.contains("reprovision") {
                    ""
                } else {
                    "; reprovision to retry"
                };
                let message =
                    format!("agent on node {node} restarted during {pname} ({rshim}): {agent_msg}{advice}");
                Next::Go {
                    to: DpuPhase::Error,
                    reason: "AgentRestarted",
                    message,
                }
            }
            CommandOutcome::Cancelled => {
                let message = format!(
                    "the agent on node {node} cancelled {pname} ({rshim}) while it was still wanted: {agent_msg}; \
                     reprovision to retry"
                );
                Next::Go {
                    to: DpuPhase::Error,
                    reason: "CommandCancelled",
                    message,
                }
            }
        }
    }

    /// What the agent's ConfigFWParameters result says of a power cycle, as condition
    /// PowerCycleRequired (read by `nicfw::power_cycle_required`): True when it SUCCEEDED with
    /// values pending a host power cycle, False when it SUCCEEDED without or was SKIPPED. Other
    /// outcomes move the Dpu to Error and leave it as it is.
    fn record_power_cycle(&mut self, r: &hostplane_proto::v1::CommandResult, now: i64) {
        let node = self.node();
        let flavor = self
            .cur()
            .spec
            .as_ref()
            .map(|s| s.flavor.clone())
            .unwrap_or_default();
        let (status, reason, msg) = match CommandOutcome::try_from(r.outcome) {
            Ok(CommandOutcome::Succeeded) if r.power_cycle_required => (
                "True",
                "NicFirmwarePending",
                format!(
                    "flavor {flavor}'s NIC firmware parameters: the agent on node {node} reported values \
                     pending a host power cycle; the node's reboot is a power cycle"
                ),
            ),
            Ok(CommandOutcome::Succeeded) => (
                "False",
                "NotNeeded",
                format!(
                    "flavor {flavor}'s NIC firmware parameters: the agent on node {node} reported no value \
                     pending a host power cycle"
                ),
            ),
            Ok(CommandOutcome::Skipped) => (
                "False",
                "NotNeeded",
                format!(
                    "flavor {flavor}'s NIC firmware parameters were not applied (the agent on node {node} \
                     skipped ConfigFWParameters): no host power cycle is needed"
                ),
            ),
            _ => return,
        };
        self.cond(nicfw::COND_POWER_CYCLE_REQUIRED, status, reason, &msg, now);
    }

    /// The DPU now runs the Dpu's bfb and flavor.
    fn mark_installed(&mut self) {
        let spec = self.cur().spec.clone().unwrap_or_default();
        let st = self.w().status.get_or_insert_default();
        st.installed_bfb = spec.bfb;
        st.installed_flavor = spec.flavor;
    }

    pub(super) fn rebooting_message(&self, ctx: &StepCtx<'_>) -> String {
        let node = self.node();
        let rshim = self.rshim(ctx);
        if agent_reboots(ctx.view, &node) {
            let boot = ctx
                .view
                .nodes
                .get(&node)
                .and_then(|n| n.status.as_ref())
                .map(|s| s.boot_id.as_str());
            let does = self.agent_reboot_does();
            format!(
                "OS installed on {rshim}; {does} ({BOOT_ID_MARK}{})",
                boot.unwrap_or("")
            )
        } else {
            format!("OS installed on {rshim}; {}", self.external_wait())
        }
    }

    /// Why this Dpu's reboot must be a power cycle, or None when a warm reboot does.
    fn power_cycle_why(&self) -> Option<String> {
        let flavor = self.cur().spec.as_ref().map(|s| s.flavor.as_str()).unwrap_or("");
        nicfw::power_cycle_required(self.cur()).then(|| {
            format!("flavor {flavor}'s NIC firmware parameters take effect only after a host power cycle")
        })
    }

    /// What the agent does for the reboot step, for messages.
    fn agent_reboot_does(&self) -> String {
        let node = self.node();
        match self.power_cycle_why() {
            Some(why) => format!("the agent on node {node} power-cycles the host through its BMC; {why}"),
            None => format!("the agent on node {node} reboots the host"),
        }
    }

    /// What an externally rebooted (or power-cycled) node waits for, for messages.
    fn external_wait(&self) -> String {
        let node = self.node();
        match self.power_cycle_why() {
            Some(why) => format!(
                "waiting for node {node} to be power-cycled, not only rebooted ({why}; power-cycle it, then \
                 MarkRebooted with power_cycled)"
            ),
            None => format!("waiting for node {node} to be rebooted (reboot it, then MarkRebooted)"),
        }
    }

    /// The RebootHost this Dpu waits on asked for a power cycle.
    fn waits_on_power_cycle(&self, ctx: &StepCtx<'_>) -> bool {
        ctx.cmds.row(&self.st().command_id).is_some_and(|row| {
            matches!(
                &row.command.action,
                Some(command::Action::RebootHost(RebootHost { power_cycle: true }))
            )
        })
    }

    /// The boot id recorded when Rebooting was entered.
    pub(super) fn boot_id_before(&self) -> Option<String> {
        let tr = self
            .st()
            .history
            .iter()
            .rev()
            .find(|t| t.to == DpuPhase::Rebooting as i32)?;
        let rest = &tr.message[tr.message.find(BOOT_ID_MARK)? + BOOT_ID_MARK.len()..];
        Some(rest.split(')').next().unwrap_or("").to_string())
    }

    pub(super) fn rebooting(&mut self, ctx: &mut StepCtx<'_>) -> Next {
        let node_name = self.node();
        let ns = ctx
            .view
            .nodes
            .get(&node_name)
            .and_then(|n| n.status.clone())
            .unwrap_or_default();
        let entered = self.st().phase_entered_at_ms;
        // The host is rebooted once for all its Dpus, and never while a sibling is mid-install.
        if let Some(names) = ctx.installing.get(&node_name).filter(|s| !s.is_empty()) {
            let msg = format!(
                "waits for sibling(s) {} to finish installing before node {node_name} can be rebooted ({} other \
                 Dpu(s) on node {node_name} are still being installed)",
                names_list(names),
                names.len()
            );
            self.cond(COND_REBOOT_HELD, "True", "SiblingsInstalling", &msg, ctx.now);
            self.set_message(msg);
            return Next::Stay;
        }
        if condition(&self.st().conditions, COND_REBOOT_HELD).is_some_and(|c| c.status == "True") {
            let msg = format!("no other Dpu on node {node_name} is being installed");
            self.cond(COND_REBOOT_HELD, "False", "SiblingsDone", &msg, ctx.now);
            let then = if agent_reboots(ctx.view, &node_name) {
                self.agent_reboot_does()
            } else {
                self.external_wait()
            };
            self.set_message(format!("{msg}; {then}"));
        }
        let fallback = nicfw::external_power_cycle(self.cur());
        if !agent_reboots(ctx.view, &node_name) || fallback {
            // External reboot: the upstream system calls MarkRebooted (with power_cycled when a power
            // cycle is needed; the API refuses it without).
            if ns.rebooted_at_ms > entered {
                let cycled = ns.last_reboot_kind == RebootKind::PowerCycle as i32;
                if !cycled && (fallback || self.power_cycle_why().is_some()) {
                    self.set_message(format!(
                        "node {node_name} was marked rebooted at {} ms, but not power-cycled; {}",
                        ns.rebooted_at_ms,
                        self.external_wait()
                    ));
                    return Next::Stay;
                }
                let what = if cycled { "power-cycled" } else { "rebooted" };
                let message = format!(
                    "node {node_name} was {what} (MarkRebooted at {} ms)",
                    ns.rebooted_at_ms
                );
                return Next::Go {
                    to: DpuPhase::DpuClusterConfig,
                    reason: "HostRebooted",
                    message,
                };
            }
            return Next::Stay;
        }
        // A power cycle the agent did through the BMC is recorded on the node.
        if let Some(Ok(Some(r))) = self.waits_on_power_cycle(ctx).then(|| self.result(ctx))
            && r.outcome == CommandOutcome::Succeeded as i32
        {
            let at = ctx.power_cycled.entry(node_name.clone()).or_default();
            *at = (*at).max(r.finished_at_ms);
        }
        let before = self.boot_id_before().unwrap_or_default();
        if !ns.boot_id.is_empty() && ns.boot_id != before {
            let mut how = "";
            if self.waits_on_power_cycle(ctx) {
                how = " after a power cycle through its BMC";
                match self.result(ctx) {
                    // A power cut stops the agent before it can report: back at the new boot id it
                    // reports the command (INTERRUPTED), or runs it now if it never started it
                    // (the host came back some other way, and a warm reboot does not apply the
                    // firmware). Wait for that word.
                    Ok(None) => return Next::Stay,
                    // The agent started the power cycle and lost power before the BMC's answer
                    // reached it: that power cycle, recorded when the agent said so.
                    Ok(Some(r)) if r.outcome == CommandOutcome::Interrupted as i32 => {
                        how = " after a power cycle through its BMC (the agent lost power before it could confirm \
                               it: INTERRUPTED)";
                        let at = ctx.power_cycled.entry(node_name.clone()).or_default();
                        *at = (*at).max(if r.finished_at_ms > 0 {
                            r.finished_at_ms
                        } else {
                            ctx.now
                        });
                    }
                    _ => {}
                }
            }
            let message = format!(
                "node {node_name} came back with boot_id {} (was {before:?}){how}",
                ns.boot_id
            );
            return Next::Go {
                to: DpuPhase::DpuClusterConfig,
                reason: "HostRebooted",
                message,
            };
        }
        if self.st().command_id.is_empty() {
            self.issue_or_join_reboot(&node_name, ctx);
            // A command issued now has no result yet; one joined may have (read below).
            if self.phase() != DpuPhase::Rebooting || self.st().command_id.is_empty() {
                return Next::Stay;
            }
        }
        if let Some(next) = self.nacked(ctx) {
            return next;
        }
        let r = match self.result(ctx) {
            Ok(Some(r)) => r,
            Ok(None) => return Next::Stay,
            Err(e) => {
                let message = format!("Rebooting node {node_name}: {e}; reprovision to retry");
                return Next::Go {
                    to: DpuPhase::Error,
                    reason: "CommandMissing",
                    message,
                };
            }
        };
        match CommandOutcome::try_from(r.outcome).unwrap_or(CommandOutcome::Unspecified) {
            // The reboot was issued; wait for the new boot id.
            CommandOutcome::Succeeded => Next::Stay,
            // The agent cannot power-cycle the host (no BMC): the node falls back to the external
            // flow, every Dpu waiting on this RebootHost with it.
            CommandOutcome::Skipped if self.waits_on_power_cycle(ctx) => {
                let msg = format!(
                    "the agent on node {node_name} did not power-cycle the host ({}); power-cycle node \
                     {node_name}, then MarkRebooted with power_cycled (`hostplanectl node mark-rebooted \
                     {node_name} --power-cycled`)",
                    r.message
                );
                self.cond(
                    COND_EXTERNAL_POWER_CYCLE,
                    "True",
                    "AgentCannotPowerCycle",
                    &msg,
                    ctx.now,
                );
                self.set_message(msg);
                Next::Stay
            }
            // The sibling that issued it timed out in this round (its command was withdrawn when
            // it went to Error): the host did not come back for this Dpu either. Re-issuing would
            // reboot the host a second time; the round's clock is shared, so this Dpu's own
            // Rebooting timeout fires with the same cause.
            CommandOutcome::Cancelled if self.reboot_issuer_failed(ctx) => Next::Stay,
            CommandOutcome::Cancelled if self.reboot_issuer_left(ctx) => {
                // The sibling that issued it left Rebooting (deleted, reprovisioned) and its command was
                // withdrawn: this Dpu still needs the reboot.
                let id = std::mem::take(&mut self.w().status.get_or_insert_default().command_id);
                if ctx.reboot_cmd.get(&node_name) == Some(&id) {
                    ctx.reboot_cmd.remove(&node_name);
                }
                self.issue_or_join_reboot(&node_name, ctx);
                Next::Stay
            }
            _ => {
                let message = format!(
                    "the agent on node {node_name} did not reboot the host ({}: {}); the boot_id is unchanged; \
                     reboot it by hand or fix the agent's reboot command, then reprovision",
                    CommandOutcome::try_from(r.outcome)
                        .unwrap_or(CommandOutcome::Unspecified)
                        .as_str_name(),
                    r.message
                );
                Next::Go {
                    to: DpuPhase::Error,
                    reason: "RebootFailed",
                    message,
                }
            }
        }
    }

    /// Wait on the node's RebootHost of this round, or issue it (one per node): every Dpu of the
    /// node in Rebooting records the same command id, so its result moves (or fails) them all.
    fn issue_or_join_reboot(&mut self, node: &str, ctx: &mut StepCtx<'_>) {
        if let Some(id) = ctx.reboot_cmd.get(node) {
            let id = id.clone();
            self.w().status.get_or_insert_default().command_id = id;
            return;
        }
        self.issue(DpuPhase::Rebooting, ctx);
        let id = &self.st().command_id;
        if self.phase() == DpuPhase::Rebooting && !id.is_empty() {
            ctx.reboot_cmd.insert(node.to_string(), id.clone());
            // One reboot serves every Dpu of the node in Rebooting: a power cycle when any needs one.
            let sibling_needs = ctx.rebooting.get(node).is_some_and(|names| {
                names.iter().any(|n| {
                    n != self.name() && ctx.view.dpus.get(n).is_some_and(nicfw::power_cycle_required)
                })
            });
            if sibling_needs
                && let Some(Command {
                    action: Some(command::Action::RebootHost(rh)),
                    ..
                }) = self.insert.last_mut()
            {
                rh.power_cycle = true;
            }
        }
    }

    /// True when the RebootHost this Dpu waits on was issued by a sibling now in Error.
    fn reboot_issuer_failed(&self, ctx: &StepCtx<'_>) -> bool {
        let id = &self.st().command_id;
        let Some(row) = ctx.cmds.row(id) else {
            return false;
        };
        let issuer = &row.command.dpu;
        issuer != self.name()
            && ctx
                .view
                .dpus
                .get(issuer)
                .and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.phase == DpuPhase::Error as i32)
    }

    /// True when the RebootHost this Dpu waits on was issued by a sibling that no longer waits on it.
    fn reboot_issuer_left(&self, ctx: &StepCtx<'_>) -> bool {
        let id = &self.st().command_id;
        let Some(row) = ctx.cmds.row(id) else {
            return false;
        };
        let issuer = &row.command.dpu;
        issuer != self.name()
            && ctx.view.dpus.get(issuer).is_none_or(|d| {
                d.status
                    .as_ref()
                    .is_none_or(|s| s.phase != DpuPhase::Rebooting as i32 || &s.command_id != id)
            })
    }

    /// Set `status.message` (what GetDpuReadiness shows), cloning the Dpu only when it changes.
    fn set_message(&mut self, msg: String) {
        if self.st().message != msg {
            self.w().status.get_or_insert_default().message = msg;
        }
    }
}

/// "d1, d2" (at most 5 names, then "and N more").
pub(super) fn names_list(names: &std::collections::BTreeSet<String>) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    match names.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}
