//! The state machine driven through the real agent stream: a fake agent on
//! the generated gRPC client answers every command, ACKs every state, and for
//! `reboot_host` drops its stream and comes back with a new boot id.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, seed, wait_phase};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::{AgentStream, StreamConfig};
use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{
    Ack, AgentMessage, CommandEvent, CommandOutcome, CommandResult, CoordinatorMessage, DpuPhase,
    FlashProgress, Hello, Inventory, Kind, NodeEffect, RebootMethod, RshimInfo, agent_message, command,
    command_event, coordinator_message, resource,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;

/// One agent connection: answers until it is asked to reboot. Returns true on reboot.
async fn agent_session(addr: SocketAddr, node: &str, boot: &str, done: &mut HashSet<String>) -> bool {
    let mut client = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let hello = Hello {
        node_name: node.into(),
        agent_version: "e2e".into(),
        boot_id: boot.into(),
        inventory: Some(Inventory {
            rshims: vec![RshimInfo {
                name: "rshim0".into(),
                ..Default::default()
            }],
        }),
        last_applied_version: 0,
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let send = |m: agent_message::Msg| {
        let tx = tx.clone();
        async move { tx.send(AgentMessage { msg: Some(m) }).await.is_ok() }
    };
    while let Ok(Some(CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Desired(d)),
    })) = inbound.message().await
    {
        for c in &d.commands {
            if !done.insert(c.id.clone()) {
                continue;
            }
            if matches!(c.action, Some(command::Action::FlashBfb(_))) {
                let p = FlashProgress {
                    stage: "installer".into(),
                    ..Default::default()
                };
                let ev = CommandEvent {
                    command_id: c.id.clone(),
                    event: Some(command_event::Event::Progress(p)),
                };
                send(agent_message::Msg::Event(ev)).await;
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
            if matches!(c.action, Some(command::Action::RebootHost(_))) {
                return true;
            }
        }
        send(agent_message::Msg::Ack(Ack { version: d.version })).await;
    }
    false
}

#[tokio::test]
async fn a_dpu_walks_to_ready_through_the_agent_stream() {
    let store = Store::in_memory().unwrap();
    let mut node = testing::node("n1", RebootMethod::Agent);
    if let Some(resource::Kind::Node(n)) = &mut node.kind {
        n.status = None; // no agent yet
    }
    seed(
        &store,
        vec![
            node,
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

    // Without an agent the Dpu waits in Pending (the node is not reachable).
    let d = testing::wait_dpu(&store, "d1", Duration::from_secs(10), |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "NodeUnreachable"))
    })
    .await;
    assert_eq!(testing::phase(&d), DpuPhase::Pending);
    let c = d
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NodeUnreachable")
        .unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "NeverConnected"));

    let agent = tokio::spawn(async move {
        let mut done = HashSet::new();
        let mut boot = 1;
        while agent_session(addr, "n1", &format!("boot-{boot}"), &mut done).await {
            boot += 1;
        }
    });
    let d = wait_phase(&store, "d1", DpuPhase::Ready).await;
    let st = d.status.unwrap();
    assert_eq!(st.installed_bfb, "b1");
    let out = st
        .history
        .iter()
        .find(|t| t.from == DpuPhase::Rebooting as i32)
        .unwrap();
    assert!(out.message.contains("boot-2"), "{}", out.message);
    assert!(store.read(|t| t.open_commands("n1")).await.unwrap().is_empty());
    let r = store.read(|t| t.get(Kind::Node, "n1")).await.unwrap().unwrap();
    let Some(resource::Kind::Node(n)) = r.kind else {
        unreachable!()
    };
    let ns = n.status.unwrap();
    assert!(ns.reachable && ns.boot_id == "boot-2");
    stop.cancel();
    agent.abort();
}
