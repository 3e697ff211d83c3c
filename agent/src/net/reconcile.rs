//! Reconcile, do not replay: read the host, compare with the desired state,
//! change only the difference, and say per object what is applied.
//!
//! Order of a pass: SR-IOV counts and VF attributes; the references checked
//! ([`check::references`], all or nothing); bridges created, MTU, up; ports
//! desired nowhere detached from owned bridges; ports attached (a port
//! moving between owned bridges is moved in one change, never detached
//! first); addresses; routes ([`routes`]); owned bridges no longer desired
//! deleted.
//!
//! Ownership (what the agent may change or delete):
//! - bridges it created carry `ifalias` = `hostplane:<dpu>`; an interface with
//!   a desired bridge's name but without that tag is foreign: the apply is
//!   refused and it is left alone;
//! - a port is detached only from a bridge the agent owns; foreign port
//!   interfaces are never deleted, and a port of a foreign bridge is never
//!   taken (the apply is refused);
//! - addresses: on an owned bridge, the agent adds what is desired and removes
//!   only addresses it added itself (the [`Owned`] record); others stay;
//! - routes it adds carry protocol 196 in the main table; no other route is touched.
use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use super::model::{Desired, PortRef};
use super::netlink::{Link, Netlink, Snapshot};
pub use super::owned::Owned;
use super::sysfs::Sysfs;
use super::{NetError, OWNER_TAG};
use super::{check, routes, vf};

pub use super::check::preflight;

/// Says that a refused apply changed nothing but the VF counts.
pub const NOTHING_ELSE: &str = "nothing else was changed";

/// One object's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    pub dpu: String,
    pub object: String,
    pub error: Option<String>,
}

/// The result of one pass.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Netlink and sysfs writes made.
    pub changes: u32,
    /// Human descriptions of the changes, in order.
    pub log: Vec<String>,
    /// The same, per owning Dpu.
    pub by_dpu: BTreeMap<String, Vec<String>>,
    pub objects: Vec<ObjectStatus>,
}

impl Outcome {
    pub(super) fn ok(&mut self, dpu: &str, object: String) {
        self.objects.push(ObjectStatus {
            dpu: dpu.into(),
            object,
            error: None,
        });
    }
    pub(super) fn failed(&mut self, dpu: &str, object: String, e: &NetError) {
        self.objects.push(ObjectStatus {
            dpu: dpu.into(),
            object,
            error: Some(e.to_string()),
        });
    }
    /// Count a change made for `dpu` ("" when no Dpu owns the object).
    pub(super) fn changed(&mut self, dpu: &str, what: String) {
        self.changes += 1;
        self.by_dpu.entry(dpu.to_string()).or_default().push(what.clone());
        self.log.push(what);
    }
}

pub fn owner_tag(dpu: &str) -> String {
    format!("{OWNER_TAG}{dpu}")
}

/// The Dpu an owned interface was created for ("" when not ours).
fn owner_of(l: &Link) -> &str {
    l.alias
        .as_deref()
        .and_then(|a| a.strip_prefix(OWNER_TAG))
        .unwrap_or("")
}

/// Is `l` a bridge the agent created?
pub(super) fn owned(l: &Link) -> bool {
    l.is_bridge && l.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_TAG))
}

/// Bring the host to `desired`. With `dry_run`, nothing is written and the
/// outcome lists what would change. Callers run [`check::preflight`] first;
/// the references are checked here before the first change (the netdevs of
/// VFs this apply creates once more after the VF counts): a failed check is
/// an [`NetError::Invalid`] and nothing (else) is changed. `owned_state` is
/// updated as addresses are added and removed, also when the pass fails
/// half-way: save it either way.
pub async fn reconcile(
    nl: &Netlink,
    sysfs: &Sysfs,
    desired: &Desired,
    owned_state: &mut Owned,
    dry_run: bool,
) -> Result<Outcome, NetError> {
    let mut out = Outcome::default();
    // Every reference, before the first change; VF ports this apply
    // creates are let through until their VFs exist.
    let mut ports = resolve_all(sysfs, desired).await;
    let mut snap = nl.snapshot().await?;
    check::references(desired, &snap, &ports, true)?;
    if !desired.sriov.is_empty() {
        sriov(sysfs, desired, dry_run, &mut out).await;
        vf_attributes(nl, sysfs, desired, dry_run, &mut out).await;
        // Now the VF netdevs exist (or never will): check them, still
        // before any bridge, port, address or route change.
        ports = resolve_all(sysfs, desired).await;
        snap = nl.snapshot().await?;
        check::references(desired, &snap, &ports, dry_run).map_err(|e| match e {
            NetError::Invalid { dpu, field, reason } if out.changes > 0 => NetError::Invalid {
                dpu,
                field,
                reason: format!("{reason} (the VF counts were written first; {NOTHING_ELSE})"),
            },
            e => e,
        })?;
    }

    // Bridges: create, MTU, up.
    for b in desired.bridges.values() {
        let obj = format!("bridge {}", b.name);
        match ensure_bridge(nl, &snap, b, owned_state, dry_run, &mut out).await {
            Ok(()) => out.ok(&b.dpu, obj),
            Err(e) => out.failed(&b.dpu, obj, &e),
        }
    }
    if !dry_run {
        snap = nl.snapshot().await?;
    }
    // Which desired bridge each port interface belongs on.
    let mut home: BTreeMap<&str, &str> = BTreeMap::new();
    for b in desired.bridges.values() {
        for p in &b.ports {
            if let Some(Ok(name)) = ports.get(p) {
                home.insert(name, &b.name);
            }
        }
    }

    // Ports on owned bridges that are desired nowhere: detach (never
    // delete). A port desired on another bridge is moved there by the
    // attach below, in one change.
    for l in &snap.links {
        let Some(ctrl) = l.controller.and_then(|c| snap.by_index(c)) else {
            continue;
        };
        if owned(ctrl) && !home.contains_key(l.name.as_str()) {
            out.changed(owner_of(ctrl), format!("detach {} from {}", l.name, ctrl.name));
            if !dry_run {
                nl.detach(l).await?;
            }
        }
    }

    // Ports and addresses of each bridge.
    for b in desired.bridges.values() {
        let Some(br) = snap.link(&b.name).filter(|l| owned(l) || dry_run).cloned() else {
            continue;
        };
        for p in &b.ports {
            let obj = format!("port {p} -> {}", b.name);
            let name = ports
                .get(p)
                .cloned()
                .unwrap_or_else(|| Err(format!("{p} was not resolved")));
            match attach(nl, &snap, &br, name, b.mtu, dry_run, &mut out).await {
                Ok(()) => out.ok(&b.dpu, obj),
                Err(e) => out.failed(&b.dpu, obj, &e),
            }
        }
        addresses(nl, &snap, &br, b, owned_state, dry_run, &mut out).await?;
    }

    // Routes before bridges go: an obsolete route may hang off one.
    routes::reconcile(nl, &snap, desired, dry_run, &mut out).await?;

    // Owned bridges that are no longer desired: delete.
    for l in snap
        .links
        .iter()
        .filter(|l| owned(l) && !desired.bridges.contains_key(&l.name))
    {
        out.changed(owner_of(l), format!("delete bridge {}", l.name));
        if !dry_run {
            nl.delete(l).await?;
            owned_state.addresses.remove(&l.name);
        }
    }
    if !dry_run {
        owned_state
            .addresses
            .retain(|b, a| desired.bridges.contains_key(b) && !a.is_empty());
    }
    Ok(out)
}

/// The addresses of owned bridge `br`: add the desired ones it lacks
/// (recording each one added), and remove those no longer desired that the
/// record says the agent added. An address that was already there is not
/// recorded: someone else made it, and it stays when it is no longer listed.
async fn addresses(
    nl: &Netlink,
    snap: &Snapshot,
    br: &Link,
    b: &super::model::BridgeSpec,
    owned_state: &mut Owned,
    dry_run: bool,
    out: &mut Outcome,
) -> Result<(), NetError> {
    let have: BTreeSet<IpNetwork> = snap.addrs.get(&br.index).into_iter().flatten().copied().collect();
    for a in &b.addresses {
        let obj = format!("address {a} on {}", b.name);
        if have.contains(a) {
            out.ok(&b.dpu, obj);
            continue;
        }
        out.changed(&b.dpu, format!("add {obj}"));
        if dry_run {
            out.ok(&b.dpu, obj);
            continue;
        }
        match nl.add_address(br, *a).await {
            Ok(()) => {
                owned_state.on(&b.name).insert(*a);
                out.ok(&b.dpu, obj);
            }
            Err(e) => out.failed(&b.dpu, obj, &e),
        }
    }
    let mine: Vec<IpNetwork> = owned_state.on(&b.name).iter().copied().collect();
    for a in mine.into_iter().filter(|a| !b.addresses.contains(a)) {
        if have.contains(&a) {
            out.changed(&b.dpu, format!("remove address {a} from {}", b.name));
            if dry_run {
                continue;
            }
            nl.del_address(br, a).await?;
        }
        if !dry_run {
            owned_state.on(&b.name).remove(&a);
        }
    }
    Ok(())
}

async fn ensure_bridge(
    nl: &Netlink,
    snap: &Snapshot,
    b: &super::model::BridgeSpec,
    owned_state: &mut Owned,
    dry_run: bool,
    out: &mut Outcome,
) -> Result<(), NetError> {
    let link = match snap.link(&b.name) {
        Some(l) if !owned(l) => {
            return Err(NetError::Foreign {
                ifname: b.name.clone(),
            });
        }
        Some(l) => l.clone(),
        None => {
            out.changed(&b.dpu, format!("create bridge {}", b.name));
            if dry_run {
                return Ok(());
            }
            // A new bridge has none of the addresses recorded for an
            // earlier one of the same name.
            owned_state.addresses.remove(&b.name);
            let index = nl.create_bridge(&b.name, &owner_tag(&b.dpu)).await?;
            Link {
                index,
                name: b.name.clone(),
                mtu: 0,
                up: false,
                controller: None,
                alias: Some(owner_tag(&b.dpu)),
                is_bridge: true,
            }
        }
    };
    if b.mtu != 0 && link.mtu != b.mtu {
        out.changed(&b.dpu, format!("set mtu {} on {}", b.mtu, b.name));
        if !dry_run {
            nl.set_mtu(&link, b.mtu).await?;
        }
    }
    if !link.up {
        out.changed(&b.dpu, format!("set {} up", b.name));
        if !dry_run {
            nl.set_up(&link).await?;
        }
    }
    Ok(())
}

/// The interface name a port reference stands for.
pub fn resolve(sysfs: &Sysfs, p: &PortRef) -> Result<String, NetError> {
    match p {
        PortRef::Name(n) => Ok(n.clone()),
        PortRef::Pci(bdf) => sysfs.netdev_of_pci(bdf),
        PortRef::Vf { pf, index } => sysfs.netdev_of_vf(pf, *index),
    }
}

/// Every desired port's interface name (or why it has none), read from sysfs
/// once per pass and off the async runtime.
async fn resolve_all(sysfs: &Sysfs, desired: &Desired) -> BTreeMap<PortRef, Result<String, String>> {
    let refs: Vec<PortRef> = desired
        .bridges
        .values()
        .flat_map(|b| b.ports.iter().cloned())
        .collect();
    let sysfs = sysfs.clone();
    tokio::task::spawn_blocking(move || {
        refs.into_iter()
            .map(|p| {
                let r = resolve(&sysfs, &p).map_err(|e| e.to_string());
                (p, r)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn attach(
    nl: &Netlink,
    snap: &Snapshot,
    br: &Link,
    name: Result<String, String>,
    mtu: u32,
    dry_run: bool,
    out: &mut Outcome,
) -> Result<(), NetError> {
    let name = name.map_err(|reason| NetError::Port { reason })?;
    let l = snap
        .link(&name)
        .ok_or(NetError::NoSuchInterface { ifname: name.clone() })?;
    if mtu != 0 && l.mtu != mtu {
        out.changed(owner_of(br), format!("set mtu {mtu} on {name}"));
        if !dry_run {
            nl.set_mtu(l, mtu).await?;
        }
    }
    if l.controller != Some(br.index) {
        out.changed(owner_of(br), format!("attach {name} to {}", br.name));
        if !dry_run {
            nl.set_controller(l, br.index).await?;
        }
    }
    if !l.up {
        out.changed(owner_of(br), format!("set {name} up"));
        if !dry_run {
            nl.set_up(l).await?;
        }
    }
    Ok(())
}

async fn sriov(sysfs: &Sysfs, desired: &Desired, dry_run: bool, out: &mut Outcome) {
    for s in &desired.sriov {
        let obj = format!("vfs {} = {}", s.pf, s.num_vfs);
        let sysfs = sysfs.clone();
        let (pf, n) = (s.pf.clone(), s.num_vfs);
        // The writes made are counted even when the VFs then fail to appear.
        let r = tokio::task::spawn_blocking(move || {
            let writes = sysfs.ensure_num_vfs(&pf, n, dry_run)?;
            let waited = if !writes.is_empty() && !dry_run {
                sysfs.wait_vf_netdevs(&pf, n)
            } else {
                Ok(())
            };
            Ok((writes, waited))
        })
        .await
        .unwrap_or_else(|e| {
            Err(NetError::Sysfs {
                path: "spawn_blocking".into(),
                op: "join",
                source: std::io::Error::other(e),
            })
        });
        match r {
            Ok((writes, waited)) => {
                for w in writes {
                    out.changed(&s.dpu, w);
                }
                match waited {
                    Ok(()) => out.ok(&s.dpu, obj),
                    Err(e) => out.failed(&s.dpu, obj, &e),
                }
            }
            Err(e) => out.failed(&s.dpu, obj, &e),
        }
    }
}

/// VF attributes: read each PF's VF list once and send only what differs.
async fn vf_attributes(nl: &Netlink, sysfs: &Sysfs, desired: &Desired, dry_run: bool, out: &mut Outcome) {
    for s in desired.sriov.iter().filter(|s| !s.vfs.is_empty()) {
        let obj = format!("vf attributes on {}", s.pf);
        let pf = match s.pf.strip_prefix("pci:") {
            Some(bdf) => {
                let (sysfs, bdf) = (sysfs.clone(), bdf.to_string());
                tokio::task::spawn_blocking(move || sysfs.netdev_of_pci(&bdf))
                    .await
                    .unwrap_or_else(|e| {
                        Err(NetError::Port {
                            reason: e.to_string(),
                        })
                    })
            }
            None => Ok(s.pf.clone()),
        };
        let r = async {
            let pf = pf?;
            let (index, cur) = nl.vfs_of(&pf).await?;
            let mut infos = Vec::new();
            for want in &s.vfs {
                let (i, what) = vf::vf_changes(want, &cur.get(&want.index).cloned().unwrap_or_default());
                infos.extend(i);
                for w in what {
                    out.changed(&s.dpu, format!("set {w} on {pf}"));
                }
            }
            if !infos.is_empty() && !dry_run {
                nl.set_vfs(index, &pf, infos).await?;
            }
            Ok::<(), NetError>(())
        }
        .await;
        match r {
            Ok(()) => out.ok(&s.dpu, obj),
            Err(e) => out.failed(&s.dpu, obj, &e),
        }
    }
}
