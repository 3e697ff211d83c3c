//! Structural checks of Topology and PowerPolicy specs, shared by the
//! coordinator (which adds the checks that need stored objects: NODE
//! elements naming existing Nodes, a node in at most one Topology, policy
//! targets existing) and `hostplanectl topology validate` (which has no
//! server). Pure functions over one spec; the first problem found is
//! returned, named by its field path (`topology.spec.elements[3].parent`).
use std::collections::HashMap;
use std::fmt;

use crate::v1::{PowerElement, PowerLimit, PowerPolicySpec, TopologyElement, TopologyLevel, TopologySpec};

/// The most elements a topology may have (a hall of 10,000 nodes and their racks fits).
pub const MAX_ELEMENTS: usize = 20_000;
/// The most watts any budget may name (1 GW): bigger is a typo.
pub const MAX_WATTS: f64 = 1e9;

/// A field that is wrong: `field` is its path, `reason` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

fn invalid(field: String, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

type Result<T = ()> = std::result::Result<T, Invalid>;

/// A DNS label, as object names are: `[a-z0-9]([-a-z0-9.]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let end_ok = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 63
        && end_ok(b.first())
        && end_ok(b.last())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

fn dns_label(field: String, value: &str) -> Result {
    if value.is_empty() {
        return Err(invalid(field, "required"));
    }
    if !is_dns_label(value) {
        return Err(invalid(
            format!("{field} {value:?}"),
            "must be a DNS label: lower-case letters, digits, '-' and '.', starting and ending with a letter \
             or digit, at most 63 characters",
        ));
    }
    Ok(())
}

/// Lower-case name of a level, as people write it (`feed`, `pdu`, `rack`, `node`).
pub fn level_name(l: TopologyLevel) -> &'static str {
    match l {
        TopologyLevel::Unspecified => "unspecified",
        TopologyLevel::Feed => "feed",
        TopologyLevel::Pdu => "pdu",
        TopologyLevel::Rack => "rack",
        TopologyLevel::Node => "node",
    }
}

/// Lower-case name of a policy element (`node`, `gpu`, `cpu`, `memory`).
pub fn element_name(e: PowerElement) -> &'static str {
    match e {
        PowerElement::Unspecified => "unspecified",
        PowerElement::Node => "node",
        PowerElement::Gpu => "gpu",
        PowerElement::Cpu => "cpu",
        PowerElement::Memory => "memory",
    }
}

/// `1200 W`, `1200.5 W`.
fn w(x: f64) -> String {
    format!("{} W", (x * 1000.0).round() / 1000.0)
}

/// A validated topology: elements as written, with their links resolved.
/// Children are sorted by name, roots (feeds) too, so every walk is deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub elements: Vec<TopologyElement>,
    /// Index of each element's parent (`None` for a feed).
    pub parent: Vec<Option<usize>>,
    /// Indices of each element's children, sorted by name.
    pub children: Vec<Vec<usize>>,
    /// The feeds, sorted by name.
    pub roots: Vec<usize>,
    /// Each element's guaranteed floor: its own `min_watts` or the sum of its
    /// children's floors, whichever is larger.
    pub floor: Vec<f64>,
    index: HashMap<String, usize>,
}

impl Tree {
    /// Check `spec` (`p` is the object's path prefix, e.g. `topology`) and resolve its links.
    ///
    /// Checked: at least one element and at most [`MAX_ELEMENTS`]; names are
    /// DNS labels and unique; each level is known; a feed has no parent and
    /// every other element has one that exists; no cycles; levels go down
    /// strictly (PDU under a feed, rack under a PDU or feed, node under a
    /// rack, PDU or feed); `0 < budget_watts <= 1e9`, `0 <= min_watts <=
    /// budget_watts`, both finite; the floors of an element's children (each
    /// the larger of the child's `min_watts` and its own children's floors)
    /// add up to at most the element's budget. A child's budget may exceed
    /// its parent's (oversubscription is normal).
    pub fn build(p: &str, spec: &TopologySpec) -> Result<Tree> {
        let els = &spec.elements;
        let f = |i: usize, field: &str| format!("{p}.spec.elements[{i}].{field}");
        if els.is_empty() {
            return Err(invalid(
                format!("{p}.spec.elements"),
                "required: at least one feed",
            ));
        }
        if els.len() > MAX_ELEMENTS {
            return Err(invalid(
                format!("{p}.spec.elements"),
                format!("{} elements, more than {MAX_ELEMENTS}", els.len()),
            ));
        }
        for (i, e) in els.iter().enumerate() {
            dns_label(f(i, "name"), &e.name)?;
            let level = TopologyLevel::try_from(e.level).unwrap_or(TopologyLevel::Unspecified);
            if level == TopologyLevel::Unspecified {
                return Err(invalid(
                    f(i, "level"),
                    format!(
                        "{}required: one of FEED, PDU, RACK, NODE",
                        if e.level == 0 { "" } else { "unknown value; " }
                    ),
                ));
            }
            if !(e.budget_watts.is_finite() && e.budget_watts > 0.0 && e.budget_watts <= MAX_WATTS) {
                return Err(invalid(
                    f(i, "budget_watts"),
                    format!(
                        "{} is not a budget: must be more than 0 and at most 1e9 watts",
                        e.budget_watts
                    ),
                ));
            }
            if !(e.min_watts.is_finite() && e.min_watts >= 0.0) {
                return Err(invalid(
                    f(i, "min_watts"),
                    format!("{} must be a number of watts, 0 or more", e.min_watts),
                ));
            }
            if e.min_watts > e.budget_watts {
                return Err(invalid(
                    f(i, "min_watts"),
                    format!(
                        "{} is more than the element's budget_watts ({})",
                        w(e.min_watts),
                        w(e.budget_watts)
                    ),
                ));
            }
            match (level, e.parent.is_empty()) {
                (TopologyLevel::Feed, false) => {
                    return Err(invalid(
                        f(i, "parent"),
                        format!("a feed is a root: it has no parent (found {:?})", e.parent),
                    ));
                }
                (TopologyLevel::Feed, true) => {}
                (l, true) => {
                    return Err(invalid(
                        f(i, "parent"),
                        format!(
                            "required: a {} needs a parent (only a feed is a root)",
                            level_name(l)
                        ),
                    ));
                }
                (_, false) => {}
            }
        }
        let mut index: HashMap<String, usize> = HashMap::with_capacity(els.len());
        for (i, e) in els.iter().enumerate() {
            if let Some(first) = index.insert(e.name.clone(), i) {
                return Err(invalid(
                    f(i, "name"),
                    format!("{:?} is already the name of elements[{first}]", e.name),
                ));
            }
        }
        let mut parent = vec![None; els.len()];
        for (i, e) in els.iter().enumerate() {
            if e.parent.is_empty() {
                continue;
            }
            match index.get(&e.parent) {
                Some(&pi) => parent[i] = Some(pi),
                None => {
                    return Err(invalid(
                        f(i, "parent"),
                        format!("{:?} is not an element", e.parent),
                    ));
                }
            }
        }
        // Cycles, before levels, so that a loop is called a loop. Each element
        // is walked once: 1 = on the current walk, 2 = leads to a feed.
        let mut state = vec![0u8; els.len()];
        for start in 0..els.len() {
            let mut path = Vec::new();
            let mut at = start;
            while state[at] == 0 {
                state[at] = 1;
                path.push(at);
                match parent[at] {
                    None => break,
                    Some(up) if state[up] == 1 => {
                        let from = path.iter().position(|&x| x == up).unwrap_or(0);
                        let names: Vec<&str> = path[from..]
                            .iter()
                            .chain(std::iter::once(&up))
                            .map(|&i| els[i].name.as_str())
                            .collect();
                        return Err(invalid(
                            f(at, "parent"),
                            format!("{:?} makes a cycle: {}", els[at].parent, names.join(" -> ")),
                        ));
                    }
                    Some(up) => at = up,
                }
            }
            for i in path {
                state[i] = 2;
            }
        }
        for (i, e) in els.iter().enumerate() {
            let Some(pi) = parent[i] else { continue };
            let (lc, lp) = (e.level(), els[pi].level());
            if (lp as i32) >= (lc as i32) {
                let allowed = match lc {
                    TopologyLevel::Pdu => "a feed",
                    TopologyLevel::Rack => "a pdu or a feed",
                    _ => "a rack, a pdu or a feed",
                };
                return Err(invalid(
                    f(i, "parent"),
                    format!(
                        "{:?} is a {}; a {}'s parent must be {allowed}",
                        e.parent,
                        level_name(lp),
                        level_name(lc)
                    ),
                ));
            }
        }
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); els.len()];
        let mut roots = Vec::new();
        for (i, up) in parent.iter().enumerate() {
            match *up {
                Some(pi) => children[pi].push(i),
                None => roots.push(i),
            }
        }
        for c in &mut children {
            c.sort_by(|a, b| els[*a].name.cmp(&els[*b].name));
        }
        roots.sort_by(|a, b| els[*a].name.cmp(&els[*b].name));
        let mut tree = Tree {
            elements: els.clone(),
            parent,
            children,
            roots,
            floor: vec![0.0; els.len()],
            index,
        };
        // Floors bottom-up; a parent comes after its children in the reversed pre-order.
        for &i in tree.preorder().iter().rev() {
            let below: f64 = tree.children[i].iter().map(|&c| tree.floor[c]).sum();
            let e = &tree.elements[i];
            if below > e.budget_watts {
                let names: Vec<&str> = tree.children[i]
                    .iter()
                    .filter(|&&c| tree.floor[c] > 0.0)
                    .map(|&c| tree.elements[c].name.as_str())
                    .collect();
                return Err(invalid(
                    f(i, "budget_watts"),
                    format!(
                        "the guaranteed minimums below {:?} add up to {}, more than its budget of {} ({})",
                        e.name,
                        w(below),
                        w(e.budget_watts),
                        names.join(", ")
                    ),
                ));
            }
            tree.floor[i] = e.min_watts.max(below);
        }
        Ok(tree)
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Index of the element called `name`.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn level(&self, i: usize) -> TopologyLevel {
        self.elements[i].level()
    }

    /// Every element, parents before children, siblings by name, feeds by name.
    pub fn preorder(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len());
        let mut stack: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(i) = stack.pop() {
            out.push(i);
            stack.extend(self.children[i].iter().rev());
        }
        out
    }

    /// Depth of an element (a feed is 0).
    pub fn depth(&self, mut i: usize) -> usize {
        let mut d = 0;
        while let Some(p) = self.parent[i] {
            d += 1;
            i = p;
        }
        d
    }

    /// The NODE elements, in pre-order.
    pub fn nodes(&self) -> Vec<usize> {
        self.preorder()
            .into_iter()
            .filter(|&i| self.level(i) == TopologyLevel::Node)
            .collect()
    }

    /// The elements above `i`, nearest first.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = i;
        while let Some(p) = self.parent[at] {
            out.push(p);
            at = p;
        }
        out
    }

    /// How many of each level: (feeds, pdus, racks, nodes).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let n = |l| self.elements.iter().filter(|e| e.level() == l).count();
        (
            n(TopologyLevel::Feed),
            n(TopologyLevel::Pdu),
            n(TopologyLevel::Rack),
            n(TopologyLevel::Node),
        )
    }
}

/// Check a topology spec (see [`Tree::build`]).
pub fn check_topology(p: &str, spec: &TopologySpec) -> Result {
    Tree::build(p, spec).map(|_| ())
}

/// Bundle names: 1-63 letters, digits, '-', '_' and '.' (`MaxP`, `max-q`).
pub fn is_bundle_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Check a policy spec's structure (`p` is the path prefix, e.g. `powerpolicy`).
///
/// Checked: at least one target; target names are DNS labels, each listed
/// once; limits valid and at most one per element (in `limits` and in each
/// bundle); bundle names valid and unique; `active_bundle` empty or the name
/// of a bundle; `safe_node_watts` 0 or more (finite). Not checked here (the
/// coordinator does, against the store): that the targets exist.
pub fn check_policy(p: &str, spec: &PowerPolicySpec) -> Result {
    if spec.nodes.is_empty() && spec.deployments.is_empty() {
        return Err(invalid(
            format!("{p}.spec"),
            "a policy needs at least one target: spec.nodes or spec.deployments",
        ));
    }
    for (field, names) in [("nodes", &spec.nodes), ("deployments", &spec.deployments)] {
        for (i, n) in names.iter().enumerate() {
            dns_label(format!("{p}.spec.{field}[{i}]"), n)?;
            if let Some(first) = names[..i].iter().position(|x| x == n) {
                return Err(invalid(
                    format!("{p}.spec.{field}[{i}]"),
                    format!("{n:?} is already listed at {field}[{first}]"),
                ));
            }
        }
    }
    limits(&format!("{p}.spec.limits"), &spec.limits)?;
    for (i, b) in spec.bundles.iter().enumerate() {
        let f = format!("{p}.spec.bundles[{i}]");
        if b.name.is_empty() {
            return Err(invalid(format!("{f}.name"), "required"));
        }
        if !is_bundle_name(&b.name) {
            return Err(invalid(
                format!("{f}.name {:?}", b.name),
                "must be 1-63 letters, digits, '-', '_' or '.'",
            ));
        }
        if let Some(first) = spec.bundles[..i].iter().position(|x| x.name == b.name) {
            return Err(invalid(
                format!("{f}.name"),
                format!("{:?} is already the name of bundles[{first}]", b.name),
            ));
        }
        limits(&format!("{f}.limits"), &b.limits)?;
    }
    if !spec.active_bundle.is_empty() && !spec.bundles.iter().any(|b| b.name == spec.active_bundle) {
        let names: Vec<&str> = spec.bundles.iter().map(|b| b.name.as_str()).collect();
        return Err(invalid(
            format!("{p}.spec.active_bundle"),
            if names.is_empty() {
                format!("{:?} is not a bundle: the policy has none", spec.active_bundle)
            } else {
                format!(
                    "{:?} is not a bundle of this policy (bundles: {})",
                    spec.active_bundle,
                    names.join(", ")
                )
            },
        ));
    }
    if !(spec.safe_node_watts.is_finite() && spec.safe_node_watts >= 0.0 && spec.safe_node_watts <= MAX_WATTS)
    {
        return Err(invalid(
            format!("{p}.spec.safe_node_watts"),
            format!(
                "{} must be a number of watts from 0 (none) to 1e9",
                spec.safe_node_watts
            ),
        ));
    }
    Ok(())
}

fn limits(field: &str, ls: &[PowerLimit]) -> Result {
    use crate::v1::power_limit::Value;
    for (i, l) in ls.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let el = PowerElement::try_from(l.element).unwrap_or(PowerElement::Unspecified);
        if el == PowerElement::Unspecified {
            return Err(invalid(
                format!("{f}.element"),
                "required: one of NODE, GPU, CPU, MEMORY",
            ));
        }
        if let Some(first) = ls[..i].iter().position(|x| x.element == l.element) {
            return Err(invalid(
                format!("{f}.element"),
                format!(
                    "{} already has a limit at [{first}]: at most one limit per element",
                    element_name(el)
                ),
            ));
        }
        match l.value {
            None => {
                return Err(invalid(f, "required: watts or percent"));
            }
            Some(Value::Watts(x)) if !(x.is_finite() && x > 0.0 && x <= MAX_WATTS) => {
                return Err(invalid(
                    format!("{f}.watts"),
                    format!("{x} must be more than 0 and at most 1e9"),
                ));
            }
            Some(Value::Percent(x)) if !(x.is_finite() && x > 0.0 && x <= 100.0) => {
                return Err(invalid(
                    format!("{f}.percent"),
                    format!("{x} must be more than 0 and at most 100"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The limits in force: the active bundle's, else `limits`.
pub fn active_limits(spec: &PowerPolicySpec) -> &[PowerLimit] {
    if spec.active_bundle.is_empty() {
        return &spec.limits;
    }
    spec.bundles
        .iter()
        .find(|b| b.name == spec.active_bundle)
        .map(|b| b.limits.as_slice())
        .unwrap_or(&spec.limits)
}

/// The limit for `element` among `limits`, if any.
pub fn limit_for(limits: &[PowerLimit], element: PowerElement) -> Option<&PowerLimit> {
    limits.iter().find(|l| l.element == element as i32)
}

#[cfg(test)]
#[path = "power_tests.rs"]
mod tests;
