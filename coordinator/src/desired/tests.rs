//! Composition reads the node's own rows only: the same work for a small
//! and a large fleet (counted, never timed), and the same state from the
//! view as from a transaction.
use hostplane_proto::v1::{
    Command, Dpu, DpuPhase, DpuSpec, DpuStatus, ObjectMeta, PrepareBfb, RebootMethod, Resource, command,
};

use super::*;
use crate::fsm::testing::{self, seed};
use crate::store::Store;

pub(crate) fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

fn dpu(name: &str, node: &str, phase: DpuPhase) -> Resource {
    Dpu {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(DpuSpec {
            device: name.into(),
            node: node.into(),
            flavor: "net".into(),
            ..Default::default()
        }),
        status: Some(DpuStatus {
            phase: phase as i32,
            ..Default::default()
        }),
    }
    .into()
}

/// `nodes` nodes, each with two Devices (rshim0, rshim1) and their Dpus: one
/// Ready (its host network is in the desired state), one Pending; the
/// Flavor "net" has a host network. Then one open command per node.
pub(crate) async fn fleet(nodes: usize) -> Store {
    let s = Store::in_memory().unwrap();
    let mut objects = vec![testing::flavor("net")];
    for i in 0..nodes {
        let n = node_name(i);
        objects.push(testing::node(&n, RebootMethod::Agent));
        for (k, phase) in [(0, DpuPhase::Ready), (1, DpuPhase::Pending)] {
            let d = format!("{n}-d{k}");
            objects.push(testing::device(&d, &n, &format!("rshim{k}"), &[]));
            objects.push(dpu(&d, &n, phase));
        }
    }
    seed(&s, objects).await;
    s.write(move |t| {
        for i in 0..nodes {
            let n = node_name(i);
            let c = Command {
                id: format!("{n}-c"),
                dpu: format!("{n}-d1"),
                rshim: "rshim1".into(),
                action: Some(command::Action::PrepareBfb(PrepareBfb::default())),
            };
            t.insert_command(&n, &c)?;
        }
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn composing_one_nodes_state_costs_the_same_for_100_and_2000_nodes() {
    let mut costs = Vec::new();
    for nodes in [100, 2_000] {
        let s = fleet(nodes).await;
        let node = node_name(42);

        // From the view: no store transaction, no SQL row.
        let before = s.stats();
        let d = compose(&*s.view(), &node, None).unwrap();
        assert_eq!(s.stats(), before);
        assert_eq!(d.commands.len(), 1);
        assert_eq!(d.networks.len(), 1);
        assert_eq!(d.networks[0].dpu, format!("{node}-d0"));
        assert_eq!(d.version, s.view().desired_version(&node));

        // From a transaction: the same state, and the node's rows only.
        let before = s.stats();
        let n2 = node.clone();
        let in_txn = s.read(move |t| compose(&*t, &n2, None)).await.unwrap();
        let after = s.stats();
        assert_eq!(in_txn, d);
        costs.push((
            after.transactions - before.transactions,
            after.rows_read - before.rows_read,
        ));
    }
    assert_eq!(
        costs[0], costs[1],
        "(transactions, rows read) at 100 and 2,000 nodes"
    );
}

#[tokio::test]
async fn the_view_and_a_transaction_compose_the_same_state_for_every_node() {
    let s = fleet(20).await;
    // Move some Dpus along, delete one, finish a command: each node's state
    // from the view equals the one a transaction reads.
    s.write(|t| {
        touch(t, &node_name(3), Why::Network)?;
        t.delete(hostplane_proto::v1::Kind::Dpu, &format!("{}-d0", node_name(4)))?;
        t.finish_command(
            &format!("{}-c", node_name(5)),
            &testing::result(hostplane_proto::v1::CommandOutcome::Succeeded, "done"),
        )?;
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    for i in 0..21 {
        let node = node_name(i);
        let from_view = compose(&*s.view(), &node, None).unwrap();
        let n2 = node.clone();
        let from_txn = s.read(move |t| compose(&*t, &n2, None)).await.unwrap();
        assert_eq!(from_view, from_txn, "{node}");
    }
    let n4 = compose(&*s.view(), &node_name(4), None).unwrap();
    assert!(n4.networks.is_empty());
    assert!(
        compose(&*s.view(), &node_name(5), None)
            .unwrap()
            .commands
            .is_empty()
    );
    // A node that is not there has an empty state at version 0.
    assert_eq!(compose(&*s.view(), &node_name(20), None).unwrap().version, 0);
}
