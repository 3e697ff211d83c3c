//! Host networks in the session. The session hands every applied desired
//! state's `networks` to the network manager ([`crate::net`]) before it ACKs,
//! forwards the manager's reports (after each apply and each drift repair)
//! to the coordinator, and keeps the latest report per Dpu: re-sent after a
//! reconnect, and read by the `initialize_interface` command.
//!
//! Partial failures are not NACKs: the state is ACKed (it was applied as far
//! as the host allows), the failure is in the reports, in the Dpu's
//! `HostNetworkApplied` condition and in the InitializeInterface result, and
//! the next desired state or drift repair continues from there. Only a state
//! the manager refuses before touching anything (`validate`) is NACKed.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hostplane_proto::v1::{
    CommandOutcome, CommandResult, DpuNetwork, HostNetwork, NetworkObjectStatus, NetworkReport,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::exec::{BoxFuture, result};
use crate::net::{self, NetError, NetHandle};

/// At most this many objects are named in a command result.
const NAMED_OBJECTS: usize = 8;

/// The network manager as the session uses it: [`NetHandle`] in production,
/// a fake in tests.
pub trait HostNetworks: Send + Sync + 'static {
    /// Check a desired set without touching the host.
    fn validate(&self, nets: &[DpuNetwork]) -> Result<(), NetError>;
    /// Make the host match `nets` (every Dpu's network on this host); one report per Dpu.
    fn set_desired(&self, nets: Vec<DpuNetwork>) -> BoxFuture<'_, Result<Vec<NetworkReport>, NetError>>;
    /// Reports published after drift repairs.
    fn subscribe(&self) -> broadcast::Receiver<NetworkReport>;
}

impl HostNetworks for NetHandle {
    fn validate(&self, nets: &[DpuNetwork]) -> Result<(), NetError> {
        net::validate(nets)
    }

    fn set_desired(&self, nets: Vec<DpuNetwork>) -> BoxFuture<'_, Result<Vec<NetworkReport>, NetError>> {
        Box::pin(NetHandle::set_desired(self, nets))
    }

    fn subscribe(&self) -> broadcast::Receiver<NetworkReport> {
        NetHandle::subscribe(self)
    }
}

/// True when the host network has nothing to apply (no VFs, bridges, SR-IOV or routes).
pub fn is_empty(h: &HostNetwork) -> bool {
    h.num_vfs == 0 && h.bridges.is_empty() && h.sriov.is_empty() && h.routes.is_empty()
}

/// The network manager plus the latest report of each Dpu whose network is
/// desired now. Cheap to clone; shared by the session owner and the executor.
#[derive(Clone)]
pub struct NetSync {
    net: Arc<dyn HostNetworks>,
    latest: Arc<watch::Sender<BTreeMap<String, NetworkReport>>>,
}

/// Why [`NetSync::report_for`] has no report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReport {
    Cancelled,
    /// No applied desired state listed the Dpu's network within the wait.
    NotListed(Duration),
}

impl NetSync {
    pub fn new(net: Arc<dyn HostNetworks>) -> NetSync {
        NetSync {
            net,
            latest: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }

    pub fn validate(&self, nets: &[DpuNetwork]) -> Result<(), NetError> {
        self.net.validate(nets)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NetworkReport> {
        self.net.subscribe()
    }

    /// Apply the whole desired set. Never fails: when the manager cannot
    /// apply at all, every listed Dpu gets a failed report saying why.
    pub async fn apply(&self, nets: Vec<DpuNetwork>) -> Vec<NetworkReport> {
        let dpus: Vec<String> = nets.iter().map(|n| n.dpu.clone()).collect();
        let reports = match self.net.set_desired(nets).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, dpus = dpus.len(), "cannot apply the host network");
                dpus.iter().map(|d| failed_report(d, &e)).collect()
            }
        };
        self.latest.send_replace(
            reports
                .iter()
                .filter(|r| dpus.contains(&r.dpu))
                .map(|r| (r.dpu.clone(), r.clone()))
                .collect(),
        );
        reports
    }

    /// Take in a drift-repair report. False (and nothing kept) when the
    /// Dpu's network is no longer desired: the report is stale.
    pub fn note(&self, r: &NetworkReport) -> bool {
        self.latest.send_if_modified(|m| match m.get_mut(&r.dpu) {
            Some(slot) => {
                *slot = r.clone();
                true
            }
            None => false,
        })
    }

    /// The latest report of every Dpu whose network is desired.
    pub fn latest(&self) -> Vec<NetworkReport> {
        self.latest.borrow().values().cloned().collect()
    }

    /// The latest report of `dpu`, waiting up to `within` for a desired
    /// state that lists its network to be applied.
    pub async fn report_for(
        &self,
        dpu: &str,
        within: Duration,
        cancel: &CancellationToken,
    ) -> Result<NetworkReport, NoReport> {
        let mut rx = self.latest.subscribe();
        let wait = rx.wait_for(|m| m.contains_key(dpu));
        tokio::select! {
            _ = cancel.cancelled() => Err(NoReport::Cancelled),
            r = tokio::time::timeout(within, wait) => match r {
                Ok(Ok(m)) => Ok(m[dpu].clone()),
                // The sender lives as long as `self`.
                Ok(Err(_)) | Err(_) => Err(NoReport::NotListed(within)),
            },
        }
    }
}

/// A report for a Dpu whose network could not be applied at all.
pub fn failed_report(dpu: &str, e: &NetError) -> NetworkReport {
    NetworkReport {
        dpu: dpu.to_string(),
        applied: false,
        objects: vec![NetworkObjectStatus {
            object: "host network".into(),
            applied: false,
            error: e.to_string(),
        }],
        ..Default::default()
    }
}

/// The InitializeInterface result for a Dpu's report: SUCCEEDED when every
/// object is applied, FAILED naming the objects that are not and why.
pub fn initialize_result(r: &NetworkReport) -> CommandResult {
    let total = r.objects.len();
    let failed: Vec<String> = r
        .objects
        .iter()
        .filter(|o| !o.applied)
        .map(|o| format!("{}: {}", o.object, o.error))
        .collect();
    if r.applied && failed.is_empty() {
        let names: Vec<String> = r.objects.iter().map(|o| o.object.clone()).collect();
        return result(
            CommandOutcome::Succeeded,
            format!(
                "applied {total} host network object(s) on the host ({} netlink change(s)): {}",
                r.changes,
                named(&names)
            ),
        );
    }
    result(
        CommandOutcome::Failed,
        format!(
            "{} of {total} host network object(s) not applied: {}; the agent retries on every desired state and \
             host change; fix the cause, or the flavor and reprovision",
            failed.len(),
            named(&failed)
        ),
    )
}

fn named(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(NAMED_OBJECTS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > NAMED_OBJECTS {
        s.push_str(&format!(" and {} more", items.len() - NAMED_OBJECTS));
    }
    s
}

/// The next drift report, or never when there is no receiver.
pub async fn next_report(
    rx: &mut Option<broadcast::Receiver<NetworkReport>>,
) -> Result<NetworkReport, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hostplane_proto::v1::Bridge;

    use super::*;

    fn obj(object: &str, error: &str) -> NetworkObjectStatus {
        NetworkObjectStatus {
            object: object.into(),
            applied: error.is_empty(),
            error: error.into(),
        }
    }

    fn net(dpu: &str) -> DpuNetwork {
        DpuNetwork {
            dpu: dpu.into(),
            pf_pci_address: String::new(),
            network: Some(HostNetwork {
                bridges: vec![Bridge {
                    name: format!("br-{dpu}"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// Applies everything, or fails when told to.
    struct Fake {
        fail: Mutex<bool>,
        drift: broadcast::Sender<NetworkReport>,
    }

    impl HostNetworks for Fake {
        fn validate(&self, _: &[DpuNetwork]) -> Result<(), NetError> {
            Ok(())
        }
        fn set_desired(&self, nets: Vec<DpuNetwork>) -> BoxFuture<'_, Result<Vec<NetworkReport>, NetError>> {
            Box::pin(async move {
                if *self.fail.lock().unwrap() {
                    return Err(NetError::Stopped);
                }
                Ok(nets
                    .iter()
                    .map(|n| NetworkReport {
                        dpu: n.dpu.clone(),
                        applied: true,
                        objects: vec![obj(&format!("bridge br-{}", n.dpu), "")],
                        ..Default::default()
                    })
                    .collect())
            })
        }
        fn subscribe(&self) -> broadcast::Receiver<NetworkReport> {
            self.drift.subscribe()
        }
    }

    fn sync() -> (NetSync, Arc<Fake>) {
        let fake = Arc::new(Fake {
            fail: Mutex::new(false),
            drift: broadcast::channel(4).0,
        });
        (NetSync::new(fake.clone()), fake)
    }

    #[tokio::test]
    async fn latest_follows_the_desired_set() {
        let (s, fake) = sync();
        let r = s.apply(vec![net("a"), net("b")]).await;
        assert_eq!(r.len(), 2);
        let dpus: Vec<String> = s.latest().into_iter().map(|r| r.dpu).collect();
        assert_eq!(dpus, ["a", "b"]);

        // A drift report for a desired Dpu replaces its entry; one for another is stale.
        let drift = NetworkReport {
            dpu: "a".into(),
            applied: true,
            drift_repairs: 1,
            ..Default::default()
        };
        assert!(s.note(&drift));
        assert_eq!(s.latest()[0].drift_repairs, 1);
        assert!(!s.note(&NetworkReport {
            dpu: "zz".into(),
            ..Default::default()
        }));

        // "b" leaves the desired set.
        s.apply(vec![net("a")]).await;
        let dpus: Vec<String> = s.latest().into_iter().map(|r| r.dpu).collect();
        assert_eq!(dpus, ["a"]);

        // The manager fails outright: every listed Dpu gets a failed report naming why.
        *fake.fail.lock().unwrap() = true;
        let r = s.apply(vec![net("a"), net("c")]).await;
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| !r.applied));
        assert_eq!(r[1].objects[0].error, "the network manager has stopped");
        assert_eq!(s.latest().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn report_for_waits_for_the_dpus_network() {
        let (s, _) = sync();
        let cancel = CancellationToken::new();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            let c = CancellationToken::new();
            s2.report_for("a", Duration::from_secs(60), &c).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.apply(vec![net("a")]).await;
        let r = waiter.await.unwrap().unwrap();
        assert_eq!(r.dpu, "a");

        let missing = s.report_for("zz", Duration::from_secs(5), &cancel).await;
        assert_eq!(missing, Err(NoReport::NotListed(Duration::from_secs(5))));
        cancel.cancel();
        let cancelled = s.report_for("zz", Duration::from_secs(5), &cancel).await;
        assert_eq!(cancelled, Err(NoReport::Cancelled));
    }

    #[test]
    fn results_name_the_objects() {
        let ok = NetworkReport {
            dpu: "a".into(),
            applied: true,
            objects: vec![obj("bridge br0", ""), obj("address 10.0.0.1/24 on br0", "")],
            changes: 3,
            ..Default::default()
        };
        let r = initialize_result(&ok);
        assert_eq!(r.outcome(), CommandOutcome::Succeeded);
        assert_eq!(
            r.message,
            "applied 2 host network object(s) on the host (3 netlink change(s)): bridge br0; address 10.0.0.1/24 on br0"
        );
        let bad = NetworkReport {
            dpu: "a".into(),
            applied: false,
            objects: vec![
                obj("bridge br0", ""),
                obj("port veth9 -> br0", "no interface named veth9"),
            ],
            ..Default::default()
        };
        let r = initialize_result(&bad);
        assert_eq!(r.outcome(), CommandOutcome::Failed);
        assert!(
            r.message.starts_with(
                "1 of 2 host network object(s) not applied: port veth9 -> br0: no interface named veth9;"
            ),
            "{}",
            r.message
        );
        let many: Vec<NetworkObjectStatus> = (0..10).map(|i| obj(&format!("port v{i}"), "")).collect();
        let r = initialize_result(&NetworkReport {
            applied: true,
            objects: many,
            ..Default::default()
        });
        assert!(r.message.ends_with("port v7 and 2 more"), "{}", r.message);
    }
}
