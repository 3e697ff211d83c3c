//! Shutdown and restart: the grace period, and the journal turning a command
//! that was running into INTERRUPTED instead of running it again.
mod session_support;

use std::time::Duration;

use hostplane_agent::session::journal::JOURNAL_FILE;
use hostplane_proto::v1::CommandOutcome;
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::command_event::Event;
use session_support::*;

/// Wait until the coordinator has seen progress for every one of `ids` (the
/// agent journals progress before forwarding it).
async fn wait_progress(coord: &mut FakeCoordinator, ids: &[&str]) {
    let mut missing: Vec<&str> = ids.to_vec();
    tokio::time::timeout(PATIENCE, async {
        while !missing.is_empty() {
            let (_, m) = coord.recv_any().await;
            if let Some(Msg::Event(e)) = m.msg
                && matches!(e.event, Some(Event::Progress(_)))
            {
                missing.retain(|id| *id != e.command_id);
            }
        }
    })
    .await
    .expect("no progress in time");
}

fn journal_json(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("state").join(JOURNAL_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn shutdown_cancels_commands_and_gives_up_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = FakeCoordinator::start().await;
    let mut cfg = config(dir.path(), &coord.url());
    cfg.shutdown_grace = Duration::from_millis(300);
    let ex = FakeExecutor::new();
    ex.set("polite", Mode::Hold);
    ex.set("stuck", Mode::IgnoreCancel);
    let agent = start_agent(cfg, ex.clone());

    let (conn, _) = coord.expect_hello().await;
    coord.send(
        conn,
        ds(1, vec![flash("polite", "rshim0"), flash("stuck", "rshim1")]),
    );
    coord.until_ack(1).await;
    wait_progress(&mut coord, &["polite", "stuck"]).await;

    // Returns (within PATIENCE) although "stuck" never stops.
    agent.stop().await.unwrap();

    let (_, r) = coord.until_result("polite").await;
    assert_eq!(r.outcome(), CommandOutcome::Cancelled, "sent while stopping");
    let j = journal_json(dir.path());
    assert_eq!(
        j["entries"]["polite"]["result"]["outcome"], "COMMAND_OUTCOME_CANCELLED",
        "{j}"
    );
    assert!(j["entries"]["stuck"]["result"].is_null(), "{j}");
    assert_eq!(j["entries"]["stuck"]["progress"]["bytes_pushed"], 10, "{j}");
}

#[tokio::test]
async fn a_command_running_at_restart_is_reported_interrupted_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = FakeCoordinator::start().await;
    let mut cfg = config(dir.path(), &coord.url());
    cfg.shutdown_grace = Duration::from_millis(100);
    let ex = FakeExecutor::new();
    ex.set("c1", Mode::IgnoreCancel);
    let agent = start_agent(cfg.clone(), ex.clone());
    let (conn, _) = coord.expect_hello().await;
    coord.send(conn, ds(1, vec![flash("c1", "rshim0")]));
    coord.until_ack(1).await;
    wait_progress(&mut coord, &["c1"]).await;
    agent.stop().await.unwrap();

    let ex2 = FakeExecutor::new();
    let agent = start_agent(cfg, ex2.clone());
    let (conn, hello) = coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 1);
    coord.send(conn, ds(1, vec![flash("c1", "rshim0")]));
    let (_, r) = coord.until_result("c1").await;
    assert_eq!(r.outcome(), CommandOutcome::Interrupted);
    for want in [
        "restarted",
        "rshim0",
        "dpu-c1",
        "c1",
        "10 of 100 bytes",
        "state is unknown",
    ] {
        assert!(r.message.contains(want), "{:?} lacks {want:?}", r.message);
    }
    coord.until_ack(1).await;
    assert!(ex2.starts().is_empty(), "an interrupted command is never re-run");

    // Once the coordinator drops it, the agent forgets it.
    coord.send(conn, ds(2, vec![]));
    coord.until_ack(2).await;
    let j = journal_json(dir.path());
    assert!(j["entries"].as_object().unwrap().is_empty(), "{j}");
    agent.stop().await.unwrap();
}
