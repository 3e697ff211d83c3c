//! Turning a topology's budgets into a cap per node. Pure: no I/O, no clock,
//! no hash-map order; the same input gives the same caps bit for bit.
//!
//! Each NODE element has a **ceiling** (the least of its budget and the
//! winning policy's NODE limit, never below its floor), a **floor** (its
//! `min_watts`) and a **demand target** (its latest draw × (1 + headroom) +
//! margin, between floor and ceiling; the ceiling when the draw is unknown).
//! Bottom-up, an element's ceiling is the least of its budget and the sum of
//! its children's ceilings, its floor the larger of its `min_watts` and its
//! children's floors (at most its ceiling), its target the sum of its
//! children's targets (between floor and ceiling).
//!
//! Top-down, a feed hands out its ceiling; each element gives its children
//! their floors first, then water-fills toward their targets, then any
//! remainder toward their ceilings. Water-filling is max-min fair per node:
//! a child's share grows with the number of nodes beneath it, so a rack of
//! ten nodes is not treated like a single node. Ties are broken by name.
//!
//! The arithmetic is in whole milliwatts (budgets, floors and ceilings are
//! rounded down to the milliwatt), so sums are exact: the caps under an
//! element never add up to more than its budget, not even by a rounding
//! error. These are the caps *requested*; a device that enforces a higher
//! minimum, or a node that cannot be capped, is not accounted for here
//! (docs/power.md, "What is guaranteed, and what is not").
use std::collections::HashMap;

use hostplane_proto::power::Tree;
use hostplane_proto::v1::TopologyLevel;

/// What the allocator needs to know about one node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeInput {
    /// The winning policy's NODE limit, resolved to watts; `None`: no limit.
    pub limit_watts: Option<f64>,
    /// The node's latest draw; `None`: unknown (no fresh telemetry).
    pub draw_watts: Option<f64>,
}

/// How demand becomes a target: `draw × (1 + headroom) + margin_watts`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub headroom: f64,
    pub margin_watts: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            headroom: 0.10,
            margin_watts: 50.0,
        }
    }
}

/// Milliwatts.
pub type Mw = u64;

/// Watts to whole milliwatts, rounded down; anything not a positive number is 0.
pub fn mw(watts: f64) -> Mw {
    if watts.is_finite() && watts > 0.0 {
        (watts * 1000.0).floor() as Mw
    } else {
        0
    }
}

pub fn watts(m: Mw) -> f64 {
    m as f64 / 1000.0
}

/// The allocator's view of one element.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub budget: Mw,
    pub floor: Mw,
    pub target: Mw,
    pub ceiling: Mw,
    /// What it was given: for a node, its cap; above, the sum of the caps beneath.
    pub allocated: Mw,
    /// Sum of the children's ceilings (a node: its own ceiling). More than
    /// `budget` means the element is oversubscribed.
    pub wanted_at_ceiling: Mw,
    /// Nodes beneath (a node: 1).
    pub nodes: u64,
    /// The highest element whose budget kept this element below its ceiling.
    pub limited_by: Option<usize>,
}

/// The result: one [`Share`] per element, indexed like the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub shares: Vec<Share>,
}

impl Allocation {
    /// The cap of the node element `i`, in watts.
    pub fn cap_watts(&self, i: usize) -> f64 {
        watts(self.shares[i].allocated)
    }
}

/// Allocate every feed of `tree`. Nodes missing from `inputs` have no policy
/// limit and no known draw.
pub fn allocate(tree: &Tree, inputs: &HashMap<String, NodeInput>, params: Params) -> Allocation {
    let n = tree.len();
    let mut shares = vec![Share::default(); n];
    let order = tree.preorder();
    // Bottom-up: floors, targets, ceilings.
    for &i in order.iter().rev() {
        let e = &tree.elements[i];
        let budget = mw(e.budget_watts);
        let own_min = mw(e.min_watts).min(budget);
        let s = if tree.level(i) == TopologyLevel::Node {
            let input = inputs.get(&e.name).copied().unwrap_or_default();
            let limit = input.limit_watts.map_or(budget, mw);
            let ceiling = budget.min(limit).max(own_min);
            let target = match input.draw_watts {
                Some(d) if d.is_finite() && d >= 0.0 => {
                    mw(d * (1.0 + params.headroom.max(0.0)) + params.margin_watts.max(0.0))
                }
                _ => ceiling,
            };
            Share {
                budget,
                floor: own_min,
                target: target.clamp(own_min, ceiling),
                ceiling,
                allocated: 0,
                wanted_at_ceiling: ceiling,
                nodes: 1,
                limited_by: None,
            }
        } else {
            let kids = &tree.children[i];
            let sum = |f: fn(&Share) -> Mw| kids.iter().map(|&c| f(&shares[c])).sum::<Mw>();
            let wanted = sum(|s| s.ceiling);
            let ceiling = budget.min(wanted);
            let floor = own_min.max(sum(|s| s.floor)).min(ceiling);
            Share {
                budget,
                floor,
                target: sum(|s| s.target).clamp(floor, ceiling),
                ceiling,
                allocated: 0,
                wanted_at_ceiling: wanted,
                nodes: kids.iter().map(|&c| shares[c].nodes).sum(),
                limited_by: None,
            }
        };
        shares[i] = s;
    }
    // Top-down: each feed hands out its ceiling.
    for &r in &tree.roots {
        shares[r].allocated = shares[r].ceiling;
    }
    for &i in &order {
        let kids = &tree.children[i];
        if kids.is_empty() {
            continue;
        }
        let give = split(shares[i].allocated, kids.iter().map(|&c| shares[c]).collect());
        let mine = shares[i].limited_by;
        for (&c, x) in kids.iter().zip(give) {
            let s = &mut shares[c];
            s.allocated = x;
            s.limited_by = mine.or((x < s.ceiling).then_some(i));
        }
    }
    Allocation { shares }
}

/// Divide `amount` among children: floors, then toward targets, then toward ceilings.
fn split(amount: Mw, kids: Vec<Share>) -> Vec<Mw> {
    let w: Vec<u64> = kids.iter().map(|s| s.nodes.max(1)).collect();
    let floor: Vec<Mw> = kids.iter().map(|s| s.floor).collect();
    let target: Vec<Mw> = kids.iter().map(|s| s.target).collect();
    let ceiling: Vec<Mw> = kids.iter().map(|s| s.ceiling).collect();
    let sum = |v: &[Mw]| v.iter().sum::<Mw>();
    if amount < sum(&floor) {
        // Not reachable for a validated tree (floors fit budgets); degrade
        // fairly rather than overspend.
        return fill(amount, &vec![0; kids.len()], &floor, &w);
    }
    if amount <= sum(&target) {
        fill(amount, &floor, &target, &w)
    } else {
        fill(amount, &target, &ceiling, &w)
    }
}

/// Weighted water-filling in whole milliwatts: `x[c] = clamp(w[c]·L, lo[c],
/// hi[c])` for the highest level L that fits, then what is left of `amount`
/// one milliwatt step at a time to the children in order. Needs
/// `sum(lo) <= amount`; gives `min(amount, sum(hi))` in all.
fn fill(amount: Mw, lo: &[Mw], hi: &[Mw], w: &[u64]) -> Vec<Mw> {
    let at = |level: u64| -> Vec<Mw> {
        (0..lo.len())
            .map(|c| w[c].saturating_mul(level).clamp(lo[c], hi[c].max(lo[c])))
            .collect()
    };
    let total = |x: &[Mw]| x.iter().sum::<Mw>();
    let top = (0..lo.len()).map(|c| hi[c].div_ceil(w[c])).max().unwrap_or(0);
    if total(&at(top)) <= amount {
        return at(top);
    }
    // The highest level whose total fits: total(at(lo_l)) <= amount < total(at(hi_l)).
    let (mut lo_l, mut hi_l) = (0u64, top);
    while hi_l - lo_l > 1 {
        let mid = lo_l + (hi_l - lo_l) / 2;
        if total(&at(mid)) <= amount {
            lo_l = mid;
        } else {
            hi_l = mid;
        }
    }
    let mut x = at(lo_l);
    let next = at(lo_l + 1);
    let mut left = amount.saturating_sub(total(&x));
    for c in 0..x.len() {
        if left == 0 {
            break;
        }
        let step = (next[c] - x[c]).min(left);
        x[c] += step;
        left -= step;
    }
    x
}

/// Hysteresis: keep a node's previous cap when the new one moved by less
/// than `max(percent % of the previous, min_watts)`, unless keeping it would
/// put the node outside its floor and ceiling, or (for a cap that would go
/// down) an element above it over its budget. Nodes are taken in pre-order,
/// so the outcome is deterministic. Updates `shares[..].allocated` (nodes and
/// the sums above them) and returns the nodes whose previous cap was kept.
pub fn hold_small_changes(
    tree: &Tree,
    alloc: &mut Allocation,
    previous: &HashMap<String, f64>,
    percent: f64,
    min_watts: f64,
) -> Vec<usize> {
    let mut kept = Vec::new();
    for i in tree.nodes() {
        let Some(&prev_w) = previous.get(&tree.elements[i].name) else {
            continue;
        };
        let prev = mw(prev_w);
        let s = alloc.shares[i];
        let new = s.allocated;
        if prev == new || prev < s.floor || prev > s.ceiling {
            continue;
        }
        let threshold = mw(prev_w * percent.max(0.0) / 100.0).max(mw(min_watts));
        if prev.abs_diff(new) >= threshold {
            continue;
        }
        let ancestors = tree.ancestors(i);
        if prev > new {
            let up = prev - new;
            let fits = ancestors
                .iter()
                .all(|&a| alloc.shares[a].allocated + up <= alloc.shares[a].budget);
            if !fits {
                continue;
            }
            for &a in &ancestors {
                alloc.shares[a].allocated += up;
            }
        } else {
            let down = new - prev;
            for &a in &ancestors {
                alloc.shares[a].allocated -= down;
            }
        }
        alloc.shares[i].allocated = prev;
        kept.push(i);
    }
    kept
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{TopologyElement, TopologySpec};

    use super::*;

    fn tree(els: &[(&str, TopologyLevel, &str, f64, f64)]) -> Tree {
        let elements = els
            .iter()
            .map(|&(name, level, parent, budget, min)| TopologyElement {
                name: name.into(),
                level: level as i32,
                parent: parent.into(),
                budget_watts: budget,
                min_watts: min,
            })
            .collect();
        Tree::build("t", &TopologySpec { elements }).unwrap()
    }

    use TopologyLevel::{Feed, Node, Rack};

    fn caps(t: &Tree, a: &Allocation) -> Vec<(String, f64)> {
        t.nodes()
            .into_iter()
            .map(|i| (t.elements[i].name.clone(), a.cap_watts(i)))
            .collect()
    }

    fn input(limit: Option<f64>, draw: Option<f64>) -> NodeInput {
        NodeInput {
            limit_watts: limit,
            draw_watts: draw,
        }
    }

    fn pairs(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn unknown_demand_shares_an_oversubscribed_feed_equally() {
        let t = tree(&[
            ("f", Feed, "", 1000.0, 0.0),
            ("b", Node, "f", 800.0, 0.0),
            ("a", Node, "f", 800.0, 0.0),
        ]);
        let a = allocate(&t, &HashMap::new(), Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("a", 500.0), ("b", 500.0)]));
        let f = a.shares[t.get("f").unwrap()];
        assert_eq!((f.allocated, f.wanted_at_ceiling), (1_000_000, 1_600_000));
        assert_eq!(
            a.shares[t.get("a").unwrap()].limited_by,
            t.get("f"),
            "a is held below its ceiling by the feed"
        );
    }

    #[test]
    fn a_node_that_draws_little_leaves_the_rest_to_the_others() {
        let t = tree(&[
            ("f", Feed, "", 1000.0, 0.0),
            ("a", Node, "f", 800.0, 0.0),
            ("b", Node, "f", 800.0, 0.0),
        ]);
        // a draws 100 W: target 100 * 1.1 + 50 = 160 W; b's target is its ceiling.
        // 960 W of targets fit; the last 40 W go toward the ceilings, a first.
        let inputs = HashMap::from([("a".to_string(), input(None, Some(100.0)))]);
        let a = allocate(&t, &inputs, Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("a", 200.0), ("b", 800.0)]));
    }

    #[test]
    fn targets_share_by_max_min_when_they_do_not_fit() {
        let t = tree(&[
            ("f", Feed, "", 1000.0, 0.0),
            ("a", Node, "f", 800.0, 0.0),
            ("b", Node, "f", 800.0, 0.0),
            ("c", Node, "f", 800.0, 0.0),
        ]);
        let p = Params {
            headroom: 0.0,
            margin_watts: 0.0,
        };
        let inputs = HashMap::from([
            ("a".to_string(), input(None, Some(100.0))),
            ("b".to_string(), input(None, Some(600.0))),
            ("c".to_string(), input(None, Some(700.0))),
        ]);
        let a = allocate(&t, &inputs, p);
        assert_eq!(caps(&t, &a), pairs(&[("a", 100.0), ("b", 450.0), ("c", 450.0)]));
    }

    #[test]
    fn floors_come_first() {
        let t = tree(&[
            ("f", Feed, "", 1000.0, 0.0),
            ("a", Node, "f", 800.0, 600.0),
            ("b", Node, "f", 800.0, 0.0),
        ]);
        let a = allocate(&t, &HashMap::new(), Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("a", 600.0), ("b", 400.0)]));
    }

    #[test]
    fn shares_grow_with_the_nodes_beneath() {
        // A rack of three against one node: 750 W per node, not 1500 / 1500.
        let t = tree(&[
            ("f", Feed, "", 3000.0, 0.0),
            ("r", Rack, "f", 5000.0, 0.0),
            ("a", Node, "r", 1000.0, 0.0),
            ("b", Node, "r", 1000.0, 0.0),
            ("c", Node, "r", 1000.0, 0.0),
            ("d", Node, "f", 1000.0, 0.0),
        ]);
        let a = allocate(&t, &HashMap::new(), Params::default());
        assert_eq!(
            caps(&t, &a),
            pairs(&[("d", 750.0), ("a", 750.0), ("b", 750.0), ("c", 750.0)])
        );
    }

    #[test]
    fn the_policy_limit_lowers_the_ceiling_but_not_below_the_floor() {
        let t = tree(&[
            ("f", Feed, "", 10_000.0, 0.0),
            ("a", Node, "f", 800.0, 0.0),
            ("b", Node, "f", 800.0, 500.0),
        ]);
        let inputs = HashMap::from([
            ("a".to_string(), input(Some(300.0), None)),
            ("b".to_string(), input(Some(300.0), None)),
        ]);
        let a = allocate(&t, &inputs, Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("a", 300.0), ("b", 500.0)]));
        assert_eq!(a.shares[t.get("a").unwrap()].limited_by, None);
    }

    #[test]
    fn leftover_milliwatts_go_by_name() {
        let t = tree(&[
            ("f", Feed, "", 1.0, 0.0),
            ("c", Node, "f", 1.0, 0.0),
            ("b", Node, "f", 1.0, 0.0),
            ("a", Node, "f", 1.0, 0.0),
        ]);
        let a = allocate(&t, &HashMap::new(), Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("a", 0.334), ("b", 0.333), ("c", 0.333)]));
    }

    #[test]
    fn a_rack_budget_below_the_feed_binds_its_own_nodes_only() {
        let t = tree(&[
            ("f", Feed, "", 10_000.0, 0.0),
            ("r", Rack, "f", 1000.0, 0.0),
            ("a", Node, "r", 800.0, 0.0),
            ("b", Node, "r", 800.0, 0.0),
            ("c", Node, "f", 800.0, 0.0),
        ]);
        let a = allocate(&t, &HashMap::new(), Params::default());
        assert_eq!(caps(&t, &a), pairs(&[("c", 800.0), ("a", 500.0), ("b", 500.0)]));
        assert_eq!(a.shares[t.get("a").unwrap()].limited_by, t.get("r"));
        assert_eq!(a.shares[t.get("f").unwrap()].allocated, 1_800_000);
    }

    #[test]
    fn small_moves_are_held_unless_a_budget_needs_the_watts() {
        let t = tree(&[
            ("f", Feed, "", 1000.0, 0.0),
            ("a", Node, "f", 800.0, 0.0),
            ("b", Node, "f", 800.0, 0.0),
        ]);
        let mut a = allocate(&t, &HashMap::new(), Params::default());
        // a had 503 W (new 500: a 3 W move, held only if b gives way), b had 497 W.
        let prev = HashMap::from([("a".to_string(), 503.0), ("b".to_string(), 497.0)]);
        let kept = hold_small_changes(&t, &mut a, &prev, 1.0, 5.0);
        // a goes first: holding 503 would need 3 W more than the feed has left.
        // b is held at 497 (a cut that frees watts is always allowed).
        assert_eq!(kept, vec![t.get("b").unwrap()]);
        assert_eq!(caps(&t, &a), pairs(&[("a", 500.0), ("b", 497.0)]));
        assert_eq!(a.shares[t.get("f").unwrap()].allocated, 997_000);

        // Big moves go through.
        let mut a = allocate(&t, &HashMap::new(), Params::default());
        let prev = HashMap::from([("a".to_string(), 400.0)]);
        assert!(hold_small_changes(&t, &mut a, &prev, 1.0, 5.0).is_empty());
        assert_eq!(a.cap_watts(t.get("a").unwrap()), 500.0);
    }

    #[test]
    fn a_previous_cap_above_a_new_ceiling_is_not_held() {
        let t = tree(&[("f", Feed, "", 1000.0, 0.0), ("a", Node, "f", 800.0, 0.0)]);
        let inputs = HashMap::from([("a".to_string(), input(Some(700.0), None))]);
        let mut a = allocate(&t, &inputs, Params::default());
        let prev = HashMap::from([("a".to_string(), 703.0)]);
        assert!(hold_small_changes(&t, &mut a, &prev, 1.0, 5.0).is_empty());
        assert_eq!(a.cap_watts(t.get("a").unwrap()), 700.0);
    }
}
