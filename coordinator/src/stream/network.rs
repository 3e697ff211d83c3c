//! Host networks on the agent stream: how the agent's `NetworkReport`s
//! become the Dpu condition `HostNetworkApplied`. Which Dpu networks a
//! node's desired state carries is [`crate::desired::networks`]'s to say.
use std::time::{Duration, UNIX_EPOCH};

use hostplane_proto::v1::{Kind, NetworkReport, Resource, resource};

use crate::fsm::util::set_condition;
use crate::store::{StoreError, Txn};

pub const COND_HOST_NETWORK: &str = "HostNetworkApplied";
/// At most this many objects are named in a condition message.
const NAMED_OBJECTS: usize = 6;

pub use crate::desired::networks::{is_empty, wanted};

/// Why a report was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    UnknownDpu,
    OtherNode(String),
    /// The Dpu exists but its network is not in the desired state (not yet
    /// at InitializeInterface, or being deleted): a late report.
    NotWanted,
}

/// Record the latest report of a Dpu as its `HostNetworkApplied` condition
/// (written only when the condition changes). Err(why) when it is ignored.
pub fn record_report(
    t: &mut Txn<'_>,
    node: &str,
    r: &NetworkReport,
    now: i64,
) -> Result<Result<bool, Ignored>, StoreError> {
    let Some(Resource {
        kind: Some(resource::Kind::Dpu(mut d)),
    }) = t.get(Kind::Dpu, &r.dpu)?
    else {
        return Ok(Err(Ignored::UnknownDpu));
    };
    let owner = d.spec.as_ref().map(|s| s.node.clone()).unwrap_or_default();
    if owner != node {
        return Ok(Err(Ignored::OtherNode(owner)));
    }
    if !wanted(&d) {
        return Ok(Err(Ignored::NotWanted));
    }
    let (status, reason, message) = condition_of(r, node);
    let st = d.status.get_or_insert_default();
    if !set_condition(
        &mut st.conditions,
        COND_HOST_NETWORK,
        status,
        reason,
        &message,
        now,
    ) {
        return Ok(Ok(false));
    }
    t.update(d.into())?;
    Ok(Ok(true))
}

/// (status, reason, message) of the `HostNetworkApplied` condition for a report.
pub fn condition_of(r: &NetworkReport, node: &str) -> (&'static str, &'static str, String) {
    let total = r.objects.len();
    let failed: Vec<String> = r
        .objects
        .iter()
        .filter(|o| !o.applied)
        .map(|o| {
            if o.error.is_empty() {
                format!("{}: not applied", o.object)
            } else {
                format!("{}: {}", o.object, o.error)
            }
        })
        .collect();
    let (status, reason, mut message) = if r.applied && failed.is_empty() {
        let reason = if r.drift_repairs > 0 {
            "DriftRepaired"
        } else {
            "Applied"
        };
        let names: Vec<String> = r.objects.iter().map(|o| o.object.clone()).collect();
        let message = if total == 0 {
            format!("the host network on node {node} has no objects to apply")
        } else {
            format!(
                "{total} host network object(s) applied on node {node}: {}",
                named(&names, "; ")
            )
        };
        ("True", reason, message)
    } else {
        let message = format!(
            "{} of {total} host network object(s) not applied on node {node}: {}; the agent retries on the next \
             desired state or change on the host",
            failed.len().max(1),
            if failed.is_empty() {
                "the agent reports a failure without naming an object".to_string()
            } else {
                named(&failed, "; ")
            }
        );
        ("False", "Failed", message)
    };
    if r.drift_repairs > 0 {
        message.push_str(&format!(
            "; {} drift repair(s) since the agent started",
            r.drift_repairs
        ));
        if !r.last_drift.is_empty() {
            message.push_str(&format!("; last: {}", r.last_drift));
            if r.last_drift_at_ms > 0 {
                let at = UNIX_EPOCH + Duration::from_millis(r.last_drift_at_ms as u64);
                message.push_str(&format!(
                    " at {}",
                    humantime_serde::re::humantime::format_rfc3339_seconds(at)
                ));
            }
        }
    }
    (status, reason, message)
}

/// The first few items joined, then "and N more".
fn named(items: &[String], sep: &str) -> String {
    let mut s = items
        .iter()
        .take(NAMED_OBJECTS)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > NAMED_OBJECTS {
        s.push_str(&format!(" and {} more", items.len() - NAMED_OBJECTS));
    }
    s
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{
        Bridge, Dpu, DpuPhase, DpuSpec, DpuStatus, HostNetwork, NetworkObjectStatus, ObjectMeta,
    };

    use super::*;
    use crate::desired::networks::networks;
    use crate::fsm::testing::{self, get_dpu, seed};
    use crate::store::Store;

    fn dpu(name: &str, node: &str, device: &str, flavor: &str, phase: DpuPhase) -> Resource {
        Dpu {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(DpuSpec {
                device: device.into(),
                node: node.into(),
                flavor: flavor.into(),
                ..Default::default()
            }),
            status: Some(DpuStatus {
                phase: phase as i32,
                ..Default::default()
            }),
        }
        .into()
    }

    fn flavor(name: &str, network: Option<HostNetwork>) -> Resource {
        let mut f = testing::flavor(name);
        if let Some(resource::Kind::Flavor(x)) = &mut f.kind {
            x.spec.as_mut().unwrap().host_network = network;
        }
        f
    }

    fn device(name: &str, node: &str, pci: &str) -> Resource {
        let mut d = testing::device(name, node, "rshim0", &[]);
        if let Some(resource::Kind::Device(x)) = &mut d.kind {
            x.spec.as_mut().unwrap().pci_address = pci.into();
        }
        d
    }

    fn bridged() -> HostNetwork {
        HostNetwork {
            bridges: vec![Bridge {
                name: "br0".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Node n1 with Dpus in several situations, node n2 with one Ready Dpu.
    async fn store() -> Store {
        let s = Store::in_memory().unwrap();
        let mut deleting = dpu("e-deleted", "n1", "dev-e", "net", DpuPhase::Ready);
        deleting.metadata_mut().unwrap().deletion_requested_at_ms = 5;
        seed(
            &s,
            vec![
                flavor("net", Some(bridged())),
                flavor("plain", None),
                device("dev-a", "n1", "0000:04:00.0"),
                device("dev-c", "n1", "0000:06:00.0"),
                dpu("a-ready", "n1", "dev-a", "net", DpuPhase::Ready),
                dpu("b-pending", "n1", "dev-b", "net", DpuPhase::Pending),
                dpu("c-init", "n1", "dev-c", "net", DpuPhase::InitializeInterface),
                dpu("d-plain", "n1", "dev-d", "plain", DpuPhase::Ready),
                deleting,
                dpu("f-other", "n2", "dev-f", "net", DpuPhase::Ready),
            ],
        )
        .await;
        s
    }

    #[tokio::test]
    async fn the_desired_networks_of_a_node() {
        let s = store().await;
        let nets = networks(&*s.view(), "n1").unwrap();
        let got: Vec<(&str, &str)> = nets
            .iter()
            .map(|n| (n.dpu.as_str(), n.pf_pci_address.as_str()))
            .collect();
        assert_eq!(got, [("a-ready", "0000:04:00.0"), ("c-init", "0000:06:00.0")]);
        assert_eq!(nets[0].network.as_ref(), Some(&bridged()));
        let other = networks(&*s.view(), "n2").unwrap();
        assert_eq!(other.len(), 1);
    }

    fn applied(dpu: &str) -> NetworkReport {
        NetworkReport {
            dpu: dpu.into(),
            applied: true,
            objects: vec![obj("bridge br0", "")],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn reports_are_recorded_once_and_only_for_this_nodes_wanted_dpus() {
        let s = store().await;
        let rec = |node: &'static str, r: NetworkReport| {
            let s = s.clone();
            async move { s.write(move |t| record_report(t, node, &r, 7)).await.unwrap() }
        };
        assert_eq!(rec("n1", applied("a-ready")).await, Ok(true));
        let d = get_dpu(&s, "a-ready").await.unwrap();
        let rv = d.metadata.as_ref().unwrap().resource_version;
        let c = &d.status.as_ref().unwrap().conditions[0];
        assert_eq!(
            (c.r#type.as_str(), c.status.as_str(), c.reason.as_str()),
            (COND_HOST_NETWORK, "True", "Applied")
        );
        assert_eq!(c.last_transition_time_ms, 7);

        // The same report again (a no-op reconcile) writes nothing.
        assert_eq!(
            rec(
                "n1",
                NetworkReport {
                    changes: 0,
                    ..applied("a-ready")
                }
            )
            .await,
            Ok(false)
        );
        let d = get_dpu(&s, "a-ready").await.unwrap();
        assert_eq!(d.metadata.as_ref().unwrap().resource_version, rv);

        assert_eq!(rec("n1", applied("nope")).await, Err(Ignored::UnknownDpu));
        assert_eq!(
            rec("n1", applied("f-other")).await,
            Err(Ignored::OtherNode("n2".into()))
        );
        assert_eq!(rec("n1", applied("b-pending")).await, Err(Ignored::NotWanted));
        assert_eq!(rec("n1", applied("e-deleted")).await, Err(Ignored::NotWanted));
        for name in ["f-other", "b-pending", "e-deleted"] {
            let d = get_dpu(&s, name).await.unwrap();
            assert!(d.status.unwrap().conditions.is_empty(), "{name}");
        }
    }

    fn obj(object: &str, error: &str) -> NetworkObjectStatus {
        NetworkObjectStatus {
            object: object.into(),
            applied: error.is_empty(),
            error: error.into(),
        }
    }

    #[test]
    fn an_applied_report_names_its_objects() {
        let r = NetworkReport {
            dpu: "d1".into(),
            applied: true,
            objects: vec![obj("bridge br-dpu", ""), obj("port veth1 -> br-dpu", "")],
            changes: 2,
            ..Default::default()
        };
        let (s, reason, m) = condition_of(&r, "n1");
        assert_eq!((s, reason), ("True", "Applied"));
        assert_eq!(
            m,
            "2 host network object(s) applied on node n1: bridge br-dpu; port veth1 -> br-dpu"
        );
        // A no-op reconcile (changes 0) reads the same: the condition is not rewritten.
        let again = NetworkReport { changes: 0, ..r };
        assert_eq!(condition_of(&again, "n1").2, m);
    }

    #[test]
    fn a_failed_report_names_what_failed_and_why() {
        let r = NetworkReport {
            dpu: "d1".into(),
            applied: false,
            objects: vec![
                obj("bridge br-dpu", ""),
                obj("port veth9 -> br-dpu", "no interface named veth9"),
            ],
            ..Default::default()
        };
        let (s, reason, m) = condition_of(&r, "n1");
        assert_eq!((s, reason), ("False", "Failed"));
        assert!(
            m.starts_with("1 of 2 host network object(s) not applied on node n1: port veth9 -> br-dpu: no interface named veth9;"),
            "{m}"
        );
    }

    #[test]
    fn drift_repairs_are_counted_in_the_message() {
        let r = NetworkReport {
            dpu: "d1".into(),
            applied: true,
            objects: vec![obj("bridge br-dpu", "")],
            drift_repairs: 3,
            last_drift: "bridge br-dpu deleted externally; recreated".into(),
            last_drift_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let (s, reason, m) = condition_of(&r, "n1");
        assert_eq!((s, reason), ("True", "DriftRepaired"));
        assert!(
            m.ends_with(
                "; 3 drift repair(s) since the agent started; last: bridge br-dpu deleted externally; recreated \
                 at 2023-11-14T22:13:20Z"
            ),
            "{m}"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let objects: Vec<NetworkObjectStatus> = (0..10)
            .map(|i| obj(&format!("port veth{i} -> br0"), ""))
            .collect();
        let r = NetworkReport {
            applied: true,
            objects,
            ..Default::default()
        };
        let m = condition_of(&r, "n1").2;
        assert!(m.contains("port veth5 -> br0 and 4 more"), "{m}");
        assert!(!m.contains("veth6"), "{m}");
    }

    #[test]
    fn emptiness() {
        assert!(is_empty(&HostNetwork::default()));
        assert!(is_empty(&HostNetwork {
            mtu: 9000,
            ..Default::default()
        }));
        assert!(!is_empty(&HostNetwork {
            num_vfs: 1,
            ..Default::default()
        }));
    }
}
