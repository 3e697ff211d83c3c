//! The session owner: one task holds all of the agent's state (journal,
//! applied version, running commands, the current connection) and reacts to
//! the coordinator, to command tasks and to timers. No locks: command tasks
//! talk to it through one event channel; it talks to the coordinator through
//! one outbound channel per connection.
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hostplane_proto::v1::{
    Ack, AgentMessage, Command, CommandEvent, CommandOutcome, CommandResult, CoordinatorMessage,
    DesiredState, DpuNetwork, FlashProgress, Heartbeat, Hello, Nack, NetworkReport, RshimInfo,
    agent_message::Msg, command_event, coordinator_message,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::Backoff;
use super::command::{self, Event};
use super::connector::{Connector, Inbound};
use super::journal::Journal;
use super::network::{NetSync, next_report};
use super::power::{PowerEvent, PowerSession, cap_report};
use super::{desired, persist};
use crate::config::Config;
use crate::exec::{AGENT_VERSION, Executor, action_name, now_ms, result};
use crate::rshim::RshimSet;

/// Messages queued for the coordinator per connection.
const OUTBOUND_CAPACITY: usize = 256;
const EVENTS_CAPACITY: usize = 256;
/// A send the coordinator does not take within this long drops the connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What the owner starts from (loaded from `state_dir` by `run`).
pub struct Restored {
    pub journal: Journal,
    pub applied: Option<DesiredState>,
    pub boot_id: String,
}

struct Running {
    cancel: CancellationToken,
    /// The coordinator withdrew the command (CANCELLED is then the truth;
    /// a command stopped by the agent's own shutdown is INTERRUPTED).
    withdrawn: bool,
}

/// What the daemon runs once the commands have stopped and before the
/// coordinator stream closes: its subsystems' ordered drain.
pub type BeforeClose = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The outbound half of one connection.
struct Link {
    tx: mpsc::Sender<AgentMessage>,
    /// Why the connection is no longer usable, once a send failed.
    broken: Option<String>,
    /// Shutting down: never wait for the network.
    closing: bool,
}

impl Link {
    /// Send a message that must not be dropped silently (results, ACK/NACK):
    /// waits for room, and marks the link broken when the peer is gone or stalled.
    async fn send(&mut self, msg: AgentMessage) {
        if self.broken.is_some() {
            return;
        }
        if self.closing {
            self.try_send(msg);
            return;
        }
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.broken = Some("the stream closed".into()),
            Err(_) => self.broken = Some(format!("the coordinator took nothing for {SEND_TIMEOUT:?}")),
        }
    }

    /// Send a message that may be dropped when the stream is backed up (progress, heartbeats).
    fn try_send(&mut self, msg: AgentMessage) {
        let _ = self.tx.try_send(msg);
    }
}

enum End {
    Shutdown(Link),
    Lost(String),
}

pub struct Owner {
    cfg: Config,
    executor: Arc<dyn Executor>,
    /// Host networking (None: disabled in the config).
    net: Option<NetSync>,
    /// Drift-repair reports from the network manager.
    drift: Option<broadcast::Receiver<NetworkReport>>,
    /// The networks of the desired state found on disk, re-applied at start.
    restored_networks: Option<Vec<DpuNetwork>>,
    /// Networks were sent while networking is disabled (logged once).
    warned_disabled: bool,
    journal: Journal,
    boot_id: String,
    applied: Option<u64>,
    lease: Duration,
    running: HashMap<String, Running>,
    tasks: JoinSet<()>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    /// Telemetry out, caps in, cap reports out.
    power: PowerSession,
    shutdown: CancellationToken,
    before_close: Option<BeforeClose>,
    /// The rshim devices on the host, from the hot-plug watch (None: `rshim_watch.enabled: false`).
    rshims: Option<watch::Receiver<RshimSet>>,
    /// The rshim entries of the inventory the coordinator last got (in Hello or an update),
    /// by name: a DPU swapped for another under the same rshim<N> differs here, not in the names.
    reported: Vec<RshimInfo>,
}

impl Owner {
    pub fn new(
        cfg: Config,
        executor: Arc<dyn Executor>,
        net: Option<NetSync>,
        power: PowerSession,
        restored: Restored,
        shutdown: CancellationToken,
    ) -> Owner {
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        let lease = lease_of(restored.applied.as_ref(), cfg.session.default_lease);
        // The stored caps hold until the coordinator says otherwise (and the
        // safe cap once their lease lapses without it).
        if let Some(ds) = &restored.applied {
            power.desired(ds);
        }
        Owner {
            executor,
            drift: net.as_ref().map(NetSync::subscribe),
            net,
            restored_networks: restored.applied.as_ref().map(|d| d.networks.clone()),
            warned_disabled: false,
            journal: restored.journal,
            boot_id: restored.boot_id,
            applied: restored.applied.map(|d| d.version),
            lease,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            events_tx,
            events_rx,
            power,
            shutdown,
            before_close: None,
            rshims: None,
            reported: Vec::new(),
            cfg,
        }
    }

    /// Run `drain` at shutdown after the commands stopped, before the
    /// stream to the coordinator closes.
    pub fn before_close(mut self, drain: Option<BeforeClose>) -> Owner {
        self.before_close = drain;
        self
    }

    /// Connect, serve, reconnect with backoff, until `shutdown`; then stop
    /// the running commands within the grace period.
    pub async fn run(mut self, connector: Arc<dyn Connector>) {
        let s = &self.cfg.session;
        let mut backoff = Backoff::new(s.backoff_initial, s.backoff_max);
        let stable_after = s.stable_after;
        let mut last_link = None;
        let mut failures: u64 = 0;
        if self.reapply_restored_networks().await.is_none() {
            self.stop(None).await;
            return;
        }
        if self.cfg.rshim_watch.enabled {
            self.rshims = Some(crate::rshim::watch(
                self.cfg.dev_root.clone(),
                &self.cfg.rshim_watch,
                self.shutdown.child_token(),
            ));
        }
        loop {
            let executor = self.executor.clone();
            let Some(inventory) = self.drive(async move { executor.inventory().await }).await else {
                break;
            };
            self.reported = by_name(&inventory.rshims);
            let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
            let hello = self.hello(inventory);
            let _ = tx.try_send(hello);
            tracing::debug!(coordinator = connector.target(), "connecting");
            let Some(opened) = self.drive(connector.open(ReceiverStream::new(rx))).await else {
                break;
            };
            match opened {
                Err(e) => {
                    failures += 1;
                    // Rate-limited: a coordinator that is down for hours must not flood the log.
                    if failures.is_power_of_two() || failures.is_multiple_of(100) {
                        tracing::warn!(error = %e, failures, "cannot open the coordinator session");
                    } else {
                        tracing::debug!(error = %e, failures, "cannot open the coordinator session");
                    }
                }
                Ok(inbound) => {
                    tracing::info!(coordinator = connector.target(), "connected to the coordinator");
                    failures = 0;
                    let up_since = Instant::now();
                    let link = Link {
                        tx,
                        broken: None,
                        closing: false,
                    };
                    match self.serve(link, inbound).await {
                        End::Shutdown(link) => {
                            last_link = Some(link);
                            break;
                        }
                        End::Lost(reason) => {
                            tracing::warn!(%reason, "lost the coordinator session");
                        }
                    }
                    if up_since.elapsed() >= stable_after {
                        backoff.reset();
                    }
                }
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tracing::debug!(retry_in = ?delay, "reconnecting to the coordinator after a delay");
            if self.drive(tokio::time::sleep(delay)).await.is_none() {
                break;
            }
        }
        self.stop(last_link).await;
    }

    /// Wait for `fut` while still handling command events (results produced
    /// while disconnected go to the journal). None on shutdown.
    async fn drive<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                out = &mut fut => return Some(out),
                Some(ev) = self.events_rx.recv() => self.on_event(ev, None).await,
                r = next_report(&mut self.drift) => self.on_drift(r, None).await,
                // Reports wait for the next connection; telemetry stays in its buffer.
                _ = self.power.next() => {}
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
    }

    /// One connection, from the first coordinator message to its end.
    async fn serve(&mut self, mut link: Link, mut inbound: Inbound) -> End {
        let mut period = self.lease;
        let mut heartbeat = heartbeat_timer(period);
        // The inventory is read again every rescan_interval while the watch is on and sent if
        // any entry changed: an rshim whose misc could not be read (the driver was not ready), a
        // DPU swapped under the same rshim<N> that no inotify event told of (a FUSE dev root).
        let mut reread = tokio::time::interval_at(
            Instant::now() + self.cfg.rshim_watch.rescan_interval,
            self.cfg.rshim_watch.rescan_interval,
        );
        reread.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // What the coordinator may have missed while away (drift repairs, the start-up re-apply).
        for r in self.net.as_ref().map(NetSync::latest).unwrap_or_default() {
            link.send(network_report(r)).await;
        }
        if let Some(m) = self.power.connected() {
            link.send(m).await;
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown(link),
                msg = inbound.next() => match msg {
                    Some(Ok(CoordinatorMessage { msg: Some(coordinator_message::Msg::Desired(ds)) })) => {
                        self.power.heard();
                        self.apply(ds, &mut link).await;
                        if self.lease != period {
                            period = self.lease;
                            heartbeat = heartbeat_timer(period);
                        }
                    }
                    Some(Ok(CoordinatorMessage { msg: Some(coordinator_message::Msg::TelemetryAck(a)) })) => {
                        self.power.heard();
                        self.power.acked(&a);
                    }
                    Some(Ok(_)) => tracing::debug!("ignoring an empty coordinator message"),
                    Some(Err(status)) => {
                        return End::Lost(format!("stream error {:?}: {}", status.code(), status.message()));
                    }
                    None => return End::Lost("the coordinator closed the stream".into()),
                },
                Some(ev) = self.events_rx.recv() => self.on_event(ev, Some(&mut link)).await,
                r = next_report(&mut self.drift) => self.on_drift(r, Some(&mut link)).await,
                () = next_rshims(&mut self.rshims) => self.on_rshims(&mut link).await,
                _ = reread.tick(), if self.rshims.is_some() => {
                    self.on_rshims(&mut link).await
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                ev = self.power.next() => match ev {
                    PowerEvent::BatchDue => {
                        for m in self.power.batches() {
                            link.send(m).await;
                        }
                    }
                    PowerEvent::Report(r) => link.send(cap_report(r)).await,
                },
                _ = heartbeat.tick() => {
                    // The stream is up (HTTP/2 keepalive breaks it when the coordinator is gone).
                    self.power.heard();
                    link.try_send(msg(Msg::Heartbeat(Heartbeat { sent_at_ms: now_ms() })));
                }
            }
            if let Some(reason) = link.broken.take() {
                return End::Lost(reason);
            }
        }
    }

    /// The host's rshim devices may have changed (hot-plug, or an rshim
    /// that could not be read is due to be read again): read the inventory
    /// and send it whole, unless every entry (name, serial, PCI address or
    /// USB path, DEV_INFO, error) is what the coordinator already has: a
    /// DPU swapped for another that got the same rshim<N> name is reported.
    /// While disconnected nothing is sent: the next Hello carries the inventory.
    async fn on_rshims(&mut self, link: &mut Link) {
        let inventory = self.executor.inventory().await;
        let now = by_name(&inventory.rshims);
        if now == self.reported {
            return;
        }
        let names = |v: &[RshimInfo]| v.iter().map(|r| r.name.clone()).collect::<RshimSet>();
        let (before, after) = (names(&self.reported), names(&now));
        let changed: Vec<&str> = now
            .iter()
            .filter(|r| self.reported.iter().any(|o| o.name == r.name && o != *r))
            .map(|r| r.name.as_str())
            .collect();
        tracing::info!(
            added = ?after.difference(&before).collect::<Vec<_>>(),
            removed = ?before.difference(&after).collect::<Vec<_>>(),
            changed = ?changed,
            rshims = ?after,
            "rshim devices changed; sending the inventory"
        );
        self.reported = now;
        link.send(msg(Msg::Inventory(inventory))).await;
    }

    fn hello(&self, inventory: hostplane_proto::v1::Inventory) -> AgentMessage {
        msg(Msg::Hello(Hello {
            node_name: self.cfg.node_name.clone(),
            agent_version: AGENT_VERSION.to_string(),
            boot_id: self.boot_id.clone(),
            inventory: Some(inventory),
            last_applied_version: self.applied.unwrap_or(0),
        }))
    }

    /// Step 3 of the protocol: store, start new, cancel withdrawn, re-send
    /// finished, then ACK (or NACK and keep what runs).
    async fn apply(&mut self, ds: DesiredState, link: &mut Link) {
        let version = ds.version;
        if let Some(applied) = self.applied
            && version < applied
        {
            tracing::warn!(
                version,
                applied,
                "ignoring a desired state older than the one applied; if the coordinator's store was reset, \
                 remove {} and restart the agent",
                self.cfg.state_dir.join(persist::DESIRED_FILE).display()
            );
            return;
        }
        if let Err(error) = desired::check(&ds, &self.cfg.node_name) {
            tracing::warn!(version, %error, "refusing the desired state");
            link.send(msg(Msg::Nack(Nack { version, error }))).await;
            return;
        }
        if let Some(net) = &self.net
            && let Err(e) = net.validate(&ds.networks)
        {
            let error = format!("host network refused, nothing changed: {e}");
            tracing::warn!(version, %error, "refusing the desired state");
            link.send(msg(Msg::Nack(Nack { version, error }))).await;
            return;
        }
        if let Err(e) = persist::store_desired(&self.cfg.state_dir, &ds).await {
            let error = format!("cannot store the desired state: {e}");
            tracing::error!(version, %error, "refusing the desired state");
            link.send(msg(Msg::Nack(Nack { version, error }))).await;
            return;
        }
        // Before any command starts: InitializeInterface reads the result.
        self.apply_networks(&ds, link).await;
        let listed: HashSet<&str> = ds.commands.iter().map(|c| c.id.as_str()).collect();
        for (id, r) in &mut self.running {
            if !listed.contains(id.as_str()) && !r.cancel.is_cancelled() {
                tracing::info!(command = %id, "command withdrawn from the desired state; cancelling it");
                r.withdrawn = true;
                r.cancel.cancel();
            }
        }
        let forgotten = self.journal.forget_unlisted(&listed);
        let mut start = Vec::new();
        let mut resend = Vec::new();
        for c in &ds.commands {
            if self.running.contains_key(&c.id) {
                continue;
            }
            match self.journal.get(&c.id) {
                Some(entry) => resend.extend(entry.result.clone().map(|r| (c.id.clone(), r))),
                None => {
                    self.journal.start(c);
                    start.push(c.clone());
                }
            }
        }
        if (forgotten > 0 || !start.is_empty())
            && let Err(e) = self.journal.save().await
        {
            tracing::error!(error = %e, "cannot save the command journal");
            // A command the journal cannot remember could run twice after a restart: do not start it.
            for c in start.drain(..) {
                let r = result(
                    CommandOutcome::Failed,
                    format!("command {} was not started: {e}", c.id),
                );
                self.journal.finish(&c.id, r.clone());
                resend.push((c.id, r));
            }
        }
        let started = start.len();
        for c in start {
            self.spawn(c);
        }
        for (id, r) in resend {
            link.send(result_event(id, r)).await;
        }
        self.applied = Some(version);
        self.lease = lease_of(Some(&ds), self.cfg.session.default_lease);
        self.power.desired(&ds);
        link.send(msg(Msg::Ack(Ack { version }))).await;
        tracing::info!(
            version,
            commands = ds.commands.len(),
            started,
            running = self.running.len(),
            "applied desired state"
        );
    }

    fn spawn(&mut self, cmd: Command) {
        let cancel = self.shutdown.child_token();
        let span = tracing::info_span!(
            "command",
            id = %cmd.id,
            dpu = %cmd.dpu,
            rshim = %cmd.rshim,
            kind = action_name(cmd.action.as_ref())
        );
        self.running.insert(
            cmd.id.clone(),
            Running {
                cancel: cancel.clone(),
                withdrawn: false,
            },
        );
        let task = command::run(self.executor.clone(), cmd, cancel, self.events_tx.clone());
        self.tasks.spawn(task.instrument(span));
    }

    async fn on_event(&mut self, ev: Event, link: Option<&mut Link>) {
        match ev {
            Event::Progress { id, progress } => {
                if self.journal.note_progress(&id, &progress) {
                    self.save_journal().await;
                }
                if let Some(link) = link {
                    link.try_send(progress_event(id, progress));
                }
            }
            Event::Finished { id, mut result } => {
                let withdrawn = self.running.remove(&id).is_some_and(|r| r.withdrawn);
                if result.outcome() == CommandOutcome::Cancelled && !withdrawn && self.shutdown.is_cancelled()
                {
                    // Stopped at a safe point by the agent's shutdown, not
                    // by the coordinator: the same outcome as a restart.
                    result = crate::exec::result(
                        CommandOutcome::Interrupted,
                        format!("{} (the agent was shutting down)", result.message),
                    );
                }
                self.journal.finish(&id, result.clone());
                self.save_journal().await;
                match link {
                    Some(link) => link.send(result_event(id, result)).await,
                    None => tracing::info!(command = %id, "result kept until the coordinator is back"),
                }
            }
        }
    }

    /// Apply the desired state's networks and forward the reports. A partial
    /// failure is in the reports; the state is still ACKed.
    async fn apply_networks(&mut self, ds: &DesiredState, link: &mut Link) {
        let Some(net) = self.net.clone() else {
            if !ds.networks.is_empty() && !std::mem::replace(&mut self.warned_disabled, true) {
                tracing::warn!(
                    networks = ds.networks.len(),
                    "the desired state has host networks but networking is disabled here (network.enabled: \
                     false); they are not applied"
                );
            }
            return;
        };
        let reports = net.apply(ds.networks.clone()).await;
        let failed = reports.iter().filter(|r| !r.applied).count();
        tracing::info!(
            version = ds.version,
            networks = ds.networks.len(),
            failed,
            changes = reports.iter().map(|r| r.changes).max().unwrap_or(0),
            "host network applied"
        );
        for r in reports {
            link.send(network_report(r)).await;
        }
    }

    /// At start, re-apply the networks of the desired state stored on disk,
    /// without the coordinator. None on shutdown.
    async fn reapply_restored_networks(&mut self) -> Option<()> {
        let (Some(net), Some(nets)) = (self.net.clone(), self.restored_networks.take()) else {
            return Some(());
        };
        let n = nets.len();
        let reports = self.drive(net.apply(nets)).await?;
        let failed: Vec<&str> = reports
            .iter()
            .filter(|r| !r.applied)
            .map(|r| r.dpu.as_str())
            .collect();
        if failed.is_empty() {
            tracing::info!(
                networks = n,
                "host network re-applied from the stored desired state"
            );
        } else {
            tracing::warn!(networks = n, failed = ?failed, "host network re-applied from the stored desired state, with failures");
        }
        Some(())
    }

    async fn on_drift(&mut self, r: Result<NetworkReport, RecvError>, link: Option<&mut Link>) {
        match r {
            Ok(r) => {
                let Some(net) = &self.net else { return };
                if !net.note(&r) {
                    tracing::debug!(dpu = %r.dpu, "drift report for a network no longer desired");
                    return;
                }
                if let Some(link) = link {
                    link.send(network_report(r)).await;
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "fell behind the network manager's drift reports");
            }
            Err(RecvError::Closed) => {
                tracing::warn!("the network manager stopped; no more drift reports");
                self.drift = None;
            }
        }
    }

    async fn save_journal(&mut self) {
        if let Err(e) = self.journal.save().await {
            tracing::error!(error = %e, "cannot save the command journal");
        }
    }

    /// Shutdown: running commands were cancelled with the root token; give
    /// them the grace period, reporting what finishes, and log what did not.
    async fn stop(&mut self, mut link: Option<Link>) {
        hostplane_common::notify::stopping(&format!(
            "shutting down: stopping {} running command(s)",
            self.running.len()
        ));
        if let Some(l) = link.as_mut() {
            l.closing = true;
        }
        let grace = self.cfg.shutdown_grace;
        if !self.running.is_empty() {
            tracing::info!(running = self.running.len(), ?grace, "stopping running commands");
            let deadline = tokio::time::sleep(grace);
            tokio::pin!(deadline);
            while !self.running.is_empty() {
                tokio::select! {
                    _ = &mut deadline => break,
                    Some(ev) = self.events_rx.recv() => self.on_event(ev, link.as_mut()).await,
                }
            }
        }
        for id in self.running.keys() {
            tracing::warn!(
                command = %id,
                ?grace,
                "command did not stop within the grace period; it will be reported INTERRUPTED after restart"
            );
        }
        self.tasks.abort_all();
        if let Some(drain) = self.before_close.take() {
            drain.await;
        }
        drop(link);
        tracing::info!("session stopped; the coordinator stream is closed");
    }
}

fn msg(m: Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

fn result_event(command_id: String, r: CommandResult) -> AgentMessage {
    msg(Msg::Event(CommandEvent {
        command_id,
        event: Some(command_event::Event::Result(r)),
    }))
}

fn network_report(r: NetworkReport) -> AgentMessage {
    msg(Msg::NetworkReport(r))
}

fn progress_event(command_id: String, p: FlashProgress) -> AgentMessage {
    msg(Msg::Event(CommandEvent {
        command_id,
        event: Some(command_event::Event::Progress(p)),
    }))
}

/// The next word from the hot-plug watch (the devices may have changed,
/// names or not); pending forever without a watch (or once it ended, at
/// shutdown).
async fn next_rshims(rx: &mut Option<watch::Receiver<RshimSet>>) {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    rx.borrow_and_update();
}

/// Inventory entries in name order, for comparing two inventories.
fn by_name(rshims: &[RshimInfo]) -> Vec<RshimInfo> {
    let mut v = rshims.to_vec();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn lease_of(ds: Option<&DesiredState>, default: Duration) -> Duration {
    match ds.map(|d| d.lease_seconds) {
        Some(s) if s > 0 => Duration::from_secs(u64::from(s)),
        _ => default,
    }
}

/// Ticks every lease/3, the first one lease/3 from now.
fn heartbeat_timer(lease: Duration) -> tokio::time::Interval {
    let period = (lease / 3).max(Duration::from_millis(10));
    let mut t = tokio::time::interval_at(Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}
