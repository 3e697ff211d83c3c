//! One recompute on the store's view: which policy wins on each node, the
//! allocation of each topology, the caps, and the statuses to write. Pure:
//! the clock, the draws and the previous caps come in as arguments.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use hostplane_proto::power::{Tree, active_limits, level_name, limit_for};
use hostplane_proto::v1::{
    Condition, ElementAllocation, PowerCaps, PowerElement, PowerLimit, PowerPolicy, PowerPolicyStatus,
    TopologyLevel, TopologyStatus, power_limit,
};

use crate::fsm::util::set_condition;
use crate::power::PowerConfig;
use crate::power::alloc::{self, Allocation, NodeInput, Params};
use crate::store::View;

/// Lease of the caps when the policy does not set one.
pub const DEFAULT_LEASE_SECONDS: u32 = 60;

pub const COND_VALID: &str = "Valid";
pub const COND_OVERSUBSCRIBED: &str = "Oversubscribed";
pub const COND_MISSING_NODES: &str = "MissingNodes";
pub const COND_UNRESOLVED: &str = "Unresolved";
pub const COND_MISSING_TARGETS: &str = "MissingTargets";

/// What a recompute decided.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Every node with a topology or a policy.
    pub caps: HashMap<String, PowerCaps>,
    /// Why each node's cap is what it is (for the log).
    pub why: HashMap<String, String>,
    /// Every element of every topology, for `power top`.
    pub elements: Vec<ElementAllocation>,
    /// New statuses, one per topology and policy in the view.
    pub topologies: BTreeMap<String, TopologyStatus>,
    pub policies: BTreeMap<String, PowerPolicyStatus>,
}

/// A shortened list: `a, b, c and 4 more`.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!("{} and {} more", names[..SHOWN].join(", "), names.len() - SHOWN)
}

fn fmt_w(w: f64) -> String {
    format!("{w:.0} W")
}

/// The winning policy of each node.
struct Resolution<'v> {
    winner: BTreeMap<String, &'v PowerPolicy>,
}

fn policy_name(p: &PowerPolicy) -> &str {
    p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
}

/// Policies reach a node directly (`spec.nodes`) or through a Deployment
/// with a Dpu on the node (`spec.deployments`, or the Deployment's own
/// `spec.power_policy`). The highest priority wins; ties go to the name that
/// sorts first. Nodes that do not exist are left out.
fn resolve(view: &View) -> Resolution<'_> {
    let mut nodes_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in view.dpus.values().filter_map(|d| d.spec.as_ref()) {
        nodes_of
            .entry(s.deployment.as_str())
            .or_default()
            .insert(s.node.as_str());
    }
    let mut winner: BTreeMap<String, &PowerPolicy> = BTreeMap::new();
    // By name, so that a tie keeps the first.
    for (name, e) in &view.power_policies {
        let spec = e.spec.clone().unwrap_or_default();
        let mut deps: BTreeSet<&str> = spec.deployments.iter().map(String::as_str).collect();
        deps.extend(
            view.deployments
                .iter()
                .filter(|(_, d)| d.spec.as_ref().is_some_and(|s| s.power_policy == *name))
                .map(|(n, _)| n.as_str()),
        );
        let mut nodes: BTreeSet<String> = spec.nodes.iter().cloned().collect();
        for d in deps {
            nodes.extend(nodes_of.get(d).into_iter().flatten().map(|n| n.to_string()));
        }
        nodes.retain(|n| view.nodes.contains_key(n));
        for n in &nodes {
            let better = winner
                .get(n)
                .is_none_or(|w| spec.priority > w.spec.as_ref().map(|s| s.priority).unwrap_or_default());
            if better {
                winner.insert(n.clone(), e);
            }
        }
    }
    Resolution { winner }
}

/// The node limit of a policy resolved to watts; percent needs the node's
/// topology budget (`None` there: unresolved).
fn node_limit(limits: &[PowerLimit], budget: Option<f64>) -> Result<Option<f64>, ()> {
    match limit_for(limits, PowerElement::Node).and_then(|l| l.value) {
        None => Ok(None),
        Some(power_limit::Value::Watts(w)) => Ok(Some(w)),
        Some(power_limit::Value::Percent(p)) => match budget {
            Some(b) => Ok(Some(b * p / 100.0)),
            None => Err(()),
        },
    }
}

/// Draws sampled within the configured age.
fn fresh_draws(draws: &HashMap<String, (f64, i64)>, now_ms: i64, cfg: &PowerConfig) -> HashMap<String, f64> {
    let oldest = now_ms - cfg.telemetry_max_age.as_millis() as i64;
    draws
        .iter()
        .filter(|(_, (w, at))| *at >= oldest && w.is_finite() && *w >= 0.0)
        .map(|(n, (w, _))| (n.clone(), *w))
        .collect()
}

/// Conditions of `old` for the `types` kept, refreshed through `set`.
fn conditions(
    old: &[Condition],
    types: &[&str],
    set: &[(&str, bool, &str, String)],
    now: i64,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = old
        .iter()
        .filter(|c| types.contains(&c.r#type.as_str()))
        .cloned()
        .collect();
    for (ty, status, reason, message) in set {
        set_condition(
            &mut out,
            ty,
            if *status { "True" } else { "False" },
            reason,
            message,
            now,
        );
    }
    out.sort_by(|a, b| a.r#type.cmp(&b.r#type));
    out
}

/// One recompute. `previous`: the caps published last time (for hysteresis).
pub(super) fn compute(
    view: &View,
    draws: &HashMap<String, (f64, i64)>,
    previous: &HashMap<String, PowerCaps>,
    now_ms: i64,
    cfg: &PowerConfig,
) -> Outcome {
    let res = resolve(view);
    let draws = fresh_draws(draws, now_ms, cfg);
    let params = Params {
        headroom: cfg.headroom,
        margin_watts: cfg.margin_watts,
    };
    let mut out = Outcome::default();
    // Node -> (topology, cap watts) for nodes placed in a topology.
    let mut placed: BTreeMap<String, (String, f64)> = BTreeMap::new();
    let mut unresolved: BTreeMap<String, Vec<String>> = BTreeMap::new();

    for (tname, e) in &view.topologies {
        let old = e.status.clone().unwrap_or_default();
        let types = [COND_VALID, COND_OVERSUBSCRIBED, COND_MISSING_NODES];
        let tree = match Tree::build("spec", &e.spec.clone().unwrap_or_default()) {
            Ok(t) => t,
            Err(err) => {
                // Stored before today's checks, or by hand: nothing is capped from it.
                let conds = conditions(
                    &old.conditions,
                    &types,
                    &[(COND_VALID, false, "InvalidSpec", err.to_string())],
                    now_ms,
                );
                out.topologies.insert(
                    tname.clone(),
                    TopologyStatus {
                        allocations: vec![],
                        computed_at_ms: now_ms,
                        conditions: conds,
                    },
                );
                continue;
            }
        };
        let mut inputs = HashMap::new();
        let mut missing = Vec::new();
        let mut elsewhere = Vec::new();
        for i in tree.nodes() {
            let el = &tree.elements[i];
            if !view.nodes.contains_key(&el.name) {
                missing.push(el.name.clone());
            }
            if placed.contains_key(&el.name) {
                elsewhere.push(el.name.clone());
            }
            let limit = match res.winner.get(&el.name) {
                Some(p) => node_limit(
                    active_limits(&p.spec.clone().unwrap_or_default()),
                    Some(el.budget_watts),
                )
                .unwrap_or(None),
                None => None,
            };
            inputs.insert(
                el.name.clone(),
                NodeInput {
                    limit_watts: limit,
                    draw_watts: draws.get(&el.name).copied(),
                },
            );
        }
        let mut a = alloc::allocate(&tree, &inputs, params);
        let prev: HashMap<String, f64> = previous
            .iter()
            .filter(|(_, c)| c.topology == *tname)
            .map(|(n, c)| (n.clone(), c.node_watts))
            .collect();
        alloc::hold_small_changes(&tree, &mut a, &prev, cfg.hysteresis_percent, cfg.hysteresis_watts);
        for i in tree.nodes() {
            let name = &tree.elements[i].name;
            if missing.contains(name) || elsewhere.contains(name) {
                continue;
            }
            placed.insert(name.clone(), (tname.clone(), a.cap_watts(i)));
            out.why
                .insert(name.clone(), why(&tree, &a, i, tname, &inputs[name], &res, name));
        }
        let allocations = element_allocations(&tree, &a, &draws);
        out.elements.extend(allocations.iter().cloned());

        let over: Vec<String> = tree
            .preorder()
            .into_iter()
            .filter(|&i| {
                tree.level(i) != TopologyLevel::Node && a.shares[i].wanted_at_ceiling > a.shares[i].budget
            })
            .map(|i| {
                let s = a.shares[i];
                format!(
                    "{} {} wants {} at its nodes' ceilings, budget {}",
                    level_name(tree.level(i)),
                    tree.elements[i].name,
                    fmt_w(alloc::watts(s.wanted_at_ceiling)),
                    fmt_w(alloc::watts(s.budget))
                )
            })
            .collect();
        let mut set = vec![(COND_VALID, true, "Valid", String::new())];
        set.push(if over.is_empty() {
            (
                COND_OVERSUBSCRIBED,
                false,
                "FitsAtCeilings",
                "every element's nodes fit its budget at their ceilings".into(),
            )
        } else {
            (
                COND_OVERSUBSCRIBED,
                true,
                "CeilingsOverBudget",
                format!("{}; caps share the budget", list(&over)),
            )
        });
        let mut gone = missing.clone();
        gone.extend(elsewhere.iter().map(|n| format!("{n} (in another topology)")));
        set.push(if gone.is_empty() {
            (
                COND_MISSING_NODES,
                false,
                "AllNodesExist",
                "every node element names a node".into(),
            )
        } else {
            (
                COND_MISSING_NODES,
                true,
                "NodeNotFound",
                format!(
                    "not capped from this topology: {}; their minimums stay reserved",
                    list(&gone)
                ),
            )
        });
        out.topologies.insert(
            tname.clone(),
            TopologyStatus {
                allocations,
                computed_at_ms: now_ms,
                conditions: conditions(&old.conditions, &types, &set, now_ms),
            },
        );
    }

    let mut nodes: BTreeSet<&String> = placed.keys().collect();
    nodes.extend(res.winner.keys());
    for node in nodes {
        let policy = res.winner.get(node).copied();
        let spec = policy.and_then(|p| p.spec.clone()).unwrap_or_default();
        let limits = active_limits(&spec);
        let (topology, node_watts) = match placed.get(node) {
            Some((t, w)) => (t.clone(), *w),
            None => {
                let w = match node_limit(limits, None) {
                    Ok(w) => w.unwrap_or(0.0),
                    Err(()) => {
                        if let Some(p) = policy {
                            unresolved
                                .entry(policy_name(p).to_string())
                                .or_default()
                                .push(node.clone());
                        }
                        0.0
                    }
                };
                if let Some(p) = policy {
                    let why = if w > 0.0 {
                        format!(
                            "policy {} node limit (the node is in no topology)",
                            policy_name(p)
                        )
                    } else {
                        format!("policy {} sets no node limit in watts", policy_name(p))
                    };
                    out.why.insert(node.clone(), why);
                }
                (String::new(), w)
            }
        };
        let safe = if spec.safe_node_watts > 0.0 && node_watts > 0.0 {
            // The safe cap never raises a node above what its budget allows now.
            spec.safe_node_watts.min(node_watts)
        } else {
            spec.safe_node_watts
        };
        out.caps.insert(
            node.clone(),
            PowerCaps {
                node_watts,
                device_limits: limits
                    .iter()
                    .filter(|l| l.element != PowerElement::Node as i32)
                    .cloned()
                    .collect(),
                lease_seconds: match spec.cap_lease_seconds {
                    0 => DEFAULT_LEASE_SECONDS,
                    s => s,
                },
                safe_node_watts: safe,
                policy: policy.map(|p| policy_name(p).to_string()).unwrap_or_default(),
                topology,
            },
        );
    }

    for (pname, e) in &view.power_policies {
        let spec = e.spec.clone().unwrap_or_default();
        let old = e.status.clone().unwrap_or_default();
        let wins: Vec<String> = res
            .winner
            .iter()
            .filter(|(_, p)| policy_name(p) == pname)
            .map(|(n, _)| n.clone())
            .collect();
        let mut gone: Vec<String> = spec
            .nodes
            .iter()
            .filter(|n| !view.nodes.contains_key(*n))
            .map(|n| format!("node {n}"))
            .collect();
        gone.extend(
            spec.deployments
                .iter()
                .filter(|d| !view.deployments.contains_key(*d))
                .map(|d| format!("deployment {d}")),
        );
        let unres = unresolved.remove(pname).unwrap_or_default();
        let set = [
            if unres.is_empty() {
                (COND_UNRESOLVED, false, "Resolved", String::new())
            } else {
                (
                    COND_UNRESOLVED,
                    true,
                    "NodePercentWithoutTopology",
                    format!(
                        "a node limit in percent is a share of the node's topology budget, and {} in no \
                         topology: not capped by this policy (device limits still apply)",
                        if unres.len() == 1 {
                            format!("node {} is", unres[0])
                        } else {
                            format!("nodes {} are", list(&unres))
                        }
                    ),
                )
            },
            if gone.is_empty() {
                (COND_MISSING_TARGETS, false, "TargetsExist", String::new())
            } else {
                (
                    COND_MISSING_TARGETS,
                    true,
                    "TargetNotFound",
                    format!(
                        "not found: {}; the policy applies to the targets that exist",
                        list(&gone)
                    ),
                )
            },
        ];
        out.policies.insert(
            pname.clone(),
            PowerPolicyStatus {
                nodes: wins,
                conditions: conditions(
                    &old.conditions,
                    &[COND_UNRESOLVED, COND_MISSING_TARGETS],
                    &set,
                    now_ms,
                ),
            },
        );
    }
    out
}

/// Per element in pre-order: budget, allocated, draw below (fresh only).
fn element_allocations(tree: &Tree, a: &Allocation, draws: &HashMap<String, f64>) -> Vec<ElementAllocation> {
    let n = tree.len();
    let mut draw = vec![0.0; n];
    let mut without = vec![0u32; n];
    let order = tree.preorder();
    for &i in order.iter().rev() {
        if tree.level(i) == TopologyLevel::Node {
            match draws.get(&tree.elements[i].name) {
                Some(w) => draw[i] = *w,
                None => without[i] = 1,
            }
        } else {
            draw[i] = tree.children[i].iter().map(|&c| draw[c]).sum();
            without[i] = tree.children[i].iter().map(|&c| without[c]).sum();
        }
    }
    order
        .into_iter()
        .map(|i| {
            let e = &tree.elements[i];
            ElementAllocation {
                name: e.name.clone(),
                level: e.level,
                budget_watts: e.budget_watts,
                allocated_watts: alloc::watts(a.shares[i].allocated),
                draw_watts: draw[i],
                nodes_without_telemetry: without[i],
            }
        })
        .collect()
}

/// Why node element `i` has its cap, in words.
fn why(
    tree: &Tree,
    a: &Allocation,
    i: usize,
    topology: &str,
    input: &NodeInput,
    res: &Resolution<'_>,
    node: &str,
) -> String {
    let s = a.shares[i];
    let by_policy = input
        .limit_watts
        .is_some_and(|l| alloc::mw(l) < s.budget)
        .then(|| res.winner.get(node).map(|p| policy_name(p).to_string()))
        .flatten();
    if s.allocated >= s.ceiling {
        return match by_policy {
            Some(p) => format!("policy {p} node limit"),
            None => format!("its budget in topology {topology} (nothing above it is short)"),
        };
    }
    if s.allocated <= s.floor && s.floor > 0 {
        return format!("its guaranteed minimum in topology {topology}");
    }
    match s.limited_by {
        Some(e) => {
            let sh = a.shares[e];
            format!(
                "{} {} shares {} among nodes wanting {} at their ceilings",
                level_name(tree.level(e)),
                tree.elements[e].name,
                fmt_w(alloc::watts(sh.allocated)),
                fmt_w(alloc::watts(sh.wanted_at_ceiling))
            )
        }
        None => format!("held near its previous cap in topology {topology} (hysteresis)"),
    }
}

/// Whether `new` must be written over `old`: anything but the draws and the
/// time changed, or the stored draws are older than `refresh` and differ.
pub(super) fn topology_status_changed(old: &TopologyStatus, new: &TopologyStatus, refresh_ms: i64) -> bool {
    let strip = |s: &TopologyStatus| {
        let mut s = s.clone();
        s.computed_at_ms = 0;
        for a in &mut s.allocations {
            a.draw_watts = 0.0;
        }
        s
    };
    if strip(old) != strip(new) {
        return true;
    }
    let draws = |s: &TopologyStatus| s.allocations.iter().map(|a| a.draw_watts).collect::<Vec<_>>();
    draws(old) != draws(new) && new.computed_at_ms - old.computed_at_ms >= refresh_ms
}

#[cfg(test)]
#[path = "engine_compute_tests.rs"]
mod tests;
