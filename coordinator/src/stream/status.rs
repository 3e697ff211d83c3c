//! What an agent session writes to the store: the Node's status from Hello,
//! Device presence from the inventory, ACK/NACK, and coalesced writes of
//! acked versions, last-seen times and command progress.
use std::collections::HashMap;

use hostplane_proto::v1::{FlashProgress, Hello, Kind, NetworkReport, Resource, resource};

use crate::fsm::util::set_condition;
use crate::store::{StoreError, Txn, now_ms};

use super::liveness::COND_REACHABLE;
use super::network::{self, Ignored};

pub const COND_APPLIED: &str = "DesiredStateApplied";
pub const COND_PRESENT: &str = "Present";

/// Record a Hello: agent version, boot id, inventory, reachable, and each
/// Device's presence. False when the node does not exist.
pub fn record_hello(t: &mut Txn<'_>, hello: &Hello, lease_ms: i64) -> Result<bool, StoreError> {
    let name = hello.node_name.as_str();
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, name)?
    else {
        return Ok(false);
    };
    let now = now_ms();
    let st = n.status.get_or_insert_default();
    let rebooted = !st.boot_id.is_empty() && st.boot_id != hello.boot_id;
    st.agent_version = hello.agent_version.clone();
    st.boot_id = hello.boot_id.clone();
    st.inventory = hello.inventory.clone();
    st.reachable = true;
    st.last_seen_ms = now;
    st.lease_expires_at_ms = now + lease_ms;
    let msg = format!(
        "agent {} connected (boot_id {}{})",
        hello.agent_version,
        hello.boot_id,
        if rebooted {
            ", new since the last session"
        } else {
            ""
        }
    );
    set_condition(
        &mut st.conditions,
        COND_REACHABLE,
        "True",
        "AgentConnected",
        &msg,
        now,
    );
    t.update(n.into())?;

    let rshims: Vec<&str> = hello
        .inventory
        .iter()
        .flat_map(|i| i.rshims.iter())
        .map(|r| r.name.as_str())
        .collect();
    for r in t.list_on_node(Kind::Device, name)? {
        let Some(resource::Kind::Device(mut d)) = r.kind else {
            continue;
        };
        let rshim = d.spec.as_ref().map(|s| s.rshim.clone()).unwrap_or_default();
        let present = rshims.contains(&rshim.as_str());
        let before = d.status.clone();
        let ds = d.status.get_or_insert_default();
        ds.present = present;
        if present {
            let msg = format!("the agent on node {name} reports {rshim}");
            set_condition(&mut ds.conditions, COND_PRESENT, "True", "InInventory", &msg, now);
        } else {
            let msg = format!(
                "the agent on node {name} does not report {rshim}; check the rshim driver on the host and the \
                 device's spec.rshim"
            );
            set_condition(
                &mut ds.conditions,
                COND_PRESENT,
                "False",
                "NotInInventory",
                &msg,
                now,
            );
        }
        if d.status != before {
            t.update(d.into())?;
        }
    }
    Ok(true)
}

/// Record a NACK at once: the error, the refused version and, when the node's desired state is
/// still that version, the open commands it carried (the Reconciler fails the Dpus waiting on
/// them; when the state has moved on, the agent answers the newer version instead).
pub fn record_nack(t: &mut Txn<'_>, node: &str, version: u64, error: &str) -> Result<(), StoreError> {
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, node)?
    else {
        return Ok(());
    };
    let carried = if t.desired_version(node)? == version {
        t.open_commands(node)?.into_iter().map(|c| c.id).collect()
    } else {
        Vec::new()
    };
    let st = n.status.get_or_insert_default();
    st.nack_error = error.to_string();
    st.nacked_version = version;
    st.nacked_commands = carried;
    let msg = format!("the agent rejected desired state version {version}: {error}");
    set_condition(
        &mut st.conditions,
        COND_APPLIED,
        "False",
        "Nacked",
        &msg,
        now_ms(),
    );
    t.update(n.into())?;
    Ok(())
}

/// A desired state that was composed but not sent, because it is larger
/// than the agent accepts: the node's applied condition says so (the agent
/// keeps the state it has).
pub fn record_not_sent(t: &mut Txn<'_>, node: &str, why: &str) -> Result<(), StoreError> {
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, node)?
    else {
        return Ok(());
    };
    let st = n.status.get_or_insert_default();
    let before = st.conditions.clone();
    set_condition(
        &mut st.conditions,
        COND_APPLIED,
        "False",
        "TooLarge",
        why,
        now_ms(),
    );
    if st.conditions != before {
        t.update(n.into())?;
    }
    Ok(())
}

/// Writes a session coalesces (flushed at most every `status_flush`).
#[derive(Debug, Default)]
pub struct Pending {
    pub acked: Option<u64>,
    pub sent: Option<u64>,
    /// Last-seen time to record (epoch ms).
    pub seen: Option<i64>,
    /// Dpu -> (command id, latest progress).
    pub progress: HashMap<String, (String, FlashProgress)>,
    /// Dpu -> the latest host network report.
    pub reports: HashMap<String, NetworkReport>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.acked.is_none()
            && self.sent.is_none()
            && self.seen.is_none()
            && self.progress.is_empty()
            && self.reports.is_empty()
    }
}

/// Flush coalesced writes in one transaction. Returns the network reports
/// that were not recorded, and why (the caller logs them).
pub fn flush(
    t: &mut Txn<'_>,
    node: &str,
    p: Pending,
    lease_ms: i64,
) -> Result<Vec<(String, Ignored)>, StoreError> {
    if (p.acked.is_some() || p.sent.is_some() || p.seen.is_some())
        && let Some(Resource {
            kind: Some(resource::Kind::Node(mut n)),
        }) = t.get(Kind::Node, node)?
    {
        let before = n.status.clone();
        let now = now_ms();
        let st = n.status.get_or_insert_default();
        if let Some(v) = p.sent {
            st.desired_version = st.desired_version.max(v);
        }
        if let Some(v) = p.acked {
            st.acked_version = st.acked_version.max(v);
            // After a NACK, or a state too large to send (record_not_sent).
            let not_applied = st
                .conditions
                .iter()
                .any(|c| c.r#type == COND_APPLIED && c.status == "False");
            // An ACK of a version older than the one refused (flushed after the NACK) clears nothing.
            if v >= st.nacked_version && (!st.nack_error.is_empty() || not_applied) {
                st.nack_error.clear();
                let msg = format!("the agent applied desired state version {v}");
                set_condition(&mut st.conditions, COND_APPLIED, "True", "Acked", &msg, now);
            }
        }
        if let Some(seen) = p.seen {
            st.last_seen_ms = st.last_seen_ms.max(seen);
            st.lease_expires_at_ms = st.last_seen_ms + lease_ms;
        }
        if n.status != before {
            t.update(n.into())?;
        }
    }
    for (dpu, (command_id, progress)) in p.progress {
        let Some(Resource {
            kind: Some(resource::Kind::Dpu(mut d)),
        }) = t.get(Kind::Dpu, &dpu)?
        else {
            continue;
        };
        let st = d.status.get_or_insert_default();
        // Progress of a command the Dpu no longer waits on is stale.
        if st.command_id != command_id || st.progress.as_ref() == Some(&progress) {
            continue;
        }
        st.progress = Some(progress);
        t.update(d.into())?;
    }
    let mut ignored = Vec::new();
    let now = now_ms();
    for (dpu, report) in p.reports {
        if let Err(why) = network::record_report(t, node, &report, now)? {
            ignored.push((dpu, why));
        }
    }
    Ok(ignored)
}
