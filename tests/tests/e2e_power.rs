//! Power end to end over the real binaries: three simulated BMCs of different
//! models (in this process), three agents with fake sysfs trees, the real
//! coordinator with one topology whose feed is oversubscribed. The caps the
//! agents apply through Redfish keep the modeled feed draw under its budget;
//! with the coordinator gone, every agent applies the policy's safe cap after
//! the lease.
use std::time::Duration;

use anyhow::{Context, Result};
use hostplane_proto::v1::{
    self, PowerElement, PowerLimit, PowerPolicySpec, PowerSummaryRequest, RebootMethod, TopologyElement,
    TopologyLevel, TopologySpec, power_limit,
};
use hostplane_sim::bmc::{BmcHandle, BmcOptions, BmcSim, Model, Workload};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{fuse_unavailable, meta, power, wait_for};

const FEED_BUDGET: f64 = 20_000.0;
const SAFE_CAP: f64 = 5_000.0;
const LEASE_S: u32 = 4;

fn element(name: &str, level: TopologyLevel, parent: &str, budget: f64, min: f64) -> TopologyElement {
    TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: min,
    }
}

fn feed_draw(bmcs: &[BmcHandle]) -> f64 {
    bmcs.iter().map(BmcHandle::draw_watts).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_keep_an_oversubscribed_feed_under_budget_and_safe_caps_follow_a_lost_coordinator() -> Result<()>
{
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut world = World::start(WorldOpts {
        dpus: 1,
        coordinator_yaml: "power:\n  recompute_interval: 1s\n".into(),
        agent_yaml: "session:\n  backoff_initial: 100ms\n  backoff_max: 1s\n".into(),
        ..Default::default()
    })
    .await?;
    // Full load on every node: together they want far more than the feed has.
    let models = [
        ("n1", Model::DgxH100),
        ("n2", Model::DgxB200),
        ("n3", Model::Gb200),
    ];
    // HTTPS, as BMCs serve: a lab CA the agents trust (power.bmc.ca_file).
    let bmc_tls = world.dir.join("bmc-tls");
    let tls = hostplane_sim::bmc::LabCerts::generate(&[])?.write(&bmc_tls)?;
    let ca = bmc_tls.join(hostplane_sim::bmc::tls::LAB_CA_FILE);
    let mut bmcs = Vec::new();
    for (node, model) in models {
        let mut o = BmcOptions::new(format!("bmc-{node}"), model);
        o.workload = Workload::Constant(1.0);
        o.tls = Some(tls.clone());
        bmcs.push(BmcSim::spawn(o)?);
    }
    let demand = feed_draw(&bmcs);
    let mut elements = vec![
        element("feed-a", TopologyLevel::Feed, "", FEED_BUDGET, 0.0),
        element("rack-1", TopologyLevel::Rack, "feed-a", 40_000.0, 0.0),
    ];
    for (i, (node, _)) in models.iter().enumerate() {
        world.add_node(node, RebootMethod::External, &[], &[]).await?;
        let spec = bmcs[i].model().spec();
        elements.push(element(
            node,
            TopologyLevel::Node,
            "rack-1",
            spec.node_max_watts(),
            spec.node_min_cap_watts(),
        ));
    }
    eprintln!("modeled demand at full load: {demand:.0} W; feed budget {FEED_BUDGET:.0} W");

    for (i, (node, _)) in models.iter().enumerate() {
        let sysfs = world.dir.join(format!("sysfs-{node}"));
        power::fake_sysfs(&sysfs)?;
        let pw = world.dir.join(format!("bmc-{node}.password"));
        std::fs::write(&pw, "admin\n")?;
        world.start_agent_with(
            node,
            &format!(
                "power:\n  sysfs_root: {sysfs}\n  telemetry:\n    batch_interval: 500ms\n  bmc:\n    url: {url}\n    username: admin\n    password_file: {pw}\n    ca_file: {ca}\n    poll_interval: 1s\n",
                sysfs = sysfs.display(),
                url = bmcs[i].url(),
                pw = pw.display(),
                ca = ca.display(),
            ),
        )?;
    }

    let mut admin = world.admin.clone();
    admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::Topology {
                    metadata: meta("site"),
                    spec: Some(TopologySpec { elements }),
                    status: None,
                }
                .into(),
            ),
        })
        .await
        .context("creating the topology")?;
    admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::PowerPolicy {
                    metadata: meta("maxp"),
                    spec: Some(PowerPolicySpec {
                        nodes: models.iter().map(|(n, _)| n.to_string()).collect(),
                        limits: vec![PowerLimit {
                            element: PowerElement::Node as i32,
                            value: Some(power_limit::Value::Percent(100.0)),
                        }],
                        safe_node_watts: SAFE_CAP,
                        cap_lease_seconds: LEASE_S,
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            ),
        })
        .await
        .context("creating the policy")?;

    // The caps reach the BMCs and the modeled feed settles under its budget.
    let settled = wait_for("the feed draw under budget", Duration::from_secs(60), || {
        let draw = feed_draw(&bmcs);
        let capped = bmcs.iter().all(|b| b.node_limit().is_some());
        async move { (capped && draw <= FEED_BUDGET * 1.01).then_some(draw) }
    })
    .await;
    let settled = match settled {
        Ok(d) => d,
        Err(e) => {
            let s = admin
                .get_power_summary(PowerSummaryRequest::default())
                .await?
                .into_inner();
            let limits: Vec<Option<f64>> = bmcs.iter().map(BmcHandle::node_limit).collect();
            for (node, _) in models {
                let log =
                    std::fs::read_to_string(world.log_path(&format!("agent-{node}"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- agent {node} log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
            let log = std::fs::read_to_string(world.log_path("coordinator")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- coordinator log (newest first):\n{}", tail.join("\n"));
            return Err(e.context(format!(
                "feed draw {:.0} W, BMC limits {limits:?}, summary {s:?}",
                feed_draw(&bmcs)
            )));
        }
    };
    let limits: Vec<f64> = bmcs.iter().filter_map(BmcHandle::node_limit).collect();
    eprintln!("feed draw {settled:.0} W under caps {limits:?}");
    assert!(
        limits.iter().sum::<f64>() <= FEED_BUDGET + 1.0,
        "caps sum over the feed: {limits:?}"
    );
    // It stays under: several sampling periods later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        feed_draw(&bmcs) <= FEED_BUDGET * 1.01,
        "the feed went over: {:.0} W",
        feed_draw(&bmcs)
    );

    // The coordinator sees every node's draw, cap and what the agent enforces.
    let summary = wait_for(
        "every node's enforced cap in the summary",
        Duration::from_secs(30),
        || {
            let mut admin = admin.clone();
            async move {
                let s = admin
                    .get_power_summary(PowerSummaryRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                let ok = models.iter().all(|(n, _)| {
                    s.nodes.iter().any(|p| {
                        p.node == *n
                            && p.draw_watts.is_some()
                            && p.effective_watts > 0.0
                            && p.method == "redfish"
                    })
                });
                ok.then_some(s)
            }
        },
    )
    .await?;
    for n in &summary.nodes {
        assert!(
            n.cap_watts > 0.0 && n.cap_watts <= n.effective_watts + 1.0,
            "{n:?}"
        );
    }

    // The coordinator is lost: after the lease every agent applies the safe cap.
    world.coordinator.take().context("coordinator")?.crash().await;
    // The safe cap, raised to the BMC's minimum or lowered to its maximum where it must be.
    let safe = |b: &BmcHandle| {
        let spec = b.model().spec();
        SAFE_CAP.clamp(spec.node_min_cap_watts(), spec.node_max_watts())
    };
    wait_for("safe caps on every BMC", Duration::from_secs(30), || {
        let all = bmcs
            .iter()
            .all(|b| b.node_limit().is_some_and(|l| (l - safe(b)).abs() < 1.0));
        async move { all.then_some(()) }
    })
    .await?;
    for b in bmcs {
        b.shutdown().await;
    }
    world.shutdown().await?;
    Ok(())
}
