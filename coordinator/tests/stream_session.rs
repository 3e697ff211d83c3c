//! The agent stream over a real in-process gRPC server on 127.0.0.1:0,
//! driven with the generated client.
use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, get_dpu, get_node, seed};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::{AgentStream, StreamConfig};
use hostplane_proto::v1::{
    Ack, AgentMessage, Command, CommandEvent, CommandOutcome, Dpu, DpuStatus, FlashProgress, Heartbeat, Nack,
    ObjectMeta, PrepareBfb, RebootMethod, agent_message, command, command_event,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

mod stream_common;
use stream_common::{open, session_cfg as cfg};

struct Server {
    addr: SocketAddr,
    store: Store,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(cfg: StreamConfig) -> Server {
    let store = Store::in_memory().unwrap();
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::node("n2", RebootMethod::Agent),
            testing::device("d1", "n1", "rshim0", &[]),
            testing::device("d2", "n1", "rshim9", &[]),
        ],
    )
    .await;
    // The fixture's nodes start reachable; a real node starts with no agent.
    for n in ["n1", "n2"] {
        testing::modify(&store, hostplane_proto::v1::Kind::Node, n, |r| {
            if let Some(hostplane_proto::v1::resource::Kind::Node(n)) = &mut r.kind {
                n.status = None;
            }
        })
        .await;
    }
    let stop = CancellationToken::new();
    let addr = stream_common::serve(AgentStream::new(store.clone(), cfg), &stop).await;
    Server { addr, store, stop }
}

fn hello(node: &str, boot: &str) -> AgentMessage {
    stream_common::hello(node, "0.1.0-test", boot)
}

fn cmd(id: &str, dpu: &str) -> Command {
    Command {
        id: id.into(),
        dpu: dpu.into(),
        rshim: "rshim0".into(),
        action: Some(command::Action::PrepareBfb(PrepareBfb::default())),
    }
}

async fn insert_command(store: &Store, node: &'static str, c: Command) -> u64 {
    store.write(move |t| t.insert_command(node, &c)).await.unwrap()
}

/// Poll the store until `f` holds.
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn hello_must_come_first_and_name_a_registered_node() {
    let s = serve(cfg()).await;
    let hb = AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(Heartbeat { sent_at_ms: 1 })),
    };
    let e = open(s.addr, hb).await.err().expect("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("must be Hello"), "{}", e.message());

    let e = open(s.addr, hello("n9", "b")).await.err().expect("refused");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "node n9 is not registered; create it first");
    assert!(get_node(&s.store, "n9").await.is_none());

    // A name of any size is refused by its length, never echoed.
    let e = open(s.addr, hello(&"n".repeat(1 << 20), "b"))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "hello.node_name: 1048576 bytes, more than the maximum of 63"
    );
}

#[tokio::test]
async fn hello_is_recorded_and_the_desired_state_follows_every_change() {
    let s = serve(cfg()).await;
    let v1 = insert_command(&s.store, "n1", cmd("c1", "d1")).await;
    insert_command(&s.store, "n2", cmd("other", "x")).await;
    let mut a = open(s.addr, hello("n1", "boot-a")).await.unwrap();
    let d = a.next().await.unwrap();
    assert_eq!((d.version, d.node.as_str(), d.lease_seconds), (v1, "n1", 30));
    assert_eq!(
        d.commands.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1"]
    );

    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    assert!(n.reachable);
    assert_eq!(
        (n.agent_version.as_str(), n.boot_id.as_str()),
        ("0.1.0-test", "boot-a")
    );
    assert_eq!(n.inventory.unwrap().rshims[0].name, "rshim0");
    assert!(
        n.conditions
            .iter()
            .any(|c| c.r#type == "Reachable" && c.status == "True")
    );
    let present = |name: &'static str| {
        let store = s.store.clone();
        async move {
            let r = store
                .read(move |t| t.get(hostplane_proto::v1::Kind::Device, name))
                .await
                .unwrap()
                .unwrap();
            match r.kind {
                Some(hostplane_proto::v1::resource::Kind::Device(d)) => d.status.unwrap_or_default().present,
                _ => unreachable!(),
            }
        }
    };
    assert!(present("d1").await, "rshim0 is in the inventory");
    assert!(!present("d2").await, "rshim9 is not");

    // A change on another node sends nothing; a change on n1 sends the whole state.
    insert_command(&s.store, "n2", cmd("other2", "x")).await;
    let v2 = insert_command(&s.store, "n1", cmd("c2", "d1")).await;
    let d = a.next().await.unwrap();
    assert_eq!(d.version, v2, "the next message is n1's own new state");
    assert_eq!(
        d.commands.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"]
    );

    a.send(agent_message::Msg::Ack(Ack { version: v2 })).await;
    let store = s.store.clone();
    eventually("acked_version recorded", || {
        let store = store.clone();
        async move {
            get_node(&store, "n1")
                .await
                .unwrap()
                .status
                .unwrap()
                .acked_version
                == v2
        }
    })
    .await;
    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    assert_eq!(n.desired_version, v2);
    assert!(n.last_seen_ms > 0);
}

#[tokio::test]
async fn results_are_recorded_once_and_progress_reaches_the_dpu() {
    let s = serve(cfg()).await;
    let dpu = Dpu {
        metadata: Some(ObjectMeta {
            name: "d1".into(),
            ..Default::default()
        }),
        spec: None,
        status: Some(DpuStatus {
            command_id: "c1".into(),
            ..Default::default()
        }),
    };
    seed(&s.store, vec![dpu.into()]).await;
    insert_command(&s.store, "n1", cmd("c1", "d1")).await;
    insert_command(&s.store, "n2", cmd("theirs", "x")).await;
    let mut a = open(s.addr, hello("n1", "boot-a")).await.unwrap();
    let first = a.next().await.unwrap();

    let p = FlashProgress {
        stage: "installer".into(),
        last_log_line: "INFO[MISC]: Installing".into(),
        ..Default::default()
    };
    let ev = CommandEvent {
        command_id: "c1".into(),
        event: Some(command_event::Event::Progress(p.clone())),
    };
    a.send(agent_message::Msg::Event(ev)).await;
    let store = s.store.clone();
    eventually("progress on the dpu", || {
        let store = store.clone();
        let p = p.clone();
        async move { get_dpu(&store, "d1").await.unwrap().status.unwrap().progress == Some(p) }
    })
    .await;

    a.result("c1", CommandOutcome::Succeeded, "prepared").await;
    let d = a.next().await.unwrap();
    assert!(
        d.version > first.version && d.commands.is_empty(),
        "a recorded result leaves the desired state"
    );
    // Repeats (an agent re-sends results after a reconnect) change nothing.
    a.result("c1", CommandOutcome::Failed, "late").await;
    a.result("nope", CommandOutcome::Failed, "unknown id").await;
    a.result("theirs", CommandOutcome::Succeeded, "not my node").await;
    a.send(agent_message::Msg::Heartbeat(Heartbeat { sent_at_ms: 1 }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let row = s.store.read(|t| t.command("c1")).await.unwrap().unwrap();
    let r = row.result.unwrap();
    assert_eq!(
        (r.outcome, r.message.as_str()),
        (CommandOutcome::Succeeded as i32, "prepared")
    );
    let theirs = s.store.read(|t| t.command("theirs")).await.unwrap().unwrap();
    assert!(
        theirs.result.is_none(),
        "an agent cannot finish another node's command"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.rx.message())
            .await
            .is_err(),
        "ignored results cause no new desired state"
    );
}

#[tokio::test]
async fn nack_is_recorded_with_a_condition_and_cleared_by_a_later_ack() {
    let s = serve(cfg()).await;
    let v = insert_command(&s.store, "n1", cmd("c1", "d1")).await;
    let mut a = open(s.addr, hello("n1", "boot-a")).await.unwrap();
    a.next().await.unwrap();
    a.send(agent_message::Msg::Nack(Nack {
        version: v,
        error: "unknown action in command c1".into(),
    }))
    .await;
    let store = s.store.clone();
    eventually("nack recorded", || {
        let store = store.clone();
        async move {
            !get_node(&store, "n1")
                .await
                .unwrap()
                .status
                .unwrap()
                .nack_error
                .is_empty()
        }
    })
    .await;
    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    assert_eq!(n.nack_error, "unknown action in command c1");
    let c = n
        .conditions
        .iter()
        .find(|c| c.r#type == "DesiredStateApplied")
        .unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Nacked"));
    assert!(c.message.contains(&format!("version {v}")), "{}", c.message);

    a.send(agent_message::Msg::Ack(Ack { version: v })).await;
    eventually("nack cleared", || {
        let store = store.clone();
        async move {
            let n = get_node(&store, "n1").await.unwrap().status.unwrap();
            n.nack_error.is_empty() && n.acked_version == v
        }
    })
    .await;
}

#[tokio::test]
async fn a_lapsed_lease_marks_the_node_unreachable_until_it_speaks_again() {
    let s = serve(StreamConfig {
        lease: Duration::from_millis(300),
        ..cfg()
    })
    .await;
    let mut a = open(s.addr, hello("n1", "boot-a")).await.unwrap();
    let d = a.next().await.unwrap();
    assert_eq!(d.lease_seconds, 1, "sub-second leases round up");
    // Silence: the stream stays open, but the lease lapses.
    let store = s.store.clone();
    eventually("node unreachable", || {
        let store = store.clone();
        async move { !get_node(&store, "n1").await.unwrap().status.unwrap().reachable }
    })
    .await;
    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    let c = n.conditions.iter().find(|c| c.r#type == "Reachable").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "LeaseExpired"));

    a.send(agent_message::Msg::Heartbeat(Heartbeat { sent_at_ms: 1 }))
        .await;
    eventually("node reachable again", || {
        let store = store.clone();
        async move { get_node(&store, "n1").await.unwrap().status.unwrap().reachable }
    })
    .await;
    drop(a);
    eventually("unreachable after the lease", || {
        let store = store.clone();
        async move { !get_node(&store, "n1").await.unwrap().status.unwrap().reachable }
    })
    .await;
}

#[tokio::test]
async fn a_second_session_replaces_the_first() {
    let s = serve(cfg()).await;
    let mut a = open(s.addr, hello("n1", "boot-a")).await.unwrap();
    a.next().await.unwrap();
    let mut b = open(s.addr, hello("n1", "boot-b")).await.unwrap();
    b.next().await.unwrap();
    let e = a.next().await.expect_err("the old session ends");
    assert_eq!(e.code(), Code::Aborted);
    assert!(
        e.message().contains("replaced by a newer session"),
        "{}",
        e.message()
    );
    let v = insert_command(&s.store, "n1", cmd("c1", "d1")).await;
    assert_eq!(b.next().await.unwrap().version, v, "the new session carries on");
    assert_eq!(
        get_node(&s.store, "n1").await.unwrap().status.unwrap().boot_id,
        "boot-b"
    );
    // Closing a stream does not by itself make the node unreachable (the lease does).
    drop(b);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get_node(&s.store, "n1").await.unwrap().status.unwrap().reachable);
}
