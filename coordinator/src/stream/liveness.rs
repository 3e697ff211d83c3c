//! Agent leases, in memory per node. Every message from an agent extends its
//! node's lease; a task marks nodes whose lease lapsed Unreachable in the
//! store. The store is written only on transitions, and each write re-checks
//! the in-memory state inside its transaction, so a message racing an expiry
//! cannot leave the store saying the opposite of the lease.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hostplane_proto::v1::{Kind, Resource, resource};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fsm::util::set_condition;
use crate::store::{Store, StoreError, now_ms};

pub const COND_REACHABLE: &str = "Reachable";

#[derive(Debug, Clone, Copy)]
struct Lease {
    expires: Instant,
    /// What the store says (or is about to say) about the node.
    reachable: bool,
}

#[derive(Debug)]
pub struct Liveness {
    lease: Duration,
    nodes: Mutex<HashMap<String, Lease>>,
}

impl Liveness {
    pub fn new(lease: Duration) -> Liveness {
        Liveness {
            lease,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extend `node`'s lease. True when the node was Unreachable (the caller
    /// records that it is reachable again).
    pub fn touch(&self, node: &str) -> bool {
        let expires = Instant::now() + self.lease;
        let mut m = self.lock();
        // Every agent message comes here: no allocation for a known node.
        if let Some(l) = m.get_mut(node) {
            l.expires = expires;
            return !std::mem::replace(&mut l.reachable, true);
        }
        m.insert(
            node.to_string(),
            Lease {
                expires,
                reachable: true,
            },
        );
        true
    }

    /// Give nodes the store shows reachable one lease from now (after a coordinator restart).
    pub fn adopt(&self, node: &str) {
        let expires = Instant::now() + self.lease;
        self.lock().entry(node.to_string()).or_insert(Lease {
            expires,
            reachable: true,
        });
    }

    /// Drop a node's lease (the node does not exist).
    pub fn forget(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Nodes whose lease lapsed since the last call; they are now Unreachable.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (name, l) in self.lock().iter_mut() {
            if l.reachable && l.expires <= now {
                l.reachable = false;
                out.push(name.clone());
            }
        }
        out.sort();
        out
    }

    pub fn is_reachable(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|l| l.reachable)
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Write a node's reachability, if the lease still agrees. Only transitions are written.
pub fn write_reachable(
    t: &mut crate::store::Txn<'_>,
    live: &Liveness,
    node: &str,
    reachable: bool,
) -> Result<bool, StoreError> {
    if live.is_reachable(node) != reachable {
        return Ok(false);
    }
    let Some(Resource {
        kind: Some(resource::Kind::Node(mut n)),
    }) = t.get(Kind::Node, node)?
    else {
        return Ok(false);
    };
    let now = now_ms();
    let st = n.status.get_or_insert_default();
    if st.reachable == reachable {
        return Ok(false);
    }
    st.reachable = reachable;
    if reachable {
        st.last_seen_ms = now;
        st.lease_expires_at_ms = now + live.lease().as_millis() as i64;
        set_condition(
            &mut st.conditions,
            COND_REACHABLE,
            "True",
            "LeaseRenewed",
            "the agent is heard from again",
            now,
        );
    } else {
        let msg = format!(
            "the agent of node {node} has not been heard from since {} ms (lease {}); work that needs it waits",
            st.last_seen_ms,
            crate::fsm::util::fmt_duration(live.lease())
        );
        set_condition(
            &mut st.conditions,
            COND_REACHABLE,
            "False",
            "LeaseExpired",
            &msg,
            now,
        );
    }
    t.update(n.into())?;
    Ok(true)
}

/// Marks lapsed leases Unreachable until `stop`, or until the service is gone.
pub async fn run_expiry(
    owner: Weak<super::Shared>,
    live: Arc<Liveness>,
    store: Store,
    stop: CancellationToken,
) {
    // A restarted coordinator has no leases: the nodes the store shows
    // reachable get one lease to reconnect before they are marked Unreachable.
    let reachable: Vec<String> = store
        .view()
        .nodes
        .iter()
        .filter(|(_, n)| n.status.as_ref().is_some_and(|s| s.reachable))
        .map(|(name, _)| name.clone())
        .collect();
    for name in reachable {
        live.adopt(&name);
    }
    let tick = (live.lease() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if owner.upgrade().is_none() {
            return;
        }
        let expired = live.expire(Instant::now());
        if expired.is_empty() {
            continue;
        }
        let l = live.clone();
        let names = expired.clone();
        let r = store
            .write(move |t| {
                let mut written = Vec::new();
                for n in names {
                    if write_reachable(t, &l, &n, false)? {
                        written.push(n);
                    }
                }
                Ok::<_, StoreError>(written)
            })
            .await;
        match r {
            Ok(written) => {
                for node in written {
                    tracing::warn!(node = %node, lease = ?live.lease(), "agent lease expired; node is Unreachable");
                }
            }
            Err(e) => tracing::error!(error = %e, nodes = ?expired, "cannot mark nodes Unreachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_lapse_once_and_come_back_on_touch() {
        let l = Liveness::new(Duration::from_secs(15));
        assert!(l.touch("n1"), "a first message makes the node reachable");
        assert!(!l.touch("n1"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(l.expire(Instant::now()).is_empty());
        l.touch("n1");
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(
            l.expire(Instant::now()).is_empty(),
            "the touch extended the lease"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.expire(Instant::now()), ["n1"]);
        assert!(l.expire(Instant::now()).is_empty(), "expiry is reported once");
        assert!(!l.is_reachable("n1"));
        assert!(l.touch("n1"), "the next message brings it back");
        l.adopt("n2");
        tokio::time::advance(Duration::from_secs(16)).await;
        assert_eq!(l.expire(Instant::now()), ["n1", "n2"]);
    }
}
