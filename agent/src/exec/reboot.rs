//! `reboot_host`: run the configured reboot command.
use std::process::Stdio;

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
    /// Issue the power cycle: what was reset (the ComputerSystem), or why not.
    fn power_cycle(&self) -> super::BoxFuture<'_, Result<String, String>>;
}

impl HostPowerCycle for crate::power::bmc::BmcPowerCycle {
    fn bmc(&self) -> String {
        self.url().to_string()
    }

    fn power_cycle(&self) -> super::BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            crate::power::bmc::BmcPowerCycle::power_cycle(self)
                .await
                .map(|done| format!("ComputerSystem {}, {}", done.system, done.target))
                .map_err(|e| e.to_string())
        })
    }
}

/// The message of a `power_cycle` reboot on an agent without a BMC.
pub const NO_BMC: &str =
    "no BMC configured on this agent (power.bmc); the node needs an external power cycle";

/// Power-cycle the host through `bmc`. SUCCEEDED means the BMC accepted the
/// reset; without a BMC, SKIPPED (the node waits for an external power
/// cycle). Cancellation is honoured until the request is sent.
pub(super) async fn power_cycle(
    bmc: Option<&dyn HostPowerCycle>,
    cancel: &CancellationToken,
) -> CommandResult {
    let Some(bmc) = bmc else {
        return result(CommandOutcome::Skipped, NO_BMC);
    };
    let url = bmc.bmc();
    let outcome = tokio::select! {
        r = bmc.power_cycle() => r,
        _ = cancel.cancelled() => {
            return result(
                CommandOutcome::Cancelled,
                format!("power cycle through the BMC at {url} cancelled before the BMC confirmed it"),
            );
        }
    };
    match outcome {
        Ok(what) => result(
            CommandOutcome::Succeeded,
            format!(
                "power cycle issued through the BMC at {url} ({what}) at {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            ),
        ),
        Err(why) => result(
            CommandOutcome::Failed,
            format!("power cycle through the BMC at {url} failed: {why}"),
        ),
    }
}
