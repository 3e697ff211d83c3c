//! What the agent does for each command: the [`Executor`] trait the session
//! drives, and [`HostExecutor`], the production dispatch.
//!
//! Outcome messages are for people: they say what happened and, for SKIPPED,
//! why there was nothing to do.
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hostplane_proto::v1::{
    BfbRef, Command, CommandOutcome, CommandResult, FlashProgress, HostNetwork, Inventory, command::Action,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The agent's version, as sent in Hello and named in messages.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The host side of the agent: what it reports (inventory) and what it does
/// (commands). The session calls `execute` once per command id, each in its
/// own task; `progress` may be sent to freely (the session drains it and
/// never lets the network slow the command down); `cancel` fires when the
/// command is withdrawn or the agent shuts down, and the command should then
/// stop cleanly and return CANCELLED.
pub trait Executor: Send + Sync + 'static {
    /// What this host has (rshim devices), for Hello.
    fn inventory(&self) -> BoxFuture<'_, Inventory>;

    fn execute(
        &self,
        cmd: Command,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, CommandResult>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A final result stamped with the current time.
pub fn result(outcome: CommandOutcome, message: impl Into<String>) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message: message.into(),
        finished_at_ms: now_ms(),
    }
}

/// The action's name as the protocol spells it (`flash_bfb`, ...).
pub fn action_name(action: Option<&Action>) -> &'static str {
    match action {
        None => "unknown",
        Some(Action::InitializeInterface(_)) => "initialize_interface",
        Some(Action::ConfigFwParameters(_)) => "config_fw_parameters",
        Some(Action::PrepareBfb(_)) => "prepare_bfb",
        Some(Action::FlashBfb(_)) => "flash_bfb",
        Some(Action::RebootHost(_)) => "reboot_host",
        Some(Action::DpuClusterConfig(_)) => "dpu_cluster_config",
    }
}

/// The flash path as [`HostExecutor`] uses it (implemented over
/// `flash::Flasher`). Each call returns the command's final result.
pub trait FlashJobs: Send + Sync + 'static {
    /// Download `bfb` into the cache and verify it.
    fn prepare<'a>(&'a self, bfb: &'a BfbRef, cancel: CancellationToken) -> BoxFuture<'a, CommandResult>;

    /// Verify `bfb`, push it with bf.cfg rendered from `bf_cfg` into `rshim`,
    /// and follow the DPU to a verdict.
    fn flash<'a>(
        &'a self,
        rshim: &'a str,
        bfb: &'a BfbRef,
        bf_cfg: std::collections::HashMap<String, String>,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, CommandResult>;
}

/// Production executor: flash jobs through [`FlashJobs`], reboot through the
/// configured command, inventory from `<dev_root>/rshim*`.
pub struct HostExecutor {
    flash: Arc<dyn FlashJobs>,
    reboot_command: Vec<String>,
    dev_root: PathBuf,
}

impl HostExecutor {
    pub fn new(flash: Arc<dyn FlashJobs>, reboot_command: Vec<String>, dev_root: PathBuf) -> HostExecutor {
        HostExecutor {
            flash,
            reboot_command,
            dev_root,
        }
    }

    async fn run(
        &self,
        cmd: Command,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> CommandResult {
        use CommandOutcome::{Failed, Skipped};
        if cancel.is_cancelled() {
            return result(CommandOutcome::Cancelled, "cancelled before it started");
        }
        let Some(action) = cmd.action else {
            return result(
                Failed,
                format!(
                    "command {} for dpu {} has no action this agent understands (hostplane-agent {AGENT_VERSION}); \
                     upgrade the agent to match the coordinator",
                    cmd.id, cmd.dpu
                ),
            );
        };
        match action {
            Action::InitializeInterface(ii) => result(Skipped, host_network_skip(ii.host_network.as_ref())),
            Action::ConfigFwParameters(fw) => result(Skipped, fw_skip(&fw.nic_firmware)),
            Action::DpuClusterConfig(_) => result(
                Skipped,
                format!("no DPU cluster configured (hostplane-agent {AGENT_VERSION} has no DPU cluster support)"),
            ),
            Action::PrepareBfb(p) => match p.bfb {
                Some(bfb) => self.flash.prepare(&bfb, cancel).await,
                None => result(Failed, format!("prepare_bfb command {} names no bfb", cmd.id)),
            },
            Action::FlashBfb(f) => match f.bfb {
                None => result(Failed, format!("flash_bfb command {} names no bfb", cmd.id)),
                Some(_) if cmd.rshim.is_empty() => {
                    result(Failed, format!("flash_bfb command {} for dpu {} names no rshim device", cmd.id, cmd.dpu))
                }
                Some(bfb) => self.flash.flash(&cmd.rshim, &bfb, f.bf_cfg, progress, cancel).await,
            },
            Action::RebootHost(_) => reboot(&self.reboot_command, &cancel).await,
        }
    }
}

impl Executor for HostExecutor {
    fn inventory(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async move {
            Inventory {
                rshims: crate::rshim::discover(&self.dev_root).await,
            }
        })
    }

    fn execute(
        &self,
        cmd: Command,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, CommandResult> {
        Box::pin(self.run(cmd, progress, cancel))
    }
}

fn host_network_skip(net: Option<&HostNetwork>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = net {
        if n.num_vfs > 0 {
            parts.push(format!("{} VFs", n.num_vfs));
        }
        if n.mtu > 0 {
            parts.push(format!("MTU {}", n.mtu));
        }
        if !n.bridges.is_empty() {
            let names: Vec<&str> = n.bridges.iter().map(|b| b.name.as_str()).collect();
            parts.push(format!("bridges {}", names.join(", ")));
        }
    }
    if parts.is_empty() {
        return "flavor has no host network settings; nothing to do".to_string();
    }
    format!(
        "host networking is not implemented in this agent version (hostplane-agent {AGENT_VERSION}); \
         not applied: {}",
        parts.join("; ")
    )
}

fn fw_skip(params: &std::collections::HashMap<String, String>) -> String {
    if params.is_empty() {
        return "no NIC firmware parameters; nothing to do".to_string();
    }
    let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
    names.sort_unstable();
    format!(
        "NIC firmware configuration is not implemented in this agent version (hostplane-agent {AGENT_VERSION}); \
         not applied: {}",
        names.join(", ")
    )
}

/// Run the reboot command. SUCCEEDED means the reboot was issued.
async fn reboot(argv: &[String], cancel: &CancellationToken) -> CommandResult {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return result(CommandOutcome::Failed, "no reboot command configured (reboot_command)");
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
        Err(e) => return result(CommandOutcome::Failed, format!("cannot run reboot command `{shown}`: {e}")),
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
        Err(e) => result(CommandOutcome::Failed, format!("waiting for reboot command `{shown}`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use hostplane_proto::v1::{
        Bridge, ConfigFwParameters, DpuClusterConfig, FlashBfb, InitializeInterface, PrepareBfb, RebootHost,
    };

    use super::*;

    /// Records what the executor asked of the flash path.
    #[derive(Default)]
    struct RecordingFlash {
        calls: Mutex<Vec<String>>,
    }

    impl FlashJobs for RecordingFlash {
        fn prepare<'a>(&'a self, bfb: &'a BfbRef, _: CancellationToken) -> BoxFuture<'a, CommandResult> {
            self.calls.lock().unwrap().push(format!("prepare {}", bfb.name));
            Box::pin(async { result(CommandOutcome::Succeeded, "cached") })
        }

        fn flash<'a>(
            &'a self,
            rshim: &'a str,
            bfb: &'a BfbRef,
            bf_cfg: HashMap<String, String>,
            _: mpsc::Sender<FlashProgress>,
            _: CancellationToken,
        ) -> BoxFuture<'a, CommandResult> {
            let mut keys: Vec<_> = bf_cfg.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            keys.sort();
            self.calls.lock().unwrap().push(format!("flash {rshim} {} {}", bfb.name, keys.join(",")));
            Box::pin(async { result(CommandOutcome::Succeeded, "installed") })
        }
    }

    fn executor(reboot: &[&str]) -> (HostExecutor, Arc<RecordingFlash>) {
        let flash = Arc::new(RecordingFlash::default());
        let reboot = reboot.iter().map(|s| s.to_string()).collect();
        (HostExecutor::new(flash.clone(), reboot, PathBuf::from("/nonexistent")), flash)
    }

    fn cmd(action: Option<Action>) -> Command {
        Command {
            id: "c1".into(),
            dpu: "dpu-a".into(),
            rshim: "rshim0".into(),
            action,
        }
    }

    async fn exec(ex: &HostExecutor, c: Command) -> (CommandOutcome, String) {
        let (tx, _rx) = mpsc::channel(1);
        let r = ex.execute(c, tx, CancellationToken::new()).await;
        assert!(r.finished_at_ms > 0);
        (r.outcome(), r.message)
    }

    fn bfb() -> Option<BfbRef> {
        Some(BfbRef {
            name: "doca-2.9".into(),
            url: "http://x/a.bfb".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn flash_actions_go_to_the_flash_path_with_their_parameters() {
        let (ex, flash) = executor(&["true"]);
        let (o, m) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: bfb() })))).await;
        assert_eq!((o, m.as_str()), (CommandOutcome::Succeeded, "cached"));
        let bf_cfg = HashMap::from([("UPDATE_DPU_OS".to_string(), "yes".to_string())]);
        let (o, _) = exec(&ex, cmd(Some(Action::FlashBfb(FlashBfb { bfb: bfb(), bf_cfg })))).await;
        assert_eq!(o, CommandOutcome::Succeeded);
        assert_eq!(
            *flash.calls.lock().unwrap(),
            ["prepare doca-2.9", "flash rshim0 doca-2.9 UPDATE_DPU_OS=yes"]
        );
    }

    #[tokio::test]
    async fn malformed_commands_fail_naming_what_is_missing() {
        let (ex, flash) = executor(&["true"]);
        let (o, m) = exec(&ex, cmd(None)).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("c1") && m.contains("dpu-a") && m.contains("no action"), "{m}");
        let (o, m) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: None })))).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("names no bfb"), "{m}");
        let mut c = cmd(Some(Action::FlashBfb(FlashBfb { bfb: bfb(), ..Default::default() })));
        c.rshim.clear();
        let (o, m) = exec(&ex, c).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("names no rshim"), "{m}");
        assert!(flash.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unsupported_jobs_are_skipped_saying_why() {
        let (ex, _) = executor(&["true"]);
        let net = HostNetwork {
            num_vfs: 8,
            mtu: 9000,
            bridges: vec![Bridge { name: "br-dpu".into(), ..Default::default() }],
        };
        let ii = |host_network| Some(Action::InitializeInterface(InitializeInterface { host_network }));
        let fw = |pairs: &[(&str, &str)]| {
            let nic_firmware = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Some(Action::ConfigFwParameters(ConfigFwParameters { nic_firmware }))
        };
        let cases = [
            (ii(Some(net)), vec!["not implemented", AGENT_VERSION, "8 VFs", "MTU 9000", "br-dpu"]),
            (ii(None), vec!["no host network settings"]),
            (ii(Some(HostNetwork::default())), vec!["no host network settings"]),
            (fw(&[]), vec!["no NIC firmware parameters"]),
            (fw(&[("SRIOV_EN", "1"), ("NUM_OF_VFS", "8")]), vec!["not applied: NUM_OF_VFS, SRIOV_EN"]),
            (Some(Action::DpuClusterConfig(DpuClusterConfig {})), vec!["no DPU cluster configured"]),
        ];
        for (action, wanted) in cases {
            let (o, m) = exec(&ex, cmd(action)).await;
            assert_eq!(o, CommandOutcome::Skipped, "{m}");
            for w in wanted {
                assert!(m.contains(w), "{m:?} lacks {w:?}");
            }
        }
    }

    #[tokio::test]
    async fn reboot_succeeds_when_the_command_does() {
        let (ex, _) = executor(&["true"]);
        let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost {})))).await;
        assert_eq!(o, CommandOutcome::Succeeded, "{m}");
        assert!(m.contains("reboot issued with `true`"), "{m}");
    }

    #[tokio::test]
    async fn reboot_failure_carries_stderr() {
        let (ex, _) = executor(&["sh", "-c", "echo 'Failed to reboot: access denied' >&2; exit 3"]);
        let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost {})))).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("access denied") && m.contains('3'), "{m}");

        let (ex, _) = executor(&["/nonexistent/reboot"]);
        let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost {})))).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("cannot run reboot command `/nonexistent/reboot`"), "{m}");
    }

    #[tokio::test]
    async fn cancelled_reboot_reports_cancelled() {
        let (ex, _) = executor(&["sleep", "600"]);
        let cancel = CancellationToken::new();
        let (tx, _rx) = mpsc::channel(1);
        let run = ex.execute(cmd(Some(Action::RebootHost(RebootHost {}))), tx, cancel.clone());
        let canceller = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cancel.cancel();
        };
        let (r, ()) = tokio::join!(run, canceller);
        assert_eq!(r.outcome(), CommandOutcome::Cancelled, "{}", r.message);

        let (tx, _rx) = mpsc::channel(1);
        let r = ex.execute(cmd(Some(Action::RebootHost(RebootHost {}))), tx, cancel).await;
        assert_eq!(r.outcome(), CommandOutcome::Cancelled);
        assert!(r.message.contains("before it started"), "{}", r.message);
    }
}
