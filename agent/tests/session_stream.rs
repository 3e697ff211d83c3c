//! The agent half of the stream protocol against a scripted coordinator over
//! real gRPC (docs/agent-protocol.md, "Sequence").
mod session_support;

use hostplane_agent::exec::AGENT_VERSION;
use hostplane_agent::session::persist;
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{CommandOutcome, command_event};
use session_support::*;

#[tokio::test]
async fn hello_carries_identity_inventory_and_last_applied_version() {
    let mut s = Scene::start(&[], |_| {}).await;
    assert_eq!(s.hello.node_name, NODE);
    assert_eq!(s.hello.agent_version, AGENT_VERSION);
    assert_eq!(s.hello.boot_id, BOOT_ID);
    assert_eq!(s.hello.last_applied_version, 0);
    let rshims = s.hello.inventory.clone().unwrap().rshims;
    assert_eq!(rshims.len(), 1);
    assert_eq!(rshims[0].name, "rshim0");

    s.apply(ds(5, vec![])).await;
    s.agent.stop().await.unwrap();

    // A restarted agent reports the version it applied last.
    let agent = start_agent(s.cfg.clone(), FakeExecutor::new());
    let (_, hello) = s.coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 5);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn desired_state_is_stored_before_the_ack_and_results_follow() {
    let mut s = Scene::start(&[("c2", Mode::Hold)], |_| {}).await;
    let state = ds(1, vec![reboot("c1"), flash("c2", "rshim0")]);
    s.apply(state.clone()).await;
    let stored = persist::load_desired(&s.cfg.state_dir).await.unwrap();
    assert_eq!(stored, Some(state), "the ACKed state is on disk");

    // c1 finishes at once; c2 reports progress and waits to be released.
    let mut outcomes = Vec::new();
    let mut progress_seen = false;
    while outcomes.len() < 2 {
        let (_, m) = s.coord.recv_any().await;
        if let Some(Msg::Event(e)) = m.msg {
            match e.event.unwrap() {
                command_event::Event::Result(r) => outcomes.push((e.command_id, r.outcome(), r.message)),
                command_event::Event::Progress(p) => {
                    assert_eq!(e.command_id, "c2");
                    assert_eq!(
                        (p.stage.as_str(), p.bytes_pushed, p.bytes_total),
                        ("push", 10, 100)
                    );
                    progress_seen = true;
                    s.ex.release("c2");
                }
            }
        }
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("c1".into(), CommandOutcome::Succeeded, "done c1".into()),
            ("c2".into(), CommandOutcome::Succeeded, "done c2".into())
        ]
    );
    assert!(progress_seen, "executor progress is forwarded");
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_command_runs_once_across_resends_and_reconnects() {
    let mut s = Scene::start(&[("c1", Mode::Hold)], |_| {}).await;
    s.apply(ds(1, vec![reboot("c1")])).await;
    assert_eq!(s.ex.next_event().await, ExecEvent::Started("c1".into()));
    // The same version again, then a newer one still listing c1.
    s.apply(ds(1, vec![reboot("c1")])).await;
    s.apply(ds(2, vec![reboot("c1"), reboot("c2")])).await;

    // The coordinator goes away; the agent reconnects and resumes from version 2.
    s.coord.drop_conn(s.conn);
    let seen = s.coord.recv_until(|m| matches!(m, Msg::Hello(_))).await;
    let (conn, Msg::Hello(hello)) = seen.last().cloned().unwrap() else {
        unreachable!()
    };
    assert_eq!(conn, 1);
    assert_eq!(hello.last_applied_version, 2);
    s.conn = conn;
    s.apply(ds(2, vec![reboot("c1"), reboot("c2")])).await;

    s.ex.release("c1");
    let (_, r) = s.coord.until_result("c1").await;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded);

    // Still listed after it finished: the result is sent again, the command is not re-run.
    let seen = s.apply(ds(2, vec![reboot("c1"), reboot("c2")])).await;
    let resent: Vec<_> = seen.iter().filter_map(|(_, m)| result_of(m, "c1")).collect();
    assert_eq!(resent, [r], "the journaled result is re-sent unchanged");
    assert_eq!(s.ex.starts(), ["c1", "c2"]);
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn results_produced_while_disconnected_are_sent_after_reconnect() {
    let mut s = Scene::start(&[("c1", Mode::Hold)], |_| {}).await;
    s.apply(ds(1, vec![reboot("c1")])).await;
    assert_eq!(s.ex.next_event().await, ExecEvent::Started("c1".into()));

    s.coord.refuse(true);
    s.coord.drop_conn(s.conn);
    // The agent saw the break: it is retrying. c1 finishes while it is disconnected.
    s.coord.wait_refused(1).await;
    s.ex.release("c1");
    s.coord.wait_refused(2).await;
    s.coord.refuse(false);

    let (conn, hello) = s.coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 1);
    s.conn = conn;
    let seen = s.apply(ds(1, vec![reboot("c1")])).await;
    let results: Vec<_> = seen.iter().filter_map(|(_, m)| result_of(m, "c1")).collect();
    assert_eq!(results.len(), 1, "{seen:?}");
    assert!(
        seen.iter().all(|(c, _)| *c == conn),
        "nothing was sent on the dropped connection: {seen:?}"
    );
    assert_eq!(results[0].outcome(), CommandOutcome::Succeeded);
    assert_eq!(s.ex.starts(), ["c1"]);
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_withdrawn_command_is_cancelled_and_reported() {
    let mut s = Scene::start(&[("c1", Mode::Hold), ("c2", Mode::Hold)], |_| {}).await;
    s.apply(ds(1, vec![flash("c1", "rshim0"), flash("c2", "rshim1")]))
        .await;
    s.coord.send(s.conn, ds(2, vec![flash("c2", "rshim1")]));
    let (_, r) = s.coord.until_result("c1").await;
    assert_eq!(r.outcome(), CommandOutcome::Cancelled);
    assert_eq!(r.message, "cancelled c1");
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(s.ex.next_event().await);
    }
    assert!(events.contains(&ExecEvent::Cancelled("c1".into())), "{events:?}");
    assert!(!events.contains(&ExecEvent::Cancelled("c2".into())), "{events:?}");
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn an_unusable_state_is_nacked_and_running_work_continues() {
    let mut s = Scene::start(&[("c1", Mode::Hold)], |_| {}).await;
    s.apply(ds(1, vec![reboot("c1")])).await;

    s.coord.send(s.conn, ds(2, vec![reboot("dup"), reboot("dup")]));
    match s.coord.recv().await {
        (_, Msg::Nack(n)) => {
            assert_eq!(n.version, 2);
            assert!(n.error.contains("dup is listed twice"), "{}", n.error);
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    let stored = persist::load_desired(&s.cfg.state_dir).await.unwrap().unwrap();
    assert_eq!(stored.version, 1, "a NACKed state is not stored");

    let mut wrong_node = ds(3, vec![reboot("c1")]);
    wrong_node.node = "someone-else".into();
    s.coord.send(s.conn, wrong_node);
    match s.coord.recv().await {
        (_, Msg::Nack(n)) => assert!(n.error.contains("someone-else"), "{}", n.error),
        other => panic!("expected a NACK, got {other:?}"),
    }

    // An older version than the applied one is ignored (no ACK, no NACK).
    s.apply(ds(4, vec![reboot("c1")])).await;
    s.coord.send(s.conn, ds(3, vec![]));
    s.coord.send(s.conn, ds(5, vec![reboot("c1")]));
    match s.coord.recv().await {
        (_, Msg::Ack(a)) => assert_eq!(a.version, 5, "version 3 must be ignored"),
        other => panic!("expected ACK 5, got {other:?}"),
    }

    assert_eq!(s.ex.starts(), ["c1"], "c1 kept running through the NACKs");
    s.ex.release("c1");
    let (_, r) = s.coord.until_result("c1").await;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded);
    s.agent.stop().await.unwrap();
}
