//! The simulated node agent: one connection and `Session` per boot, answers
//! every new command at once, keeps a journal across its reboots, and times the
//! coordinator's reaction to each answer.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{
    self, Ack, AgentMessage, CommandEvent, CommandOutcome, CommandResult, CoordinatorMessage, DesiredState,
    FlashProgress, Heartbeat, Hello, Inventory, RshimInfo, agent_message, command, command_event,
    coordinator_message,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Endpoint;

/// What a command is, for latency pairs. `NewBoot` is the Hello after a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Step {
    InitializeInterface,
    ConfigFwParameters,
    PrepareBfb,
    FlashBfb,
    RebootHost,
    NewBoot,
    DpuClusterConfig,
}

impl Step {
    fn of(c: &v1::Command) -> Option<Step> {
        Some(match c.action.as_ref()? {
            command::Action::InitializeInterface(_) => Step::InitializeInterface,
            command::Action::ConfigFwParameters(_) => Step::ConfigFwParameters,
            command::Action::PrepareBfb(_) => Step::PrepareBfb,
            command::Action::FlashBfb(_) => Step::FlashBfb,
            command::Action::RebootHost(_) => Step::RebootHost,
            command::Action::DpuClusterConfig(_) => Step::DpuClusterConfig,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::InitializeInterface => "initialize_interface",
            Step::ConfigFwParameters => "config_fw_parameters",
            Step::PrepareBfb => "prepare_bfb",
            Step::FlashBfb => "flash_bfb",
            Step::RebootHost => "reboot_host",
            Step::NewBoot => "hello (new boot)",
            Step::DpuClusterConfig => "dpu_cluster_config",
        }
    }

    /// The simulated agent's answer.
    fn answer(self) -> (CommandOutcome, &'static str) {
        match self {
            Step::InitializeInterface => (
                CommandOutcome::Skipped,
                "simulated agent: no host-network support; VFs and bridges left as they are",
            ),
            Step::ConfigFwParameters => (
                CommandOutcome::Skipped,
                "simulated agent: NIC firmware parameters not applied (SRIOV_EN, NUM_OF_VFS, LINK_TYPE_P1)",
            ),
            Step::PrepareBfb => (CommandOutcome::Succeeded, "image cached and verified (simulated)"),
            Step::FlashBfb => (CommandOutcome::Succeeded, "installed; DPU is ready (simulated)"),
            Step::RebootHost => (CommandOutcome::Succeeded, "reboot issued (simulated)"),
            Step::NewBoot => (CommandOutcome::Unspecified, ""),
            Step::DpuClusterConfig => (
                CommandOutcome::Skipped,
                "DPU cluster support does not exist yet; nothing to configure",
            ),
        }
    }
}

/// What one simulated agent saw (sent to the bench as JSON: the agents run
/// in their own process).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AgentReport {
    /// (what the agent did, the next command it received, how long that took).
    pub latencies: Vec<(Step, Step, Duration)>,
    /// When each Dpu's first command arrived: CLOCK_MONOTONIC, in ns (the
    /// same clock in the bench's process, see [`mono_ns`]).
    pub first_command_at: Vec<u64>,
    pub commands: BTreeMap<Step, u64>,
    pub desired: u64,
    pub resent: u64,
    pub sessions: u64,
    pub reboots: u64,
    /// Host reboots by node: how many nodes were rebooted 0, 1, 2, ... times.
    pub reboots_per_node: BTreeMap<u64, usize>,
    /// Sessions that ended other than by a reboot or the end of the bench.
    pub broken: Vec<String>,
    /// Connections or sessions that could not be opened and were retried.
    pub open_retries: u64,
    /// The first few reasons for those.
    pub open_failures: Vec<String>,
    /// Sessions that broke (the coordinator went away: a replica killed)
    /// and were opened again on the next endpoint, as a real agent does.
    pub failovers: u64,
    /// The first few reasons for those.
    pub failover_reasons: Vec<String>,
    /// FlashBFB commands received (new command ids, not re-listed ones) per Dpu.
    pub flashes: BTreeMap<String, u32>,
}

impl AgentReport {
    pub fn merge(&mut self, o: AgentReport) {
        self.latencies.extend(o.latencies);
        self.first_command_at.extend(o.first_command_at);
        for (k, v) in o.commands {
            *self.commands.entry(k).or_default() += v;
        }
        self.desired += o.desired;
        self.resent += o.resent;
        self.sessions += o.sessions;
        self.reboots += o.reboots;
        for (k, v) in o.reboots_per_node {
            *self.reboots_per_node.entry(k).or_default() += v;
        }
        self.broken.extend(o.broken);
        self.open_retries += o.open_retries;
        for f in o.open_failures {
            if self.open_failures.len() < 5 {
                self.open_failures.push(f);
            }
        }
        self.failovers += o.failovers;
        for f in o.failover_reasons {
            if self.failover_reasons.len() < 5 {
                self.failover_reasons.push(f);
            }
        }
        for (dpu, n) in o.flashes {
            *self.flashes.entry(dpu).or_default() += n;
        }
    }
}

/// Opens that may fail in a row (0.5 s apart) before the agent counts as broken.
const MAX_OPEN_RETRIES: u32 = 20;
/// Failovers one agent may make before it counts as broken (a coordinator
/// that keeps closing its sessions, not a replica killed now and then).
const MAX_FAILOVERS: u64 = 200;

enum End {
    Stop,
    Reboot,
    /// The connection or the session could not be opened (e.g. the
    /// coordinator's listen backlog overflowed): retried, as a real agent does.
    OpenFailed(String),
    /// The session ended the way a coordinator that goes away ends it (the
    /// connection reset or closed, UNAVAILABLE): with several endpoints the
    /// agent opens the next one; with one it is broken.
    Lost(String),
    Broken(String),
}

/// One simulated node agent: its journal and timers survive its reboots.
pub struct Agent {
    node: String,
    rshims: Vec<String>,
    /// The coordinator's endpoints (replicas), tried in turn from `next`.
    urls: Vec<String>,
    next: usize,
    boot: u64,
    last_applied: u64,
    /// Command id -> the result sent (re-sent while the command is listed).
    journal: HashMap<String, CommandResult>,
    /// Dpu -> when the agent did what should make the coordinator issue its next command.
    trigger: HashMap<String, (Instant, Step)>,
    /// Dpu -> its latest command.
    last: HashMap<String, Step>,
    report: AgentReport,
}

/// CLOCK_MONOTONIC in ns: one clock for every process on the machine
/// (an `Instant` cannot cross a process boundary).
pub fn mono_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn msg(m: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

impl Agent {
    /// `urls`: the replicas; the agent starts with `urls[first % len]`.
    pub fn new(node: &str, rshims: Vec<String>, urls: Vec<String>, first: usize) -> Agent {
        let next = first % urls.len().max(1);
        Agent {
            node: node.into(),
            rshims,
            urls,
            next,
            boot: 1,
            last_applied: 0,
            journal: HashMap::new(),
            trigger: HashMap::new(),
            last: HashMap::new(),
            report: AgentReport::default(),
        }
    }

    pub async fn run(mut self, hello: mpsc::UnboundedSender<()>, stop: CancellationToken) -> AgentReport {
        let mut hello = Some(hello);
        // Failed opens in a row: past MAX_OPEN_RETRIES the agent counts as broken.
        let mut failed_opens = 0;
        loop {
            let why = match self.session(&mut hello, &stop).await {
                Ok(End::Stop) => break,
                Ok(End::Reboot) => {
                    failed_opens = 0;
                    self.boot += 1;
                    self.report.reboots += 1;
                    continue;
                }
                _ if stop.is_cancelled() => break,
                Ok(End::Lost(why)) if self.urls.len() > 1 && self.report.failovers < MAX_FAILOVERS => {
                    // The replica went away: the next one, after a short
                    // jittered pause so that its agents do not all arrive at once.
                    self.report.failovers += 1;
                    if self.report.failover_reasons.is_empty() {
                        self.report.failover_reasons.push(format!("{}: {why}", self.node));
                    }
                    self.next = (self.next + 1) % self.urls.len();
                    let jitter = Duration::from_millis(rand::random_range(0..200));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(jitter) => {}
                    }
                    continue;
                }
                Ok(End::OpenFailed(why)) if failed_opens < MAX_OPEN_RETRIES => {
                    failed_opens += 1;
                    // A replica that is down: the next one.
                    self.next = (self.next + 1) % self.urls.len().max(1);
                    self.report.open_retries += 1;
                    if self.report.open_failures.is_empty() {
                        self.report.open_failures.push(format!("{}: {why}", self.node));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
                Ok(End::OpenFailed(why)) => {
                    format!("{MAX_OPEN_RETRIES} opens in a row failed; the last: {why}")
                }
                Ok(End::Broken(why) | End::Lost(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            self.report.broken.push(format!("{}: {why}", self.node));
            if self.report.broken.len() >= 5 {
                break;
            }
            // Reconnect after a break as a real agent would, without spinning.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        *self
            .report
            .reboots_per_node
            .entry(self.report.reboots)
            .or_default() += 1;
        self.report
    }

    /// One connection and stream, until a reboot, a break, or the end of the bench.
    async fn session(
        &mut self,
        connected: &mut Option<mpsc::UnboundedSender<()>>,
        stop: &CancellationToken,
    ) -> Result<End> {
        let url = self.urls[self.next].clone();
        let channel = match Endpoint::from_shared(url.clone())?.connect().await {
            Ok(c) => c,
            Err(e) => return Ok(End::OpenFailed(format!("connecting to {url}: {e:#}"))),
        };
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let inventory = Inventory {
            rshims: (self.rshims.iter())
                .map(|r| RshimInfo {
                    name: r.clone(),
                    dev_info: "BlueField-3(Rev 1)".into(),
                    ..Default::default()
                })
                .collect(),
        };
        let hello = Hello {
            node_name: self.node.clone(),
            agent_version: "bench-sim".into(),
            boot_id: format!("{}-boot-{}", self.node, self.boot),
            inventory: Some(inventory),
            last_applied_version: self.last_applied,
        };
        tx.send(msg(agent_message::Msg::Hello(hello))).await?;
        let hello_at = Instant::now();
        for (dpu, step) in &self.last {
            // After a failed open, from the first Hello of this boot.
            let retried = self.trigger.get(dpu).is_some_and(|t| t.1 == Step::NewBoot);
            if *step == Step::RebootHost && !retried {
                self.trigger.insert(dpu.clone(), (hello_at, Step::NewBoot));
            }
        }
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let why = format!("opening the agent session: {:?}: {}", s.code(), s.message());
                // A transport failure is retried; the coordinator's refusal is a break.
                return Ok(match s.code() {
                    Code::Unknown | Code::Unavailable | Code::Cancelled => End::OpenFailed(why),
                    _ => End::Broken(why),
                });
            }
        };
        self.report.sessions += 1;
        let mut lease = Duration::from_secs(15);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(End::Stop),
                _ = heartbeat.tick() => {
                    let hb = Heartbeat { sent_at_ms: 0 };
                    if tx.send(msg(agent_message::Msg::Heartbeat(hb))).await.is_err() {
                        return Ok(End::Lost(format!("the session on {url} closed its send side")));
                    }
                }
                m = inbound.message() => {
                    let d = match m {
                        Ok(Some(CoordinatorMessage { msg: Some(coordinator_message::Msg::Desired(d)) })) => d,
                        Ok(Some(_)) => continue,
                        Ok(None) => return Ok(End::Lost(format!("{url} closed the session"))),
                        Err(s) => {
                            let why = format!("session on {url} ended: {:?}: {}", s.code(), s.message());
                            return Ok(match s.code() {
                                Code::Unknown | Code::Unavailable | Code::Cancelled => End::Lost(why),
                                _ => End::Broken(why),
                            });
                        }
                    };
                    if let Some(c) = connected.take() {
                        let _ = c.send(());
                    }
                    let granted = Duration::from_secs(u64::from(d.lease_seconds.max(1)));
                    if granted != lease {
                        lease = granted;
                        heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
                    }
                    match self.apply(&tx, d).await {
                        Ok(true) => return Ok(End::Reboot),
                        Ok(false) => {}
                        // The stream went away under the answer (a replica killed).
                        Err(e) if tx.is_closed() => return Ok(End::Lost(format!("{url}: {e:#}"))),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Answer a desired state; true when it asked for a reboot.
    async fn apply(&mut self, tx: &mpsc::Sender<AgentMessage>, d: DesiredState) -> Result<bool> {
        let now = Instant::now();
        self.report.desired += 1;
        if d.version < self.last_applied {
            return Ok(false);
        }
        let send = |m| async { tx.send(msg(m)).await.context("the session's send side is closed") };
        let mut reboot = false;
        for c in d.commands {
            if let Some(r) = self.journal.get(&c.id) {
                self.report.resent += 1;
                let ev = CommandEvent {
                    command_id: c.id.clone(),
                    event: Some(command_event::Event::Result(r.clone())),
                };
                send(agent_message::Msg::Event(ev)).await?;
                continue;
            }
            let step = Step::of(&c).with_context(|| format!("command {} has no action", c.id))?;
            match self.trigger.remove(&c.dpu) {
                Some((at, after)) => self.report.latencies.push((after, step, now - at)),
                None if !self.last.contains_key(&c.dpu) => self.report.first_command_at.push(mono_ns()),
                None => {}
            }
            self.last.insert(c.dpu.clone(), step);
            *self.report.commands.entry(step).or_default() += 1;
            if step == Step::FlashBfb {
                *self.report.flashes.entry(c.dpu.clone()).or_default() += 1;
            }
            if step == Step::FlashBfb {
                let p = FlashProgress {
                    bytes_pushed: 1_500_000_000,
                    bytes_total: 1_500_000_000,
                    rate_bytes_per_sec: 900e6,
                    stage: "installer".into(),
                    last_log_line: " INFO[MISC]: Ubuntu installation started".into(),
                };
                let ev = CommandEvent {
                    command_id: c.id.clone(),
                    event: Some(command_event::Event::Progress(p)),
                };
                send(agent_message::Msg::Event(ev)).await?;
            }
            let (outcome, message) = step.answer();
            let r = CommandResult {
                outcome: outcome as i32,
                message: message.into(),
                finished_at_ms: 0,
                power_cycle_required: false,
            };
            let ev = CommandEvent {
                command_id: c.id.clone(),
                event: Some(command_event::Event::Result(r.clone())),
            };
            send(agent_message::Msg::Event(ev)).await?;
            self.journal.insert(c.id, r);
            self.trigger.insert(c.dpu, (Instant::now(), step));
            reboot |= step == Step::RebootHost;
        }
        send(agent_message::Msg::Ack(Ack { version: d.version })).await?;
        self.last_applied = d.version;
        Ok(reboot)
    }
}
