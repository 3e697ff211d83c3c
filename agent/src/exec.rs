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
    BfbRef, Command, CommandOutcome, CommandResult, FlashProgress, HostNetwork, Inventory, RshimInfo,
    command::Action,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bfb_cache::CacheError;
use crate::bfcfg::BfCfg;
use crate::flash::{FlashError, FlashReport, FlashRequest, Flasher, ImageSource};

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

/// The flash path as [`HostExecutor`] uses it: [`Flasher`] in production,
/// a fake in tests.
pub trait FlashJobs: Send + Sync + 'static {
    /// rshim devices on this host (a device being flashed is not read: its
    /// log has one reader).
    fn discover(&self) -> BoxFuture<'_, Vec<RshimInfo>>;

    /// Download `bfb` into the cache and verify it; the verified file.
    fn prepare<'a>(
        &'a self,
        bfb: &'a BfbRef,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<PathBuf, FlashError>>;

    /// Verify, push BFB + bf.cfg into the rshim, follow the DPU to a verdict.
    fn flash(
        &self,
        req: FlashRequest,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<FlashReport, FlashError>>;
}

impl FlashJobs for Flasher {
    fn discover(&self) -> BoxFuture<'_, Vec<RshimInfo>> {
        Box::pin(Flasher::discover(self))
    }

    fn prepare<'a>(
        &'a self,
        bfb: &'a BfbRef,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<PathBuf, FlashError>> {
        Box::pin(Flasher::prepare(self, bfb, cancel))
    }

    fn flash(
        &self,
        req: FlashRequest,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<FlashReport, FlashError>> {
        Box::pin(Flasher::flash(self, req, progress, cancel))
    }
}

/// Production executor: BFB jobs and inventory through [`FlashJobs`], host
/// reboot through the configured command, the rest SKIPPED saying why.
pub struct HostExecutor {
    flash: Arc<dyn FlashJobs>,
    reboot_command: Vec<String>,
}

impl HostExecutor {
    pub fn new(flash: Arc<dyn FlashJobs>, reboot_command: Vec<String>) -> HostExecutor {
        HostExecutor {
            flash,
            reboot_command,
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
                format!(
                    "no DPU cluster configured (hostplane-agent {AGENT_VERSION} has no DPU cluster support)"
                ),
            ),
            Action::PrepareBfb(p) => match p.bfb {
                None => result(Failed, format!("prepare_bfb command {} names no bfb", cmd.id)),
                Some(bfb) => match self.flash.prepare(&bfb, &cancel).await {
                    Ok(path) => result(
                        CommandOutcome::Succeeded,
                        format!(
                            "bfb {} {} downloaded and verified: {}",
                            bfb.name,
                            bfb.version,
                            path.display()
                        ),
                    ),
                    Err(e) => flash_failure(&e),
                },
            },
            Action::FlashBfb(f) => match f.bfb {
                None => result(Failed, format!("flash_bfb command {} names no bfb", cmd.id)),
                Some(_) if cmd.rshim.is_empty() => result(
                    Failed,
                    format!(
                        "flash_bfb command {} for dpu {} names no rshim device",
                        cmd.id, cmd.dpu
                    ),
                ),
                Some(bfb) => {
                    let name = bfb.name.clone();
                    let req = FlashRequest {
                        rshim: cmd.rshim.clone(),
                        image: ImageSource::Ref(bfb),
                        bf_cfg: BfCfg::from(f.bf_cfg),
                    };
                    match self.flash.flash(req, progress, cancel).await {
                        Ok(r) => result(
                            CommandOutcome::Succeeded,
                            format!(
                                "{} installed bfb {name}: {:?} ({} bytes pushed in {:.0?})",
                                cmd.rshim, r.verdict_line, r.bytes_pushed, r.elapsed
                            ),
                        ),
                        Err(e) => flash_failure(&e),
                    }
                }
            },
            Action::RebootHost(_) => reboot(&self.reboot_command, &cancel).await,
        }
    }
}

impl Executor for HostExecutor {
    fn inventory(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async move {
            Inventory {
                rshims: self.flash.discover().await,
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

/// CANCELLED when the flash path stopped because it was asked to, else
/// FAILED; the message is the error's (it names the rshim or image and stage).
fn flash_failure(e: &FlashError) -> CommandResult {
    let cancelled = matches!(
        e,
        FlashError::Cancelled { .. }
            | FlashError::Download {
                source: CacheError::Cancelled { .. }
            }
    );
    let outcome = if cancelled {
        CommandOutcome::Cancelled
    } else {
        CommandOutcome::Failed
    };
    result(outcome, e.to_string())
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use hostplane_proto::v1::{
        Bridge, ConfigFwParameters, DpuClusterConfig, FlashBfb, InitializeInterface, PrepareBfb, RebootHost,
    };

    use super::*;

    /// Records what the executor asked of the flash path; fails when told to.
    #[derive(Default)]
    struct RecordingFlash {
        calls: Mutex<Vec<String>>,
        fail: Mutex<Option<FlashError>>,
    }

    impl FlashJobs for RecordingFlash {
        fn discover(&self) -> BoxFuture<'_, Vec<RshimInfo>> {
            Box::pin(async {
                vec![RshimInfo {
                    name: "rshim3".into(),
                    ..Default::default()
                }]
            })
        }

        fn prepare<'a>(
            &'a self,
            bfb: &'a BfbRef,
            _: &'a CancellationToken,
        ) -> BoxFuture<'a, Result<PathBuf, FlashError>> {
            self.calls.lock().unwrap().push(format!("prepare {}", bfb.name));
            let res = match self.fail.lock().unwrap().take() {
                Some(e) => Err(e),
                None => Ok(PathBuf::from("/cache/ab12")),
            };
            Box::pin(async { res })
        }

        fn flash(
            &self,
            req: FlashRequest,
            _: mpsc::Sender<FlashProgress>,
            _: CancellationToken,
        ) -> BoxFuture<'_, Result<FlashReport, FlashError>> {
            let ImageSource::Ref(bfb) = &req.image else {
                panic!("expected a Bfb ref")
            };
            let params = match &req.bf_cfg {
                BfCfg::Params(p) => p
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                BfCfg::None => "-".into(),
                BfCfg::Raw(_) => panic!("raw bf.cfg"),
            };
            self.calls
                .lock()
                .unwrap()
                .push(format!("flash {} {} {params}", req.rshim, bfb.name));
            let res = match self.fail.lock().unwrap().take() {
                Some(e) => Err(e),
                None => Ok(FlashReport {
                    bytes_pushed: 4096,
                    elapsed: Duration::from_secs(90),
                    log: vec![],
                    verdict_line: "INFO[MISC]: DPU is ready".into(),
                }),
            };
            Box::pin(async { res })
        }
    }

    fn executor(reboot: &[&str]) -> (HostExecutor, Arc<RecordingFlash>) {
        let flash = Arc::new(RecordingFlash::default());
        let reboot = reboot.iter().map(|s| s.to_string()).collect();
        (HostExecutor::new(flash.clone(), reboot), flash)
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
        assert_eq!(o, CommandOutcome::Succeeded);
        assert!(m.contains("doca-2.9") && m.contains("/cache/ab12"), "{m}");
        let bf_cfg = HashMap::from([("UPDATE_DPU_OS".to_string(), "yes".to_string())]);
        let (o, m) = exec(&ex, cmd(Some(Action::FlashBfb(FlashBfb { bfb: bfb(), bf_cfg })))).await;
        assert_eq!(o, CommandOutcome::Succeeded);
        assert!(
            m.contains("rshim0 installed bfb doca-2.9") && m.contains("DPU is ready"),
            "{m}"
        );
        let (o, _) = exec(
            &ex,
            cmd(Some(Action::FlashBfb(FlashBfb {
                bfb: bfb(),
                ..Default::default()
            }))),
        )
        .await;
        assert_eq!(o, CommandOutcome::Succeeded);
        assert_eq!(
            *flash.calls.lock().unwrap(),
            [
                "prepare doca-2.9",
                "flash rshim0 doca-2.9 UPDATE_DPU_OS=yes",
                "flash rshim0 doca-2.9 -"
            ]
        );
        let inv = ex.inventory().await;
        assert_eq!(inv.rshims[0].name, "rshim3");
    }

    #[tokio::test]
    async fn flash_errors_become_failed_or_cancelled_with_their_text() {
        let (ex, flash) = executor(&["true"]);
        let flash_cmd = || {
            cmd(Some(Action::FlashBfb(FlashBfb {
                bfb: bfb(),
                ..Default::default()
            })))
        };
        *flash.fail.lock().unwrap() = Some(FlashError::Busy {
            rshim: "rshim0".into(),
            reason: "EBUSY".into(),
        });
        let (o, m) = exec(&ex, flash_cmd()).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("rshim0") && m.contains("EBUSY"), "{m}");

        *flash.fail.lock().unwrap() = Some(FlashError::Cancelled {
            rshim: "rshim0".into(),
            stage: crate::flash::Stage::Push,
            pushed: 77,
        });
        let (o, m) = exec(&ex, flash_cmd()).await;
        assert_eq!(o, CommandOutcome::Cancelled);
        assert!(m.contains("77"), "{m}");

        *flash.fail.lock().unwrap() = Some(FlashError::Download {
            source: CacheError::Cancelled {
                url: "http://x/a.bfb".into(),
            },
        });
        let (o, _) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: bfb() })))).await;
        assert_eq!(o, CommandOutcome::Cancelled);
    }

    #[tokio::test]
    async fn malformed_commands_fail_naming_what_is_missing() {
        let (ex, flash) = executor(&["true"]);
        let (o, m) = exec(&ex, cmd(None)).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(
            m.contains("c1") && m.contains("dpu-a") && m.contains("no action"),
            "{m}"
        );
        let (o, m) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: None })))).await;
        assert_eq!(o, CommandOutcome::Failed);
        assert!(m.contains("names no bfb"), "{m}");
        let mut c = cmd(Some(Action::FlashBfb(FlashBfb {
            bfb: bfb(),
            ..Default::default()
        })));
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
            bridges: vec![Bridge {
                name: "br-dpu".into(),
                ..Default::default()
            }],
        };
        let ii = |host_network| Some(Action::InitializeInterface(InitializeInterface { host_network }));
        let fw = |pairs: &[(&str, &str)]| {
            let nic_firmware = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Action::ConfigFwParameters(ConfigFwParameters { nic_firmware }))
        };
        let cases = [
            (
                ii(Some(net)),
                vec!["not implemented", AGENT_VERSION, "8 VFs", "MTU 9000", "br-dpu"],
            ),
            (ii(None), vec!["no host network settings"]),
            (ii(Some(HostNetwork::default())), vec!["no host network settings"]),
            (fw(&[]), vec!["no NIC firmware parameters"]),
            (
                fw(&[("SRIOV_EN", "1"), ("NUM_OF_VFS", "8")]),
                vec!["not applied: NUM_OF_VFS, SRIOV_EN"],
            ),
            (
                Some(Action::DpuClusterConfig(DpuClusterConfig {})),
                vec!["no DPU cluster configured"],
            ),
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
        assert!(
            m.contains("cannot run reboot command `/nonexistent/reboot`"),
            "{m}"
        );
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
        let r = ex
            .execute(cmd(Some(Action::RebootHost(RebootHost {}))), tx, cancel)
            .await;
        assert_eq!(r.outcome(), CommandOutcome::Cancelled);
        assert!(r.message.contains("before it started"), "{}", r.message);
    }
}
