//! What an agent session writes to the store: the Node's status from Hello,
//! Device presence from the inventory (Hello's, and the hot-plug updates
//! the agent sends when rshim devices come or go), Devices auto-registered
//! for reported rshims (`agents.auto_register_devices`), ACK/NACK, and
//! coalesced writes of acked versions, last-seen times and command progress.
use std::collections::{BTreeSet, HashMap};

use hostplane_proto::limits::{
    MAX_INVENTORY_RSHIMS, MAX_RSHIM, MAX_RSHIM_DEV_INFO, MAX_RSHIM_ERROR, MAX_RSHIM_USB_PATH, MAX_SERIAL,
    PCI_ADDRESS_LEN,
};
use hostplane_proto::v1::{
    Device, DeviceSpec, FlashProgress, Hello, Inventory, Kind, NetworkReport, ObjectMeta, Resource,
    RshimInfo, resource,
};

use crate::fsm::util::set_condition;
use crate::store::{StoreError, Txn, now_ms};

use super::liveness::COND_REACHABLE;
use super::network::{self, Ignored};

pub const COND_APPLIED: &str = "DesiredStateApplied";
pub const COND_PRESENT: &str = "Present";
/// The label on a Device the coordinator created for a reported rshim.
pub const AUTO_REGISTERED_LABEL: &str = "hostplane.io/auto-registered";

/// A Device created for a reported rshim.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    pub device: String,
    pub rshim: String,
    pub serial: String,
    /// Where it is: its PF0 address, or `usb <path>`.
    pub place: String,
}

/// What recording an inventory changed, for the log and the audit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InventoryRecord {
    /// Devices created for reported rshims.
    pub registered: Vec<Registered>,
    /// Reported rshims with no Device that were not registered, and why
    /// (only with auto-registration on).
    pub not_registered: Vec<(String, String)>,
    /// Devices whose rshim the inventory no longer has (present -> absent).
    pub gone: Vec<String>,
    /// Devices whose rshim is back (absent -> present).
    pub back: Vec<String>,
}

/// Check an agent's inventory (Hello's or a hot-plug update's) against the
/// limits in `hostplane_proto::limits`: at most [`MAX_INVENTORY_RSHIMS`]
/// rshims, each field within its length. The error names the first field
/// over its limit, under `what` (`hello.inventory`, `inventory`).
pub fn check_inventory(what: &str, inventory: &Inventory) -> Result<(), String> {
    let n = inventory.rshims.len();
    if n > MAX_INVENTORY_RSHIMS {
        return Err(format!(
            "{what}.rshims: {n} rshims, more than the maximum of {MAX_INVENTORY_RSHIMS}"
        ));
    }
    for (i, r) in inventory.rshims.iter().enumerate() {
        for (field, value, max) in [
            ("name", &r.name, MAX_RSHIM),
            ("serial", &r.serial, MAX_SERIAL),
            ("pci_address", &r.pci_address, PCI_ADDRESS_LEN),
            ("dev_info", &r.dev_info, MAX_RSHIM_DEV_INFO),
            ("usb_path", &r.usb_path, MAX_RSHIM_USB_PATH),
            ("error", &r.error, MAX_RSHIM_ERROR),
        ] {
            if value.len() > max {
                return Err(format!(
                    "{what}.rshims[{i}].{field}: {} bytes, more than the maximum of {max}",
                    value.len()
                ));
            }
        }
    }
    Ok(())
}

/// Record a Hello: agent version, boot id, inventory, reachable, and each
/// Device's presence (and, with `auto_register`, Devices for reported
/// rshims that have none); the node's `agent_session` count goes up by one
/// and is returned with what the inventory changed: the session this Hello
/// opens writes inventory updates only while the count is still its own.
/// None when the node does not exist.
pub fn record_hello(
    t: &mut Txn<'_>,
    hello: &Hello,
    lease_ms: i64,
    auto_register: bool,
) -> Result<Option<(u64, InventoryRecord)>, StoreError> {
    let name = hello.node_name.as_str();
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, name)?
    else {
        return Ok(None);
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
    st.agent_session += 1;
    let session = st.agent_session;
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
    let inventory = hello.inventory.clone().unwrap_or_default();
    let rec = record_devices(t, name, &inventory, auto_register, now, false)?;
    Ok(Some((session, rec)))
}

/// Record an inventory update (hot-plug: the agent's rshim devices
/// changed): the Node's status inventory, each Device's presence, and with
/// `auto_register` the Devices for new rshims. Nothing when the node is gone.
pub fn record_inventory(
    t: &mut Txn<'_>,
    node: &str,
    inventory: &Inventory,
    auto_register: bool,
) -> Result<InventoryRecord, StoreError> {
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, node)?
    else {
        return Ok(InventoryRecord::default());
    };
    let st = n.status.get_or_insert_default();
    if st.inventory.as_ref() != Some(inventory) {
        st.inventory = Some(inventory.clone());
        t.update(n.into())?;
    }
    record_devices(t, node, inventory, auto_register, now_ms(), true)
}

/// Each Device of `node`: present when `inventory` reports its rshim (with
/// the Present condition saying so); then, with `auto_register`, a Device
/// for each reported rshim that has none. `update`: the inventory is a
/// hot-plug update (a device that goes absent was removed from the host).
fn record_devices(
    t: &mut Txn<'_>,
    node: &str,
    inventory: &Inventory,
    auto_register: bool,
    now: i64,
    update: bool,
) -> Result<InventoryRecord, StoreError> {
    let mut rec = InventoryRecord::default();
    let rshims: BTreeSet<&str> = inventory.rshims.iter().map(|r| r.name.as_str()).collect();
    let mut known: BTreeSet<String> = BTreeSet::new();
    for r in t.list_on_node(Kind::Device, node)? {
        let Some(resource::Kind::Device(mut d)) = r.kind else {
            continue;
        };
        let rshim = d.spec.as_ref().map(|s| s.rshim.clone()).unwrap_or_default();
        let present = rshims.contains(rshim.as_str());
        known.insert(rshim.clone());
        let before = d.status.clone();
        let was = before.as_ref().is_some_and(|s| s.present);
        let ds = d.status.get_or_insert_default();
        ds.present = present;
        if present {
            let msg = format!("the agent on node {node} reports {rshim}");
            set_condition(&mut ds.conditions, COND_PRESENT, "True", "InInventory", &msg, now);
        } else if update && was {
            let msg = format!(
                "the agent on node {node} no longer reports {rshim}: the device was removed from the host (or \
                 its rshim driver stopped); a flash running on it fails with the agent's result"
            );
            set_condition(&mut ds.conditions, COND_PRESENT, "False", "Removed", &msg, now);
        } else {
            let msg = format!(
                "the agent on node {node} does not report {rshim}; check the rshim driver on the host and the \
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
            let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            match (was, present) {
                (true, false) => rec.gone.push(name),
                (false, true) => rec.back.push(name),
                _ => {}
            }
            t.update(d.into())?;
        }
    }
    if auto_register {
        for info in inventory.rshims.iter().filter(|r| !known.contains(&r.name)) {
            match auto_register_device(t, node, info, now)? {
                Ok(reg) => rec.registered.push(reg),
                Err(why) => rec.not_registered.push((info.name.clone(), why)),
            }
        }
    }
    Ok(rec)
}

/// Create the Device `<node>-<rshim>` for a reported rshim that has none
/// (as DPF's DPU discovery does): serial and PCI address (PF0) from the
/// report, labelled [`AUTO_REGISTERED_LABEL`]. Never overwrites: an
/// existing Device of that name, a Device with that serial elsewhere, a
/// report without a serial or with an error, or a node being deleted leave
/// it unregistered, with the reason.
fn auto_register_device(
    t: &mut Txn<'_>,
    node: &str,
    info: &RshimInfo,
    now: i64,
) -> Result<Result<Registered, String>, StoreError> {
    let name = format!("{node}-{}", info.name);
    if !info.error.is_empty() {
        return Ok(Err(format!(
            "the agent could not read the device: {}",
            info.error
        )));
    }
    if info.serial.is_empty() {
        return Ok(Err(
            "the report has no serial number (the rshim driver shows none in misc); create the Device by hand"
                .into(),
        ));
    }
    if let Some(Resource {
        kind: Some(resource::Kind::Node(n)),
    }) = t.get(Kind::Node, node)?
        && n.metadata
            .as_ref()
            .is_some_and(|m| m.deletion_requested_at_ms != 0)
    {
        return Ok(Err(format!("node {node} is being deleted")));
    }
    if t.get(Kind::Device, &name)?.is_some() {
        return Ok(Err(format!(
            "a Device named {name} already exists for another rshim or node; it is not overwritten"
        )));
    }
    if let Some(other) = t.devices_with_serial(&info.serial)?.first() {
        return Ok(Err(format!(
            "serial {} is already used by device {}",
            info.serial,
            other.name()
        )));
    }
    let pci_address = pf0(&info.pci_address);
    let device = Device {
        metadata: Some(ObjectMeta {
            name: name.clone(),
            labels: [(AUTO_REGISTERED_LABEL.to_string(), "true".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(DeviceSpec {
            node: node.to_string(),
            serial: info.serial.clone(),
            pci_address: pci_address.clone(),
            rshim: info.name.clone(),
            bmc_address: String::new(),
        }),
        status: None,
    };
    if let Err(e) = crate::api::validate::device("device", &device) {
        return Ok(Err(format!("the Device it would be is not valid: {e}")));
    }
    let mut device = device;
    let msg = format!("the agent on node {node} reports {}; auto-registered", info.name);
    let ds = device.status.get_or_insert_default();
    ds.present = true;
    set_condition(&mut ds.conditions, COND_PRESENT, "True", "InInventory", &msg, now);
    t.insert(device.into())?;
    let place = if info.usb_path.is_empty() {
        pci_address
    } else {
        format!("usb {}", info.usb_path)
    };
    Ok(Ok(Registered {
        device: name,
        rshim: info.name.clone(),
        serial: info.serial.clone(),
        place,
    }))
}

/// The PF0 address of an rshim's PCI function (`0000:04:00.2` ->
/// `0000:04:00.0`, what DeviceSpec.pci_address holds), as the agent derives
/// it; "" for no (or no valid) PCI address.
pub(crate) fn pf0(rshim_bdf: &str) -> String {
    hostplane_proto::pci::pf0(rshim_bdf).unwrap_or_default()
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
    /// The latest inventory update (hot-plug), if one came since the last flush.
    pub inventory: Option<Inventory>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.acked.is_none()
            && self.sent.is_none()
            && self.seen.is_none()
            && self.progress.is_empty()
            && self.reports.is_empty()
            && self.inventory.is_none()
    }
}

/// What a flush did that the session logs.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Network reports not recorded, and why.
    pub ignored: Vec<(String, Ignored)>,
    /// What the inventory update changed, when there was one.
    pub inventory: Option<InventoryRecord>,
    /// The inventory update was not written: the node's `agent_session` is
    /// this newer one (a newer Hello recorded its own inventory).
    pub stale_inventory: Option<u64>,
}

/// The session `node`'s agent_session count names now (0: none recorded,
/// or no such node).
fn current_session(t: &mut Txn<'_>, node: &str) -> Result<u64, StoreError> {
    Ok(match t.get(Kind::Node, node)? {
        Some(Resource {
            kind: Some(resource::Kind::Node(n)),
        }) => n.status.map(|s| s.agent_session).unwrap_or(0),
        _ => 0,
    })
}

/// Flush coalesced writes in one transaction (`auto_register`: create
/// Devices for new rshims of an inventory update). `session` is the
/// node's `agent_session` count the session's Hello recorded: the
/// inventory update is written only while the node's count is still that
/// (a newer session's Hello has the newer inventory).
pub fn flush(
    t: &mut Txn<'_>,
    node: &str,
    session: u64,
    p: Pending,
    lease_ms: i64,
    auto_register: bool,
) -> Result<Flushed, StoreError> {
    let mut out = Flushed::default();
    if let Some(inv) = &p.inventory {
        let current = current_session(t, node)?;
        if current == session {
            out.inventory = Some(record_inventory(t, node, inv, auto_register)?);
        } else {
            out.stale_inventory = Some(current);
        }
    }
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
    let now = now_ms();
    for (dpu, report) in p.reports {
        if let Err(why) = network::record_report(t, node, &report, now)? {
            out.ignored.push((dpu, why));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use hostplane_proto::v1::{Node, NodeSpec, RebootMethod};
    use proptest::prelude::*;

    use super::*;
    use crate::store::Store;

    fn device(name: &str, node: &str, rshim: &str, serial: &str) -> Resource {
        Device {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(DeviceSpec {
                node: node.into(),
                rshim: rshim.into(),
                serial: serial.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    fn devices(store: &Store) -> BTreeMap<String, Device> {
        store
            .write_sync(|t| {
                let mut all = t.list_on_node(Kind::Device, "n1")?;
                all.extend(t.list_on_node(Kind::Device, "n2")?);
                Ok::<_, StoreError>(all)
            })
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(resource::Kind::Device(d)) => Some((r_name(&d), d)),
                _ => None,
            })
            .collect()
    }

    fn r_name(d: &Device) -> String {
        d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever n1 has and whatever its agent reports: each of n1's
        /// Devices is present exactly when its rshim is reported; with
        /// auto-registration, every reported rshim without a Device gets
        /// one unless it has no serial, its serial is taken, or its name
        /// is; nothing that existed changes its spec.
        #[test]
        fn presence_and_auto_registration(
            existing in proptest::collection::btree_set(0u8..6, 0..4),
            // rshim index -> serial choice: 0 none, 1 its own, 2 the serial of n1's rshim0 Device.
            reported in proptest::collection::btree_map(0u8..8, 0u8..3, 0..6),
            taken_by_n2 in proptest::option::of(0u8..8),
            auto in any::<bool>(),
        ) {
            let store = Store::in_memory().unwrap();
            let mut seed: Vec<Resource> = vec![
                Node { metadata: Some(ObjectMeta { name: "n1".into(), ..Default::default() }),
                       spec: Some(NodeSpec { reboot_method: RebootMethod::External as i32 }), status: None }.into(),
                Node { metadata: Some(ObjectMeta { name: "n2".into(), ..Default::default() }),
                       spec: Some(NodeSpec { reboot_method: RebootMethod::External as i32 }), status: None }.into(),
            ];
            for i in &existing {
                seed.push(device(&format!("d{i}"), "n1", &format!("rshim{i}"), &format!("S{i}")));
            }
            if let Some(j) = taken_by_n2 {
                seed.push(device(&format!("n1-rshim{j}"), "n2", "rshim0", "N2"));
            }
            store.write_sync(|t| { for r in seed { t.insert(r)?; } Ok::<_, StoreError>(()) }).unwrap();
            let before = devices(&store);
            let inventory = Inventory {
                rshims: reported.iter().map(|(i, s)| RshimInfo {
                    name: format!("rshim{i}"),
                    serial: match s { 0 => String::new(), 1 => format!("R{i}"), _ => "S0".into() },
                    pci_address: format!("0000:{:02x}:00.2", 4 + i),
                    ..Default::default()
                }).collect(),
            };
            let rec = store.write_sync(|t| record_inventory(t, "n1", &inventory, auto)).unwrap();
            let after = devices(&store);
            let reported_names: HashSet<String> = inventory.rshims.iter().map(|r| r.name.clone()).collect();

            for (name, d) in &before {
                let now = &after[name];
                prop_assert_eq!(&now.spec, &d.spec, "{} changed its spec", name);
                let spec = d.spec.clone().unwrap();
                if spec.node == "n1" {
                    let present = now.status.as_ref().is_some_and(|s| s.present);
                    prop_assert_eq!(present, reported_names.contains(&spec.rshim), "{}", name);
                }
            }
            let known: HashSet<String> = existing.iter().map(|i| format!("rshim{i}")).collect();
            let new: Vec<&RshimInfo> = inventory.rshims.iter().filter(|r| !known.contains(&r.name)).collect();
            if !auto {
                prop_assert_eq!(after.len(), before.len());
                prop_assert!(rec.registered.is_empty() && rec.not_registered.is_empty());
                return Ok(());
            }
            prop_assert_eq!(rec.registered.len() + rec.not_registered.len(), new.len());
            prop_assert_eq!(after.len(), before.len() + rec.registered.len());
            for r in new {
                let name = format!("n1-{}", r.name);
                let serial_taken = before.values().chain(after.values())
                    .any(|d| r_name(d) != name && d.spec.as_ref().is_some_and(|s| s.serial == r.serial));
                let should = !r.serial.is_empty() && !before.contains_key(&name) && !serial_taken;
                let made = rec.registered.iter().any(|x| x.device == name);
                prop_assert_eq!(made, should, "{} serial {:?}", name, r.serial);
                if made {
                    let d = &after[&name];
                    let spec = d.spec.clone().unwrap();
                    prop_assert_eq!((spec.node.as_str(), spec.rshim.as_str(), spec.serial.as_str()), ("n1", r.name.as_str(), r.serial.as_str()));
                    prop_assert_eq!(spec.pci_address, pf0(&r.pci_address));
                    prop_assert_eq!(d.metadata.as_ref().unwrap().labels.get(AUTO_REGISTERED_LABEL).map(String::as_str), Some("true"));
                    prop_assert!(d.status.as_ref().is_some_and(|s| s.present));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// An inventory passes exactly when it has at most
        /// MAX_INVENTORY_RSHIMS rshims and every field is within its
        /// limit; the refusal names the first field over (rshim order,
        /// then field order) and its limit.
        #[test]
        fn inventory_limits(
            count in 0usize..70,
            // (rshim index, field index, bytes over the limit)
            over in proptest::collection::vec((0usize..70, 0usize..6, 1usize..4), 0..3),
        ) {
            let max = [MAX_RSHIM, MAX_SERIAL, PCI_ADDRESS_LEN, MAX_RSHIM_DEV_INFO, MAX_RSHIM_USB_PATH, MAX_RSHIM_ERROR];
            let names = ["name", "serial", "pci_address", "dev_info", "usb_path", "error"];
            // Every field at its limit to start with: still valid.
            let mut rshims: Vec<RshimInfo> = (0..count).map(|_| RshimInfo {
                name: "r".repeat(max[0]),
                serial: "s".repeat(max[1]),
                pci_address: "p".repeat(max[2]),
                dev_info: "d".repeat(max[3]),
                usb_path: "u".repeat(max[4]),
                error: "e".repeat(max[5]),
            }).collect();
            let mut first_over: Option<(usize, usize, usize)> = None;
            for &(i, f, extra) in &over {
                let Some(r) = rshims.get_mut(i) else { continue };
                let field = match f {
                    0 => &mut r.name, 1 => &mut r.serial, 2 => &mut r.pci_address,
                    3 => &mut r.dev_info, 4 => &mut r.usb_path, _ => &mut r.error,
                };
                field.push_str(&"x".repeat(extra));
                let len = field.len();
                // The same field twice: its length is the latest.
                if first_over.is_none_or(|(fi, ff, _)| (i, f) <= (fi, ff)) {
                    first_over = Some((i, f, len));
                }
            }
            let got = check_inventory("inv", &Inventory { rshims });
            if count > MAX_INVENTORY_RSHIMS {
                prop_assert_eq!(got, Err(format!("inv.rshims: {count} rshims, more than the maximum of {MAX_INVENTORY_RSHIMS}")));
            } else if let Some((i, f, len)) = first_over {
                prop_assert_eq!(got, Err(format!("inv.rshims[{i}].{}: {len} bytes, more than the maximum of {}", names[f], max[f])));
            } else {
                prop_assert_eq!(got, Ok(()));
            }
        }
    }

    #[test]
    fn pf0_of_an_rshim_function() {
        assert_eq!(pf0("0000:04:00.2"), "0000:04:00.0");
        assert_eq!(pf0(""), "");
    }
}
