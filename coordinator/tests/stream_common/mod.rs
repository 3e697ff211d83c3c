//! Shared by the tests that drive the agent stream over a real in-process
//! gRPC server on 127.0.0.1:0: the server, a fake agent's session on the
//! generated client (with the agent's own message limit), and messages.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::stream::{AgentStream, StreamConfig};
use hostplane_proto::limits::MAX_AGENT_MESSAGE_BYTES;
use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{
    Ack, AgentMessage, CommandEvent, CommandOutcome, CommandResult, CoordinatorMessage, DesiredState, Hello,
    Inventory, RshimInfo, agent_message, command_event, coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// How long [`Agent::next`] waits for a desired state.
pub const NEXT_WITHIN: Duration = Duration::from_secs(10);

/// The default stream config with a 20 ms status flush.
pub fn quick_flush() -> StreamConfig {
    StreamConfig {
        status_flush: Duration::from_millis(20),
        ..Default::default()
    }
}

/// A 30 s lease, 5 s for the Hello, a 20 ms status flush and last-seen every 50 ms.
pub fn session_cfg() -> StreamConfig {
    StreamConfig {
        lease: Duration::from_secs(30),
        hello_timeout: Duration::from_secs(5),
        status_flush: Duration::from_millis(20),
        last_seen_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Serves `stream` (ended by `stop`) on 127.0.0.1:0; returns its address.
pub async fn serve(stream: AgentStream, stop: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = stream.with_shutdown(stop).into_server();
    let s = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            ),
    );
    addr
}

pub fn msg(m: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

/// A Hello from `node` (agent `version`, boot `boot`) with rshim0 in its inventory.
pub fn hello(node: &str, version: &str, boot: &str) -> AgentMessage {
    msg(agent_message::Msg::Hello(Hello {
        node_name: node.into(),
        agent_version: version.into(),
        boot_id: boot.into(),
        inventory: Some(Inventory {
            rshims: vec![RshimInfo {
                name: "rshim0".into(),
                ..Default::default()
            }],
        }),
        last_applied_version: 0,
    }))
}

/// The event that finishes command `id` with `outcome` and `message`.
pub fn result(id: &str, outcome: CommandOutcome, message: &str) -> agent_message::Msg {
    agent_message::Msg::Event(CommandEvent {
        command_id: id.into(),
        event: Some(command_event::Event::Result(CommandResult {
            outcome: outcome as i32,
            message: message.into(),
            finished_at_ms: 0,
            power_cycle_required: false,
        })),
    })
}

/// The event that finishes command `id` SUCCEEDED ("ok").
pub fn succeeded(id: &str) -> agent_message::Msg {
    result(id, CommandOutcome::Succeeded, "ok")
}

/// The ACK of desired state `version`.
pub fn ack(version: u64) -> agent_message::Msg {
    agent_message::Msg::Ack(Ack { version })
}

/// A fake agent's session: what it sends, what the coordinator sends it.
pub struct Agent {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: Streaming<CoordinatorMessage>,
}

/// Connects to `addr` and opens a session whose first message is `first`.
pub async fn open(addr: SocketAddr, first: AgentMessage) -> Result<Agent, Status> {
    let mut client = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let resp = client.session(ReceiverStream::new(rx)).await?;
    Ok(Agent {
        tx,
        rx: resp.into_inner(),
    })
}

impl Agent {
    pub async fn send(&self, m: agent_message::Msg) {
        self.tx.send(msg(m)).await.unwrap();
    }

    /// Sends `m`; false once the session is gone.
    pub async fn offer(&self, m: agent_message::Msg) -> bool {
        self.tx.send(msg(m)).await.is_ok()
    }

    /// The next message within `within`: panics if none comes, the stream ends, or it is empty.
    pub async fn next_message(&mut self, within: Duration) -> coordinator_message::Msg {
        let m = tokio::time::timeout(within, self.rx.message())
            .await
            .expect("nothing from the coordinator")
            .unwrap()
            .expect("stream ended");
        let CoordinatorMessage { msg: Some(m) } = m else {
            panic!("empty message")
        };
        m
    }

    /// The next desired state (within [`NEXT_WITHIN`]), or the status that ended the session.
    pub async fn next(&mut self) -> Result<DesiredState, Status> {
        let m = tokio::time::timeout(NEXT_WITHIN, self.rx.message())
            .await
            .expect("a message from the coordinator")?;
        match m {
            Some(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Desired(d)),
            }) => Ok(d),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The next desired state, or None once the session has ended (with no time limit).
    pub async fn desired(&mut self) -> Option<DesiredState> {
        match self.rx.message().await {
            Ok(Some(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Desired(d)),
            })) => Some(d),
            _ => None,
        }
    }

    pub async fn result(&self, id: &str, outcome: CommandOutcome, message: &str) {
        self.send(result(id, outcome, message)).await;
    }
}
