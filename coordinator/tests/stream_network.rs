//! Host networks through the coordinator: the state machine and the agent
//! stream together (in-process gRPC on 127.0.0.1:0), with a fake agent that
//! answers every command, reports every network it is given, and ACKs.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::fsm::testing::{self, modify, phase, seed, wait_dpu, wait_phase};
use hostplane_coordinator::fsm::{FsmConfig, Reconciler};
use hostplane_coordinator::store::{Store, now_ms};
use hostplane_coordinator::stream::{AgentStream, COND_HOST_NETWORK};
use hostplane_proto::v1::{
    Bridge, Condition, CoordinatorMessage, DesiredState, Dpu, DpuPhase, Flavor, FlavorSpec, HostNetwork,
    Kind, NetworkObjectStatus, NetworkReport, NodeEffect, ObjectMeta, RebootMethod, agent_message, command,
    coordinator_message, resource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod stream_common;
use stream_common::{Agent, ack, hello, msg, open, quick_flush, serve, succeeded};

const PATIENCE: Duration = Duration::from_secs(15);

fn flavor_with_bridge(name: &str) -> hostplane_proto::v1::Resource {
    Flavor {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(FlavorSpec {
            host_network: Some(HostNetwork {
                mtu: 9000,
                bridges: vec![Bridge {
                    name: "br-dpu".into(),
                    ports: vec!["veth1".into()],
                    addresses: vec!["10.0.0.1/24".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .into()
}

struct Env {
    store: Store,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Node n1 (external reboot) with device d1 (PCI 0000:04:00.0), a flavor with
/// a bridge, deployment `dep` holding for maintenance approval; the
/// reconciler and the stream server running.
async fn env() -> Env {
    let store = Store::in_memory().unwrap();
    let mut node = testing::node("n1", RebootMethod::External);
    if let Some(resource::Kind::Node(n)) = &mut node.kind {
        n.status = None; // no agent yet
    }
    let mut device = testing::device("d1", "n1", "rshim0", &[]);
    if let Some(resource::Kind::Device(d)) = &mut device.kind {
        d.spec.as_mut().unwrap().pci_address = "0000:04:00.0".into();
    }
    seed(
        &store,
        vec![
            node,
            device,
            testing::bfb("b1"),
            flavor_with_bridge("f1"),
            testing::deployment("dep", "b1", "f1", &[], 1, NodeEffect::Hold),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let fsm = FsmConfig {
        resync: Duration::from_millis(300),
        batch_delay: Duration::from_millis(2),
        ..Default::default()
    };
    tokio::spawn(Reconciler::new(store.clone(), fsm).run(stop.clone()));
    let addr = serve(AgentStream::new(store.clone(), quick_flush()), &stop).await;
    Env { store, addr, stop }
}

fn report(dpu: &str, applied: bool, drift_repairs: u64) -> NetworkReport {
    NetworkReport {
        dpu: dpu.into(),
        applied,
        objects: vec![NetworkObjectStatus {
            object: "bridge br-dpu".into(),
            applied,
            error: if applied {
                String::new()
            } else {
                "create bridge br-dpu: Operation not permitted".into()
            },
        }],
        changes: 1,
        drift_repairs,
        last_drift: if drift_repairs > 0 {
            "bridge br-dpu deleted externally; recreated".into()
        } else {
            String::new()
        },
        last_drift_at_ms: 0,
    }
}

/// A fake agent: answers each new command SUCCEEDED, reports every network of
/// each desired state (applied) before its ACK, and hands every desired state
/// to the test. `extra` messages from the test are sent as they come.
struct FakeAgent {
    desired: mpsc::UnboundedReceiver<DesiredState>,
    extra: mpsc::UnboundedSender<agent_message::Msg>,
}

impl FakeAgent {
    async fn connect(addr: SocketAddr, stop: CancellationToken) -> FakeAgent {
        let Agent { tx, rx: mut inbound } = open(addr, hello("n1", "network-test", "boot-1")).await.unwrap();
        let (desired_tx, desired) = mpsc::unbounded_channel();
        let (extra, mut extra_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut done = HashSet::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(m) = extra_rx.recv() => {
                        if tx.send(msg(m)).await.is_err() {
                            return;
                        }
                    }
                    m = inbound.message() => {
                        let Ok(Some(CoordinatorMessage { msg: Some(coordinator_message::Msg::Desired(d)) })) = m
                        else {
                            return;
                        };
                        for n in &d.networks {
                            let r = report(&n.dpu, true, 0);
                            let _ = tx.send(msg(agent_message::Msg::NetworkReport(r))).await;
                        }
                        for c in &d.commands {
                            if done.insert(c.id.clone()) {
                                let _ = tx.send(msg(succeeded(&c.id))).await;
                            }
                        }
                        let _ = tx.send(msg(ack(d.version))).await;
                        if desired_tx.send(d).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        FakeAgent { desired, extra }
    }

    /// Desired states until one satisfies `pred`; returns them all (the last one matches).
    async fn until(&mut self, what: &str, pred: impl Fn(&DesiredState) -> bool) -> Vec<DesiredState> {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(PATIENCE, async {
            while let Some(d) = self.desired.recv().await {
                let done = pred(&d);
                seen.push(d);
                if done {
                    return;
                }
            }
        })
        .await;
        if r.is_err() || !seen.last().is_some_and(&pred) {
            panic!("no desired state with {what}; got {seen:#?}");
        }
        seen
    }

    fn send(&self, m: agent_message::Msg) {
        self.extra.send(m).unwrap();
    }
}

fn host_network_condition(d: &Dpu) -> Option<Condition> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == COND_HOST_NETWORK)
        .cloned()
}

fn has_initialize_interface(d: &DesiredState) -> bool {
    d.commands
        .iter()
        .any(|c| matches!(c.action, Some(command::Action::InitializeInterface(_))))
}

async fn approve(store: &Store) {
    modify(store, Kind::Node, "n1", |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            let st = n.status.get_or_insert_default();
            st.maintenance_approved = true;
            st.maintenance_approved_at_ms = now_ms();
        }
    })
    .await;
}

#[tokio::test]
async fn networks_follow_the_dpu_through_its_life_and_reports_become_conditions() {
    let e = env().await;
    let mut agent = FakeAgent::connect(e.addr, e.stop.clone()).await;

    // Held in NodeEffect: no network yet.
    wait_phase(&e.store, "d1", DpuPhase::NodeEffect).await;
    let first = agent.until("a first state", |_| true).await;
    assert!(first[0].networks.is_empty(), "{first:#?}");

    approve(&e.store).await;
    // The state that issues InitializeInterface carries the Dpu's network with it.
    let seen = agent.until("InitializeInterface", has_initialize_interface).await;
    assert!(
        seen[..seen.len() - 1].iter().all(|d| d.networks.is_empty()),
        "{seen:#?}"
    );
    let init = seen.last().unwrap();
    assert_eq!(init.networks.len(), 1, "{init:#?}");
    let n = &init.networks[0];
    assert_eq!(
        (n.dpu.as_str(), n.pf_pci_address.as_str()),
        ("d1", "0000:04:00.0")
    );
    let net = n.network.as_ref().unwrap();
    assert_eq!(net.bridges[0].name, "br-dpu");
    assert_eq!(net.mtu, 9000);

    // The fake agent's report becomes the condition.
    let d = wait_dpu(&e.store, "d1", PATIENCE, |d| {
        host_network_condition(d).is_some_and(|c| c.status == "True")
    })
    .await;
    let c = host_network_condition(&d).unwrap();
    assert_eq!(c.reason, "Applied");
    assert_eq!(
        c.message,
        "1 host network object(s) applied on node n1: bridge br-dpu"
    );

    // Every later state keeps the network while the Dpu walks on.
    let d = wait_phase(&e.store, "d1", DpuPhase::Rebooting).await;
    let entered = d.status.as_ref().unwrap().phase_entered_at_ms;
    modify(&e.store, Kind::Node, "n1", move |r| {
        if let Some(resource::Kind::Node(n)) = &mut r.kind {
            n.status.get_or_insert_default().rebooted_at_ms = entered.max(now_ms()) + 1;
        }
    })
    .await;
    wait_phase(&e.store, "d1", DpuPhase::Ready).await;
    let seen = agent.until("no open command", |d| d.commands.is_empty()).await;
    assert!(seen.iter().all(|d| d.networks.len() == 1), "{seen:#?}");

    // The Device's PCI address changes under the listed network: a new version carries it.
    modify(&e.store, Kind::Device, "d1", |r| {
        if let Some(resource::Kind::Device(d)) = &mut r.kind {
            d.spec.as_mut().unwrap().pci_address = "0000:05:00.0".into();
        }
    })
    .await;
    let seen = agent
        .until("the new PF address", |d| {
            d.networks
                .first()
                .is_some_and(|n| n.pf_pci_address == "0000:05:00.0")
        })
        .await;
    let ready_version = seen.last().unwrap().version;

    // A failure, then a drift repair, reported by the agent.
    agent.send(agent_message::Msg::NetworkReport(report("d1", false, 0)));
    let d = wait_dpu(&e.store, "d1", PATIENCE, |d| {
        host_network_condition(d).is_some_and(|c| c.status == "False")
    })
    .await;
    let c = host_network_condition(&d).unwrap();
    assert_eq!(c.reason, "Failed");
    assert!(
        c.message
            .contains("bridge br-dpu: create bridge br-dpu: Operation not permitted"),
        "{}",
        c.message
    );
    agent.send(agent_message::Msg::NetworkReport(report("d1", true, 2)));
    let d = wait_dpu(&e.store, "d1", PATIENCE, |d| {
        host_network_condition(d).is_some_and(|c| c.reason == "DriftRepaired")
    })
    .await;
    let c = host_network_condition(&d).unwrap();
    assert_eq!(c.status, "True");
    assert!(
        c.message.ends_with(
            "; 2 drift repair(s) since the agent started; last: bridge br-dpu deleted externally; recreated"
        ),
        "{}",
        c.message
    );

    // Reports for Dpus that are not this node's are ignored.
    agent.send(agent_message::Msg::NetworkReport(report("ghost", false, 0)));
    assert!(testing::get_dpu(&e.store, "ghost").await.is_none());

    // Reprovisioning a Ready Dpu (no command is open) still gives a new
    // version, and its network leaves the desired state.
    let asked = now_ms();
    modify(&e.store, Kind::Dpu, "d1", move |r| {
        if let Some(resource::Kind::Dpu(d)) = &mut r.kind {
            d.metadata.get_or_insert_default().deletion_requested_at_ms = asked;
        }
    })
    .await;
    let seen = agent.until("no network", |d| d.networks.is_empty()).await;
    assert!(seen.last().unwrap().version > ready_version);
    assert!(seen.last().unwrap().commands.is_empty());

    // The Dpu comes back and waits for approval again, without a network.
    let back = wait_dpu(&e.store, "d1", PATIENCE, |d| {
        d.metadata.as_ref().is_some_and(|m| m.created_at_ms >= asked) && phase(d) == DpuPhase::NodeEffect
    })
    .await;
    assert!(
        host_network_condition(&back).is_none(),
        "a new Dpu starts without the old one's condition"
    );
}
