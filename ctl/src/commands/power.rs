//! `hostplanectl power top`: live per-node (and with `--gpus`, per-GPU) draw
//! against cap, sorted, from the coordinator's GetPowerSummary.
use std::time::Duration;

use hostplane_proto::v1::{NodePower, PowerSummary, PowerSummaryRequest};

use super::{Conn, Ctx, Out, emit};
use crate::cli::{PowerCmd, PowerTopArgs, TopSort};
use crate::error::Error;
use crate::output::{self, Format, TableWriter, age};

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: PowerCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        PowerCmd::Top(args) => top(conn, ctx, &args, out).await,
    }
}

async fn top(conn: &Conn, ctx: &Ctx, args: &PowerTopArgs, out: &mut Out) -> Result<u8, Error> {
    let mut client = conn.client().await?;
    let req = PowerSummaryRequest {
        nodes: args.nodes.clone(),
    };
    loop {
        let summary = client.get_power_summary(req.clone()).await?.into_inner();
        let text = render(summary, args, ctx.format, (ctx.now)())?;
        if args.watch && ctx.format == Format::Table {
            // Clear the screen and home the cursor, like top.
            emit(out, "\x1b[2J\x1b[H").await?;
        }
        emit(out, &text).await?;
        if !args.watch {
            return Ok(0);
        }
        tokio::time::sleep(args.interval.max(Duration::from_millis(200))).await;
    }
}

/// Draw as a share of the cap, for sorting and the USE column.
fn used(n: &NodePower) -> Option<f64> {
    let draw = n.draw_watts?;
    (n.cap_watts > 0.0).then(|| draw / n.cap_watts * 100.0)
}

pub fn sort(nodes: &mut [NodePower], by: TopSort) {
    let key = |n: &NodePower| -> f64 {
        match by {
            TopSort::Draw => n.draw_watts.unwrap_or(-1.0),
            TopSort::Cap => n.cap_watts,
            TopSort::Use => used(n).unwrap_or(-1.0),
            TopSort::Name => 0.0,
        }
    };
    // Highest first; ties (and --sort name) by name.
    nodes.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.node.cmp(&b.node)));
}

pub fn render(
    mut s: PowerSummary,
    args: &PowerTopArgs,
    format: Format,
    now_ms: i64,
) -> Result<String, Error> {
    sort(&mut s.nodes, args.sort);
    match format {
        Format::Json | Format::Yaml => output::serialized(&s, format),
        Format::Name => Ok(s.nodes.iter().map(|n| format!("node/{}\n", n.node)).collect()),
        Format::Table => Ok(table(&s, args.gpus, now_ms)),
    }
}

fn w(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn table(s: &PowerSummary, gpus: bool, now_ms: i64) -> String {
    let header = [
        "NODE",
        "DRAW-W",
        "CAP-W",
        "ENFORCED-W",
        "USE",
        "METHOD",
        "GPUS-W",
        "POLICY",
        "SAMPLED",
        "NOTE",
    ];
    let mut t = TableWriter::new(header.iter().map(|h| h.to_string()).collect());
    let mut rows = Vec::new();
    let (mut draw, mut cap) = (0.0, 0.0);
    for n in &s.nodes {
        draw += n.draw_watts.unwrap_or(0.0);
        cap += n.cap_watts;
        let gpu_sum: Vec<f64> = n.gpus.iter().filter_map(|g| g.watts).collect();
        let note = if n.safe_mode {
            "SAFE CAP (coordinator lost)".to_string()
        } else if !n.error.is_empty() {
            n.error.clone()
        } else if n.cap_watts > 0.0 && n.effective_watts == 0.0 {
            "cap not confirmed by the agent".to_string()
        } else {
            "-".to_string()
        };
        rows.push(vec![
            n.node.clone(),
            w(n.draw_watts),
            output::watts(n.cap_watts),
            output::watts(n.effective_watts),
            used(n).map_or_else(|| "-".into(), |u| format!("{u:.0}%")),
            if n.method.is_empty() {
                "-".into()
            } else {
                n.method.clone()
            },
            if gpu_sum.is_empty() {
                "-".into()
            } else {
                format!("{:.0} ({})", gpu_sum.iter().sum::<f64>(), gpu_sum.len())
            },
            if n.policy.is_empty() {
                "-".into()
            } else {
                n.policy.clone()
            },
            if n.sampled_at_ms > 0 {
                age(n.sampled_at_ms, now_ms)
            } else {
                "-".into()
            },
            note,
        ]);
        if gpus {
            for g in &n.gpus {
                rows.push(vec![
                    format!("  {}", g.device),
                    w(g.watts),
                    output::watts(g.cap_watts),
                    "-".into(),
                    match (g.watts, g.cap_watts) {
                        (Some(x), c) if c > 0.0 => format!("{:.0}%", x / c * 100.0),
                        _ => "-".into(),
                    },
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    let mut text = t.render(&rows);
    text.push_str(&format!(
        "\n{} nodes: draw {:.0} W, caps {:.0} W\n",
        s.nodes.len(),
        draw,
        cap
    ));
    for e in &s.elements {
        text.push_str(&format!(
            "{:<24} budget {:>8.0} W  allocated {:>8.0} W  draw {:>8.0} W{}\n",
            e.name,
            e.budget_watts,
            e.allocated_watts,
            e.draw_watts,
            if e.nodes_without_telemetry > 0 {
                format!("  ({} nodes without telemetry)", e.nodes_without_telemetry)
            } else {
                String::new()
            }
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{ElementAllocation, GpuPower};

    use super::*;

    fn node(name: &str, draw: Option<f64>, cap: f64) -> NodePower {
        NodePower {
            node: name.into(),
            draw_watts: draw,
            cap_watts: cap,
            effective_watts: cap,
            method: "redfish".into(),
            sampled_at_ms: 1_000,
            ..Default::default()
        }
    }

    fn args(sort: TopSort, gpus: bool) -> PowerTopArgs {
        PowerTopArgs {
            nodes: vec![],
            sort,
            gpus,
            watch: false,
            interval: Duration::from_secs(2),
        }
    }

    #[test]
    fn sorted_by_draw_cap_use_or_name() {
        let base = vec![
            node("a", Some(500.0), 1000.0),
            node("b", Some(900.0), 3000.0),
            node("c", None, 2000.0),
        ];
        let names = |by| {
            let mut v = base.clone();
            sort(&mut v, by);
            v.iter().map(|n| n.node.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(TopSort::Draw), ["b", "a", "c"], "no telemetry sorts last");
        assert_eq!(names(TopSort::Cap), ["b", "c", "a"]);
        assert_eq!(names(TopSort::Use), ["a", "b", "c"], "50% before 30%");
        assert_eq!(names(TopSort::Name), ["a", "b", "c"]);
    }

    #[test]
    fn the_table_shows_draw_cap_use_gpus_and_the_safe_cap() {
        let mut n = node("n1", Some(6400.0), 8000.0);
        n.gpus = vec![
            GpuPower {
                device: "HGX_GPU_SXM_1".into(),
                watts: Some(650.0),
                cap_watts: 700.0,
            },
            GpuPower {
                device: "HGX_GPU_SXM_2".into(),
                watts: Some(610.0),
                cap_watts: 0.0,
            },
        ];
        let mut safe = node("n2", Some(2900.0), 3000.0);
        safe.safe_mode = true;
        let s = PowerSummary {
            nodes: vec![safe, n],
            elements: vec![ElementAllocation {
                name: "feed-a".into(),
                budget_watts: 12000.0,
                allocated_watts: 11000.0,
                draw_watts: 9300.0,
                ..Default::default()
            }],
        };
        let text = render(s, &args(TopSort::Draw, true), Format::Table, 61_000).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        assert!(lines[1].starts_with("n1 ") && lines[1].contains("6400") && lines[1].contains("80%"));
        assert!(lines[1].contains("1260 (2)"), "GPU sum and count: {}", lines[1]);
        assert!(
            lines[2].contains("HGX_GPU_SXM_1") && lines[2].contains("93%"),
            "{}",
            lines[2]
        );
        assert!(
            lines[4].starts_with("n2 ") && lines[4].contains("SAFE CAP"),
            "{}",
            lines[4]
        );
        assert!(text.contains("2 nodes: draw 9300 W, caps 11000 W"), "{text}");
        assert!(
            text.contains("feed-a") && text.contains("budget    12000 W"),
            "{text}"
        );
    }

    #[test]
    fn json_is_the_summary() {
        let s = PowerSummary {
            nodes: vec![node("n1", Some(10.0), 20.0)],
            elements: vec![],
        };
        let text = render(s, &args(TopSort::Draw, false), Format::Json, 0).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["nodes"][0]["node"], "n1");
        assert_eq!(v["nodes"][0]["capWatts"], 20.0);
    }
}
