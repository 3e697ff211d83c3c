//! `reboot_host`: run the configured reboot command.
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use hostplane_proto::v1::{CommandOutcome, CommandResult};
use tokio_util::sync::CancellationToken;

use super::result;

/// Run the reboot command. SUCCEEDED means the reboot was issued.
pub(super) async fn reboot(argv: &[String], cancel: &CancellationToken) -> CommandResult {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return result(
            CommandOutcome::Failed,
            "no reboot command configured (reboot_command)",
        );
    };
    tracing::warn!(command = %shown, "rebooting the host");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return result(
                CommandOutcome::Failed,
                format!("cannot run reboot command `{shown}`: {e}"),
            );
        }
    };
    let output = tokio::select! {
        out = child.wait_with_output() => out,
        _ = cancel.cancelled() => {
            return result(CommandOutcome::Cancelled, format!("reboot command `{shown}` cancelled before it finished"));
        }
    };
    match output {
        Ok(out) if out.status.success() => {
            result(CommandOutcome::Succeeded, format!("reboot issued with `{shown}`"))
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            let tail = match stderr.char_indices().rev().nth(1000) {
                Some((i, _)) => &stderr[i..],
                None => stderr,
            };
            result(
                CommandOutcome::Failed,
                format!("reboot command `{shown}` failed ({}): {tail}", out.status),
            )
        }
        Err(e) => result(
            CommandOutcome::Failed,
            format!("waiting for reboot command `{shown}`: {e}"),
        ),
    }
}

/// Power-cycling the host, for `reboot_host { power_cycle: true }`: the
/// host's BMC ([`crate::power::bmc::BmcPowerCycle`]) in production.
pub trait HostPowerCycle: Send + Sync + 'static {
    /// The BMC as messages name it (its URL).
    fn bmc(&self) -> String;
    /// Issue the power cycle: what was reset (the ComputerSystem), or why
    /// not. `sent` is set just before the request that resets the host goes
    /// out; from then on the future is awaited to its end (not dropped on
    /// cancel).
    fn power_cycle<'a>(
        &'a self,
        sent: &'a AtomicBool,
    ) -> super::BoxFuture<'a, Result<String, PowerCycleFailure>>;
}

/// Why a power cycle was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerCycleFailure {
    /// The host was not power-cycled (nothing sent, or the BMC refused).
    NotIssued(String),
    /// The reset was sent but not confirmed (no answer, connection lost):
    /// the BMC may be power-cycling the host.
    MaybeIssued(String),
}

impl HostPowerCycle for crate::power::bmc::BmcPowerCycle {
    fn bmc(&self) -> String {
        self.url().to_string()
    }

    fn power_cycle<'a>(
        &'a self,
        sent: &'a AtomicBool,
    ) -> super::BoxFuture<'a, Result<String, PowerCycleFailure>> {
        use crate::power::bmc::PowerCycleError;
        Box::pin(async move {
            crate::power::bmc::BmcPowerCycle::power_cycle(self, sent)
                .await
                .map(|done| format!("ComputerSystem {}, {}", done.system, done.target))
                .map_err(|e| match e {
                    PowerCycleError::NotIssued(e) => PowerCycleFailure::NotIssued(e.to_string()),
                    PowerCycleError::MaybeIssued(e) => PowerCycleFailure::MaybeIssued(e.to_string()),
                })
        })
    }
}

/// The message of a `power_cycle` reboot on an agent without a BMC.
pub const NO_BMC: &str =
    "no BMC configured on this agent (power.bmc); the node needs an external power cycle";

/// Power-cycle the host through `bmc`. SUCCEEDED means the BMC accepted the
/// reset; without a BMC, SKIPPED (the node waits for an external power
/// cycle). Cancellation is honoured until the reset request is sent; after
/// that the BMC has it and its answer is awaited. A reset sent but not
/// answered (timeout, connection lost) is SUCCEEDED with "the power cycle
/// may have been issued": the coordinator then waits for the node's new
/// boot id (or its Rebooting timeout) as for any issued power cycle, where
/// FAILED or INTERRUPTED at an unchanged boot id would put the Dpus in Error
/// while the host may be going down.
pub(super) async fn power_cycle(
    bmc: Option<&dyn HostPowerCycle>,
    cancel: &CancellationToken,
) -> CommandResult {
    let Some(bmc) = bmc else {
        return result(CommandOutcome::Skipped, NO_BMC);
    };
    let url = bmc.bmc();
    let sent = AtomicBool::new(false);
    let mut cycle = bmc.power_cycle(&sent);
    let outcome = tokio::select! {
        r = &mut cycle => r,
        _ = cancel.cancelled() => {
            if sent.load(Ordering::SeqCst) {
                tracing::warn!(bmc = %url, "cancelled after the power cycle was sent to the BMC; awaiting its answer");
                cycle.await
            } else {
                return result(
                    CommandOutcome::Cancelled,
                    format!("power cycle through the BMC at {url} cancelled before the reset was sent"),
                );
            }
        }
    };
    let now = || humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    match outcome {
        Ok(what) => result(
            CommandOutcome::Succeeded,
            format!(
                "power cycle issued through the BMC at {url} ({what}) at {}",
                now()
            ),
        ),
        Err(PowerCycleFailure::MaybeIssued(why)) => result(
            CommandOutcome::Succeeded,
            format!(
                "the power cycle may have been issued: the reset was sent to the BMC at {url} at {} but not \
                 confirmed: {why}; the node's new boot id will tell",
                now()
            ),
        ),
        Err(PowerCycleFailure::NotIssued(why)) => result(
            CommandOutcome::Failed,
            format!("power cycle through the BMC at {url} failed: {why}"),
        ),
    }
}
