use super::*;
use crate::v1::{PowerBundle, power_limit};

fn el(name: &str, level: TopologyLevel, parent: &str, budget: f64, min: f64) -> TopologyElement {
    TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: min,
    }
}

use TopologyLevel::{Feed, Node, Pdu, Rack};

fn good() -> TopologySpec {
    TopologySpec {
        elements: vec![
            el("feed-a", Feed, "", 30_000.0, 0.0),
            el("pdu-1", Pdu, "feed-a", 20_000.0, 0.0),
            el("rack-2", Rack, "pdu-1", 12_000.0, 1_000.0),
            el("rack-1", Rack, "pdu-1", 12_000.0, 0.0),
            el("n2", Node, "rack-1", 10_200.0, 2_000.0),
            el("n1", Node, "rack-1", 10_200.0, 2_000.0),
            el("n3", Node, "feed-a", 5_800.0, 0.0),
        ],
    }
}

fn err(spec: &TopologySpec) -> String {
    check_topology("topology", spec).unwrap_err().to_string()
}

#[test]
fn a_good_tree_resolves_links_sorted_by_name() {
    let t = Tree::build("topology", &good()).unwrap();
    let names = |v: &[usize]| v.iter().map(|&i| t.elements[i].name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&t.roots), ["feed-a"]);
    assert_eq!(names(&t.children[1]), ["rack-1", "rack-2"]);
    assert_eq!(
        names(&t.preorder()),
        ["feed-a", "n3", "pdu-1", "rack-1", "n1", "n2", "rack-2"]
    );
    assert_eq!(names(&t.nodes()), ["n3", "n1", "n2"]);
    let n1 = t.get("n1").unwrap();
    assert_eq!(names(&t.ancestors(n1)), ["rack-1", "pdu-1", "feed-a"]);
    assert_eq!(t.depth(n1), 3);
    // rack-1's floor is its nodes' minimums; pdu-1's adds rack-2's own minimum.
    assert_eq!(t.floor[t.get("rack-1").unwrap()], 4_000.0);
    assert_eq!(t.floor[t.get("pdu-1").unwrap()], 5_000.0);
    assert_eq!(t.counts(), (1, 1, 2, 3));
}

#[test]
fn each_structural_mistake_is_named_by_its_field() {
    type Edit = fn(&mut TopologySpec);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |s| s.elements.clear(),
            "topology.spec.elements: required: at least one feed",
        ),
        (
            |s| s.elements[3].name = "Rack_1".into(),
            "topology.spec.elements[3].name \"Rack_1\": must be a DNS label",
        ),
        (
            |s| s.elements[3].name = String::new(),
            "topology.spec.elements[3].name: required",
        ),
        (
            |s| s.elements[5].name = "n2".into(),
            "topology.spec.elements[5].name: \"n2\" is already the name of elements[4]",
        ),
        (
            |s| s.elements[1].level = 0,
            "topology.spec.elements[1].level: required: one of FEED, PDU, RACK, NODE",
        ),
        (
            |s| s.elements[1].level = 9,
            "topology.spec.elements[1].level: unknown value; required",
        ),
        (
            |s| s.elements[3].parent = "pdu-9".into(),
            "topology.spec.elements[3].parent: \"pdu-9\" is not an element",
        ),
        (
            |s| s.elements[0].parent = "pdu-1".into(),
            "topology.spec.elements[0].parent: a feed is a root",
        ),
        (
            |s| s.elements[2].parent = String::new(),
            "topology.spec.elements[2].parent: required: a rack needs a parent",
        ),
        (
            |s| s.elements[1].parent = "rack-1".into(),
            "topology.spec.elements[3].parent: \"pdu-1\" makes a cycle: pdu-1 -> rack-1 -> pdu-1",
        ),
        (
            |s| s.elements[4].parent = "n3".into(),
            "topology.spec.elements[4].parent: \"n3\" is a node; a node's parent must be a rack, a pdu or a feed",
        ),
        (
            |s| s.elements[1].parent = "pdu-1".into(),
            "topology.spec.elements[1].parent: \"pdu-1\" makes a cycle: pdu-1 -> pdu-1",
        ),
        (
            |s| s.elements[2].parent = "rack-1".into(),
            "topology.spec.elements[2].parent: \"rack-1\" is a rack; a rack's parent must be a pdu or a feed",
        ),
        (
            |s| s.elements[1].level = Rack as i32,
            "topology.spec.elements[2].parent: \"pdu-1\" is a rack; a rack's parent must be a pdu or a feed",
        ),
        (
            |s| s.elements[0].budget_watts = 0.0,
            "topology.spec.elements[0].budget_watts: 0 is not a budget",
        ),
        (
            |s| s.elements[0].budget_watts = f64::NAN,
            "topology.spec.elements[0].budget_watts: NaN is not a budget",
        ),
        (
            |s| s.elements[0].budget_watts = f64::INFINITY,
            "topology.spec.elements[0].budget_watts: inf is not a budget",
        ),
        (
            |s| s.elements[4].min_watts = -1.0,
            "topology.spec.elements[4].min_watts: -1 must be a number of watts, 0 or more",
        ),
        (
            |s| s.elements[4].min_watts = 20_000.0,
            "topology.spec.elements[4].min_watts: 20000 W is more than the element's budget_watts (10200 W)",
        ),
        (
            |s| s.elements[3].budget_watts = 3_000.0,
            "topology.spec.elements[3].budget_watts: the guaranteed minimums below \"rack-1\" add up to 4000 W, \
             more than its budget of 3000 W (n1, n2)",
        ),
    ];
    for (edit, want) in cases {
        let mut s = good();
        edit(&mut s);
        let e = err(&s);
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn floors_add_up_through_levels_a_min_only_at_the_bottom_still_counts() {
    // The racks have no minimum of their own, but their nodes do: the PDU must fit them.
    let spec = TopologySpec {
        elements: vec![
            el("f", Feed, "", 10_000.0, 0.0),
            el("p", Pdu, "f", 1_000.0, 0.0),
            el("r", Rack, "p", 5_000.0, 0.0),
            el("a", Node, "r", 1_000.0, 400.0),
            el("b", Node, "r", 1_000.0, 400.0),
            el("c", Node, "r", 1_000.0, 400.0),
        ],
    };
    assert!(
        err(&spec).starts_with(
            "topology.spec.elements[1].budget_watts: the guaranteed minimums below \"p\" add up to 1200 W"
        ),
        "{}",
        err(&spec)
    );
}

#[test]
fn a_childs_budget_may_exceed_its_parents() {
    let spec = TopologySpec {
        elements: vec![
            el("f", Feed, "", 1_000.0, 0.0),
            el("a", Node, "f", 5_000.0, 500.0),
            el("b", Node, "f", 5_000.0, 500.0),
        ],
    };
    check_topology("t", &spec).unwrap();
}

#[test]
fn a_long_chain_is_refused_quickly_as_a_cycle_or_a_level_mistake() {
    // 20,000 racks in a line: the checks stay linear.
    let mut elements = vec![el("f", Feed, "", 1.0, 0.0)];
    for i in 0..MAX_ELEMENTS - 1 {
        let parent = if i == 0 {
            "f".to_string()
        } else {
            format!("r{}", i - 1)
        };
        elements.push(el(&format!("r{i}"), Rack, &parent, 1.0, 0.0));
    }
    let e = err(&TopologySpec { elements });
    assert!(e.contains("a rack's parent must be a pdu or a feed"), "{e}");
}

fn limit(element: PowerElement, v: power_limit::Value) -> PowerLimit {
    PowerLimit {
        element: element as i32,
        value: Some(v),
    }
}

fn policy() -> PowerPolicySpec {
    use power_limit::Value::{Percent, Watts};
    PowerPolicySpec {
        nodes: vec!["n1".into()],
        deployments: vec!["d1".into()],
        limits: vec![limit(PowerElement::Node, Watts(9_000.0))],
        bundles: vec![
            PowerBundle {
                name: "MaxP".into(),
                limits: vec![limit(PowerElement::Gpu, Percent(100.0))],
            },
            PowerBundle {
                name: "MaxQ".into(),
                limits: vec![
                    limit(PowerElement::Gpu, Percent(70.0)),
                    limit(PowerElement::Node, Watts(7_000.0)),
                ],
            },
        ],
        active_bundle: "MaxQ".into(),
        priority: 10,
        safe_node_watts: 5_000.0,
        cap_lease_seconds: 0,
    }
}

#[test]
fn policy_checks_name_the_field() {
    check_policy("powerpolicy", &policy()).unwrap();
    use power_limit::Value::{Percent, Watts};
    type Edit = fn(&mut PowerPolicySpec);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |s| {
                s.nodes.clear();
                s.deployments.clear();
            },
            "powerpolicy.spec: a policy needs at least one target",
        ),
        (
            |s| s.nodes.push("N 1".into()),
            "powerpolicy.spec.nodes[1] \"N 1\": must be a DNS label",
        ),
        (
            |s| s.deployments.push("d1".into()),
            "powerpolicy.spec.deployments[1]: \"d1\" is already listed at deployments[0]",
        ),
        (
            |s| s.limits.push(limit(PowerElement::Node, Watts(1.0))),
            "powerpolicy.spec.limits[1].element: node already has a limit at [0]",
        ),
        (
            |s| s.limits[0].element = 0,
            "powerpolicy.spec.limits[0].element: required",
        ),
        (
            |s| s.limits[0].value = None,
            "powerpolicy.spec.limits[0]: required: watts or percent",
        ),
        (
            |s| s.limits[0].value = Some(Watts(0.0)),
            "powerpolicy.spec.limits[0].watts: 0 must be more than 0",
        ),
        (
            |s| s.limits[0].value = Some(Watts(f64::NAN)),
            "powerpolicy.spec.limits[0].watts: NaN",
        ),
        (
            |s| s.bundles[1].limits[0].value = Some(Percent(120.0)),
            "powerpolicy.spec.bundles[1].limits[0].percent: 120 must be more than 0 and at most 100",
        ),
        (
            |s| s.bundles[1].limits[0].value = Some(Percent(0.0)),
            "powerpolicy.spec.bundles[1].limits[0].percent: 0 must be more than 0",
        ),
        (
            |s| s.bundles[1].name = "MaxP".into(),
            "powerpolicy.spec.bundles[1].name: \"MaxP\" is already the name of bundles[0]",
        ),
        (
            |s| s.bundles[0].name = String::new(),
            "powerpolicy.spec.bundles[0].name: required",
        ),
        (
            |s| s.bundles[0].name = "max p".into(),
            "powerpolicy.spec.bundles[0].name \"max p\": must be",
        ),
        (
            |s| s.active_bundle = "Eco".into(),
            "powerpolicy.spec.active_bundle: \"Eco\" is not a bundle of this policy (bundles: MaxP, MaxQ)",
        ),
        (
            |s| {
                s.bundles.clear();
                s.active_bundle = "Eco".into();
            },
            "powerpolicy.spec.active_bundle: \"Eco\" is not a bundle: the policy has none",
        ),
        (
            |s| s.safe_node_watts = -5.0,
            "powerpolicy.spec.safe_node_watts: -5 must be a number of watts",
        ),
    ];
    for (edit, want) in cases {
        let mut s = policy();
        edit(&mut s);
        let e = check_policy("powerpolicy", &s).unwrap_err().to_string();
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn active_limits_follow_the_bundle() {
    let mut s = policy();
    let node = |s: &PowerPolicySpec| limit_for(active_limits(s), PowerElement::Node).cloned();
    assert_eq!(node(&s).unwrap().value, Some(power_limit::Value::Watts(7_000.0)));
    s.active_bundle = "MaxP".into();
    assert_eq!(
        node(&s),
        None,
        "MaxP has no node limit: the bundle replaces `limits`"
    );
    s.active_bundle = String::new();
    assert_eq!(node(&s).unwrap().value, Some(power_limit::Value::Watts(9_000.0)));
}

#[test]
fn dns_labels() {
    for ok in ["a", "n1", "rack-1.hall-b", "0"] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", &"x".repeat(64)] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}
