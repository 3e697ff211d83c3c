//! Property tests of the allocation: random valid topologies, random policy
//! limits and draws. Caps never add up to more than any element's budget,
//! stay between each node's floor and ceiling, sum right, are deterministic
//! (whatever order the elements are listed in), and more budget never lowers
//! a cap beneath it. Hysteresis keeps all of that.
use std::collections::HashMap;

use hostplane_coordinator::power::alloc::{self, Allocation, Mw, NodeInput, Params, mw};
use hostplane_proto::power::Tree;
use hostplane_proto::v1::{TopologyElement, TopologyLevel, TopologySpec};
use proptest::prelude::*;

/// One generated element: where it hangs and what it is.
#[derive(Debug, Clone)]
struct Slot {
    new_feed: bool,
    parent_pick: usize,
    level_pick: u8,
    budget: f64,
    min_frac: f64,
    limit: Option<f64>,
    draw: Option<f64>,
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        prop::bool::weighted(0.1),
        any::<usize>(),
        any::<u8>(),
        1.0f64..20_000.0,
        prop_oneof![Just(0.0), 0.0f64..0.5],
        prop::option::weighted(0.3, 1.0f64..15_000.0),
        prop::option::weighted(0.6, 0.0f64..15_000.0),
    )
        .prop_map(
            |(new_feed, parent_pick, level_pick, budget, min_frac, limit, draw)| Slot {
                new_feed,
                parent_pick,
                level_pick,
                budget,
                min_frac,
                limit,
                draw,
            },
        )
}

/// A valid topology from the slots (budgets raised where the minimums below
/// would not fit), with each node's input.
fn build(slots: &[Slot]) -> (TopologySpec, HashMap<String, NodeInput>) {
    let mut els: Vec<TopologyElement> = Vec::new();
    let mut parent: Vec<Option<usize>> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        // Names not in creation order, so sorting by name matters.
        let name = format!("{}-{i}", (b'a' + ((i * 7) % 26) as u8) as char);
        let inner: Vec<usize> = (0..els.len())
            .filter(|&j| els[j].level() != TopologyLevel::Node)
            .collect();
        let (level, p) = if i == 0 || s.new_feed || inner.is_empty() {
            (TopologyLevel::Feed, None)
        } else {
            let p = inner[s.parent_pick % inner.len()];
            let pl = els[p].level as u8;
            let l = pl + 1 + s.level_pick % (4 - pl);
            (TopologyLevel::try_from(l as i32).unwrap(), Some(p))
        };
        els.push(TopologyElement {
            name,
            level: level as i32,
            parent: p.map(|p| els[p].name.clone()).unwrap_or_default(),
            budget_watts: s.budget,
            min_watts: s.budget * s.min_frac,
        });
        parent.push(p);
    }
    // Floors bottom-up (children come after their parents); raise budgets that are short.
    let mut floor = vec![0.0; els.len()];
    for i in (0..els.len()).rev() {
        let below: f64 = (0..els.len())
            .filter(|&c| parent[c] == Some(i))
            .map(|c| floor[c])
            .sum();
        if below > els[i].budget_watts {
            els[i].budget_watts = below * 1.001;
        }
        floor[i] = els[i].min_watts.max(below);
    }
    let inputs = slots
        .iter()
        .zip(&els)
        .filter(|(_, e)| e.level() == TopologyLevel::Node)
        .map(|(s, e)| {
            (
                e.name.clone(),
                NodeInput {
                    limit_watts: s.limit,
                    draw_watts: s.draw,
                },
            )
        })
        .collect();
    (TopologySpec { elements: els }, inputs)
}

fn tree(spec: &TopologySpec) -> Tree {
    Tree::build("t", spec).expect("generated topologies are valid")
}

/// Node caps by name, in milliwatts.
fn caps(t: &Tree, a: &Allocation) -> HashMap<String, Mw> {
    t.nodes()
        .into_iter()
        .map(|i| (t.elements[i].name.clone(), a.shares[i].allocated))
        .collect()
}

/// Each node's ceiling, computed here from its definition.
fn ceiling(e: &TopologyElement, input: Option<&NodeInput>) -> Mw {
    let budget = mw(e.budget_watts);
    let limit = input.and_then(|i| i.limit_watts).map_or(budget, mw);
    budget.min(limit).max(mw(e.min_watts))
}

/// Sum of the node caps beneath every element, recomputed from the caps alone.
fn sums(t: &Tree, a: &Allocation) -> Vec<Mw> {
    let mut s = vec![0; t.len()];
    for i in t.nodes() {
        s[i] += a.shares[i].allocated;
        for up in t.ancestors(i) {
            s[up] += a.shares[i].allocated;
        }
    }
    s
}

fn check_invariants(
    t: &Tree,
    inputs: &HashMap<String, NodeInput>,
    a: &Allocation,
) -> Result<(), TestCaseError> {
    let s = sums(t, a);
    for (i, (e, &sum)) in t.elements.iter().zip(&s).enumerate() {
        prop_assert!(
            sum <= mw(e.budget_watts),
            "{} has {} mW of caps beneath, budget {} mW",
            e.name,
            sum,
            mw(e.budget_watts)
        );
        prop_assert_eq!(
            sum,
            a.shares[i].allocated,
            "allocated of {} is the sum beneath",
            &e.name
        );
        if e.level() == TopologyLevel::Node {
            let cap = a.shares[i].allocated;
            prop_assert!(cap >= mw(e.min_watts), "{} below its floor", e.name);
            prop_assert!(
                cap <= ceiling(e, inputs.get(&e.name)),
                "{} above its ceiling",
                e.name
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn caps_respect_budgets_floors_and_ceilings_and_sum_right(slots in prop::collection::vec(slot(), 1..40)) {
        let (spec, inputs) = build(&slots);
        let t = tree(&spec);
        let a = alloc::allocate(&t, &inputs, Params::default());
        check_invariants(&t, &inputs, &a)?;
    }

    #[test]
    fn the_same_input_in_any_order_gives_the_same_caps(slots in prop::collection::vec(slot(), 1..40)) {
        let (spec, inputs) = build(&slots);
        let t = tree(&spec);
        let a = alloc::allocate(&t, &inputs, Params::default());
        prop_assert_eq!(&a, &alloc::allocate(&t, &inputs, Params::default()));
        let mut reversed = spec.clone();
        reversed.elements.reverse();
        let r = tree(&reversed);
        prop_assert_eq!(caps(&t, &a), caps(&r, &alloc::allocate(&r, &inputs, Params::default())));
    }

    #[test]
    fn a_node_with_room_above_gets_its_ceiling(slots in prop::collection::vec(slot(), 1..40)) {
        let (spec, inputs) = build(&slots);
        let t = tree(&spec);
        let a = alloc::allocate(&t, &inputs, Params::default());
        // Ceilings per element from the definition: a node's own; above, the
        // least of the budget and the children's ceilings.
        let mut ceil = vec![0; t.len()];
        let mut short = vec![false; t.len()];
        for &i in t.preorder().iter().rev() {
            let e = &t.elements[i];
            if e.level() == TopologyLevel::Node {
                ceil[i] = ceiling(e, inputs.get(&e.name));
            } else {
                let want: Mw = t.children[i].iter().map(|&c| ceil[c]).sum();
                short[i] = want > mw(e.budget_watts);
                ceil[i] = want.min(mw(e.budget_watts));
            }
        }
        for i in t.nodes() {
            if t.ancestors(i).iter().all(|&up| !short[up]) {
                prop_assert_eq!(a.shares[i].allocated, ceil[i], "{} has room above", &t.elements[i].name);
            }
        }
    }

    #[test]
    fn more_budget_never_lowers_a_cap_beneath_it(
        slots in prop::collection::vec(slot(), 1..40),
        pick in any::<usize>(),
        factor in 1.0f64..3.0,
    ) {
        let (spec, inputs) = build(&slots);
        let t = tree(&spec);
        let before = alloc::allocate(&t, &inputs, Params::default());
        let e = pick % t.len();
        let mut more = spec.clone();
        more.elements[e].budget_watts *= factor;
        let t2 = tree(&more);
        let after = alloc::allocate(&t2, &inputs, Params::default());
        let (b, a) = (caps(&t, &before), caps(&t2, &after));
        let beneath: Vec<usize> = t.nodes().into_iter().filter(|&i| i == e || t.ancestors(i).contains(&e)).collect();
        for i in beneath {
            let n = &t.elements[i].name;
            prop_assert!(a[n] >= b[n], "{n}: {} mW before, {} mW after raising {}'s budget", b[n], a[n], t.elements[e].name);
        }
        // Raising a feed's budget lowers no cap under that feed, and a feed's
        // budget is only ever shared with its own nodes.
        if t.level(e) == TopologyLevel::Feed {
            for (n, before) in &b {
                prop_assert!(a[n] >= *before, "{n}");
            }
        }
    }

    #[test]
    fn hysteresis_keeps_the_invariants(
        slots in prop::collection::vec(slot(), 1..40),
        jitter in prop::collection::vec(-20.0f64..20.0, 40),
    ) {
        let (spec, inputs) = build(&slots);
        let t = tree(&spec);
        let fresh = alloc::allocate(&t, &inputs, Params::default());
        let previous: HashMap<String, f64> = t
            .nodes()
            .into_iter()
            .enumerate()
            .map(|(k, i)| (t.elements[i].name.clone(), (fresh.cap_watts(i) + jitter[k % jitter.len()]).max(0.0)))
            .collect();
        let mut held = fresh.clone();
        let kept = alloc::hold_small_changes(&t, &mut held, &previous, 1.0, 5.0);
        check_invariants(&t, &inputs, &held)?;
        for i in t.nodes() {
            let name = &t.elements[i].name;
            let (new, cap) = (fresh.shares[i].allocated, held.shares[i].allocated);
            if kept.contains(&i) {
                let prev = mw(previous[name]);
                prop_assert_eq!(cap, prev);
                prop_assert!(prev.abs_diff(new) < mw(previous[name] * 0.01).max(5_000), "{} held across a big move", name);
            } else {
                prop_assert_eq!(cap, new, "{} neither new nor held", name);
            }
        }
    }
}
