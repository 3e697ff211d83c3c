//! Shared pieces of the session tests: a scripted coordinator (a real tonic
//! server on 127.0.0.1:0), a fake executor, a fake network manager
//! ([`net`]), and an agent run in-process.
#![allow(dead_code)] // each test file uses a different subset

mod net;
pub use net::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_agent::config::Config;
use hostplane_agent::exec::{BoxFuture, Executor, result};
use hostplane_agent::session::NetSync;
use hostplane_agent::{AgentError, run};
use hostplane_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use hostplane_proto::v1::{
    AgentMessage, BfbRef, Command, CommandOutcome, CommandResult, CoordinatorMessage, DesiredState, FlashBfb,
    FlashProgress, Hello, Inventory, RebootHost, RshimInfo, agent_message::Msg, command::Action,
    command_event, coordinator_message,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const NODE: &str = "n1";
pub const BOOT_ID: &str = "6f1b3a52-0000-4000-8000-000000000042";

// ------------------------------------------------------------------ coordinator

type ToAgent = mpsc::UnboundedSender<Result<CoordinatorMessage, Status>>;

#[derive(Default)]
struct Conns {
    senders: Vec<Option<ToAgent>>,
    refuse: bool,
    refused: usize,
}

struct Svc {
    from_agent: mpsc::UnboundedSender<(usize, AgentMessage)>,
    conns: Arc<Mutex<Conns>>,
}

#[tonic::async_trait]
impl AgentService for Svc {
    type SessionStream = UnboundedReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let n = {
            let mut c = self.conns.lock().unwrap();
            if c.refuse {
                c.refused += 1;
                return Err(Status::unavailable("fake coordinator refuses sessions"));
            }
            c.senders.push(Some(tx));
            c.senders.len() - 1
        };
        let mut inbound = request.into_inner();
        let fwd = self.from_agent.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if fwd.send((n, m)).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A coordinator the test scripts: it records every agent message with the
/// number of the connection it came on (0, 1, ...) and sends what it is told.
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    from_agent: mpsc::UnboundedReceiver<(usize, AgentMessage)>,
    conns: Arc<Mutex<Conns>>,
    stop: CancellationToken,
}

impl FakeCoordinator {
    pub async fn start() -> FakeCoordinator {
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// One listening on `addr` (a port the test reserved).
    pub async fn start_at(addr: SocketAddr) -> FakeCoordinator {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, from_agent) = mpsc::unbounded_channel();
        let conns = Arc::new(Mutex::new(Conns::default()));
        let svc = Svc {
            from_agent: tx,
            conns: conns.clone(),
        };
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), s.cancelled_owned())
                .await
                .unwrap();
        });
        FakeCoordinator {
            addr,
            from_agent,
            conns,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next agent message, heartbeats included.
    pub async fn recv_any(&mut self) -> (usize, AgentMessage) {
        tokio::time::timeout(PATIENCE, self.from_agent.recv())
            .await
            .expect("the agent sent nothing in time")
            .expect("server gone")
    }

    /// The next agent message that is neither a heartbeat nor progress (both best effort).
    pub async fn recv(&mut self) -> (usize, Msg) {
        let next = async {
            loop {
                let (conn, m) = self.recv_any().await;
                match m.msg.expect("empty agent message") {
                    Msg::Heartbeat(_) => continue,
                    Msg::Event(e) if matches!(e.event, Some(command_event::Event::Progress(_))) => continue,
                    other => return (conn, other),
                }
            }
        };
        tokio::time::timeout(PATIENCE, next)
            .await
            .expect("the agent sent only heartbeats and progress")
    }

    /// Messages (as [`Self::recv`] returns them) up to and including the first one `stop` accepts.
    pub async fn recv_until(&mut self, stop: impl Fn(&Msg) -> bool) -> Vec<(usize, Msg)> {
        let mut seen = Vec::new();
        let collect = async {
            loop {
                let (conn, m) = self.recv().await;
                let done = stop(&m);
                seen.push((conn, m));
                if done {
                    return;
                }
            }
        };
        if tokio::time::timeout(PATIENCE, collect).await.is_err() {
            panic!("the awaited message did not come; got {seen:?}");
        }
        seen
    }

    pub async fn expect_hello(&mut self) -> (usize, Hello) {
        match self.recv().await {
            (conn, Msg::Hello(h)) => (conn, h),
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Messages up to the ACK of `version` (panics on a NACK of it).
    pub async fn until_ack(&mut self, version: u64) -> Vec<(usize, Msg)> {
        let seen = self
            .recv_until(|m| {
                matches!(m, Msg::Ack(a) if a.version == version)
                    || matches!(m, Msg::Nack(n) if n.version == version)
            })
            .await;
        if let Some((_, Msg::Nack(n))) = seen.last() {
            panic!("version {version} was NACKed: {}", n.error);
        }
        seen
    }

    /// Messages up to the final result of `id`; returns them and the result.
    pub async fn until_result(&mut self, id: &str) -> (Vec<(usize, Msg)>, CommandResult) {
        let seen = self.recv_until(|m| result_of(m, id).is_some()).await;
        let r = result_of(&seen.last().unwrap().1, id).unwrap();
        (seen, r)
    }

    pub fn send(&self, conn: usize, ds: DesiredState) {
        let c = self.conns.lock().unwrap();
        let tx = c.senders[conn].as_ref().expect("connection was dropped");
        tx.send(Ok(CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Desired(ds)),
        }))
        .expect("agent stream gone");
    }

    /// Send any coordinator message on connection `conn`.
    pub fn send_msg(&self, conn: usize, m: CoordinatorMessage) {
        let c = self.conns.lock().unwrap();
        let tx = c.senders[conn].as_ref().expect("connection was dropped");
        tx.send(Ok(m)).expect("agent stream gone");
    }

    /// End connection `conn` from the coordinator's side.
    pub fn drop_conn(&self, conn: usize) {
        self.conns.lock().unwrap().senders[conn] = None;
    }

    /// Refuse new sessions (UNAVAILABLE) while true.
    pub fn refuse(&self, refuse: bool) {
        self.conns.lock().unwrap().refuse = refuse;
    }

    /// Wait until at least `n` sessions were refused.
    pub async fn wait_refused(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.conns.lock().unwrap().refused < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not retry in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().senders.len()
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The final result of `id` carried by `m`, if any.
pub fn result_of(m: &Msg, id: &str) -> Option<CommandResult> {
    match m {
        Msg::Event(e) if e.command_id == id => match &e.event {
            Some(command_event::Event::Result(r)) => Some(r.clone()),
            _ => None,
        },
        _ => None,
    }
}

pub fn ds(version: u64, commands: Vec<Command>) -> DesiredState {
    DesiredState {
        version,
        node: NODE.into(),
        commands,
        lease_seconds: 15,
        networks: Vec::new(),
        power: None,
    }
}

pub fn reboot(id: &str) -> Command {
    Command {
        id: id.into(),
        dpu: format!("dpu-{id}"),
        rshim: String::new(),
        action: Some(Action::RebootHost(RebootHost::default())),
    }
}

pub fn flash(id: &str, rshim: &str) -> Command {
    Command {
        id: id.into(),
        dpu: format!("dpu-{id}"),
        rshim: rshim.into(),
        action: Some(Action::FlashBfb(FlashBfb {
            bfb: Some(BfbRef {
                name: "doca".into(),
                url: "http://images.invalid/doca.bfb".into(),
                sha256: "0".repeat(64),
                size_bytes: 1000,
                version: "2.9".into(),
            }),
            bf_cfg: HashMap::new(),
            dpu_os: None,
        })),
    }
}

// ------------------------------------------------------------------ executor

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SUCCEEDED at once.
    Succeed,
    /// Report one progress event, then run until released (SUCCEEDED) or cancelled (CANCELLED).
    Hold,
    /// Report one progress event, then run until released, ignoring cancellation.
    IgnoreCancel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started(String),
    Cancelled(String),
}

/// An executor the test scripts per command id (default: [`Mode::Succeed`]).
pub struct FakeExecutor {
    modes: Mutex<HashMap<String, Mode>>,
    gates: Mutex<HashMap<String, Arc<Notify>>>,
    starts: Mutex<Vec<String>>,
    events_tx: mpsc::UnboundedSender<ExecEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ExecEvent>>,
}

impl FakeExecutor {
    pub fn new() -> Arc<FakeExecutor> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Arc::new(FakeExecutor {
            modes: Mutex::default(),
            gates: Mutex::default(),
            starts: Mutex::default(),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
        })
    }

    pub fn set(&self, id: &str, mode: Mode) {
        self.modes.lock().unwrap().insert(id.into(), mode);
    }

    /// Let a held command finish successfully.
    pub fn release(&self, id: &str) {
        self.gate(id).notify_one();
    }

    /// Every id `execute` was called with, in order.
    pub fn starts(&self) -> Vec<String> {
        self.starts.lock().unwrap().clone()
    }

    pub async fn next_event(&self) -> ExecEvent {
        tokio::time::timeout(PATIENCE, self.events_rx.lock().await.recv())
            .await
            .expect("no executor event in time")
            .unwrap()
    }

    fn gate(&self, id: &str) -> Arc<Notify> {
        self.gates.lock().unwrap().entry(id.into()).or_default().clone()
    }
}

impl Executor for FakeExecutor {
    fn inventory(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async {
            Inventory {
                rshims: vec![RshimInfo {
                    name: "rshim0".into(),
                    pci_address: "0000:04:00.2".into(),
                    dev_info: "BlueField-3(Rev 1)".into(),
                    ..Default::default()
                }],
            }
        })
    }

    fn execute(
        &self,
        cmd: Command,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, CommandResult> {
        Box::pin(async move {
            let id = cmd.id;
            self.starts.lock().unwrap().push(id.clone());
            let _ = self.events_tx.send(ExecEvent::Started(id.clone()));
            let mode = self
                .modes
                .lock()
                .unwrap()
                .get(&id)
                .copied()
                .unwrap_or(Mode::Succeed);
            let gate = self.gate(&id);
            if mode != Mode::Succeed {
                let p = FlashProgress {
                    bytes_pushed: 10,
                    bytes_total: 100,
                    stage: "push".into(),
                    ..Default::default()
                };
                let _ = progress.send(p).await;
            }
            match mode {
                Mode::Succeed => result(CommandOutcome::Succeeded, format!("done {id}")),
                Mode::Hold => {
                    tokio::select! {
                    _ = gate.notified() => result(CommandOutcome::Succeeded, format!("done {id}")),
                    _ = cancel.cancelled() => {
                        let _ = self.events_tx.send(ExecEvent::Cancelled(id.clone()));
                        result(CommandOutcome::Cancelled, format!("cancelled {id}"))
                    }
                    }
                }
                Mode::IgnoreCancel => {
                    gate.notified().await;
                    result(CommandOutcome::Succeeded, format!("done {id}"))
                }
            }
        })
    }
}

// ------------------------------------------------------------------ agent

/// A config for an agent under test, with its state under `dir`.
pub fn config(dir: &Path, coordinator: &str) -> Config {
    let proc = dir.join("proc");
    std::fs::create_dir_all(proc.join("sys/kernel/random")).unwrap();
    std::fs::write(proc.join("sys/kernel/random/boot_id"), format!("{BOOT_ID}\n")).unwrap();
    let mut cfg = Config {
        node_name: NODE.into(),
        coordinator: coordinator.into(),
        state_dir: dir.join("state"),
        dev_root: dir.join("dev"),
        procfs_root: proc,
        shutdown_grace: Duration::from_secs(5),
        // The scripted and in-process coordinators here speak plain http.
        insecure: true,
        ..Config::default()
    };
    cfg.session.backoff_initial = Duration::from_millis(10);
    cfg.session.backoff_max = Duration::from_millis(100);
    cfg.validate().unwrap();
    cfg
}

/// An agent connected to a fake coordinator, its state in a temp dir.
pub struct Scene {
    pub coord: FakeCoordinator,
    pub ex: Arc<FakeExecutor>,
    pub cfg: Config,
    pub agent: RunningAgent,
    /// The connection the agent's first Hello came on, and that Hello.
    pub conn: usize,
    pub hello: Hello,
    pub dir: tempfile::TempDir,
}

impl Scene {
    /// `modes` script the executor; `tweak` adjusts the config.
    pub async fn start(modes: &[(&str, Mode)], tweak: impl FnOnce(&mut Config)) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let mut coord = FakeCoordinator::start().await;
        let mut cfg = config(dir.path(), &coord.url());
        tweak(&mut cfg);
        let ex = FakeExecutor::new();
        for (id, mode) in modes {
            ex.set(id, *mode);
        }
        let agent = start_agent(cfg.clone(), ex.clone());
        let (conn, hello) = coord.expect_hello().await;
        Scene {
            coord,
            ex,
            cfg,
            agent,
            conn,
            hello,
            dir,
        }
    }

    /// Send `state` on the current connection and wait for its ACK; the messages up to it.
    pub async fn apply(&mut self, state: DesiredState) -> Vec<(usize, Msg)> {
        let version = state.version;
        self.coord.send(self.conn, state);
        self.coord.until_ack(version).await
    }
}

pub struct RunningAgent {
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), AgentError>>,
}

pub fn start_agent(cfg: Config, executor: Arc<FakeExecutor>) -> RunningAgent {
    start_agent_with_net(cfg, executor, None)
}

/// An agent whose telemetry and caps go through `power`.
pub fn start_agent_with_power(
    cfg: Config,
    executor: Arc<FakeExecutor>,
    power: hostplane_agent::session::PowerSession,
) -> RunningAgent {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(cfg, executor, None, power, shutdown.clone()));
    RunningAgent { shutdown, handle }
}

/// An agent whose host networks go to `net`.
pub fn start_agent_with_net(
    cfg: Config,
    executor: Arc<FakeExecutor>,
    net: Option<Arc<FakeNet>>,
) -> RunningAgent {
    let shutdown = CancellationToken::new();
    let net = net.map(|n| NetSync::new(n));
    let handle = tokio::spawn(run(cfg, executor, net, Default::default(), shutdown.clone()));
    RunningAgent { shutdown, handle }
}

impl RunningAgent {
    /// SIGTERM-style stop; the agent must return within `PATIENCE`.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the agent did not stop in time")
            .expect("agent task panicked")
    }
}
