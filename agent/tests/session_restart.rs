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
    let modes = [("polite", Mode::Hold), ("stuck", Mode::IgnoreCancel)];
    let mut s = Scene::start(&modes, |c| c.shutdown_grace = Duration::from_millis(300)).await;
    s.apply(ds(1, vec![flash("polite", "rshim0"), flash("stuck", "rshim1")]))
        .await;
    wait_progress(&mut s.coord, &["polite", "stuck"]).await;

    // Returns (within PATIENCE) although "stuck" never stops.
    s.agent.stop().await.unwrap();

    // Stopped at a safe point by the agent's own shutdown: INTERRUPTED (as a
    // restart would say), not CANCELLED (the coordinator never withdrew it).
    let (_, r) = s.coord.until_result("polite").await;
    assert_eq!(r.outcome(), CommandOutcome::Interrupted, "sent while stopping");
    assert!(
        r.message.ends_with("(the agent was shutting down)"),
        "{}",
        r.message
    );
    let j = journal_json(s.dir.path());
    assert_eq!(
        j["entries"]["polite"]["result"]["outcome"], "COMMAND_OUTCOME_INTERRUPTED",
        "{j}"
    );
    assert!(j["entries"]["stuck"]["result"].is_null(), "{j}");
    assert_eq!(j["entries"]["stuck"]["progress"]["bytes_pushed"], 10, "{j}");
}

#[tokio::test]
async fn a_command_running_at_restart_is_reported_interrupted_not_rerun() {
    let modes = [("c1", Mode::IgnoreCancel)];
    let mut s = Scene::start(&modes, |c| c.shutdown_grace = Duration::from_millis(100)).await;
    s.apply(ds(1, vec![flash("c1", "rshim0")])).await;
    wait_progress(&mut s.coord, &["c1"]).await;
    s.agent.stop().await.unwrap();

    let ex2 = FakeExecutor::new();
    s.agent = start_agent(s.cfg.clone(), ex2.clone());
    let (conn, hello) = s.coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 1);
    s.conn = conn;
    s.coord.send(conn, ds(1, vec![flash("c1", "rshim0")]));
    let (_, r) = s.coord.until_result("c1").await;
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
    s.coord.until_ack(1).await;
    assert!(ex2.starts().is_empty(), "an interrupted command is never re-run");

    // Once the coordinator drops it, the agent forgets it.
    s.apply(ds(2, vec![])).await;
    let j = journal_json(s.dir.path());
    assert!(j["entries"].as_object().unwrap().is_empty(), "{j}");
    s.agent.stop().await.unwrap();
}
