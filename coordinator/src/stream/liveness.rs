//! Agent leases, in memory per node. Every message from an agent extends its
//! node's lease; a task marks nodes whose lease lapsed Unreachable in the
//! store. The store is written only on transitions, and each write re-checks
//! the in-memory state inside its transaction, so a message racing an expiry
//! cannot leave the store saying the opposite of the lease.
//!
//! With several replicas on PostgreSQL (docs/ha.md §5;
//! [`Liveness::set_replica`]) each replica still keeps the leases of its own
//! agents in memory, and records in `sessions` which nodes it serves
//! (renewed for all of them in one statement every `lease / 3`, and at the
//! next tick for a node it newly serves). A row lasts as long as the lease
//! there plus one renewal period, and a replica takes another's row only
//! with a later end, so when an agent moves, the replica it now talks to
//! holds the row, not the one it left (store/sessions.rs).
//!
//! A lapsed lease is marked Unreachable only when no other replica holds a
//! live session for the node, checked in the marking transaction; a
//! follower marks only nodes whose agent it served, and the leader also
//! watches every node the view shows reachable, so a node whose replica
//! died (its `sessions` row expires) is marked Unreachable within about two
//! leases. A replica whose agent is connected marks its node reachable again
//! if another's mark raced the session's start. On SQLite, or without a
//! replica, the task works as it always did.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use hostplane_proto::v1::{Kind, Resource, resource};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fsm::util::set_condition;
use crate::ha::Role;
use crate::store::{Store, StoreError, Txn, now_ms};

pub const COND_REACHABLE: &str = "Reachable";

#[derive(Debug, Clone, Copy)]
struct Lease {
    expires: Instant,
    /// What the store says (or is about to say) about the node.
    reachable: bool,
    /// An agent on this replica was heard from since the node was adopted
    /// (after a start, or as the leader watching a node another replica
    /// serves). Only these are recorded in `sessions`.
    held: bool,
}

/// This replica, when several share a PostgreSQL store.
#[derive(Debug)]
struct Replica {
    name: String,
    role: watch::Receiver<Role>,
}

#[derive(Debug)]
pub struct Liveness {
    lease: Duration,
    nodes: Mutex<HashMap<String, Lease>>,
    replica: OnceLock<Replica>,
    /// A node became held since the last renewal of `sessions`.
    newly_held: AtomicBool,
}

impl Liveness {
    pub fn new(lease: Duration) -> Liveness {
        Liveness {
            lease,
            nodes: Mutex::new(HashMap::new()),
            replica: OnceLock::new(),
            newly_held: AtomicBool::new(false),
        }
    }

    /// Run as replica `name` of several on PostgreSQL, leading while `role`
    /// says so (docs/ha.md §5). Call before the expiry task starts; a second
    /// call is refused (false). Without it, or on SQLite, this coordinator
    /// is the only one: it adopts and marks every node, as it always did.
    pub fn set_replica(&self, name: String, role: watch::Receiver<Role>) -> bool {
        self.replica.set(Replica { name, role }).is_ok()
    }

    /// This replica's name, when one was set.
    pub fn replica_name(&self) -> Option<&str> {
        self.replica.get().map(|r| r.name.as_str())
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
            if !std::mem::replace(&mut l.held, true) {
                self.newly_held.store(true, Ordering::Relaxed);
            }
            return !std::mem::replace(&mut l.reachable, true);
        }
        m.insert(
            node.to_string(),
            Lease {
                expires,
                reachable: true,
                held: true,
            },
        );
        self.newly_held.store(true, Ordering::Relaxed);
        true
    }

    /// Give nodes the store shows reachable one lease from now (after a coordinator restart).
    pub fn adopt(&self, node: &str) {
        let expires = Instant::now() + self.lease;
        self.lock().entry(node.to_string()).or_insert(Lease {
            expires,
            reachable: true,
            held: false,
        });
    }

    /// Adopt each of `nodes` (reachable in the store) that this replica does
    /// not watch yet, or has marked Unreachable since (another replica
    /// brought it back): they get one lease from now. Returns how many.
    fn adopt_all<'n>(&self, nodes: impl Iterator<Item = &'n str>) -> usize {
        let expires = Instant::now() + self.lease;
        let fresh = Lease {
            expires,
            reachable: true,
            held: false,
        };
        let mut m = self.lock();
        let mut n = 0;
        for name in nodes {
            match m.get_mut(name) {
                Some(l) if l.reachable => {}
                Some(l) => {
                    *l = fresh;
                    n += 1;
                }
                None => {
                    m.insert(name.to_string(), fresh);
                    n += 1;
                }
            }
        }
        n
    }

    /// A lapsed node another replica serves: the leader watches it one more
    /// lease (unless its agent came back here meanwhile).
    fn readopt(&self, node: &str) {
        let expires = Instant::now() + self.lease;
        if let Some(l) = self.lock().get_mut(node)
            && !l.reachable
        {
            *l = Lease {
                expires,
                reachable: true,
                held: false,
            };
        }
    }

    /// Drop a lapsed node this replica does not mark (unless its agent came
    /// back here meanwhile).
    fn drop_lapsed(&self, node: &str) {
        let mut m = self.lock();
        if m.get(node).is_some_and(|l| !l.reachable) {
            m.remove(node);
        }
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

    /// Whether an agent on this replica was heard from since the node was adopted.
    fn is_held(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|l| l.held)
    }

    /// The nodes whose agents this replica serves now (held, lease live),
    /// sorted, each with how long its `sessions` row should last from now:
    /// the rest of its lease plus one renewal period, so the row outlives
    /// the lease between two renewals and ends after the agent's last
    /// message by the same amount on every replica (sessions.rs).
    fn held_nodes(&self, now: Instant) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .lock()
            .iter()
            .filter(|(_, l)| l.held && l.reachable && l.expires > now)
            .map(|(n, l)| (n.clone(), self.session_for(l.expires - now)))
            .collect();
        out.sort();
        out
    }

    /// How long a `sessions` row lasts for a lease with `rest` left.
    fn session_for(&self, rest: Duration) -> Duration {
        rest + self.lease / 3
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Record in `sessions` that this replica serves `node` (PostgreSQL with a
/// replica set; a no-op otherwise), in the caller's transaction: a write
/// that says the node is reachable should also say who serves it, so a
/// replica that marks lapsed leases in a later transaction sees the row.
pub(crate) fn claim_session(t: &mut Txn<'_>, live: &Liveness, node: &str) -> Result<(), StoreError> {
    if let Some(me) = live.replica_name() {
        t.renew_sessions(me, &[(node.to_string(), live.session_for(live.lease()))])?;
    }
    Ok(())
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
    if reachable {
        claim_session(t, live, node)?;
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

/// Mark `nodes` reachable or Unreachable in one write; the nodes whose
/// mark changed.
async fn mark(
    store: &Store,
    live: &Arc<Liveness>,
    nodes: Vec<String>,
    reachable: bool,
) -> Result<Vec<String>, StoreError> {
    let l = live.clone();
    store
        .write(move |t| {
            let mut written = Vec::new();
            for n in nodes {
                if write_reachable(t, &l, &n, reachable)? {
                    written.push(n);
                }
            }
            Ok::<_, StoreError>(written)
        })
        .await
}

/// Marks lapsed leases Unreachable until `stop`, or until the service is gone.
pub async fn run_expiry(
    owner: Weak<super::Shared>,
    live: Arc<Liveness>,
    store: Store,
    stop: CancellationToken,
) {
    expire_until(owner, live, store, stop).await
}

/// What one replicated expiry transaction decided about lapsed nodes.
#[derive(Debug, Default)]
struct Lapsed {
    /// Marked Unreachable by this transaction.
    written: Vec<String>,
    /// Served by another replica (node, replica).
    elsewhere: Vec<(String, String)>,
    /// Neither held here nor ours to mark (a follower's adopted nodes).
    not_ours: Vec<String>,
}

/// [`run_expiry`] for any owner (tests hold a plain `Arc`).
async fn expire_until<O>(owner: Weak<O>, live: Arc<Liveness>, store: Store, stop: CancellationToken) {
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
    let renew_every = live.lease() / 3;
    // Whether the store shares sessions (PostgreSQL), once known; only asked
    // when a replica was set.
    let mut shared: Option<bool> = None;
    let mut next_renew = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if owner.upgrade().is_none() {
            return;
        }
        let replica = match live.replica.get() {
            Some(r) => {
                if shared.is_none() {
                    shared = probe_shared(&store).await;
                }
                match shared {
                    Some(true) => Some(r),
                    Some(false) => None,
                    // Not known yet: mark nothing rather than guess.
                    None => continue,
                }
            }
            None => None,
        };
        let Some(replica) = replica else {
            expire_alone(&live, &store).await;
            continue;
        };
        let leader = replica.role.borrow().is_leader();
        if leader {
            watch_reachable(&live, &store);
        }
        repair_held(&live, &store).await;
        let now = Instant::now();
        if (now >= next_renew || live.newly_held.load(Ordering::Relaxed))
            && renew(&live, &store, &replica.name).await
        {
            next_renew = now + renew_every;
        }
        expire_replicated(&live, &store, &replica.name, leader).await;
    }
}

/// Whether `store` runs on PostgreSQL; `None` when it cannot be asked now.
async fn probe_shared(store: &Store) -> Option<bool> {
    match store.read(|t| Ok::<_, StoreError>(t.shares_sessions())).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the store whether replicas share agent sessions; retrying");
            None
        }
    }
}

/// One coordinator (SQLite, or no replica set): every lapsed lease is marked.
async fn expire_alone(live: &Arc<Liveness>, store: &Store) {
    let expired = live.expire(Instant::now());
    if expired.is_empty() {
        return;
    }
    match mark(store, live, expired.clone(), false).await {
        Ok(written) => {
            for node in written {
                tracing::warn!(node = %node, lease = ?live.lease(), "agent lease expired; node is Unreachable");
            }
        }
        Err(e) => tracing::error!(error = %e, nodes = ?expired, "cannot mark nodes Unreachable"),
    }
}

/// The leader watches every node the view shows reachable: one whose
/// replica died is then marked when its lease here lapses and its
/// `sessions` row has expired.
fn watch_reachable(live: &Liveness, store: &Store) {
    let view = store.view();
    let n = live.adopt_all(
        view.nodes
            .iter()
            .filter(|(_, n)| n.status.as_ref().is_some_and(|s| s.reachable))
            .map(|(name, _)| name.as_str()),
    );
    drop(view);
    if n > 0 {
        tracing::debug!(nodes = n, "leader watches reachable nodes no lease here covered");
    }
}

/// Nodes whose agents this replica serves but the store shows Unreachable
/// are marked reachable again. A mark can race a session's start: the
/// leader's marking transaction may commit after the Hello that made the
/// node reachable and before this replica's first renewal of its session,
/// and no later message would write the node back (the lease here never
/// lapsed). The view is in memory; the store is written only for such nodes.
async fn repair_held(live: &Arc<Liveness>, store: &Store) {
    let now = Instant::now();
    let wrong: Vec<String> = {
        let view = store.view();
        live.held_nodes(now)
            .into_iter()
            .filter(|(n, _)| {
                view.nodes
                    .get(n)
                    .is_some_and(|x| !x.status.as_ref().is_some_and(|s| s.reachable))
            })
            .map(|(n, _)| n)
            .collect()
    };
    if wrong.is_empty() {
        return;
    }
    match mark(store, live, wrong.clone(), true).await {
        Ok(written) => {
            for node in written {
                tracing::warn!(node = %node, "node was marked Unreachable while its agent is connected here; reachable again");
            }
        }
        Err(e) => tracing::error!(error = %e, nodes = ?wrong, "cannot mark nodes reachable again"),
    }
}

/// Renew `sessions` for every node this replica serves. False when the
/// write failed (retried at the next tick).
async fn renew(live: &Liveness, store: &Store, me: &str) -> bool {
    live.newly_held.store(false, Ordering::Relaxed);
    let nodes = live.held_nodes(Instant::now());
    if nodes.is_empty() {
        return true;
    }
    let (me, count) = (me.to_string(), nodes.len());
    match store.write(move |t| t.renew_sessions(&me, &nodes)).await {
        Ok(_) => true,
        Err(e) => {
            live.newly_held.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, nodes = count, "cannot renew this replica's agent sessions");
            false
        }
    }
}

/// Lapsed leases with several replicas: in one transaction, skip the nodes
/// another replica holds a live session for (the leader watches them one
/// more lease, a follower lets them go), mark the rest Unreachable if this
/// replica served them or leads, and end this replica's sessions of them.
async fn expire_replicated(live: &Arc<Liveness>, store: &Store, me: &str, leader: bool) {
    let expired = live.expire(Instant::now());
    if expired.is_empty() {
        return;
    }
    let (l, names, me_owned) = (live.clone(), expired.clone(), me.to_string());
    let r = store
        .write(move |t| {
            let served = t.live_sessions(&names)?;
            let mut out = Lapsed::default();
            for n in names {
                match served.get(&n) {
                    Some(other) if *other != me_owned => {
                        out.elsewhere.push((n, other.clone()));
                        continue;
                    }
                    _ => {}
                }
                if !leader && !l.is_held(&n) {
                    out.not_ours.push(n);
                    continue;
                }
                if write_reachable(t, &l, &n, false)? {
                    out.written.push(n.clone());
                }
                t.end_session(&me_owned, &n)?;
            }
            Ok::<_, StoreError>(out)
        })
        .await;
    match r {
        Ok(out) => {
            for node in out.written {
                tracing::warn!(node = %node, lease = ?live.lease(), "agent lease expired; node is Unreachable");
            }
            for (node, other) in out.elsewhere {
                tracing::debug!(node = %node, replica = %other, "lease lapsed here; another replica serves the agent");
                if leader {
                    live.readopt(&node);
                } else {
                    live.drop_lapsed(&node);
                }
            }
            for node in out.not_ours {
                live.drop_lapsed(&node);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, nodes = ?expired, "cannot mark nodes Unreachable");
            // The leader's watch of reachable nodes adopts them again, so
            // the marks are retried one lease later.
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

    use hostplane_proto::v1::RebootMethod;

    use crate::fsm::testing::node;
    use crate::store::test_backend::Backend;

    const LEASE: Duration = Duration::from_millis(300);

    /// One replica's liveness task on `store`, leading or not.
    struct Replica {
        live: Arc<Liveness>,
        role: watch::Sender<Role>,
        _owner: Arc<()>,
        stop: CancellationToken,
    }

    fn follower() -> Role {
        Role::Follower { leader: None }
    }

    fn start(store: &Store, name: &str, role: Role) -> Replica {
        let live = Arc::new(Liveness::new(LEASE));
        let (tx, rx) = watch::channel(role);
        assert!(live.set_replica(name.into(), rx));
        assert!(
            !live.set_replica(name.into(), tx.subscribe()),
            "a second replica is refused"
        );
        let owner = Arc::new(());
        let stop = CancellationToken::new();
        tokio::spawn(expire_until(
            Arc::downgrade(&owner),
            live.clone(),
            store.clone(),
            stop.clone(),
        ));
        Replica {
            live,
            role: tx,
            _owner: owner,
            stop,
        }
    }

    /// An agent of `node` connected to the replica of `live` on `store`: a
    /// message every 50 ms, as the session does with each (session.rs).
    fn agent(store: &Store, live: &Arc<Liveness>, node: &str) -> CancellationToken {
        let (store, live, node) = (store.clone(), live.clone(), node.to_string());
        let gone = CancellationToken::new();
        let g = gone.clone();
        tokio::spawn(async move {
            while !g.is_cancelled() {
                if live.touch(&node) {
                    let (l, n) = (live.clone(), node.clone());
                    store
                        .write(move |t| write_reachable(t, &l, &n, true))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        gone
    }

    /// What the database says (not a replica's view).
    async fn reachable(s: &Store, n: &str) -> bool {
        let n = n.to_string();
        let r = s.read(move |t| t.get(Kind::Node, &n)).await.unwrap();
        match r.and_then(|r| r.kind) {
            Some(resource::Kind::Node(n)) => n.status.is_some_and(|s| s.reachable),
            other => panic!("not a node: {other:?}"),
        }
    }

    /// `n` stays reachable for `d`, checked every 25 ms.
    async fn stays_reachable(s: &Store, n: &str, d: Duration, why: &str) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            assert!(reachable(s, n).await, "{n} was marked Unreachable: {why}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// How long until `n` is Unreachable (panics past `limit`).
    async fn until_unreachable(s: &Store, n: &str, limit: Duration, why: &str) -> Duration {
        let t0 = Instant::now();
        while reachable(s, n).await {
            assert!(t0.elapsed() < limit, "{n} still reachable after {limit:?}: {why}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t0.elapsed()
    }

    async fn add_node(s: &Store, name: &str) {
        let r = node(name, RebootMethod::Unspecified);
        s.write(move |t| t.insert(r)).await.unwrap();
    }

    async fn session_of(s: &Store, n: &str) -> Option<String> {
        let n = n.to_string();
        s.read(move |t| t.live_sessions(std::slice::from_ref(&n)))
            .await
            .unwrap()
            .into_values()
            .next()
    }

    /// Two stores on one database are two replicas.
    fn two_replicas() -> Option<(Backend, Store, Store)> {
        let b = Backend::postgres()?;
        let (sa, sb) = (b.open(), b.open());
        Some((b, sa, sb))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_moved_is_not_marked_by_the_replica_it_left_and_a_dead_replicas_node_is() {
        let Some((_b, sa, sb)) = two_replicas() else {
            return;
        };
        add_node(&sa, "n1").await;
        let a = start(&sa, "a", Role::Leader { epoch: 1 });
        let b = start(&sb, "b", follower());

        // The agent on the leader, then on the follower.
        let on_a = agent(&sa, &a.live, "n1");
        stays_reachable(&sa, "n1", 2 * LEASE, "the agent is connected to a").await;
        assert_eq!(session_of(&sa, "n1").await.as_deref(), Some("a"));
        on_a.cancel();
        let on_b = agent(&sb, &b.live, "n1");
        stays_reachable(
            &sa,
            "n1",
            5 * LEASE,
            "the agent moved to replica b, whose session the leader a must see",
        )
        .await;
        assert_eq!(session_of(&sa, "n1").await.as_deref(), Some("b"));
        // The leader watches n1 again (between its lapses, each checked
        // against b's session), but does not serve it.
        let t0 = Instant::now();
        while !a.live.is_reachable("n1") || a.live.is_held("n1") {
            assert!(
                t0.elapsed() < LEASE,
                "the leader neither watches n1 nor lets a serve it"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Replica b dies (no more renewals, no marks of its own) and its agent
        // with it: the leader marks n1 once b's session row expired.
        b.stop.cancel();
        on_b.cancel();
        tokio::time::sleep(LEASE / 2).await;
        assert!(
            reachable(&sa, "n1").await,
            "b's session row is still live half a lease after its last renewal"
        );
        let took =
            until_unreachable(&sa, "n1", 8 * LEASE, "the leader must mark a dead replica's node").await;
        assert!(took <= 8 * LEASE, "{took:?}");
        assert_eq!(session_of(&sa, "n1").await, None);
        a.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replica_serving_a_node_marks_it_when_its_agent_goes() {
        let Some((_b, sa, sb)) = two_replicas() else {
            return;
        };
        add_node(&sa, "n1").await;
        let a = start(&sa, "a", Role::Leader { epoch: 1 });
        let b = start(&sb, "b", follower());
        let on_b = agent(&sb, &b.live, "n1");
        stays_reachable(&sa, "n1", 3 * LEASE, "the agent is connected to b").await;
        on_b.cancel();
        let took = until_unreachable(&sa, "n1", 8 * LEASE, "the agent is gone").await;
        assert!(
            took >= LEASE / 2,
            "marked after {took:?}, before its lease could lapse"
        );
        // b ends its own session row as it marks (or a finds it expired).
        let _ = until_none(&sa, "n1").await;
        // It comes back on b: reachable again, b's session again.
        let on_b = agent(&sb, &b.live, "n1");
        let t0 = Instant::now();
        while !reachable(&sa, "n1").await {
            assert!(
                t0.elapsed() < 4 * LEASE,
                "the agent's first message marks n1 reachable"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stays_reachable(&sa, "n1", 3 * LEASE, "the agent is back on b").await;
        assert_eq!(session_of(&sa, "n1").await.as_deref(), Some("b"));
        on_b.cancel();
        a.stop.cancel();
        b.stop.cancel();
    }

    async fn until_none(s: &Store, n: &str) -> Duration {
        let t0 = Instant::now();
        while session_of(s, n).await.is_some() {
            assert!(
                t0.elapsed() < 4 * LEASE,
                "the session row of {n} outlived its lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t0.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_marked_unreachable_while_its_agent_is_connected_here_comes_back() {
        let Some((_b, sa, sb)) = two_replicas() else {
            return;
        };
        add_node(&sa, "n1").await;
        let b = start(&sb, "b", follower());
        let on_b = agent(&sb, &b.live, "n1");
        stays_reachable(&sa, "n1", LEASE, "the agent is connected to b").await;
        // Another replica's mark lands (a leader racing b's first renewal).
        sa.write(|t| {
            let Some(Resource {
                kind: Some(resource::Kind::Node(mut n)),
            }) = t.get(Kind::Node, "n1")?
            else {
                panic!("n1 is gone");
            };
            n.status.get_or_insert_default().reachable = false;
            t.update(n.into())
        })
        .await
        .unwrap();
        assert!(b.live.is_reachable("n1"), "b's lease did not lapse");
        let t0 = Instant::now();
        while !reachable(&sa, "n1").await {
            assert!(
                t0.elapsed() < 2 * LEASE,
                "b serves n1 but left it Unreachable in the store"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        on_b.cancel();
        b.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_marks_a_reachable_node_no_replica_serves() {
        let Some((_b, sa, sb)) = two_replicas() else {
            return;
        };
        // Both tasks start before the node exists: only the leader's watch
        // of the view can pick it up (not the adoption at start).
        let a = start(&sa, "a", Role::Leader { epoch: 1 });
        let b = start(&sb, "b", follower());
        tokio::time::sleep(LEASE / 2).await;
        add_node(&sb, "orphan").await;
        let took = until_unreachable(&sa, "orphan", 8 * LEASE, "no replica serves it").await;
        assert!(took >= LEASE / 2, "marked after {took:?}: it must get one lease");
        assert!(!b.live.is_held("orphan"));
        a.stop.cancel();
        b.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_never_marks_a_node_it_never_held_until_it_leads() {
        let Some((_b, sa, _sb)) = two_replicas() else {
            return;
        };
        add_node(&sa, "n1").await;
        // Adopted at start as every replica does, but never served here.
        let f = start(&sa, "f", follower());
        stays_reachable(&sa, "n1", 5 * LEASE, "a follower marked a node it never held").await;
        assert!(
            !f.live.is_reachable("n1") && !f.live.is_held("n1"),
            "let go after the lapse"
        );
        // Leading now, it watches the node and marks it.
        f.role.send_replace(Role::Leader { epoch: 2 });
        until_unreachable(&sa, "n1", 8 * LEASE, "the new leader must mark an unserved node").await;
        f.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite_a_replica_marks_as_the_only_coordinator() {
        let b = Backend::sqlite();
        let s = b.open();
        add_node(&s, "n1").await;
        let before = s.stats().transactions;
        // Even as a "follower": SQLite has one coordinator, which marks.
        let f = start(&s, "f", follower());
        let took = until_unreachable(&s, "n1", 8 * LEASE, "SQLite marks every lapsed lease").await;
        assert!(took >= LEASE / 2, "{took:?}");
        assert_eq!(session_of(&s, "n1").await, None);
        // No renewals: at most the probe, the mark and this test's reads.
        let writes = s.stats().transactions - before;
        assert!(writes < 50, "{writes} transactions");
        f.stop.cancel();
    }
}
