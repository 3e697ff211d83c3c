use hostplane_proto::v1::{
    ObjectMeta, PowerBundle, PowerPolicySpec, Topology, TopologyElement, TopologyLevel, TopologySpec,
};

use hostplane_proto::v1::{Deployment, DeploymentSpec, Dpu, DpuSpec, Node};

use super::*;

fn node(name: &str) -> Node {
    Node {
        metadata: meta(name),
        ..Default::default()
    }
}

fn deployment(name: &str, power_policy: &str) -> Deployment {
    Deployment {
        metadata: meta(name),
        spec: Some(DeploymentSpec {
            power_policy: power_policy.into(),
            ..Default::default()
        }),
        status: None,
    }
}

fn dpu(name: &str, node: &str, deployment: &str) -> Dpu {
    Dpu {
        metadata: meta(name),
        spec: Some(DpuSpec {
            node: node.into(),
            deployment: deployment.into(),
            ..Default::default()
        }),
        status: None,
    }
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn watts(element: PowerElement, w: f64) -> PowerLimit {
    PowerLimit {
        element: element as i32,
        value: Some(power_limit::Value::Watts(w)),
    }
}

fn percent(element: PowerElement, p: f64) -> PowerLimit {
    PowerLimit {
        element: element as i32,
        value: Some(power_limit::Value::Percent(p)),
    }
}

fn el(name: &str, level: TopologyLevel, parent: &str, budget: f64) -> TopologyElement {
    TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: 0.0,
    }
}

/// Nodes n1..n4; n1-n3 in topology "hall" under a 2000 W feed, n4 in none.
fn view() -> View {
    let mut v = View::default();
    for n in ["n1", "n2", "n3", "n4"] {
        v.nodes.insert(n.into(), node(n));
    }
    let t = Topology {
        metadata: meta("hall"),
        spec: Some(TopologySpec {
            elements: vec![
                el("feed", TopologyLevel::Feed, "", 2000.0),
                el("n1", TopologyLevel::Node, "feed", 1000.0),
                el("n2", TopologyLevel::Node, "feed", 1000.0),
                el("n3", TopologyLevel::Node, "feed", 1000.0),
            ],
        }),
        status: None,
    };
    v.topologies.insert("hall".into(), t);
    v
}

fn policy(v: &mut View, name: &str, spec: PowerPolicySpec) {
    let p = PowerPolicy {
        metadata: meta(name),
        spec: Some(spec),
        status: None,
    };
    v.power_policies.insert(name.into(), p);
}

fn run(v: &View) -> Outcome {
    compute(
        v,
        &HashMap::new(),
        &HashMap::new(),
        1_000,
        &PowerConfig::default(),
    )
}

#[test]
fn topology_only_nodes_share_the_feed_with_no_policy_fields() {
    let out = run(&view());
    let c = &out.caps["n1"];
    assert!((c.node_watts - 666.667).abs() < 0.001, "{c:?}");
    assert_eq!(
        (
            c.policy.as_str(),
            c.topology.as_str(),
            c.lease_seconds,
            c.safe_node_watts
        ),
        ("", "hall", DEFAULT_LEASE_SECONDS, 0.0)
    );
    let total: f64 = ["n1", "n2", "n3"].iter().map(|n| out.caps[*n].node_watts).sum();
    assert!(total <= 2000.0, "{total}");
    assert!(!out.caps.contains_key("n4"), "no topology, no policy: no caps");
    let st = &out.topologies["hall"];
    let over = st
        .conditions
        .iter()
        .find(|c| c.r#type == COND_OVERSUBSCRIBED)
        .unwrap();
    assert_eq!(over.status, "True");
    assert!(
        over.message
            .contains("feed feed wants 3000 W at its nodes' ceilings, budget 2000 W"),
        "{}",
        over.message
    );
    assert_eq!(st.allocations[0].nodes_without_telemetry, 3);
    assert!(
        out.why["n1"].contains("feed feed shares 2000 W"),
        "{}",
        out.why["n1"]
    );
}

#[test]
fn highest_priority_wins_and_ties_go_to_the_first_name() {
    let mut v = view();
    let spec = |prio, node_w| PowerPolicySpec {
        nodes: vec!["n1".into(), "n4".into()],
        limits: vec![
            watts(PowerElement::Node, node_w),
            percent(PowerElement::Gpu, 80.0),
        ],
        priority: prio,
        safe_node_watts: 500.0,
        cap_lease_seconds: 30,
        ..Default::default()
    };
    policy(&mut v, "b-low", spec(1, 300.0));
    policy(&mut v, "c-high", spec(5, 400.0));
    policy(&mut v, "a-high", spec(5, 450.0));
    let out = run(&v);
    let n1 = &out.caps["n1"];
    assert_eq!(
        n1.policy, "a-high",
        "priority 5 beats 1; a-high sorts before c-high"
    );
    assert_eq!(n1.node_watts, 450.0, "the policy limit is below n1's share");
    assert_eq!(n1.device_limits, vec![percent(PowerElement::Gpu, 80.0)]);
    assert_eq!(
        (n1.lease_seconds, n1.safe_node_watts),
        (30, 450.0),
        "safe never above the cap"
    );
    let n4 = &out.caps["n4"];
    assert_eq!(
        (n4.node_watts, n4.topology.as_str()),
        (450.0, ""),
        "a node in no topology gets its policy's node limit"
    );
    assert_eq!(out.policies["a-high"].nodes, vec!["n1", "n4"]);
    assert!(out.policies["c-high"].nodes.is_empty());
    // n1 capped by its policy leaves more for n2 and n3.
    assert_eq!(out.caps["n2"].node_watts, 775.0);
}

#[test]
fn deployments_reach_the_nodes_of_their_dpus() {
    let mut v = view();
    v.deployments.insert("dep".into(), deployment("dep", ""));
    v.deployments
        .insert("named".into(), deployment("named", "by-name"));
    v.dpus.insert("d1".into(), dpu("d1", "n2", "dep"));
    v.dpus.insert("d2".into(), dpu("d2", "n4", "named"));
    policy(
        &mut v,
        "via-spec",
        PowerPolicySpec {
            deployments: vec!["dep".into()],
            limits: vec![watts(PowerElement::Cpu, 200.0)],
            ..Default::default()
        },
    );
    policy(
        &mut v,
        "by-name",
        PowerPolicySpec {
            nodes: vec!["ghost".into()],
            limits: vec![watts(PowerElement::Node, 900.0)],
            ..Default::default()
        },
    );
    let out = run(&v);
    assert_eq!(out.caps["n2"].policy, "via-spec");
    assert_eq!(
        out.caps["n4"].policy, "by-name",
        "the deployment names the policy"
    );
    assert_eq!(out.caps["n4"].node_watts, 900.0);
    let missing = out.policies["by-name"]
        .conditions
        .iter()
        .find(|c| c.r#type == COND_MISSING_TARGETS)
        .unwrap();
    assert_eq!(
        (missing.status.as_str(), missing.message.as_str()),
        (
            "True",
            "not found: node ghost; the policy applies to the targets that exist"
        )
    );
}

#[test]
fn a_node_percent_needs_a_topology() {
    let mut v = view();
    policy(
        &mut v,
        "pct",
        PowerPolicySpec {
            nodes: vec!["n1".into(), "n4".into()],
            limits: vec![percent(PowerElement::Node, 50.0)],
            bundles: vec![PowerBundle {
                name: "MaxQ".into(),
                limits: vec![percent(PowerElement::Node, 30.0)],
            }],
            active_bundle: "MaxQ".into(),
            ..Default::default()
        },
    );
    let out = run(&v);
    assert_eq!(
        out.caps["n1"].node_watts, 300.0,
        "30% of n1's 1000 W budget (MaxQ)"
    );
    assert_eq!(out.caps["n4"].node_watts, 0.0, "no topology: not capped");
    let c = out.policies["pct"]
        .conditions
        .iter()
        .find(|c| c.r#type == COND_UNRESOLVED)
        .unwrap();
    assert_eq!(c.status, "True");
    assert!(c.message.contains("node n4 is in no topology"), "{}", c.message);
}

#[test]
fn missing_nodes_keep_their_reservation_but_get_no_caps() {
    let mut v = view();
    v.nodes.remove("n3");
    let out = run(&v);
    assert!(!out.caps.contains_key("n3"));
    let c = out.topologies["hall"]
        .conditions
        .iter()
        .find(|c| c.r#type == COND_MISSING_NODES)
        .unwrap();
    assert_eq!(c.status, "True");
    assert!(c.message.contains("n3"), "{}", c.message);
}

#[test]
fn fresh_draws_shape_the_caps_and_stale_ones_do_not() {
    let v = view();
    let cfg = PowerConfig::default();
    let now = 100_000;
    // n1 draws 100 W (fresh), n2 drew 100 W a minute ago (stale: unknown).
    let draws = HashMap::from([
        ("n1".to_string(), (100.0, now - 1_000)),
        ("n2".to_string(), (100.0, now - 60_000)),
    ]);
    let out = compute(&v, &draws, &HashMap::new(), now, &cfg);
    assert_eq!(out.caps["n1"].node_watts, 160.0, "100 W x 1.1 + 50 W");
    assert_eq!(out.caps["n2"].node_watts, 920.0);
    assert_eq!(out.caps["n3"].node_watts, 920.0);
    let feed = &out.topologies["hall"].allocations[0];
    assert_eq!((feed.draw_watts, feed.nodes_without_telemetry), (100.0, 2));
}

#[test]
fn status_writes_ignore_draws_until_the_refresh() {
    let out = run(&view());
    let st = out.topologies["hall"].clone();
    let mut later = st.clone();
    later.computed_at_ms += 1_000;
    assert!(
        !topology_status_changed(&st, &later, 60_000),
        "only the time moved"
    );
    later.allocations[0].draw_watts = 55.0;
    assert!(
        !topology_status_changed(&st, &later, 60_000),
        "new draws, but recent"
    );
    later.computed_at_ms += 60_000;
    assert!(
        topology_status_changed(&st, &later, 60_000),
        "new draws, refresh due"
    );
    let mut moved = st.clone();
    moved.allocations[1].allocated_watts += 10.0;
    assert!(topology_status_changed(&st, &moved, 60_000));
}

#[test]
fn condition_times_move_only_when_the_status_flips() {
    let mut v = view();
    let first = run(&v);
    let hall = v.topologies.get_mut("hall").unwrap();
    hall.status = Some(first.topologies["hall"].clone());
    let again = compute(
        &v,
        &HashMap::new(),
        &HashMap::new(),
        9_000,
        &PowerConfig::default(),
    );
    let t = |o: &Outcome| {
        o.topologies["hall"]
            .conditions
            .iter()
            .map(|c| c.last_transition_time_ms)
            .collect::<Vec<_>>()
    };
    assert_eq!(t(&first), t(&again));
    assert_eq!(t(&again), vec![1_000, 1_000, 1_000]);
}
