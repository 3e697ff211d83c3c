//! A NACK through the real agent stream: the Dpu waiting on the refused desired state goes to
//! Error at once (reason Nacked, with the agent's error and the version), not at its timeout.
mod backend;

use std::time::Duration;

use hostplane_coordinator::fsm::testing::{get_node, one_dpu, seed, wait_phase};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::stream::AgentStream;
use hostplane_proto::v1::{DpuPhase, Nack, NodeEffect, RebootMethod, agent_message, command};
use tokio_util::sync::CancellationToken;

mod stream_common;
use stream_common::{ack, hello, open, quick_flush, serve, succeeded};

const REFUSED: &str = "command c (prepare_bfb, dpu d1): bfb \"b1\" has no url";

/// An agent that answers every command and ACKs every state, except that it refuses (NACKs)
/// every state carrying a PrepareBfb. Returns the versions it refused when the stream ends.
async fn agent(addr: std::net::SocketAddr) -> Vec<u64> {
    let mut agent = open(addr, hello("n1", "e2e", "boot-1")).await.unwrap();
    let mut done = std::collections::HashSet::new();
    let mut refused = Vec::new();
    while let Some(d) = agent.desired().await {
        if d.commands
            .iter()
            .any(|c| matches!(c.action, Some(command::Action::PrepareBfb(_))))
        {
            refused.push(d.version);
            let nack = Nack {
                version: d.version,
                error: REFUSED.into(),
            };
            agent.offer(agent_message::Msg::Nack(nack)).await;
            continue;
        }
        for c in &d.commands {
            if !done.insert(c.id.clone()) {
                continue;
            }
            agent.offer(succeeded(&c.id)).await;
        }
        agent.offer(ack(d.version)).await;
    }
    refused
}

#[tokio::test]
async fn a_nacked_desired_state_fails_the_dpu_waiting_on_it() {
    let store = backend::store();
    seed(&store, one_dpu(RebootMethod::Agent, "b1", NodeEffect::Auto)).await;
    let stop = CancellationToken::new();
    let fsm = FsmConfig {
        resync: Duration::from_millis(500),
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), fsm).run(stop.clone()));
    let addr = serve(AgentStream::new(store.clone(), quick_flush()), &stop).await;
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
