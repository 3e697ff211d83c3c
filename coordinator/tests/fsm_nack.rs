//! A NACK through the real agent stream: the Dpu waiting on the refused desired state goes to
//! Error at once (reason Nacked, with the agent's error and the version), not at its timeout.
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, get_node, seed, wait_phase};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::{AgentStream, StreamConfig};
use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{
    Ack, AgentMessage, CommandEvent, CommandOutcome, CommandResult, CoordinatorMessage, DpuPhase, Hello,
    Inventory, Nack, NodeEffect, RebootMethod, RshimInfo, agent_message, command, command_event,
    coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;

const REFUSED: &str = "command c (prepare_bfb, dpu d1): bfb \"b1\" has no url";

/// An agent that answers every command and ACKs every state, except that it refuses (NACKs)
/// every state carrying a PrepareBfb. Returns the versions it refused when the stream ends.
async fn agent(addr: std::net::SocketAddr) -> Vec<u64> {
    let mut client = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let hello = Hello {
        node_name: "n1".into(),
        agent_version: "e2e".into(),
        boot_id: "boot-1".into(),
        inventory: Some(Inventory {
            rshims: vec![RshimInfo {
                name: "rshim0".into(),
                ..Default::default()
            }],
        }),
        last_applied_version: 0,
    };
    let send = |m: agent_message::Msg| {
        let tx = tx.clone();
        async move { tx.send(AgentMessage { msg: Some(m) }).await.is_ok() }
    };
    send(agent_message::Msg::Hello(hello)).await;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut done = std::collections::HashSet::new();
    let mut refused = Vec::new();
    while let Ok(Some(CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Desired(d)),
    })) = inbound.message().await
    {
        if d.commands
            .iter()
            .any(|c| matches!(c.action, Some(command::Action::PrepareBfb(_))))
        {
            refused.push(d.version);
            let nack = Nack {
                version: d.version,
                error: REFUSED.into(),
            };
            send(agent_message::Msg::Nack(nack)).await;
            continue;
        }
        for c in &d.commands {
            if !done.insert(c.id.clone()) {
                continue;
            }
            let r = CommandResult {
                outcome: CommandOutcome::Succeeded as i32,
                message: "ok".into(),
                finished_at_ms: 0,
            };
            let ev = CommandEvent {
                command_id: c.id.clone(),
                event: Some(command_event::Event::Result(r)),
            };
            send(agent_message::Msg::Event(ev)).await;
        }
        send(agent_message::Msg::Ack(Ack { version: d.version })).await;
    }
    refused
}

#[tokio::test]
async fn a_nacked_desired_state_fails_the_dpu_waiting_on_it() {
    let store = Store::in_memory().unwrap();
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
            testing::bfb("b1"),
            testing::flavor("f1"),
            testing::deployment("dep", "b1", "f1", &[], 1, NodeEffect::Auto),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let fsm = FsmConfig {
        resync: Duration::from_millis(500),
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), fsm).run(stop.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = StreamConfig {
        status_flush: Duration::from_millis(20),
        ..Default::default()
    };
    let svc = AgentStream::new(store.clone(), cfg)
        .with_shutdown(&stop)
        .into_server();
    let s = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            ),
    );
    let agent = tokio::spawn(agent(addr));

    // The default PrepareBFB timeout is far longer than this wait: the NACK moved it.
    let d = wait_phase(&store, "d1", DpuPhase::Error).await;
    let tr = d.status.unwrap().history.last().unwrap().clone();
    assert_eq!(tr.from, DpuPhase::PrepareBfb as i32);
    assert_eq!(tr.reason, "Nacked");
    let ns = get_node(&store, "n1").await.unwrap().status.unwrap();
    assert_eq!(
        tr.message,
        format!(
            "the agent on node n1 rejected desired state version {}: {REFUSED}; fix it and reprovision",
            ns.nacked_version
        )
    );
    assert!(store.read(|t| t.open_commands("n1")).await.unwrap().is_empty());
    stop.cancel();
    let refused = agent.await.unwrap();
    assert!(refused.contains(&ns.nacked_version), "{refused:?}");
}
