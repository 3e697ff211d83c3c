//! `hostplanectl node mark-rebooted [--power-cycled]` and the node's power
//! cycle in `node get` / `node reboot-status`, against the fake AdminService
//! (which refuses a warm reboot while a power cycle is required, as the
//! coordinator does).
mod support;

use hostplane_proto::v1::{Node, NodeStatus, ObjectMeta, RebootKind, Resource, resource};
use support::{Fake, ctl, serve};

/// Node n1 waiting for a reboot; `power_cycle`: the wait needs a power cycle.
fn waiting_node(power_cycle: bool) -> Resource {
    Node {
        metadata: Some(ObjectMeta {
            name: "n1".into(),
            ..Default::default()
        }),
        spec: None,
        status: Some(NodeStatus {
            waiting_for_reboot: true,
            power_cycle_required: power_cycle,
            ..Default::default()
        }),
    }
    .into()
}

fn last_reboot_kind(fake: &Fake) -> i32 {
    let st = fake.state.lock().unwrap();
    let (_, r) = st.objects.iter().find(|(_, r)| r.name() == "n1").expect("n1");
    match &r.kind {
        Some(resource::Kind::Node(n)) => n.status.as_ref().unwrap().last_reboot_kind,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_needs_a_power_cycle_is_marked_power_cycled() {
    let fake = Fake::default();
    fake.insert(waiting_node(true));
    let server = serve(fake.clone()).await;

    let r = ctl(&server, &["node", "reboot-status", "n1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "NODE   WAITING-REBOOT   POWER-CYCLE   DPUS\nn1     true             true          -\n"
        ),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["node", "get", "n1"]).await;
    let line = r.stdout.lines().nth(1).unwrap_or_default().to_string();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        ["n1", "false", "-", "true", "required", "-"],
        "{}",
        r.stdout
    );

    // A warm reboot is refused (exit 7, the server's words), and nothing is recorded.
    let r = ctl(&server, &["node", "mark-rebooted", "n1"]).await;
    assert_eq!(r.code, 7, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("node n1 must be power-cycled"), "{}", r.stderr);
    assert_eq!(last_reboot_kind(&fake), RebootKind::Unspecified as i32);

    let r = ctl(&server, &["node", "mark-rebooted", "n1", "--power-cycled"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n1 marked power-cycled\n"),
        "{}",
        r.stderr
    );
    assert_eq!(last_reboot_kind(&fake), RebootKind::PowerCycle as i32);
    let r = ctl(&server, &["node", "get", "n1", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["node"]["status"]["lastRebootKind"], "REBOOT_KIND_POWER_CYCLE",
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_reboot_is_recorded_as_one_under_either_name() {
    let fake = Fake::default();
    fake.insert(waiting_node(false));
    let server = serve(fake.clone()).await;
    for argv in [["node", "mark-rebooted", "n1"], ["node", "rebooted", "n1"]] {
        let r = ctl(&server, &argv).await;
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "node/n1 marked rebooted\n"),
            "{argv:?}: {}",
            r.stderr
        );
        assert_eq!(last_reboot_kind(&fake), RebootKind::Reboot as i32);
    }
    let r = ctl(&server, &["node", "get", "n1"]).await;
    assert!(r.stdout.contains(" reboot "), "{}", r.stdout);
}
