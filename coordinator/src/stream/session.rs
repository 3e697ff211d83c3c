//! One agent session after its Hello: sends the node's desired state whenever
//! it changes, takes ACK/NACK, progress, results and heartbeats, and ends
//! when the agent goes, a newer session replaces it, or the service stops.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hostplane_proto::v1::{
    AgentMessage, CommandEvent, CommandResult, CoordinatorMessage, Hello, agent_message, command_event,
    coordinator_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use hostplane_proto::limits::{MAX_AGENT_MESSAGE_BYTES, MAX_NAME};
use prost::Message as _;

use crate::audit::{Audit, Record};
use crate::desired::Subscription;
use crate::store::{Store, StoreError, now_ms};

use super::liveness::write_reachable;
use super::network::Ignored;
use super::status::{self, InventoryRecord, Pending};
use super::{Connected, Registration, Shared, StreamConfig, StreamError};

/// How long a session on a follower waits for the power caps of the
/// version it is about to send to be read from the store.
const CAPS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest a session waits between attempts to write its coalesced
/// status after failed ones (the wait doubles from `status_flush`).
const MAX_FLUSH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait for the session's first message, which must be a Hello.
pub async fn read_hello(
    inbound: &mut Streaming<AgentMessage>,
    within: std::time::Duration,
) -> Result<Hello, Status> {
    let first = match tokio::time::timeout(within, inbound.message()).await {
        Err(_) => return Err(StreamError::HelloTimeout(within).into()),
        Ok(r) => r?,
    };
    match first {
        Some(AgentMessage {
            msg: Some(agent_message::Msg::Hello(h)),
        }) if !h.node_name.is_empty() => {
            // Checked before anything quotes it (the refusal, the audit, the log).
            if h.node_name.len() > MAX_NAME {
                return Err(Status::invalid_argument(format!(
                    "hello.node_name: {} bytes, more than the maximum of {MAX_NAME}",
                    h.node_name.len()
                )));
            }
            // Bounded before anything is stored or auto-registered for it.
            if let Some(inv) = &h.inventory
                && let Err(why) = status::check_inventory("hello.inventory", inv)
            {
                tracing::warn!(node = %h.node_name, error = %why, "agent session refused: its Hello's inventory is over the limits");
                return Err(Status::invalid_argument(why));
            }
            Ok(h)
        }
        Some(AgentMessage {
            msg: Some(agent_message::Msg::Hello(_)),
        }) => Err(StreamError::NoNodeName.into()),
        _ => Err(StreamError::HelloFirst.into()),
    }
}

/// Log what recording an inventory changed; audit each auto-registered Device.
pub(super) fn report_inventory(audit: &Audit, node: &str, session: u64, rec: &InventoryRecord) {
    for d in &rec.gone {
        tracing::warn!(device = %d, "device removed from the host: no longer in the agent's inventory");
    }
    for d in &rec.back {
        tracing::info!(device = %d, "device back in the agent's inventory");
    }
    for status::Registered {
        device,
        rshim,
        serial,
        place,
    } in &rec.registered
    {
        tracing::info!(%device, %rshim, %serial, at = %place, "device auto-registered for a reported rshim");
        audit.record(Record {
            who: node,
            role: "agent",
            method: "AgentService/Session",
            target: &format!("device/{device}"),
            result: &format!("created: auto-registered {rshim} of node {node} (serial {serial}, {place})"),
            peer: &format!("session {session}"),
        });
    }
    for (rshim, why) in &rec.not_registered {
        tracing::warn!(%rshim, reason = %why, "reported rshim not auto-registered");
    }
}

enum Finish {
    Recorded,
    Repeat,
    Unknown,
    OtherNode(String),
}

pub struct Session {
    store: Store,
    cfg: StreamConfig,
    node: String,
    id: u64,
    /// The node's `agent_session` count this session's Hello recorded: its
    /// inventory updates are written only while the node's is still this.
    agent_session: u64,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    token: CancellationToken,
    /// Wakes when the node's desired state changes.
    desired: Subscription,
    /// Dropped when the session ends (unregisters it).
    connected: Option<Connected>,
    last_sent: Option<u64>,
    /// Command id -> Dpu, from the desired states sent.
    cmd_dpu: HashMap<String, String>,
    pending: Pending,
    flush_at: Option<Instant>,
    last_flush: Instant,
    /// Flushes that failed in a row (the next waits longer).
    flush_failures: u32,
    last_seen_written: Instant,
    /// Dpus whose ignored network report was logged at warn this session.
    ignored_reports: HashSet<String>,
    /// Auto-registered Devices are written here.
    audit: Audit,
}

impl Session {
    pub fn new(
        store: Store,
        cfg: StreamConfig,
        node: String,
        shared: Arc<Shared>,
        reg: Registration,
        tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) -> Session {
        let now = Instant::now();
        Session {
            store,
            cfg,
            node,
            id: reg.id,
            agent_session: 0,
            shared,
            tx,
            token: reg.token,
            desired: reg.desired,
            connected: Some(reg.guard),
            last_sent: None,
            cmd_dpu: HashMap::new(),
            pending: Pending::default(),
            flush_at: None,
            last_flush: now,
            flush_failures: 0,
            last_seen_written: now,
            ignored_reports: HashSet::new(),
            audit: Audit::default(),
        }
    }

    /// Write the Devices this session auto-registers to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Session {
        self.audit = audit;
        self
    }

    /// The node's `agent_session` count that this session's Hello recorded.
    pub fn with_agent_session(mut self, agent_session: u64) -> Session {
        self.agent_session = agent_session;
        self
    }

    fn lease_seconds(&self) -> u32 {
        self.cfg.lease.as_secs_f64().ceil().max(1.0) as u32
    }

    /// Send the node's current desired state if it is newer than the last
    /// one sent (or always, with `force`). Err when the agent is gone.
    pub async fn send_desired(&mut self, force: bool) -> Result<(), StreamError> {
        let hub = self.shared.power();
        let mut desired = loop {
            let caps = hub.caps(&self.node);
            // From the view: no SQL, and only this node's rows.
            let desired = crate::desired::compose(&*self.store.view(), &self.node, caps)?;
            // A follower's caps come from the store: send a version only with
            // the caps known through it (docs/ha.md §5). Always so on SQLite.
            if hub.caps_through() >= desired.version {
                break desired;
            }
            if !hub.wait_caps_through(desired.version, CAPS_WAIT).await {
                tracing::warn!(
                    version = desired.version,
                    caps_through = hub.caps_through(),
                    "power caps not read from the store within {CAPS_WAIT:?}; sending the desired state with the caps known"
                );
                break desired;
            }
        };
        let version = desired.version;
        if !force && self.last_sent.is_some_and(|v| version <= v) {
            return Ok(());
        }
        desired.lease_seconds = self.lease_seconds();
        let ids: HashMap<String, String> = desired
            .commands
            .iter()
            .map(|c| (c.id.clone(), c.dpu.clone()))
            .collect();
        let (n, nets) = (desired.commands.len(), desired.networks.len());
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Desired(desired)),
        };
        // Never send what the agent would refuse (its session would drop and
        // come back to the same message): say so on the Node instead.
        let size = msg.encoded_len();
        if size > MAX_AGENT_MESSAGE_BYTES {
            let why = format!(
                "desired state version {version} was not sent: {size} bytes ({n} commands, {nets} host \
                 networks) is more than the {MAX_AGENT_MESSAGE_BYTES} bytes the agent accepts, and the \
                 agent keeps the state it has; provision fewer dpus of node {} at once, or give them \
                 flavors with a smaller bf_cfg or host_network",
                self.node
            );
            tracing::error!(
                version,
                size,
                commands = n,
                networks = nets,
                "desired state too large for the agent; not sent"
            );
            let node = self.node.clone();
            self.store
                .write(move |t| status::record_not_sent(t, &node, &why))
                .await?;
            self.last_sent = Some(version);
            return Ok(());
        }
        self.cmd_dpu = ids;
        if self.tx.send(Ok(msg)).await.is_err() {
            return Err(StreamError::ShuttingDown);
        }
        crate::metrics::hub().desired_states_sent.inc();
        tracing::debug!(version, commands = n, networks = nets, "desired state sent");
        self.last_sent = Some(version);
        self.pending.sent = Some(version);
        self.schedule_flush();
        Ok(())
    }

    fn schedule_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some((self.last_flush + self.cfg.status_flush).max(Instant::now()));
        }
    }

    async fn flush(&mut self) {
        self.flush_at = None;
        let p = std::mem::take(&mut self.pending);
        if p.is_empty() {
            return;
        }
        let now = Instant::now();
        self.last_flush = now;
        if p.seen.is_some() {
            self.last_seen_written = now;
        }
        let (node, lease_ms) = (self.node.clone(), self.cfg.lease.as_millis() as i64);
        let auto_register = self.cfg.auto_register_devices;
        let session = self.agent_session;
        // Kept to put back if the write fails: the agent sends its inventory
        // only when it changes, so a lost update would leave presence wrong.
        let (inventory, acked, sent, seen) = (p.inventory.clone(), p.acked, p.sent, p.seen);
        match self
            .store
            .write(move |t| status::flush(t, &node, session, p, lease_ms, auto_register))
            .await
        {
            Ok(flushed) => {
                self.flush_failures = 0;
                for (dpu, why) in flushed.ignored {
                    self.log_ignored_report(&dpu, &why);
                }
                if let Some(rec) = flushed.inventory {
                    report_inventory(&self.audit, &self.node, self.id, &rec);
                }
                if let Some(current) = flushed.stale_inventory {
                    tracing::debug!(
                        agent_session = session,
                        current,
                        "inventory update not written: a newer session of the node recorded its own"
                    );
                }
            }
            Err(e) => {
                self.flush_failures = self.flush_failures.saturating_add(1);
                // Put back what a newer message has not replaced, and try again later.
                if self.pending.inventory.is_none() {
                    self.pending.inventory = inventory;
                }
                self.pending.acked = self.pending.acked.max(acked);
                self.pending.sent = self.pending.sent.max(sent);
                self.pending.seen = self.pending.seen.max(seen);
                let retry_in = self.retry_delay();
                if !self.pending.is_empty() {
                    self.flush_at = Some(Instant::now() + retry_in);
                }
                tracing::warn!(
                    error = %e,
                    failures = self.flush_failures,
                    ?retry_in,
                    "cannot record the agent's acks, progress, network reports and inventory; the acks, \
                     last-seen time and inventory are retried"
                )
            }
        }
    }

    /// How long after a failed flush the next one is tried: `status_flush`,
    /// doubling with each failure in a row, at most [`MAX_FLUSH_BACKOFF`]
    /// (never less than `status_flush`).
    fn retry_delay(&self) -> std::time::Duration {
        let doublings = self.flush_failures.saturating_sub(1).min(16);
        self.cfg
            .status_flush
            .saturating_mul(1 << doublings)
            .min(MAX_FLUSH_BACKOFF)
            .max(self.cfg.status_flush)
    }

    /// Once per Dpu and session at warn (the agent may repeat it on every reconcile), then at debug.
    fn log_ignored_report(&mut self, dpu: &str, why: &Ignored) {
        let first = self.ignored_reports.insert(dpu.to_string());
        let why = match why {
            Ignored::UnknownDpu => "no such dpu".to_string(),
            Ignored::OtherNode(owner) => format!("the dpu belongs to node {owner}"),
            Ignored::NotWanted => {
                "the dpu's host network is not in the desired state (late report)".to_string()
            }
        };
        if first {
            tracing::warn!(dpu, reason = %why, "network report ignored");
        } else {
            tracing::debug!(dpu, reason = %why, "network report ignored");
        }
    }

    pub async fn run(mut self, mut inbound: Streaming<AgentMessage>) {
        let closed = self.tx.clone();
        // False once a newer session of the node took the wakes (its token ends this one).
        let mut woken = true;
        let end: Option<StreamError> = loop {
            let flush_at = self.flush_at;
            tokio::select! {
                _ = self.token.cancelled() => {
                    break Some(if let Some(reason) = self.shared.untrusted_reason(self.id) {
                        StreamError::NoLongerTrusted { reason }
                    } else if self.shared.stop().is_cancelled() {
                        StreamError::ShuttingDown
                    } else {
                        StreamError::Replaced { node: self.node.clone() }
                    });
                }
                _ = closed.closed() => {
                    tracing::info!("agent went away");
                    break None;
                }
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Err(e) = self.handle(m).await {
                            break Some(e);
                        }
                    }
                    Ok(None) => {
                        tracing::info!("agent closed the session");
                        break None;
                    }
                    Err(status) => {
                        tracing::info!(code = ?status.code(), error = %status.message(), "agent session broke");
                        break None;
                    }
                },
                w = self.desired.changed(), if woken => {
                    woken = w;
                    // Compose, and send only if newer than what was sent: the
                    // change may be in the state already sent (it was routed
                    // after the session composed it), and a wake after a lag
                    // names no version.
                    if w && let Err(e) = self.send_desired(false).await {
                        break Some(e);
                    }
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush().await;
                }
            }
        };
        self.flush().await;
        drop(self.connected.take());
        if let Some(e) = end {
            tracing::info!(reason = %e, "agent session ended");
            let _ = self.tx.send(Err(e.into())).await;
        }
    }

    async fn handle(&mut self, m: AgentMessage) -> Result<(), StreamError> {
        if self.shared.live.touch(&self.node) {
            let (live, node) = (self.shared.live.clone(), self.node.clone());
            if self
                .store
                .write(move |t| write_reachable(t, &live, &node, true))
                .await?
            {
                tracing::info!("agent heard from again; node is reachable");
            }
        }
        self.pending.seen = Some(now_ms());
        if self.last_seen_written.elapsed() >= self.cfg.last_seen_interval {
            self.schedule_flush();
        }
        match m.msg {
            None | Some(agent_message::Msg::Heartbeat(_)) => {}
            Some(agent_message::Msg::Telemetry(b)) => {
                let (samples, epoch) = (b.samples.len(), b.epoch);
                let ack = self.shared.power().record_telemetry(&self.node, b);
                tracing::trace!(samples, epoch, acked = ack.seq, "telemetry batch");
                let msg = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::TelemetryAck(ack)),
                };
                if self.tx.send(Ok(msg)).await.is_err() {
                    return Err(StreamError::ShuttingDown);
                }
            }
            Some(agent_message::Msg::CapReport(r)) => {
                if r.safe_mode {
                    tracing::warn!(version = r.version, "agent reports it applies its safe power cap");
                }
                for c in r.caps.iter().filter(|c| !c.error.is_empty()) {
                    tracing::warn!(device = %c.device, requested = c.requested_watts, error = %c.error, "agent cannot enforce a power cap");
                }
                self.shared.power().record_cap_report(&self.node, r);
            }
            Some(agent_message::Msg::NetworkReport(r)) => {
                tracing::debug!(dpu = %r.dpu, applied = r.applied, changes = r.changes, "network report");
                // Coalesced like progress: the latest report per Dpu is written at the next flush.
                self.pending.reports.insert(r.dpu.clone(), r);
                self.schedule_flush();
            }
            Some(agent_message::Msg::Inventory(inv)) => {
                if let Err(why) = status::check_inventory("inventory", &inv) {
                    tracing::warn!(
                        error = %why,
                        "inventory update ignored: over the limits (docs/agent-protocol.md); the node's \
                         recorded inventory and its Devices' presence stay as they were"
                    );
                    return Ok(());
                }
                tracing::info!(
                    rshims = ?inv.rshims.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                    "the agent's rshim devices changed"
                );
                // Coalesced: the latest inventory is written at the next flush.
                self.pending.inventory = Some(inv);
                self.schedule_flush();
            }
            Some(agent_message::Msg::Hello(_)) => {
                return Err(StreamError::SecondHello {
                    node: self.node.clone(),
                });
            }
            Some(agent_message::Msg::Ack(a)) => {
                self.pending.acked = Some(self.pending.acked.unwrap_or(0).max(a.version));
                self.schedule_flush();
            }
            Some(agent_message::Msg::Nack(n)) => {
                tracing::warn!(version = n.version, error = %n.error, "agent rejected the desired state");
                crate::metrics::hub().nacks.inc();
                let node = self.node.clone();
                self.store
                    .write(move |t| status::record_nack(t, &node, n.version, &n.error))
                    .await?;
            }
            Some(agent_message::Msg::Event(CommandEvent { command_id, event })) => match event {
                None => {}
                Some(command_event::Event::Progress(p)) => {
                    if let Some(dpu) = self.dpu_of(&command_id).await? {
                        self.pending.progress.insert(dpu, (command_id, p));
                        self.schedule_flush();
                    }
                }
                Some(command_event::Event::Result(r)) => self.finish(command_id, r).await?,
            },
        }
        Ok(())
    }

    /// The Dpu a command of this node is for (None: not this node's command).
    async fn dpu_of(&mut self, id: &str) -> Result<Option<String>, StreamError> {
        if let Some(d) = self.cmd_dpu.get(id) {
            return Ok(Some(d.clone()));
        }
        let dpu = match self.store.view().command(id) {
            Some(row) if row.node == self.node => row.command.dpu.clone(),
            _ => return Ok(None),
        };
        self.cmd_dpu.insert(id.to_string(), dpu.clone());
        Ok(Some(dpu))
    }

    /// Record a command's final result; repeats are ignored (idempotent by id).
    async fn finish(&mut self, id: String, result: CommandResult) -> Result<(), StreamError> {
        self.pending.progress.retain(|_, (cmd, _)| *cmd != id);
        let (node, id2, res) = (self.node.clone(), id.clone(), result.clone());
        let f = self
            .store
            .write(move |t| {
                Ok::<_, StoreError>(match t.command(&id2)? {
                    None => Finish::Unknown,
                    Some(row) if row.node != node => Finish::OtherNode(row.node),
                    Some(row) if row.result.is_some() => Finish::Repeat,
                    Some(_) => {
                        t.finish_command(&id2, &res)?;
                        Finish::Recorded
                    }
                })
            })
            .await?;
        match f {
            Finish::Recorded => {
                tracing::info!(command = %id, outcome = result.outcome().as_str_name(), message = %result.message, "command finished")
            }
            Finish::Repeat => tracing::debug!(command = %id, "repeated result ignored"),
            Finish::Unknown => {
                tracing::debug!(command = %id, "result for an unknown (or pruned) command ignored")
            }
            Finish::OtherNode(other) => {
                tracing::warn!(command = %id, owner = %other, "result for another node's command refused")
            }
        }
        Ok(())
    }
}
