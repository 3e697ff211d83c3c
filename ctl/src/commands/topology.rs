//! `hostplanectl topology ...`: power topologies.
//!
//! `validate` and `import` run the same structural checks as the coordinator
//! (`hostplane_proto::power`) before anything is sent; what only the server
//! can check is said by `validate` ([`SERVER_CHECKS`]).
use std::collections::HashMap;

use hostplane_proto::power::{Tree, is_dns_label, level_name};
use hostplane_proto::v1::{Kind, PowerSummaryRequest, Resource, Topology, TopologyLevel, resource};
use serde_json::json;

use super::resource as res;
use super::{Conn, Ctx, Out, emit};
use crate::cli::TopologyCmd;
use crate::error::Error;
use crate::output::{self, Format, TableWriter, age, watts};

/// What `topology validate` cannot check without the coordinator.
pub const SERVER_CHECKS: [&str; 2] = [
    "each node element names an existing Node",
    "no node is in another topology already stored",
];

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: TopologyCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        TopologyCmd::Common(c) => res::common(conn, ctx, Kind::Topology, c, out).await,
        TopologyCmd::Import(f) => {
            let items = load_checked(&f.file).await?;
            res::apply(
                &mut conn.client().await?,
                ctx,
                items.into_iter().map(|(r, _)| r).collect(),
                out,
            )
            .await
        }
        TopologyCmd::Validate(f) => {
            let items = load_checked(&f.file).await?;
            emit(out, &validated(&items, ctx.format)?).await?;
            Ok(0)
        }
        TopologyCmd::Show(a) => show(conn, ctx, &a.name, out).await,
    }
}

/// The topologies in `path`, each checked; nothing else may be in the file.
pub async fn load_checked(path: &str) -> Result<Vec<(Resource, Tree)>, Error> {
    let items = res::load(path, Some(Kind::Topology)).await?;
    check(path, items)
}

fn display(path: &str) -> &str {
    if path == "-" { "<stdin>" } else { path }
}

/// The checks the coordinator makes on one object alone, plus: no node in
/// two topologies of the same file.
pub fn check(path: &str, items: Vec<Resource>) -> Result<Vec<(Resource, Tree)>, Error> {
    let fail = |reason: String| Error::InvalidInput {
        path: display(path).into(),
        reason,
    };
    let mut out = Vec::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    for r in items {
        let Some(resource::Kind::Topology(t)) = &r.kind else {
            continue;
        };
        let name = r.name().to_string();
        if !is_dns_label(&name) {
            return Err(fail(format!(
                "topology.metadata.name {name:?}: must be a DNS label: lower-case letters, digits, '-' and '.', \
                 starting and ending with a letter or digit, at most 63 characters"
            )));
        }
        let tree = Tree::build("topology", &t.spec.clone().unwrap_or_default())
            .map_err(|e| fail(format!("topology {name:?}: {e}")))?;
        for i in tree.nodes() {
            let node = &tree.elements[i].name;
            if let Some(other) = owner.insert(node.clone(), name.clone()) {
                return Err(fail(format!(
                    "topology {name:?}: topology.spec.elements[{i}].name: node {node:?} is also in topology \
                     {other:?} in this file; a node is in at most one topology"
                )));
            }
        }
        out.push((r, tree));
    }
    Ok(out)
}

/// `topology/hall-a is valid: 1 feed, 2 pdus, 4 racks, 12 nodes; feeds' budget 60000 W`.
fn validated(items: &[(Resource, Tree)], format: Format) -> Result<String, Error> {
    let summary = |r: &Resource, t: &Tree| {
        let (f, p, k, n) = t.counts();
        let budget: f64 = t.roots.iter().map(|&i| t.elements[i].budget_watts).sum();
        (r.name().to_string(), f, p, k, n, budget)
    };
    match format {
        Format::Table => {
            let mut s = String::new();
            for (r, t) in items {
                let (name, f, p, k, n, budget) = summary(r, t);
                let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
                s.push_str(&format!(
                    "topology/{name} is valid: {}, {}, {}, {}; feeds' budget {} W\n",
                    plural(f, "feed"),
                    plural(p, "pdu"),
                    plural(k, "rack"),
                    plural(n, "node"),
                    watts(budget)
                ));
            }
            s.push_str(&format!(
                "not checked without a server: {}\n",
                SERVER_CHECKS.join("; ")
            ));
            Ok(s)
        }
        Format::Name => Ok(items
            .iter()
            .map(|(r, _)| format!("topology/{}\n", r.name()))
            .collect()),
        Format::Json | Format::Yaml => {
            let tops: Vec<serde_json::Value> = items
                .iter()
                .map(|(r, t)| {
                    let (name, f, p, k, n, budget) = summary(r, t);
                    json!({"name": name, "feeds": f, "pdus": p, "racks": k, "nodes": n, "feedBudgetWatts": budget})
                })
                .collect();
            output::serialized(
                &json!({"valid": true, "topologies": tops, "notChecked": SERVER_CHECKS}),
                format,
            )
        }
    }
}

/// The tree with budgets from the spec, allocations from the status and live
/// node draws from the coordinator's power summary (summed up the tree).
async fn show(conn: &Conn, ctx: &Ctx, name: &str, out: &mut Out) -> Result<u8, Error> {
    let mut client = conn.client().await?;
    let r = res::fetch(&mut client, Kind::Topology, name).await?;
    let Some(resource::Kind::Topology(t)) = r.kind.clone() else {
        return Err(Error::Usage {
            reason: format!("the server answered a {} for topology {name}", r.kind().noun()),
        });
    };
    let tree =
        Tree::build("topology", &t.spec.clone().unwrap_or_default()).map_err(|e| Error::InvalidInput {
            path: format!("stored topology {name}"),
            reason: e.to_string(),
        })?;
    let nodes: Vec<String> = tree
        .nodes()
        .into_iter()
        .map(|i| tree.elements[i].name.clone())
        .collect();
    let summary = client
        .get_power_summary(PowerSummaryRequest { nodes })
        .await?
        .into_inner();
    let draws: HashMap<String, Option<f64>> = summary
        .nodes
        .into_iter()
        .map(|n| (n.node, n.draw_watts))
        .collect();
    let text = render(&t, &tree, &draws, ctx.format, (ctx.now)())?;
    emit(out, &text).await?;
    Ok(0)
}

/// One row per element in pre-order.
struct Line {
    depth: usize,
    name: String,
    level: TopologyLevel,
    parent: String,
    budget: f64,
    min: f64,
    allocated: Option<f64>,
    draw: Option<f64>,
    /// Nodes beneath without a draw.
    unknown: usize,
}

fn lines(t: &Topology, tree: &Tree, draws: &HashMap<String, Option<f64>>) -> Vec<Line> {
    let st = t.status.clone().unwrap_or_default();
    let allocated: HashMap<&str, f64> = st
        .allocations
        .iter()
        .map(|a| (a.name.as_str(), a.allocated_watts))
        .collect();
    let n = tree.len();
    let (mut draw, mut known, mut unknown) = (vec![0.0; n], vec![false; n], vec![0usize; n]);
    let order = tree.preorder();
    for &i in order.iter().rev() {
        if tree.level(i) == TopologyLevel::Node {
            match draws.get(&tree.elements[i].name).copied().flatten() {
                Some(w) => (draw[i], known[i]) = (w, true),
                None => unknown[i] = 1,
            }
        } else {
            for &c in &tree.children[i] {
                draw[i] += draw[c];
                known[i] |= known[c];
                unknown[i] += unknown[c];
            }
        }
    }
    order
        .into_iter()
        .map(|i| {
            let e = &tree.elements[i];
            Line {
                depth: tree.depth(i),
                name: e.name.clone(),
                level: e.level(),
                parent: e.parent.clone(),
                budget: e.budget_watts,
                min: e.min_watts,
                allocated: (st.computed_at_ms > 0)
                    .then(|| allocated.get(e.name.as_str()).copied())
                    .flatten(),
                draw: known[i].then_some(draw[i]),
                unknown: unknown[i],
            }
        })
        .collect()
}

pub fn render(
    t: &Topology,
    tree: &Tree,
    draws: &HashMap<String, Option<f64>>,
    format: Format,
    now_ms: i64,
) -> Result<String, Error> {
    let name = t.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    let st = t.status.clone().unwrap_or_default();
    let ls = lines(t, tree, draws);
    match format {
        Format::Name => Ok(format!("topology/{name}\n")),
        Format::Json | Format::Yaml => {
            let elements: Vec<serde_json::Value> = ls
                .iter()
                .map(|l| {
                    json!({
                        "name": l.name, "level": level_name(l.level), "parent": l.parent, "depth": l.depth,
                        "budgetWatts": l.budget, "minWatts": l.min, "allocatedWatts": l.allocated,
                        "drawWatts": l.draw, "nodesWithoutTelemetry": l.unknown,
                    })
                })
                .collect();
            let conditions: Vec<serde_json::Value> = st
                .conditions
                .iter()
                .map(|c| json!({"type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message}))
                .collect();
            output::serialized(
                &json!({"topology": name, "computedAtMs": st.computed_at_ms, "elements": elements,
                        "conditions": conditions}),
                format,
            )
        }
        Format::Table => {
            let header = ["ELEMENT", "LEVEL", "BUDGET-W", "MIN-W", "ALLOCATED-W", "DRAW-W"];
            let mut tw = TableWriter::new(header.iter().map(|h| h.to_string()).collect());
            let rows: Vec<Vec<String>> = ls
                .iter()
                .map(|l| {
                    let draw = match (l.draw, l.level) {
                        (None, _) => "-".to_string(),
                        (Some(w), TopologyLevel::Node) => format!("{w:.0}"),
                        (Some(w), _) if l.unknown > 0 => format!("{w:.0} ({} unknown)", l.unknown),
                        (Some(w), _) => format!("{w:.0}"),
                    };
                    vec![
                        format!("{}{}", "  ".repeat(l.depth), l.name),
                        level_name(l.level).to_string(),
                        watts(l.budget),
                        watts(l.min),
                        l.allocated.map_or_else(|| "-".into(), watts),
                        draw,
                    ]
                })
                .collect();
            let mut s = tw.render(&rows);
            if st.computed_at_ms > 0 {
                s.push_str(&format!(
                    "\nallocated {} ago by the policy engine\n",
                    age(st.computed_at_ms, now_ms)
                ));
            } else {
                s.push_str("\nnot allocated yet (the policy engine has not run on it)\n");
            }
            for c in &st.conditions {
                if c.message.is_empty() {
                    s.push_str(&format!("{}: {}\n", c.r#type, c.status));
                } else {
                    s.push_str(&format!("{}: {} — {}\n", c.r#type, c.status, c.message));
                }
            }
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{
        Condition, ElementAllocation, ObjectMeta, TopologyElement, TopologySpec, TopologyStatus,
    };

    use super::*;

    fn el(name: &str, level: TopologyLevel, parent: &str, budget: f64) -> TopologyElement {
        TopologyElement {
            name: name.into(),
            level: level as i32,
            parent: parent.into(),
            budget_watts: budget,
            min_watts: 0.0,
        }
    }

    fn topo() -> Topology {
        let alloc = |name: &str, w: f64| ElementAllocation {
            name: name.into(),
            allocated_watts: w,
            ..Default::default()
        };
        Topology {
            metadata: Some(ObjectMeta {
                name: "hall".into(),
                ..Default::default()
            }),
            spec: Some(TopologySpec {
                elements: vec![
                    el("feed", TopologyLevel::Feed, "", 1800.0),
                    el("rack", TopologyLevel::Rack, "feed", 5000.0),
                    el("n2", TopologyLevel::Node, "rack", 1000.0),
                    el("n1", TopologyLevel::Node, "rack", 1000.0),
                ],
            }),
            status: Some(TopologyStatus {
                allocations: vec![
                    alloc("feed", 1800.0),
                    alloc("rack", 1800.0),
                    alloc("n1", 900.0),
                    alloc("n2", 900.0),
                ],
                computed_at_ms: 10_000,
                conditions: vec![Condition {
                    r#type: "Oversubscribed".into(),
                    status: "True".into(),
                    message: "feed feed wants 2000 W".into(),
                    ..Default::default()
                }],
            }),
        }
    }

    #[test]
    fn the_tree_is_indented_with_draws_summed_up() {
        let t = topo();
        let tree = Tree::build("topology", t.spec.as_ref().unwrap()).unwrap();
        let draws = HashMap::from([("n1".to_string(), Some(640.4))]);
        let s = render(&t, &tree, &draws, Format::Table, 15_000).unwrap();
        let want = "\
ELEMENT   LEVEL   BUDGET-W   MIN-W   ALLOCATED-W   DRAW-W
feed      feed    1800       -       1800          640 (1 unknown)
  rack    rack    5000       -       1800          640 (1 unknown)
    n1    node    1000       -       900           640
    n2    node    1000       -       900           -

allocated 5s ago by the policy engine
Oversubscribed: True — feed feed wants 2000 W
";
        assert_eq!(s, want);
        let j: serde_json::Value =
            serde_json::from_str(&render(&t, &tree, &draws, Format::Json, 15_000).unwrap()).unwrap();
        assert_eq!(j["elements"][2]["name"], "n1");
        assert_eq!(j["elements"][2]["drawWatts"], 640.4);
        assert_eq!(j["elements"][3]["drawWatts"], serde_json::Value::Null);
        assert_eq!(j["elements"][0]["nodesWithoutTelemetry"], 1);
    }

    #[test]
    fn a_node_in_two_topologies_of_one_file_is_refused() {
        let mut a = topo();
        a.status = None;
        let mut b = a.clone();
        b.metadata.as_mut().unwrap().name = "other".into();
        let e = check("f.yaml", vec![a.clone().into(), b.into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.yaml: topology \"other\": topology.spec.elements[3].name: node \"n1\" is also in topology \
             \"hall\" in this file; a node is in at most one topology"
        );
        assert_eq!(check("f.yaml", vec![a.into()]).unwrap().len(), 1);
    }
}
