//! Fixtures and a fake agent for tests and benchmarks of the state machine.
//! The fake agent answers commands straight through the store (no stream),
//! the way the stream server records results.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hostplane_proto::v1::{
    Bfb, BfbSpec, Command, CommandOutcome, CommandResult, Deployment, DeploymentSpec, Device, DeviceSpec,
    Dpu, DpuPhase, Flavor, FlavorSpec, HostNetwork, Kind, Node, NodeEffect, NodeSpec, NodeStatus, ObjectMeta,
    RebootMethod, Resource, command, resource,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{Store, StoreError};

fn meta(name: &str, labels: &[(&str, &str)]) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// A node whose agent is connected (reachable, boot id "boot-1").
pub fn node(name: &str, reboot: RebootMethod) -> Resource {
    Node {
        metadata: meta(name, &[]),
        spec: Some(NodeSpec {
            reboot_method: reboot as i32,
        }),
        status: Some(NodeStatus {
            reachable: true,
            boot_id: "boot-1".into(),
            ..Default::default()
        }),
    }
    .into()
}

pub fn device(name: &str, node: &str, rshim: &str, labels: &[(&str, &str)]) -> Resource {
    Device {
        metadata: meta(name, labels),
        spec: Some(DeviceSpec {
            node: node.into(),
            rshim: rshim.into(),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

pub fn bfb(name: &str) -> Resource {
    Bfb {
        metadata: meta(name, &[]),
        spec: Some(BfbSpec {
            url: format!("http://images.invalid/{name}.bfb"),
            sha256: "ab".repeat(32),
            version: name.into(),
            size_bytes: 1024,
        }),
    }
    .into()
}

pub fn flavor(name: &str) -> Resource {
    Flavor {
        metadata: meta(name, &[]),
        spec: Some(FlavorSpec {
            bf_cfg: [("ENABLE_SFC_HBN".to_string(), "no".to_string())].into(),
            nic_firmware: [("NUM_OF_VFS".to_string(), "8".to_string())].into(),
            host_network: Some(HostNetwork {
                num_vfs: 8,
                mtu: 9000,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .into()
}

pub fn deployment(
    name: &str,
    bfb: &str,
    flavor: &str,
    selector: &[(&str, &str)],
    max_unavailable: u32,
    node_effect: NodeEffect,
) -> Resource {
    Deployment {
        metadata: meta(name, &[]),
        spec: Some(DeploymentSpec {
            device_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bfb: bfb.into(),
            flavor: flavor.into(),
            max_unavailable,
            node_effect: node_effect as i32,
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// One Dpu's walk: node n1 (`reboot`), device d1 on its rshim0, bfb b1,
/// flavor f1, and deployment `dep` of `bfb` and f1 over every device (one
/// unavailable at a time, `effect` on the node). In seeding order.
pub fn one_dpu(reboot: RebootMethod, bfb: &str, effect: NodeEffect) -> Vec<Resource> {
    vec![
        node("n1", reboot),
        device("d1", "n1", "rshim0", &[]),
        self::bfb("b1"),
        flavor("f1"),
        deployment("dep", bfb, "f1", &[], 1, effect),
    ]
}

/// Insert the objects in order.
pub async fn seed(store: &Store, objects: Vec<Resource>) {
    store
        .write(move |t| {
            for o in objects {
                t.insert(o)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("seeding the store");
}

pub async fn get_dpu(store: &Store, name: &str) -> Option<Dpu> {
    let name = name.to_string();
    match store
        .read(move |t| t.get(Kind::Dpu, &name))
        .await
        .expect("reading a dpu")
    {
        Some(Resource {
            kind: Some(resource::Kind::Dpu(d)),
        }) => Some(d),
        _ => None,
    }
}

pub async fn get_node(store: &Store, name: &str) -> Option<Node> {
    let name = name.to_string();
    match store
        .read(move |t| t.get(Kind::Node, &name))
        .await
        .expect("reading a node")
    {
        Some(Resource {
            kind: Some(resource::Kind::Node(n)),
        }) => Some(n),
        _ => None,
    }
}

/// Change a stored object in one transaction (what the admin API would do).
pub async fn modify(store: &Store, kind: Kind, name: &str, f: impl FnOnce(&mut Resource) + Send + 'static) {
    let name = name.to_string();
    store
        .write(move |t| {
            let mut r = t
                .get(kind, &name)?
                .unwrap_or_else(|| panic!("{} {name} exists", kind.noun()));
            f(&mut r);
            t.update(r)
        })
        .await
        .expect("modifying an object");
}

pub fn phase(d: &Dpu) -> DpuPhase {
    DpuPhase::try_from(d.status.as_ref().map(|s| s.phase).unwrap_or(0)).unwrap_or(DpuPhase::Unspecified)
}

/// Poll until the Dpu satisfies `pred`; panics with its last state after `within`.
pub async fn wait_dpu(store: &Store, name: &str, within: Duration, pred: impl Fn(&Dpu) -> bool) -> Dpu {
    let until = tokio::time::Instant::now() + within;
    loop {
        let d = get_dpu(store, name).await;
        if let Some(d) = &d
            && pred(d)
        {
            return d.clone();
        }
        if tokio::time::Instant::now() >= until {
            panic!("dpu {name} did not reach the expected state within {within:?}; last: {d:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_phase(store: &Store, name: &str, p: DpuPhase) -> Dpu {
    wait_dpu(store, name, Duration::from_secs(10), |d| phase(d) == p).await
}

pub fn result(outcome: CommandOutcome, message: &str) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message: message.into(),
        finished_at_ms: 0,
        power_cycle_required: false,
    }
}

/// How the fake agent answers a command (None: never answer).
pub type Answer = Arc<dyn Fn(&Command) -> Option<CommandResult> + Send + Sync>;

/// Every command succeeds.
pub fn succeed_all() -> Answer {
    Arc::new(|c: &Command| {
        Some(result(
            CommandOutcome::Succeeded,
            &format!("{} done", action_name(c)),
        ))
    })
}

pub fn action_name(c: &Command) -> &'static str {
    match &c.action {
        Some(command::Action::InitializeInterface(_)) => "initialize_interface",
        Some(command::Action::ConfigFwParameters(_)) => "config_fw_parameters",
        Some(command::Action::PrepareBfb(_)) => "prepare_bfb",
        Some(command::Action::FlashBfb(_)) => "flash_bfb",
        Some(command::Action::RebootHost(_)) => "reboot_host",
        Some(command::Action::DpuClusterConfig(_)) => "dpu_cluster_config",
        None => "none",
    }
}

/// A fake agent for every node: reads each node's open commands whenever its
/// desired state changes and records `answer`'s result. A successful
/// `reboot_host` also gives the node a new boot id, as a real reboot would.
pub struct FakeAgent {
    /// Every command seen, in order.
    pub seen: Arc<std::sync::Mutex<Vec<Command>>>,
    handle: JoinHandle<()>,
}

impl FakeAgent {
    pub fn spawn(store: Store, answer: Answer, shutdown: CancellationToken) -> FakeAgent {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let span = tracing::info_span!("fake_agent");
        let handle = tokio::spawn(
            async move {
                let mut rx = store.subscribe_desired();
                let mut answered: HashSet<String> = HashSet::new();
                let mut boots: HashMap<String, u32> = HashMap::new();
                // Commands issued before the agent started are answered too.
                let all = store.read(|t| t.list(Kind::Node)).await.unwrap_or_default();
                let mut nodes: Vec<String> = all.iter().map(|r| r.name().to_string()).collect();
                loop {
                    for n in std::mem::take(&mut nodes) {
                        let n2 = n.clone();
                        let Ok(open) = store.read(move |t| t.open_commands(&n2)).await else {
                            continue;
                        };
                        for c in open {
                            if !answered.insert(c.id.clone()) {
                                continue;
                            }
                            seen2.lock().unwrap().push(c.clone());
                            let Some(res) = answer(&c) else { continue };
                            let reboot = matches!(c.action, Some(command::Action::RebootHost(_)))
                                && res.outcome == CommandOutcome::Succeeded as i32;
                            let boot = boots.entry(n.clone()).or_insert(1);
                            *boot += 1;
                            let boot_id = format!("boot-{boot}");
                            let (id, node) = (c.id.clone(), n.clone());
                            let _ = store
                                .write(move |t| {
                                    t.finish_command(&id, &res)?;
                                    if reboot
                                        && let Some(Resource {
                                            kind: Some(resource::Kind::Node(mut nd)),
                                        }) = t.get(Kind::Node, &node)?
                                    {
                                        nd.status.get_or_insert_default().boot_id = boot_id;
                                        t.update(nd.into())?;
                                    }
                                    Ok::<_, StoreError>(())
                                })
                                .await;
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        d = rx.recv() => match d {
                            Ok(d) => nodes.push(d.node),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let all = store.read(|t| t.list(Kind::Node)).await.unwrap_or_default();
                                nodes.extend(all.iter().map(|r| r.name().to_string()));
                            }
                            Err(_) => return,
                        },
                    }
                    while let Ok(d) = rx.try_recv() {
                        if !nodes.contains(&d.node) {
                            nodes.push(d.node);
                        }
                    }
                }
            }
            .instrument(span),
        );
        FakeAgent { seen, handle }
    }

    pub fn abort(&self) {
        self.handle.abort();
    }
}
