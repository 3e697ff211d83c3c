//! The state machine driven through the real agent stream: a fake agent on
//! the generated gRPC client answers every command, ACKs every state, and for
//! `reboot_host` drops its stream and comes back with a new boot id.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, one_dpu, seed, wait_phase};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::AgentStream;
use hostplane_proto::v1::{
    CommandEvent, DpuPhase, FlashProgress, Kind, NodeEffect, RebootMethod, agent_message, command,
    command_event, resource,
};
use tokio_util::sync::CancellationToken;

mod stream_common;
use stream_common::{ack, hello, open, quick_flush, serve, succeeded};

/// One agent connection: answers until it is asked to reboot. Returns true on reboot.
async fn agent_session(addr: SocketAddr, node: &str, boot: &str, done: &mut HashSet<String>) -> bool {
    let mut agent = open(addr, hello(node, "e2e", boot)).await.unwrap();
    while let Some(d) = agent.desired().await {
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
                agent.offer(agent_message::Msg::Event(ev)).await;
            }
            agent.offer(succeeded(&c.id)).await;
            if matches!(c.action, Some(command::Action::RebootHost(_))) {
                return true;
            }
        }
        agent.offer(ack(d.version)).await;
    }
    false
}

#[tokio::test]
async fn a_dpu_walks_to_ready_through_the_agent_stream() {
    let store = Store::in_memory().unwrap();
    let mut fleet = one_dpu(RebootMethod::Agent, "b1", NodeEffect::Auto);
    if let Some(resource::Kind::Node(n)) = &mut fleet[0].kind {
        n.status = None; // no agent yet
    }
    seed(&store, fleet).await;
    let stop = CancellationToken::new();
    let fsm = FsmConfig {
        resync: Duration::from_millis(500),
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), fsm).run(stop.clone()));
    let addr = serve(AgentStream::new(store.clone(), quick_flush()), &stop).await;

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
