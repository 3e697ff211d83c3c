//! Host networks in the session, with a fake network manager: applied
//! before the ACK, NACKed when refused, reports forwarded (apply and drift)
//! and re-sent after a reconnect, re-applied at start from desired.json
//! without a coordinator.
mod session_support;

use std::time::Duration;

use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{DesiredState, NetworkReport};
use session_support::*;

fn with_nets(version: u64, nets: Vec<hostplane_proto::v1::DpuNetwork>) -> DesiredState {
    DesiredState {
        networks: nets,
        ..ds(version, vec![])
    }
}

fn reports(seen: &[(usize, Msg)]) -> Vec<NetworkReport> {
    seen.iter()
        .filter_map(|(_, m)| match m {
            Msg::NetworkReport(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A Scene whose agent has a fake network manager.
async fn scene() -> (Scene, std::sync::Arc<FakeNet>) {
    let mut s = Scene::start(&[], |_| {}).await;
    // Replace the agent Scene started with one that has host networking.
    s.agent.stop().await.unwrap();
    let net = FakeNet::new();
    s.agent = start_agent_with_net(s.cfg.clone(), s.ex.clone(), Some(net.clone()));
    let (conn, _) = s.coord.expect_hello().await;
    s.conn = conn;
    (s, net)
}

#[tokio::test]
async fn networks_are_applied_before_the_ack_and_reported() {
    let (mut s, net) = scene().await;
    let gate = net.hold();
    let state = with_nets(1, vec![dpu_net("dpu-a", "br-a"), dpu_net("dpu-b", "br-fail")]);
    s.coord.send(s.conn, state.clone());
    net.wait_calls(1).await;
    assert_eq!(net.calls()[0], state.networks);
    // Held inside set_desired: no ACK (nor anything else) goes out.
    let early = tokio::time::timeout(Duration::from_millis(300), s.coord.recv()).await;
    assert!(early.is_err(), "sent while the network was applying: {early:?}");
    gate.notify_one();

    let seen = s.coord.until_ack(1).await;
    let r = reports(&seen);
    assert_eq!(r.len(), 2, "{seen:?}");
    assert!(r[0].applied && r[0].dpu == "dpu-a");
    // A partial failure is reported, and the version is still ACKed.
    assert!(!r[1].applied && r[1].objects[0].error.contains("Operation not permitted"));

    // The next state (no networks) is applied too: the manager removes what it had.
    s.apply(ds(2, vec![])).await;
    assert_eq!(net.calls().len(), 2);
    assert!(net.calls()[1].is_empty());
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_network_is_nacked_and_changes_nothing() {
    let (mut s, net) = scene().await;
    s.apply(with_nets(1, vec![dpu_net("dpu-a", "br-a")])).await;
    s.coord
        .send(s.conn, with_nets(2, vec![dpu_net("dpu-a", "bad-bridge")]));
    let seen = s
        .coord
        .recv_until(|m| matches!(m, Msg::Nack(_) | Msg::Ack(_)))
        .await;
    let Some((_, Msg::Nack(n))) = seen.last() else {
        panic!("expected a NACK, got {seen:?}");
    };
    assert_eq!(n.version, 2);
    assert_eq!(
        n.error,
        "host network refused, nothing changed: dpu dpu-a: host_network.bridges[0].name: refused by the fake"
    );
    assert_eq!(
        net.calls().len(),
        1,
        "the refused state never reached set_desired"
    );
    let stored = hostplane_agent::session::persist::load_desired(&s.cfg.state_dir)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 1, "the refused state is not stored");
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn drift_reports_are_forwarded_and_the_latest_resent_after_a_reconnect() {
    let (mut s, net) = scene().await;
    s.apply(with_nets(1, vec![dpu_net("dpu-a", "br-a")])).await;

    let drift = NetworkReport {
        dpu: "dpu-a".into(),
        applied: true,
        drift_repairs: 1,
        last_drift: "bridge br-a deleted externally; recreated".into(),
        ..FakeNet::report_of(&dpu_net("dpu-a", "br-a"))
    };
    net.drift(drift.clone());
    let seen = s.coord.recv_until(|m| matches!(m, Msg::NetworkReport(_))).await;
    assert_eq!(reports(&seen), std::slice::from_ref(&drift));

    // A drift report for a network no longer desired is stale: not forwarded
    // (were it sent, the next message would be it instead of the Hello or
    // the latest report checked below).
    net.drift(NetworkReport {
        dpu: "dpu-gone".into(),
        ..drift.clone()
    });

    // After a reconnect the latest report per Dpu comes right after Hello,
    // before any desired state is sent.
    s.coord.drop_conn(s.conn);
    let (conn, hello) = s.coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 1);
    s.conn = conn;
    let (c, m) = s.coord.recv().await;
    assert_eq!(c, conn);
    match m {
        Msg::NetworkReport(r) => assert_eq!(r, drift),
        other => panic!("expected the latest report, got {other:?}"),
    }
    s.agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_reapplies_the_stored_networks_without_the_coordinator() {
    let (mut s, net) = scene().await;
    let state = with_nets(4, vec![dpu_net("dpu-a", "br-a")]);
    s.apply(state.clone()).await;
    s.agent.stop().await.unwrap();

    // The coordinator is away when the agent comes back.
    s.coord.refuse(true);
    let net2 = FakeNet::new();
    let agent = start_agent_with_net(s.cfg.clone(), FakeExecutor::new(), Some(net2.clone()));
    net2.wait_calls(1).await;
    assert_eq!(net2.calls()[0], state.networks, "re-applied from desired.json");
    s.coord.wait_refused(1).await;
    assert_eq!(net.calls().len(), 1, "the old manager is not used again");

    // Once the coordinator is back, it hears the re-applied state's report first.
    s.coord.refuse(false);
    let (conn, hello) = s.coord.expect_hello().await;
    assert_eq!(hello.last_applied_version, 4);
    match s.coord.recv().await {
        (c, Msg::NetworkReport(r)) if c == conn => {
            assert_eq!(r, FakeNet::report_of(&state.networks[0]))
        }
        other => panic!("expected the re-applied report, got {other:?}"),
    }
    agent.stop().await.unwrap();
}
