//! Routes: the desired routes (kernel defaults filled in by the model) against
//! the agent's own routes in the main table (protocol 196).
//!
//! A route is identified as the kernel identifies it, by destination and
//! metric. The same key with another gateway, dev or scope is replaced in
//! place (`NLM_F_REPLACE`: one atomic change, so the host is never without
//! the route); a new key is added; an owned route whose key is no longer
//! desired is deleted.
use super::NetError;
use super::model::{Desired, RouteSpec};
use super::netlink::{KernelRoute, Netlink, Snapshot};
use super::reconcile::Outcome;

/// Does the kernel's route already say what `r` (out of `oif`) says?
fn same(k: &KernelRoute, r: &RouteSpec, oif: Option<u32>) -> bool {
    k.gateway == r.gateway && k.scope == r.scope() && (oif.is_none() || k.oif == oif)
}

fn describe(r: &RouteSpec) -> String {
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let dev = r.dev.as_deref().map(|d| format!(" dev {d}")).unwrap_or_default();
    format!("{}{via}{dev} metric {}", r.destination, r.metric)
}

pub(super) async fn reconcile(
    nl: &Netlink,
    snap: &Snapshot,
    desired: &Desired,
    dry_run: bool,
    out: &mut Outcome,
) -> Result<(), NetError> {
    let mut keep = vec![false; snap.routes.len()];
    for r in &desired.routes {
        let obj = format!("route {}", r.destination);
        let oif = match &r.dev {
            Some(dev) => match snap.link(dev) {
                Some(l) => Some(l.index),
                None if dry_run => None,
                None => {
                    out.failed(&r.dpu, obj, &NetError::NoSuchInterface { ifname: dev.clone() });
                    continue;
                }
            },
            None => None,
        };
        let mine = snap
            .routes
            .iter()
            .position(|k| (k.destination, k.metric) == r.key());
        let replace = match mine {
            Some(i) => {
                keep[i] = true;
                if same(&snap.routes[i], r, oif) {
                    out.ok(&r.dpu, obj);
                    continue;
                }
                true
            }
            None => false,
        };
        let verb = if replace { "replace" } else { "add" };
        out.changed(&r.dpu, format!("{verb} route {}", describe(r)));
        let res = if dry_run {
            Ok(())
        } else {
            nl.add_route(r, oif, replace).await
        };
        match res {
            Ok(()) => out.ok(&r.dpu, obj),
            Err(e) => out.failed(&r.dpu, obj, &e),
        }
    }
    for (k, keep) in snap.routes.iter().zip(keep) {
        if !keep {
            out.changed("", format!("delete route {} metric {}", k.destination, k.metric));
            if !dry_run {
                nl.del_route(k).await?;
            }
        }
    }
    Ok(())
}
