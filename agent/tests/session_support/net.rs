//! A fake host network manager for the session tests.
use std::sync::{Arc, Mutex};

use hostplane_agent::exec::BoxFuture;
use hostplane_agent::net::NetError;
use hostplane_agent::session::HostNetworks;
use hostplane_proto::v1::{Bridge, DpuNetwork, HostNetwork, NetworkObjectStatus, NetworkReport};
use tokio::sync::{Notify, broadcast};

use super::PATIENCE;

/// The network of `dpu`: one bridge named `bridge`.
pub fn dpu_net(dpu: &str, bridge: &str) -> DpuNetwork {
    DpuNetwork {
        dpu: dpu.into(),
        pf_pci_address: "0000:04:00.0".into(),
        network: Some(HostNetwork {
            bridges: vec![Bridge {
                name: bridge.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A network manager the test scripts: it refuses (validate) bridges named
/// `bad-bridge`, fails to create bridges named `br-fail`, applies the rest,
/// records every `set_desired`, can be held inside `set_desired`, and
/// publishes drift reports on demand.
pub struct FakeNet {
    calls: Mutex<Vec<Vec<DpuNetwork>>>,
    gate: Mutex<Option<Arc<Notify>>>,
    called: Notify,
    drift: broadcast::Sender<NetworkReport>,
}

impl FakeNet {
    pub fn new() -> Arc<FakeNet> {
        Arc::new(FakeNet {
            calls: Mutex::default(),
            gate: Mutex::default(),
            called: Notify::new(),
            drift: broadcast::channel(16).0,
        })
    }

    /// Every `set_desired`, in order.
    pub fn calls(&self) -> Vec<Vec<DpuNetwork>> {
        self.calls.lock().unwrap().clone()
    }

    /// Wait until `set_desired` was called at least `n` times.
    pub async fn wait_calls(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = self.called.notified();
                if self.calls.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("set_desired was not called in time");
    }

    /// Hold the next `set_desired` until the returned gate is notified.
    pub fn hold(&self) -> Arc<Notify> {
        let g = Arc::new(Notify::new());
        *self.gate.lock().unwrap() = Some(g.clone());
        g
    }

    /// Publish a drift-repair report.
    pub fn drift(&self, r: NetworkReport) {
        self.drift.send(r).expect("the agent subscribed");
    }

    pub fn report_of(n: &DpuNetwork) -> NetworkReport {
        let objects: Vec<NetworkObjectStatus> = n
            .network
            .iter()
            .flat_map(|h| h.bridges.iter())
            .map(|b| NetworkObjectStatus {
                object: format!("bridge {}", b.name),
                applied: b.name != "br-fail",
                error: if b.name == "br-fail" {
                    "create bridge br-fail: Operation not permitted (os error 1)".into()
                } else {
                    String::new()
                },
            })
            .collect();
        NetworkReport {
            dpu: n.dpu.clone(),
            applied: objects.iter().all(|o| o.applied),
            objects,
            changes: 1,
            ..Default::default()
        }
    }
}

impl HostNetworks for FakeNet {
    fn validate(&self, nets: &[DpuNetwork]) -> Result<(), NetError> {
        for n in nets {
            for (i, b) in n.network.iter().flat_map(|h| h.bridges.iter()).enumerate() {
                if b.name == "bad-bridge" {
                    return Err(NetError::Invalid {
                        dpu: n.dpu.clone(),
                        field: format!("bridges[{i}].name"),
                        reason: "refused by the fake".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn set_desired(&self, nets: Vec<DpuNetwork>) -> BoxFuture<'_, Result<Vec<NetworkReport>, NetError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(nets.clone());
            self.called.notify_waiters();
            let gate = self.gate.lock().unwrap().take();
            if let Some(g) = gate {
                g.notified().await;
            }
            Ok(nets.iter().map(FakeNet::report_of).collect())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<NetworkReport> {
        self.drift.subscribe()
    }
}
