//! The engine's `power_caps` rows (docs/ha.md §5), on SQLite: what the
//! other replicas' caps feeds read.
use std::collections::BTreeMap;

use hostplane_proto::v1::{
    Kind, NodeSpec, ObjectMeta, PowerPolicy, PowerPolicySpec, Resource, Topology, TopologyElement,
    TopologyLevel, TopologySpec,
};

use super::{PowerConfig, PowerEngine, PowerHub};
use crate::store::{Store, StoreError};

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn node(name: &str) -> Resource {
    hostplane_proto::v1::Node {
        metadata: meta(name),
        spec: Some(NodeSpec { reboot_method: 1 }),
        status: None,
    }
    .into()
}

async fn rows(store: &Store) -> BTreeMap<String, (Option<f64>, u64)> {
    store
        .read(|t| t.power_caps_since(0))
        .await
        .unwrap()
        .into_iter()
        .map(|(n, c, rev)| (n, (c.map(|c| c.node_watts), rev)))
        .collect()
}

async fn version(store: &Store, node: &str) -> u64 {
    let node = node.to_string();
    store.read(move |t| t.desired_version(&node)).await.unwrap()
}

#[tokio::test]
async fn caps_are_stored_with_the_version_that_announces_them() {
    let store = Store::in_memory().unwrap();
    let el = |name: &str, level: TopologyLevel, parent: &str, budget: f64| TopologyElement {
        name: name.into(),
        level: level as i32,
        parent: parent.into(),
        budget_watts: budget,
        min_watts: 0.0,
    };
    store
        .write(move |t| {
            for n in ["n1", "n2", "n3"] {
                t.insert(node(n))?;
            }
            t.insert(
                Topology {
                    metadata: meta("hall"),
                    spec: Some(TopologySpec {
                        elements: vec![
                            el("feed", TopologyLevel::Feed, "", 5_000.0),
                            el("n1", TopologyLevel::Node, "feed", 1_000.0),
                            el("n2", TopologyLevel::Node, "feed", 900.0),
                        ],
                    }),
                    status: None,
                }
                .into(),
            )?;
            t.insert(
                PowerPolicy {
                    metadata: meta("p"),
                    spec: Some(PowerPolicySpec {
                        nodes: vec!["n1".into(), "n2".into()],
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let hub = PowerHub::new();
    let mut engine = PowerEngine::new(store.clone(), hub.clone(), PowerConfig::default());
    engine.recompute().await.unwrap();
    let r = rows(&store).await;
    assert_eq!(
        r,
        BTreeMap::from([
            ("n1".into(), (Some(1_000.0), version(&store, "n1").await)),
            ("n2".into(), (Some(900.0), version(&store, "n2").await)),
        ]),
        "n3 has no caps and never had: no row"
    );
    assert_eq!(r["n1"].0, hub.caps("n1").map(|c| c.node_watts));

    // n2 leaves the topology and the policy: uncapped, its row says so with the new version.
    store
        .write(|t| {
            let Some(hostplane_proto::v1::resource::Kind::Topology(mut x)) =
                t.get(Kind::Topology, "hall")?.and_then(|r| r.kind)
            else {
                panic!("hall")
            };
            x.spec.as_mut().unwrap().elements.retain(|e| e.name != "n2");
            t.update(x.into())?;
            let Some(hostplane_proto::v1::resource::Kind::PowerPolicy(mut p)) =
                t.get(Kind::PowerPolicy, "p")?.and_then(|r| r.kind)
            else {
                panic!("p")
            };
            p.spec.as_mut().unwrap().nodes.retain(|n| n != "n2");
            t.update(p.into())?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let before = rows(&store).await["n1"];
    engine.recompute().await.unwrap();
    let r = rows(&store).await;
    assert_eq!(r["n2"], (None, version(&store, "n2").await));
    assert!(r["n2"].1 > before.1);
    assert_eq!(r["n1"], before, "n1's caps did not change: its row neither");

    // n1 deleted: its row goes.
    store.write(|t| t.delete(Kind::Node, "n1")).await.unwrap();
    engine.recompute().await.unwrap();
    assert!(!rows(&store).await.contains_key("n1"));
}
