//! End to end with host networking: the real coordinator, agent and
//! simulator binaries, a Flavor with a bridge (a veth port and an address),
//! and an agent that manages a network namespace the test creates. The test
//! checks the kernel's view itself (`ip -j -n <ns> ...`), never the agent's.
//! Needs FUSE and root (CI runs as root); without them it prints why and returns.

use std::process::Command as StdCommand;
use std::time::Duration;

use hostplane_proto::v1::{self, DpuPhase, Kind, NodeEffect, RebootMethod};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{get_dpu, meta, require_fuse, wait_for, wait_phase};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
const BRIDGE: &str = "br-e2e";
const PORT: &str = "veth-host";
const PEER: &str = "veth-peer";
const ADDRESS: &str = "10.77.0.1/24";

/// A network namespace with a veth pair inside, deleted on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = StdCommand::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("hp-e2e-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&[
            "-n", &ns.name, "link", "add", PORT, "type", "veth", "peer", "name", PEER,
        ])?;
        Ok(ns)
    }

    /// The namespace's links, as the kernel reports them.
    async fn links(&self) -> Vec<Value> {
        let out = tokio::process::Command::new("ip")
            .args(["-j", "-d", "-n", &self.name, "link", "show"])
            .output()
            .await
            .expect("ip runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("ip -j prints JSON")
    }

    async fn link(&self, name: &str) -> Option<Value> {
        self.links().await.into_iter().find(|l| l["ifname"] == name)
    }

    /// Global addresses on `dev`, as "a.b.c.d/len".
    async fn addresses(&self, dev: &str) -> Vec<String> {
        let out = tokio::process::Command::new("ip")
            .args(["-j", "-n", &self.name, "addr", "show", "dev", dev])
            .output()
            .await
            .expect("ip runs");
        if !out.status.success() {
            return Vec::new();
        }
        let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
        v.iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect()
    }

    /// True when the bridge exists as a bridge, the port is attached to it
    /// and the address is on it.
    async fn bridge_complete(&self) -> bool {
        let Some(br) = self.link(BRIDGE).await else {
            return false;
        };
        let is_bridge = br["linkinfo"]["info_kind"] == "bridge";
        let port = self.link(PORT).await;
        let attached = port.is_some_and(|p| p["master"] == BRIDGE);
        is_bridge && attached && self.addresses(BRIDGE).await.iter().any(|a| a == ADDRESS)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn condition(d: &v1::Dpu, ty: &str) -> Option<v1::Condition> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == ty)
        .cloned()
}

async fn wait_condition(
    w: &World,
    dpu: &str,
    what: &str,
    pred: impl Fn(&v1::Condition) -> bool,
) -> v1::Condition {
    let admin = w.admin.clone();
    let pred = &pred;
    wait_for(what, T, || {
        let mut admin = admin.clone();
        async move {
            let d = get_dpu(&mut admin, dpu).await.ok()??;
            condition(&d, "HostNetworkApplied").filter(|c| pred(c))
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpu_is_ready_only_with_its_host_network_and_drift_is_repaired() {
    require_fuse!();
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: cannot create a network namespace (needs root and iproute2): {why}");
            return;
        }
    };
    let opts = WorldOpts {
        dpus: 1,
        agent_yaml: format!(
            "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n\
             network:\n  netns: {}\n",
            ns.name
        ),
        ..Default::default()
    };
    let mut w = World::start(opts).await.expect("world starts");
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 1 << 20, "4.9.0").await.unwrap();
    let flavor = v1::Flavor {
        metadata: meta("f-net"),
        spec: Some(v1::FlavorSpec {
            host_network: Some(v1::HostNetwork {
                mtu: 1500,
                bridges: vec![v1::Bridge {
                    name: BRIDGE.into(),
                    ports: vec![PORT.into()],
                    addresses: vec![ADDRESS.into()],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    w.admin
        .create(v1::CreateRequest {
            resource: Some(flavor.into()),
        })
        .await
        .unwrap();
    assert!(
        ns.link(BRIDGE).await.is_none(),
        "no bridge before the Dpu asks for one"
    );
    w.add_deployment(
        "d1",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f-net".into(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // The Dpu waits for the external reboot; by then the network is on the
    // host, and Ready only comes after it.
    wait_phase(&mut w.admin, "dpu-a", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    assert!(
        ns.bridge_complete().await,
        "bridge {BRIDGE} with port {PORT} and {ADDRESS} in {}: {:#?}",
        ns.name,
        ns.links().await
    );
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Ready, T)
        .await
        .unwrap();
    let st = d.status.clone().unwrap();
    let init = st
        .history
        .iter()
        .find(|t| t.from() == DpuPhase::InitializeInterface)
        .expect("InitializeInterface in the history");
    assert_eq!(init.to(), DpuPhase::ConfigFwParameters, "{init:?}");
    assert!(
        init.message.contains("applied") && init.message.contains(BRIDGE),
        "InitializeInterface succeeded by applying the network: {}",
        init.message
    );
    let c = wait_condition(&w, "dpu-a", "HostNetworkApplied=True", |c| c.status == "True").await;
    assert_eq!(c.reason, "Applied", "{c:?}");
    assert!(c.message.contains(BRIDGE), "{c:?}");

    // Someone deletes the bridge: the agent recreates it and the Dpu says so.
    ip(&["-n", &ns.name, "link", "del", BRIDGE]).unwrap();
    let c = wait_condition(&w, "dpu-a", "the drift repair on the Dpu", |c| {
        c.reason == "DriftRepaired"
    })
    .await;
    assert_eq!(c.status, "True", "{c:?}");
    assert!(
        c.message
            .contains(" drift repair(s) since the agent started; last: "),
        "the counter and the last drift are in the message: {c:?}"
    );
    wait_for("the bridge to be whole again", T, || async {
        ns.bridge_complete().await.then_some(())
    })
    .await
    .unwrap();

    // Deleting the Deployment deletes the Dpu: its network leaves the
    // desired state and the agent removes the bridge it made, leaving the
    // veth (which it did not create) in place.
    w.admin
        .delete(v1::DeleteRequest {
            kind: Kind::Deployment as i32,
            name: "d1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for("the bridge to be removed", T, || async {
        ns.link(BRIDGE).await.is_none().then_some(())
    })
    .await
    .unwrap();
    let port = ns
        .link(PORT)
        .await
        .expect("the veth the agent did not create is still there");
    assert!(port.get("master").is_none(), "{port:#?}");
    w.shutdown().await.unwrap();
}
