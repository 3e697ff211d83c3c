//! An agent given several coordinator URLs (issue 13): it connects to one
//! that listens and, when that one goes away, reconnects to another.
mod session_support;

use session_support::*;

#[tokio::test]
async fn the_agent_moves_between_coordinator_replicas() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing listening on it (yet): the first replica is down.
    let first_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut second = FakeCoordinator::start().await;
    let mut cfg = config(dir.path(), "http://127.0.0.1:1");
    cfg.coordinator =
        hostplane_agent::config::CoordinatorUrls::new(vec![format!("http://{first_addr}"), second.url()]);
    cfg.validate().unwrap();
    let agent = start_agent(cfg, FakeExecutor::new());

    let (conn, hello) = second.expect_hello().await;
    assert_eq!(hello.node_name, NODE);
    second.send(conn, ds(3, vec![]));
    second.until_ack(3).await;

    // The first replica comes up; the second goes away.
    let mut first = FakeCoordinator::start_at(first_addr).await;
    second.drop_conn(conn);
    drop(second);
    let (_, hello) = first.expect_hello().await;
    assert_eq!(hello.last_applied_version, 3, "the same agent, reconnected");
    agent.stop().await.unwrap();
}
