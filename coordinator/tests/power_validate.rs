//! Topology and PowerPolicy through the admin API: what is refused (with the
//! field named and the store revision unchanged) and what is stored.
mod power_common;

use hostplane_proto::v1::{
    Kind, PowerBundle, PowerElement, PowerPolicySpec, Topology, TopologyElement, TopologyLevel, resource,
};
use power_common::*;
use tonic::Code;

use TopologyLevel::{Feed, Node, Pdu, Rack};

fn hall(name: &str, nodes: &[&str]) -> Topology {
    let mut els = vec![
        el("feed-a", Feed, "", 30_000.0, 0.0),
        el("pdu-1", Pdu, "feed-a", 20_000.0, 0.0),
        el("rack-1", Rack, "pdu-1", 15_000.0, 0.0),
    ];
    for n in nodes {
        els.push(el(n, Node, "rack-1", 10_200.0, 1_000.0));
    }
    topology(name, els)
}

async fn expect_refused(e: &Env, r: impl Into<hostplane_proto::v1::Resource>, code: Code, want: &str) {
    let before = e.revision().await;
    let err = e.create(r).await.unwrap_err();
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().starts_with(want),
        "got {:?}, want {want:?}",
        err.message()
    );
    assert_eq!(e.revision().await, before, "a refused call changes nothing");
}

#[tokio::test]
async fn bad_topologies_are_refused_naming_the_field_and_change_nothing() {
    let e = env();
    e.nodes(&["n1", "n2", "n3"]).await;
    type Edit = fn(&mut Vec<TopologyElement>);
    let cases: Vec<(&str, Edit, Code, &str)> = vec![
        (
            "unknown parent",
            |els| els[2].parent = "pdu-9".into(),
            Code::InvalidArgument,
            "topology.spec.elements[2].parent: \"pdu-9\" is not an element",
        ),
        (
            "cycle",
            |els| els[1].parent = "rack-1".into(),
            Code::InvalidArgument,
            "topology.spec.elements[2].parent: \"pdu-1\" makes a cycle: pdu-1 -> rack-1 -> pdu-1",
        ),
        (
            "level order: a pdu under a rack",
            |els| {
                els[1].parent = "rack-0".into();
                els.push(el("rack-0", Rack, "feed-a", 1_000.0, 0.0));
            },
            Code::InvalidArgument,
            "topology.spec.elements[1].parent: \"rack-0\" is a rack; a pdu's parent must be a feed",
        ),
        (
            "level order: a node under a node",
            |els| els[4].parent = "n1".into(),
            Code::InvalidArgument,
            "topology.spec.elements[4].parent: \"n1\" is a node; a node's parent must be a rack, a pdu or a feed",
        ),
        (
            "minimums over the parent's budget",
            |els| els[2].budget_watts = 1_500.0,
            Code::InvalidArgument,
            "topology.spec.elements[2].budget_watts: the guaranteed minimums below \"rack-1\" add up to 2000 W, \
             more than its budget of 1500 W (n1, n2)",
        ),
        (
            "a node element naming no node",
            |els| els[4].name = "n9".into(),
            Code::InvalidArgument,
            "topology.spec.elements[4].name: node \"n9\" does not exist",
        ),
        (
            "no elements",
            |els| els.clear(),
            Code::InvalidArgument,
            "topology.spec.elements: required: at least one feed",
        ),
    ];
    for (what, edit, code, want) in cases {
        let mut t = hall("t", &["n1", "n2"]);
        edit(&mut t.spec.as_mut().unwrap().elements);
        let before = e.revision().await;
        let err = e.create(t).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(
            err.message().starts_with(want),
            "{what}: got {:?}, want {want:?}",
            err.message()
        );
        assert_eq!(
            e.revision().await,
            before,
            "{what}: a refused create changes nothing"
        );
        assert_eq!(
            e.get(Kind::Topology, "t").await.unwrap_err().code(),
            Code::NotFound
        );
    }
}

#[tokio::test]
async fn a_node_is_in_at_most_one_topology() {
    let e = env();
    e.nodes(&["n1", "n2", "n3"]).await;
    e.create(hall("hall-a", &["n1", "n2"])).await.unwrap();
    expect_refused(
        &e,
        hall("hall-b", &["n3", "n2"]),
        Code::FailedPrecondition,
        "topology.spec.elements[4].name: node \"n2\" is already in topology \"hall-a\"",
    )
    .await;
    e.create(hall("hall-b", &["n3"])).await.unwrap();

    // Updates: moving n3 into hall-a is refused the same way; hall-a keeping its own nodes is fine.
    let before = e.revision().await;
    let err = e.update(hall("hall-a", &["n1", "n2", "n3"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("\"hall-b\""), "{}", err.message());
    assert_eq!(e.revision().await, before);
    let updated = e.update(hall("hall-a", &["n1"])).await.unwrap();
    assert_eq!(
        updated.metadata().unwrap().generation,
        2,
        "a spec change bumps the generation"
    );
    // n2 left hall-a: it may go to hall-b now.
    e.update(hall("hall-b", &["n3", "n2"])).await.unwrap();
}

#[tokio::test]
async fn a_bad_update_leaves_the_stored_topology() {
    let e = env();
    e.nodes(&["n1", "n2"]).await;
    let stored = e.create(hall("hall-a", &["n1", "n2"])).await.unwrap();
    let mut bad = hall("hall-a", &["n1", "n2"]);
    bad.spec.as_mut().unwrap().elements[0].budget_watts = -1.0;
    let before = e.revision().await;
    let err = e.update(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("topology.spec.elements[0].budget_watts: -1 is not a budget"),
        "{}",
        err.message()
    );
    assert_eq!(e.revision().await, before);
    assert_eq!(e.get(Kind::Topology, "hall-a").await.unwrap(), stored);
    // Unchanged spec: nothing written.
    let same = e.update(hall("hall-a", &["n1", "n2"])).await.unwrap();
    assert_eq!(same.resource_version(), stored.resource_version());
}

#[tokio::test]
async fn policies_need_existing_targets_and_a_sound_spec() {
    let e = env();
    e.nodes(&["n1"]).await;
    e.deployment("dep1").await;
    let good = PowerPolicySpec {
        nodes: vec!["n1".into()],
        deployments: vec!["dep1".into()],
        limits: vec![watts(PowerElement::Node, 9_000.0)],
        bundles: vec![
            PowerBundle {
                name: "MaxP".into(),
                limits: vec![percent(PowerElement::Gpu, 100.0)],
            },
            PowerBundle {
                name: "MaxQ".into(),
                limits: vec![percent(PowerElement::Gpu, 70.0)],
            },
        ],
        active_bundle: "MaxQ".into(),
        priority: 5,
        safe_node_watts: 6_000.0,
        cap_lease_seconds: 30,
    };
    type Edit = fn(&mut PowerPolicySpec);
    let cases: Vec<(Edit, Code, &str)> = vec![
        (
            |s| s.nodes.push("n9".into()),
            Code::InvalidArgument,
            "powerpolicy.spec.nodes[1]: node \"n9\" does not exist",
        ),
        (
            |s| s.deployments = vec!["nope".into()],
            Code::InvalidArgument,
            "powerpolicy.spec.deployments[0]: deployment \"nope\" does not exist",
        ),
        (
            |s| {
                s.nodes.clear();
                s.deployments.clear();
            },
            Code::InvalidArgument,
            "powerpolicy.spec: a policy needs at least one target",
        ),
        (
            |s| s.limits.push(watts(PowerElement::Node, 1.0)),
            Code::InvalidArgument,
            "powerpolicy.spec.limits[1].element: node already has a limit",
        ),
        (
            |s| s.bundles[0].limits[0] = percent(PowerElement::Gpu, 101.0),
            Code::InvalidArgument,
            "powerpolicy.spec.bundles[0].limits[0].percent: 101 must be more than 0 and at most 100",
        ),
        (
            |s| s.active_bundle = "Eco".into(),
            Code::InvalidArgument,
            "powerpolicy.spec.active_bundle: \"Eco\" is not a bundle of this policy (bundles: MaxP, MaxQ)",
        ),
        (
            |s| s.bundles[1].name = "MaxP".into(),
            Code::InvalidArgument,
            "powerpolicy.spec.bundles[1].name: \"MaxP\" is already the name of bundles[0]",
        ),
        (
            |s| s.safe_node_watts = f64::NAN,
            Code::InvalidArgument,
            "powerpolicy.spec.safe_node_watts:",
        ),
    ];
    for (edit, code, want) in cases {
        let mut s = good.clone();
        edit(&mut s);
        expect_refused(&e, policy("p1", s), code, want).await;
    }
    let created = e.create(policy("p1", good.clone())).await.unwrap();
    let Some(resource::Kind::PowerPolicy(p)) = created.kind else {
        panic!("{created:?}")
    };
    assert_eq!(p.spec.unwrap(), good);

    // Switching the bundle is an update.
    let mut maxp = good.clone();
    maxp.active_bundle = "MaxP".into();
    let updated = e.update(policy("p1", maxp)).await.unwrap();
    let Some(resource::Kind::PowerPolicy(p)) = updated.kind else {
        panic!()
    };
    assert_eq!(p.spec.unwrap().active_bundle, "MaxP");
}
