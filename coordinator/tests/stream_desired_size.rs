//! No desired state larger than the agent accepts is ever sent: commands
//! stored before the API bounded their flavors add up past 4 MiB, and the
//! coordinator says so on the Node instead of sending a message the agent's
//! gRPC client would refuse (which would drop its session, again and again).
//! The client here has the agent's own limit (`limits::MAX_AGENT_MESSAGE_BYTES`).
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, get_node, seed};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::AgentStream;
use hostplane_proto::limits::MAX_AGENT_MESSAGE_BYTES;
use hostplane_proto::v1::{Command, FlashBfb, Hello, PrepareBfb, RebootMethod, agent_message, command};
use tokio_util::sync::CancellationToken;

mod stream_common;
use stream_common::{ack, msg, open, serve, session_cfg};

fn small(id: &str) -> Command {
    Command {
        id: id.into(),
        dpu: "d1".into(),
        rshim: "rshim0".into(),
        action: Some(command::Action::PrepareBfb(PrepareBfb::default())),
    }
}

/// A flash whose bf.cfg parameters are `bytes` long: only a Flavor stored
/// before the API's limit could make one.
fn flash(id: &str, dpu: &str, bytes: usize) -> Command {
    Command {
        id: id.into(),
        dpu: dpu.into(),
        rshim: "rshim1".into(),
        action: Some(command::Action::FlashBfb(FlashBfb {
            bfb: None,
            bf_cfg: [("BIG".to_string(), "x".repeat(bytes))].into(),
            dpu_os: None,
        })),
    }
}

#[tokio::test]
async fn a_desired_state_over_the_agents_limit_is_not_sent_and_the_node_says_why() {
    let store = Store::in_memory().unwrap();
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let addr = serve(AgentStream::new(store.clone(), session_cfg()), &stop).await;
    let v0 = store
        .write(|t| t.insert_command("n1", &small("c0")))
        .await
        .unwrap();

    // The session's client has the agent's own limit.
    let hello = msg(agent_message::Msg::Hello(Hello {
        node_name: "n1".into(),
        agent_version: "test".into(),
        boot_id: "b".into(),
        ..Default::default()
    }));
    let mut agent = open(addr, hello).await.unwrap();
    assert_eq!(
        agent.next().await.expect("a message the agent accepts").version,
        v0
    );

    // Five flashes of 1 MiB each: every one alone fits, together they do not.
    let too_big = store
        .write(|t| {
            let mut v = 0;
            for i in 0..5 {
                v = t.insert_command("n1", &flash(&format!("big{i}"), &format!("dpu{i}"), 1 << 20))?;
            }
            Ok::<_, hostplane_coordinator::store::StoreError>(v)
        })
        .await
        .unwrap();
    let condition = || async {
        get_node(&store, "n1")
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "DesiredStateApplied")
    };
    let mut said = None;
    for _ in 0..500 {
        said = condition().await.filter(|c| c.reason == "TooLarge");
        if said.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = said.expect("the node says its desired state was too large");
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .contains(&format!("desired state version {too_big} was not sent"))
            && c.message.contains(&format!(
                "more than the {MAX_AGENT_MESSAGE_BYTES} bytes the agent accepts"
            )),
        "{}",
        c.message
    );

    // The session is still up: once the big commands are gone, the next
    // state arrives, and an ACK clears the condition.
    let cleared = store
        .write(|t| {
            for i in 0..5 {
                t.cancel_commands_for_dpu(&format!("dpu{i}"), "test")?;
            }
            t.insert_command("n1", &small("c1"))
        })
        .await
        .unwrap();
    let d = loop {
        let d = agent.next().await.expect("a message the agent accepts");
        if d.version >= cleared {
            break d;
        }
    };
    assert_eq!(
        d.commands.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c0", "c1"]
    );
    agent.send(ack(d.version)).await;
    for _ in 0..500 {
        if condition().await.is_some_and(|c| c.status == "True") {
            stop.cancel();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the ACK did not clear the condition: {:?}", condition().await);
}
