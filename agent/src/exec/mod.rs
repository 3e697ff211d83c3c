//! What the agent does for each command: the [`Executor`] trait the session
//! drives, and [`HostExecutor`], the production dispatch.
//!
//! Outcome messages are for people: they say what happened and, for SKIPPED,
//! why there was nothing to do.
mod nicfw;
mod reboot;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hostplane_proto::v1::{
    BfbRef, Command, CommandOutcome, CommandResult, FlashProgress, HostNetwork, Inventory, RshimInfo,
    command::Action,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bfb_cache::CacheError;
use crate::bfcfg::BfCfg;
use crate::flash::{FlashError, FlashReport, FlashRequest, Flasher, ImageSource};
use crate::session::network::{self, NetSync, NoReport};
pub use nicfw::{NicFirmware, normalize_pci, pf0_of_rshim};
pub use reboot::{HostPowerCycle, NO_BMC, PowerCycleFailure};
use reboot::{power_cycle, reboot};

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

pub use hostplane_common::time::now_ms;

/// A final result stamped with the current time.
pub fn result(outcome: CommandOutcome, message: impl Into<String>) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message: message.into(),
        finished_at_ms: now_ms(),
        power_cycle_required: false,
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

/// How long `initialize_interface` waits for a desired state that lists its
/// Dpu's network (normally it is there before the command starts).
pub const NETWORK_REPORT_WAIT: Duration = Duration::from_secs(60);

/// Production executor: BFB jobs and inventory through [`FlashJobs`], host
/// networks through the session's [`NetSync`], NIC firmware parameters
/// through [`NicFirmware`], host reboot through the configured command (a
/// power cycle through the BMC), the rest SKIPPED saying why.
pub struct HostExecutor {
    flash: Arc<dyn FlashJobs>,
    reboot_command: Vec<String>,
    /// None: host networking is disabled.
    network: Option<NetSync>,
    network_wait: Duration,
    /// None: NIC firmware configuration is disabled (`nic_firmware.enabled: false`).
    nic_firmware: Option<NicFirmware>,
    /// None: no BMC (`power.bmc.url` unset); power cycles are external.
    bmc: Option<Arc<dyn HostPowerCycle>>,
}

impl HostExecutor {
    pub fn new(flash: Arc<dyn FlashJobs>, reboot_command: Vec<String>) -> HostExecutor {
        HostExecutor {
            flash,
            reboot_command,
            network: None,
            network_wait: NETWORK_REPORT_WAIT,
            nic_firmware: None,
            bmc: None,
        }
    }

    /// Apply `config_fw_parameters` with `nic` (without it they are SKIPPED,
    /// saying NIC firmware configuration is disabled).
    pub fn with_nic_firmware(mut self, nic: NicFirmware) -> HostExecutor {
        self.nic_firmware = Some(nic);
        self
    }

    /// Power-cycle through `bmc` for `reboot_host { power_cycle: true }`
    /// (without it those are SKIPPED: the node needs an external power cycle).
    pub fn with_bmc(mut self, bmc: Arc<dyn HostPowerCycle>) -> HostExecutor {
        self.bmc = Some(bmc);
        self
    }

    /// Answer `initialize_interface` from the host network the session applies
    /// (the same [`NetSync`] the session runs with); `wait` bounds the wait for
    /// a desired state that lists the Dpu's network.
    pub fn with_network(mut self, network: NetSync, wait: Duration) -> HostExecutor {
        self.network = Some(network);
        self.network_wait = wait;
        self
    }

    /// InitializeInterface: the session applied the desired state's networks
    /// before starting this command; the result is that Dpu's report.
    async fn initialize_interface(
        &self,
        dpu: &str,
        net: Option<&HostNetwork>,
        cancel: &CancellationToken,
    ) -> CommandResult {
        if net.is_none_or(network::is_empty) {
            return result(
                CommandOutcome::Skipped,
                "flavor has no host network settings; nothing to do",
            );
        }
        let Some(sync) = &self.network else {
            return result(
                CommandOutcome::Skipped,
                format!(
                    "host networking is disabled on this agent (network.enabled: false); not applied: {}",
                    host_network_summary(net)
                ),
            );
        };
        match sync.report_for(dpu, self.network_wait, cancel).await {
            Ok(r) => network::initialize_result(&r),
            Err(NoReport::Cancelled) => result(
                CommandOutcome::Cancelled,
                "cancelled while waiting for the host network",
            ),
            Err(NoReport::NotListed(wait)) => result(
                CommandOutcome::Failed,
                format!(
                    "no desired state listed a host network for dpu {dpu} within {wait:?}, though its flavor has \
                     one ({}); the coordinator must send DesiredState.networks (is it older than this agent?)",
                    host_network_summary(net)
                ),
            ),
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
            Action::InitializeInterface(ii) => {
                self.initialize_interface(&cmd.dpu, ii.host_network.as_ref(), &cancel)
                    .await
            }
            Action::ConfigFwParameters(fw) => match &self.nic_firmware {
                Some(nic) if !fw.nic_firmware.is_empty() => {
                    nicfw::config_fw(nic, &fw, &cmd.dpu, &cmd.rshim, self.flash.discover(), &cancel).await
                }
                _ => nicfw::skipped(&fw.nic_firmware),
            },
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
                        bf_cfg: BfCfg::from_flavor(f.bf_cfg, f.dpu_os),
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
            Action::RebootHost(r) if r.power_cycle => power_cycle(self.bmc.as_deref(), &cancel).await,
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

/// "8 VFs; MTU 9000; bridges br-dpu, br-2; 1 SR-IOV PF; 2 routes".
fn host_network_summary(net: Option<&HostNetwork>) -> String {
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
        if !n.sriov.is_empty() {
            parts.push(format!("{} SR-IOV PF(s)", n.sriov.len()));
        }
        if !n.routes.is_empty() {
            parts.push(format!("{} route(s)", n.routes.len()));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
