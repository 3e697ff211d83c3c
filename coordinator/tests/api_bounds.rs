//! Every string the admin API reads has a maximum length, checked before any
//! other rule: generated over-long values in every field get
//! INVALID_ARGUMENT naming the field, with a short message (never the value
//! itself), and change nothing in the store.
mod api_common;

use std::collections::HashMap;

use api_common::*;
use hostplane_proto::limits as lim;
use hostplane_proto::v1::{
    Bridge, CreateNodeWithDevicesRequest, CreateRequest, DeleteRequest, DpuRef, GetRequest, HostNetwork,
    Kind, ListRequest, NodeRef, PowerBundle, PowerLimit, PowerPolicy, PowerPolicySpec, PowerSummaryRequest,
    Resource, Route, SetDeploymentImageRequest, SriovPf, Topology, TopologyElement, TopologySpec,
    UpdateRequest, VfConfig, WatchRequest, power_limit,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The longest message a refusal may carry here (field path, reason, a quoted prefix).
const MESSAGE_BOUND: usize = 512;

/// One call with one over-long field.
enum Call {
    Create(Resource),
    Update(Resource),
    CreateNode(CreateNodeWithDevicesRequest),
    Get(String),
    Delete(String),
    List(ListRequest),
    Watch(String),
    Approve(String),
    Reprovision(String),
    SetImage(SetDeploymentImageRequest),
    PowerSummary(Vec<String>),
}

type Build = fn(String) -> Call;

fn f(field: &'static str, max: usize, build: Build) -> (&'static str, usize, Build) {
    (field, max, build)
}

fn topology(name: &str, parent: &str) -> Topology {
    Topology {
        metadata: meta("t1"),
        spec: Some(TopologySpec {
            elements: vec![TopologyElement {
                name: name.into(),
                level: 1,
                parent: parent.into(),
                budget_watts: 1000.0,
                min_watts: 0.0,
            }],
        }),
        status: None,
    }
}

fn policy(f: impl FnOnce(&mut PowerPolicySpec)) -> PowerPolicy {
    let mut spec = PowerPolicySpec {
        nodes: vec!["n1".into()],
        limits: vec![PowerLimit {
            element: 1,
            value: Some(power_limit::Value::Watts(500.0)),
        }],
        ..Default::default()
    };
    f(&mut spec);
    PowerPolicy {
        metadata: meta("p1"),
        spec: Some(spec),
        status: None,
    }
}

fn flavor_with(f: impl FnOnce(&mut hostplane_proto::v1::FlavorSpec)) -> Resource {
    let mut x = flavor("f2");
    f(x.spec.as_mut().unwrap());
    x.into()
}

fn network(f: impl FnOnce(&mut HostNetwork)) -> Resource {
    flavor_with(|s| {
        let mut h = HostNetwork {
            bridges: vec![Bridge {
                name: "br0".into(),
                ports: vec!["eth0".into()],
                mtu: 0,
                addresses: vec!["10.0.0.1/24".into()],
            }],
            sriov: vec![SriovPf {
                pf: "ens1f0".into(),
                num_vfs: 2,
                vfs: vec![VfConfig {
                    index: 0,
                    mac: "02:00:00:00:00:01".into(),
                    link_state: "auto".into(),
                    ..Default::default()
                }],
            }],
            routes: vec![Route {
                destination: "10.1.0.0/16".into(),
                gateway: "10.0.0.254".into(),
                dev: "br0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        f(&mut h);
        s.host_network = Some(h);
    })
}

fn labelled(key: String, value: String) -> Resource {
    let mut n = node("n2");
    n.metadata.as_mut().unwrap().labels = [(key, value)].into();
    n.into()
}

/// (the field as messages name it, its maximum in bytes, the call that sets it).
fn fields() -> Vec<(&'static str, usize, Build)> {
    vec![
        f("node.metadata.name", lim::MAX_NAME, |v| {
            Call::Create(node(&v).into())
        }),
        f("node.metadata.labels key", lim::MAX_LABEL_KEY, |v| {
            Call::Create(labelled(v, "x".into()))
        }),
        f("node.metadata.labels[\"k\"]", lim::MAX_LABEL_VALUE, |v| {
            Call::Create(labelled("k".into(), v))
        }),
        f("device.spec.node", lim::MAX_NAME, |v| {
            Call::Create(device("d9", &v, "rshim5").into())
        }),
        f("device.spec.serial", lim::MAX_SERIAL, |v| {
            let mut d = device("d9", "n1", "rshim5");
            d.spec.as_mut().unwrap().serial = v;
            Call::Create(d.into())
        }),
        f("device.spec.pci_address", lim::PCI_ADDRESS_LEN, |v| {
            let mut d = device("d9", "n1", "rshim5");
            d.spec.as_mut().unwrap().pci_address = v;
            Call::Create(d.into())
        }),
        f("device.spec.rshim", lim::MAX_RSHIM, |v| {
            Call::Create(device("d9", "n1", &v).into())
        }),
        f("device.spec.bmc_address", lim::MAX_BMC_ADDRESS, |v| {
            let mut d = device("d9", "n1", "rshim5");
            d.spec.as_mut().unwrap().bmc_address = v;
            Call::Create(d.into())
        }),
        f("bfb.spec.url", lim::MAX_URL, |v| {
            let mut b = bfb("b9");
            b.spec.as_mut().unwrap().url = v;
            Call::Create(b.into())
        }),
        f("bfb.spec.sha256", lim::SHA256_HEX_LEN, |v| {
            let mut b = bfb("b9");
            b.spec.as_mut().unwrap().sha256 = v;
            Call::Create(b.into())
        }),
        f("bfb.spec.version", lim::MAX_VERSION, |v| {
            let mut b = bfb("b9");
            b.spec.as_mut().unwrap().version = v;
            Call::Create(b.into())
        }),
        f("flavor.spec.bf_cfg key", lim::MAX_PARAM_KEY, |v| {
            Call::Create(flavor_with(|s| {
                s.bf_cfg.insert(v, "1".into());
            }))
        }),
        // The rendered file's bound: the value alone may not take it all.
        f("flavor.spec.bf_cfg", lim::MAX_BF_CFG_BYTES, |v| {
            Call::Create(flavor_with(|s| {
                s.bf_cfg.insert("BIG".into(), v);
            }))
        }),
        f("flavor.spec.nic_firmware key", lim::MAX_PARAM_KEY, |v| {
            Call::Create(flavor_with(|s| {
                s.nic_firmware.insert(v, "1".into());
            }))
        }),
        f("flavor.spec.nic_firmware[\"P\"]", lim::MAX_NIC_FW_VALUE, |v| {
            Call::Create(flavor_with(|s| {
                s.nic_firmware.insert("P".into(), v);
            }))
        }),
        f(
            "flavor.spec.host_network.bridges[0].name",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.bridges[0].name = v)),
        ),
        f(
            "flavor.spec.host_network.bridges[0].ports[0]",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.bridges[0].ports[0] = v)),
        ),
        f(
            "flavor.spec.host_network.bridges[0].addresses[0]",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.bridges[0].addresses[0] = v)),
        ),
        f(
            "flavor.spec.host_network.sriov[0].pf",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.sriov[0].pf = v)),
        ),
        f(
            "flavor.spec.host_network.sriov[0].vfs[0].mac",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.sriov[0].vfs[0].mac = v)),
        ),
        f(
            "flavor.spec.host_network.sriov[0].vfs[0].link_state",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.sriov[0].vfs[0].link_state = v)),
        ),
        f(
            "flavor.spec.host_network.routes[0].destination",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.routes[0].destination = v)),
        ),
        f(
            "flavor.spec.host_network.routes[0].gateway",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.routes[0].gateway = v)),
        ),
        f(
            "flavor.spec.host_network.routes[0].dev",
            lim::MAX_NETWORK_STRING,
            |v| Call::Create(network(|h| h.routes[0].dev = v)),
        ),
        f("deployment.spec.bfb", lim::MAX_NAME, |v| {
            Call::Create(deployment("dep9", &v, "f1").into())
        }),
        f("deployment.spec.flavor", lim::MAX_NAME, |v| {
            Call::Create(deployment("dep9", "b1", &v).into())
        }),
        f("deployment.spec.power_policy", lim::MAX_NAME, |v| {
            let mut d = deployment("dep9", "b1", "f1");
            d.spec.as_mut().unwrap().power_policy = v;
            Call::Create(d.into())
        }),
        f("deployment.spec.device_selector key", lim::MAX_LABEL_KEY, |v| {
            let mut d = deployment("dep9", "b1", "f1");
            d.spec.as_mut().unwrap().device_selector = [(v, "x".to_string())].into();
            Call::Create(d.into())
        }),
        f("topology.spec.elements[0].name", lim::MAX_NAME, |v| {
            Call::Create(topology(&v, "").into())
        }),
        f("topology.spec.elements[0].parent", lim::MAX_NAME, |v| {
            Call::Create(topology("feed", &v).into())
        }),
        f("powerpolicy.spec.nodes[0]", lim::MAX_NAME, |v| {
            Call::Create(policy(|s| s.nodes[0] = v).into())
        }),
        f("powerpolicy.spec.deployments[0]", lim::MAX_NAME, |v| {
            Call::Create(policy(|s| s.deployments = vec![v]).into())
        }),
        f("powerpolicy.spec.bundles[0].name", lim::MAX_NAME, |v| {
            Call::Create(
                policy(|s| {
                    s.bundles = vec![PowerBundle {
                        name: v,
                        limits: Vec::new(),
                    }]
                })
                .into(),
            )
        }),
        f("powerpolicy.spec.active_bundle", lim::MAX_NAME, |v| {
            Call::Create(policy(|s| s.active_bundle = v).into())
        }),
        f("node.metadata.name", lim::MAX_NAME, |v| {
            Call::Update(node(&v).into())
        }),
        f("devices[0].spec.serial", lim::MAX_SERIAL, |v| {
            let mut d = device("d9", "", "rshim5");
            d.spec.as_mut().unwrap().serial = v;
            Call::CreateNode(CreateNodeWithDevicesRequest {
                node: Some(node("n9")),
                devices: vec![d],
            })
        }),
        f("devices[0].spec.node", lim::MAX_NAME, |v| {
            Call::CreateNode(CreateNodeWithDevicesRequest {
                node: Some(node("n9")),
                devices: vec![device("d9", &v, "rshim5")],
            })
        }),
        f("name", lim::MAX_NAME, Call::Get),
        f("name", lim::MAX_NAME, Call::Delete),
        f("name", lim::MAX_NAME, Call::Watch),
        f("name", lim::MAX_NAME, Call::Approve),
        f("name", lim::MAX_NAME, Call::Reprovision),
        f("node", lim::MAX_NAME, |v| {
            Call::List(ListRequest {
                kind: Kind::Device as i32,
                node: v,
                ..Default::default()
            })
        }),
        f("label_selector key", lim::MAX_LABEL_KEY, |v| {
            Call::List(ListRequest {
                kind: Kind::Node as i32,
                label_selector: HashMap::from([(v, "x".to_string())]),
                ..Default::default()
            })
        }),
        f("deployment", lim::MAX_NAME, |v| {
            Call::SetImage(SetDeploymentImageRequest {
                deployment: v,
                bfb: "b1".into(),
                flavor: String::new(),
            })
        }),
        f("flavor", lim::MAX_NAME, |v| {
            Call::SetImage(SetDeploymentImageRequest {
                deployment: "dep1".into(),
                bfb: String::new(),
                flavor: v,
            })
        }),
        f("nodes[1]", lim::MAX_NAME, |v| {
            Call::PowerSummary(vec!["n1".into(), v])
        }),
    ]
}

async fn run(c: &mut Client, call: Call) -> tonic::Status {
    send(c, call)
        .await
        .expect_err("an over-long field must be refused")
}

async fn send(c: &mut Client, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::Create(r) => c.create(CreateRequest { resource: Some(r) }).await.map(drop),
        Call::Update(r) => c
            .update(UpdateRequest {
                resource: Some(r),
                ..Default::default()
            })
            .await
            .map(drop),
        Call::CreateNode(r) => c.create_node_with_devices(r).await.map(drop),
        Call::Get(name) => c
            .get(GetRequest {
                kind: Kind::Node as i32,
                name,
            })
            .await
            .map(drop),
        Call::Delete(name) => c
            .delete(DeleteRequest {
                kind: Kind::Node as i32,
                name,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::List(r) => c.list(r).await.map(drop),
        Call::Watch(name) => c
            .watch(WatchRequest {
                name,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::Approve(name) => c.approve_maintenance(NodeRef { name }).await.map(drop),
        Call::Reprovision(name) => c.reprovision(DpuRef { name }).await.map(drop),
        Call::SetImage(r) => c.set_deployment_image(r).await.map(drop),
        Call::PowerSummary(nodes) => c.get_power_summary(PowerSummaryRequest { nodes }).await.map(drop),
    }
}

/// A string of exactly `len` bytes from a mix of characters: valid ones,
/// multi-byte ones, and ones no field accepts.
fn string_of(len: usize, seed: u64) -> String {
    let alphabet = ['a', '0', '-', 'é', '€', ' ', '\n', '"', 'Z'];
    let mut s = String::with_capacity(len);
    let mut x = seed | 1;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = alphabet[(x % alphabet.len() as u64) as usize];
        if s.len() + c.len_utf8() > len {
            s.push('a');
        } else {
            s.push(c);
        }
    }
    s
}

#[test]
fn an_over_long_value_in_any_field_is_refused_by_its_length_and_changes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (srv, mut c) = rt.block_on(async {
        let srv = start(&dir.path().join("store.db")).await;
        let mut c = srv.client().await;
        seed(&mut c).await;
        (srv, c)
    });
    let before = rt.block_on(snapshot(&mut c));
    // The runner takes a `Fn`: the client is borrowed per case.
    let client = std::cell::RefCell::new(c);
    let fields = fields();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..fields.len(), 1usize..70_000, any::<u64>());
    runner
        .run(&strategy, |(i, extra, seed)| {
            let (field, max, build) = &fields[i];
            let value = string_of(max + extra, seed);
            let len = value.len();
            let status = rt.block_on(run(&mut client.borrow_mut(), build(value)));
            prop_assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{}: {}",
                field,
                status.message()
            );
            let m = status.message();
            prop_assert!(m.len() <= MESSAGE_BOUND, "{} bytes: {}", m.len(), m);
            prop_assert!(m.starts_with(field), "{}: {}", field, m);
            prop_assert!(m.contains("more than the"), "{}", m);
            // bf_cfg is bounded by the rendered file, which counts more than the value.
            if *field != "flavor.spec.bf_cfg" {
                prop_assert!(m.contains(&format!("{len} bytes")), "{}", m);
            }
            Ok(())
        })
        .unwrap();
    let mut c = client.into_inner();
    let after = rt.block_on(snapshot(&mut c));
    assert_eq!(before.1, after.1, "the store revision did not move");
    assert_eq!(before.0, after.0);
    rt.block_on(srv.stop());
}

#[test]
fn every_field_at_its_maximum_passes_the_length_check() {
    // The bound is the documented maximum, not one below it: a value of
    // exactly `max` bytes is never refused for its length.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let srv = start(&dir.path().join("store.db")).await;
        let mut c = srv.client().await;
        seed(&mut c).await;
        for (field, max, build) in fields() {
            let value = "a".repeat(if field == "flavor.spec.bf_cfg" {
                max - "BIG=''\n".len() - "UPDATE_DPU_OS='yes'\n".len()
            } else {
                max
            });
            let call = build(value);
            let message = match call {
                // Watch succeeds when the name is valid.
                Call::Watch(_) => continue,
                call => run_or_ok(&mut c, call).await,
            };
            assert!(
                !message.contains("bytes, more than the"),
                "{field} at {max} bytes was refused for its length: {message}"
            );
        }
        srv.stop().await;
    });
}

async fn run_or_ok(c: &mut Client, call: Call) -> String {
    let r = send(c, call).await;
    r.err().map(|s| s.message().to_string()).unwrap_or_default()
}

#[test]
fn a_flavor_over_the_agents_bf_cfg_limit_is_refused_at_the_api() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let srv = start(&dir.path().join("store.db")).await;
        let mut c = srv.client().await;
        let (_, rev) = snapshot(&mut c).await;
        // Many small values that add up: each is fine, the rendered file is not.
        let f = flavor_with(|s| {
            for i in 0..2000 {
                s.bf_cfg.insert(format!("K{i:04}"), "v".repeat(64));
            }
        });
        let e = c.create(CreateRequest { resource: Some(f) }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("flavor.spec.bf_cfg: renders to a bf.cfg of")
                && e.message().contains("131072-byte maximum the agent accepts"),
            "{}",
            e.message()
        );
        assert_eq!(snapshot(&mut c).await.1, rev);
        srv.stop().await;
    });
}
