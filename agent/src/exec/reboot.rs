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
