//! `hostplanectl topology validate|import|show` and `policy create|set-bundle`
//! through the real binary: validate needs no server; the others run against
//! the in-process fake admin server of `support/`.
mod support;

use hostplane_proto::v1::{
    NodePower, PowerBundle, PowerPolicy, PowerPolicySpec, PowerSummary, Resource, resource,
};
use support::{Fake, ctl, ctl_with, serve};

const GOOD: &str = "\
topology:
  metadata: {name: hall-a}
  spec:
    elements:
      - {name: feed-a, level: TOPOLOGY_LEVEL_FEED, budgetWatts: 30000}
      - {name: pdu-1, level: TOPOLOGY_LEVEL_PDU, parent: feed-a, budgetWatts: 20000}
      - {name: rack-1, level: TOPOLOGY_LEVEL_RACK, parent: pdu-1, budgetWatts: 15000}
      - {name: n1, level: TOPOLOGY_LEVEL_NODE, parent: rack-1, budgetWatts: 10200, minWatts: 2000}
      - {name: n2, level: TOPOLOGY_LEVEL_NODE, parent: rack-1, budgetWatts: 10200, minWatts: 2000}
";

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Nothing listens here: a command that connected would fail with 69.
const NO_SERVER: &str = "http://127.0.0.1:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_a_good_file_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "hall.yaml", GOOD);
    let r = ctl(NO_SERVER, &["topology", "validate", &path]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "topology/hall-a is valid: 1 feed, 1 pdu, 1 rack, 2 nodes; feeds' budget 30000 W\n\
         not checked without a server: each node element names an existing Node; no node is in another \
         topology already stored\n"
    );
    let r = ctl(NO_SERVER, &["topology", "validate", &path, "-o", "json"]).await;
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["topologies"][0]["nodes"], 2);
    // The same through stdin.
    let r = ctl_with(NO_SERVER, &["topology", "validate", "-"], &[], Some(GOOD)).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_field_of_a_bad_file_and_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            GOOD.replace("parent: pdu-1,", "parent: pdu-9,"),
            "topology \"hall-a\": topology.spec.elements[2].parent: \"pdu-9\" is not an element",
        ),
        (
            GOOD.replace(
                "{name: pdu-1, level: TOPOLOGY_LEVEL_PDU, parent: feed-a",
                "{name: pdu-1, level: TOPOLOGY_LEVEL_PDU, parent: rack-1",
            ),
            "makes a cycle: pdu-1 -> rack-1 -> pdu-1",
        ),
        (
            GOOD.replace("budgetWatts: 15000", "budgetWatts: 3000"),
            "topology.spec.elements[2].budget_watts: the guaranteed minimums below \"rack-1\" add up to 4000 W, \
             more than its budget of 3000 W (n1, n2)",
        ),
        (
            GOOD.replace("level: TOPOLOGY_LEVEL_PDU", "level: TOPOLOGY_LEVEL_RACK"),
            "topology.spec.elements[2].parent: \"pdu-1\" is a rack; a rack's parent must be a pdu or a feed",
        ),
        (
            format!("{GOOD}---\n{}", GOOD.replace("hall-a", "hall-b")),
            "topology \"hall-b\": topology.spec.elements[3].name: node \"n1\" is also in topology \"hall-a\" in this file",
        ),
        (
            "node:\n  metadata: {name: n1}\n".to_string(),
            "holds node/n1, expected only topology resources",
        ),
    ];
    for (text, want) in cases {
        let path = file(&dir, "bad.yaml", &text);
        let r = ctl(NO_SERVER, &["topology", "validate", &path]).await;
        assert_eq!(r.code, 6, "{want}: {}", r.stderr);
        assert!(r.stderr.starts_with(&format!("error: {path}: ")), "{}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{:?} does not contain {want:?}",
            r.stderr
        );
        assert_eq!(r.stdout, "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_creates_then_configures_and_refuses_a_bad_file_before_connecting() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "hall.yaml", GOOD);
    let r = ctl(&server, &["topology", "import", &path]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "topology/hall-a created\n"),
        "{}",
        r.stderr
    );
    let r = ctl(&server, &["topology", "import", &path]).await;
    assert_eq!(r.stdout, "topology/hall-a unchanged\n", "{}", r.stderr);
    let path2 = file(
        &dir,
        "hall2.yaml",
        &GOOD.replace("budgetWatts: 30000", "budgetWatts: 32000"),
    );
    let r = ctl(&server, &["topology", "import", &path2]).await;
    assert_eq!(r.stdout, "topology/hall-a configured\n", "{}", r.stderr);

    let version = fake.state.lock().unwrap().version;
    let bad = file(
        &dir,
        "bad.yaml",
        &GOOD.replace("budgetWatts: 30000", "budgetWatts: -1"),
    );
    let r = ctl(&server, &["topology", "import", &bad]).await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("topology.spec.elements[0].budget_watts: -1 is not a budget"),
        "{}",
        r.stderr
    );
    assert_eq!(fake.state.lock().unwrap().version, version, "nothing was sent");

    let r = ctl(&server, &["topology", "list"]).await;
    assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
    assert!(r.stdout.contains("hall-a"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_the_tree_with_live_draws() {
    let fake = Fake::default();
    fake.state.lock().unwrap().power = PowerSummary {
        nodes: vec![NodePower {
            node: "n2".into(),
            draw_watts: Some(7123.4),
            ..Default::default()
        }],
        elements: vec![],
    };
    let server = serve(fake).await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "hall.yaml", GOOD);
    assert_eq!(ctl(&server, &["topology", "import", &path]).await.code, 0);
    let r = ctl(&server, &["topology", "show", "hall-a"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ELEMENT", "LEVEL", "BUDGET-W", "MIN-W", "ALLOCATED-W", "DRAW-W"]
    );
    assert!(lines[1].starts_with("feed-a "), "{}", r.stdout);
    assert!(lines[3].starts_with("    rack-1 "), "{}", r.stdout);
    assert!(lines[1].ends_with("7123 (1 unknown)"), "{}", r.stdout);
    assert!(
        lines[5].starts_with("      n2 ") && lines[5].ends_with("7123"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("not allocated yet"), "{}", r.stdout);
    let r = ctl(&server, &["topology", "show", "nope"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
}

fn stored_policy(fake: &Fake, name: &str) -> PowerPolicy {
    let st = fake.state.lock().unwrap();
    let r: &Resource = st.objects.values().find(|r| r.name() == name).expect("stored");
    match &r.kind {
        Some(resource::Kind::PowerPolicy(p)) => p.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_create_and_set_bundle() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let r = ctl(
        &server,
        &[
            "policy",
            "create",
            "p1",
            "--node",
            "n1",
            "--limit",
            "node=9000W",
            "--bundle",
            "MaxQ:node=7000W,gpu=70%",
            "--bundle",
            "MaxP:gpu=100%",
            "--safe-watts",
            "5000",
        ],
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "powerpolicy/p1 created\n"),
        "{}",
        r.stderr
    );

    let r = ctl(&server, &["policy", "set-bundle", "p1", "MaxQ"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "powerpolicy/p1 bundle MaxQ active\n"),
        "{}",
        r.stderr
    );
    assert_eq!(stored_policy(&fake, "p1").spec.unwrap().active_bundle, "MaxQ");
    let r = ctl(&server, &["policy", "set-bundle", "p1", "MaxQ"]).await;
    assert_eq!(r.stdout, "powerpolicy/p1 bundle MaxQ active (unchanged)\n");

    let r = ctl(&server, &["policy", "set-bundle", "p1", "Eco"]).await;
    assert_eq!(r.code, 6);
    assert_eq!(
        r.stderr,
        "error: powerpolicy p1: no bundle \"Eco\" (bundles: MaxQ, MaxP)\n"
    );
    let r = ctl(&server, &["policy", "set-bundle", "p1", "--none"]).await;
    assert_eq!(
        r.stdout, "powerpolicy/p1 bundle none: its own limits apply\n",
        "{}",
        r.stderr
    );
    let spec: PowerPolicySpec = stored_policy(&fake, "p1").spec.unwrap();
    assert_eq!(spec.active_bundle, "");
    assert_eq!(
        spec.bundles
            .iter()
            .map(|b: &PowerBundle| b.name.as_str())
            .collect::<Vec<_>>(),
        ["MaxQ", "MaxP"]
    );

    let r = ctl(&server, &["policy", "list"]).await;
    assert!(r.stdout.contains("p1"), "{}", r.stdout);
    let r = ctl(&server, &["policy", "delete", "p1"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "powerpolicy/p1 deleted\n"),
        "{}",
        r.stderr
    );

    // Refused before connecting: a percent over 100.
    let r = ctl(
        NO_SERVER,
        &["policy", "create", "p2", "--node", "n1", "--limit", "gpu=120%"],
    )
    .await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "error: command line: powerpolicy.spec.limits[0].percent: 120 must be more than 0 and at most 100\n"
    );
}
