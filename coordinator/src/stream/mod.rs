//! The agent stream server (`hostplane.v1.AgentService/Session`), per
//! docs/agent-protocol.md: Hello first, then the node's whole desired state
//! (composed by [`crate::desired`]) with a version whenever it changes;
//! ACK/NACK, command progress and results, heartbeats; the agent's network
//! reports as Dpu conditions ([`network`]). Each session registers with the
//! [`Delivery`] map, so a change to one node's desired state wakes that
//! node's session only. Leases live in memory; a lapsed lease marks the node
//! Unreachable in the store.
mod liveness;
pub mod network;
mod session;
mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use hostplane_proto::v1::{AgentMessage, CoordinatorMessage};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::audit::{Audit, Record};
use crate::desired::{Delivery, Subscription};
use crate::power::PowerHub;
use crate::store::{Store, StoreError};

pub use liveness::COND_REACHABLE;
pub use network::COND_HOST_NETWORK;
pub use status::{AUTO_REGISTERED_LABEL, COND_APPLIED, COND_PRESENT};

/// Agent stream settings (the `agents:` section of the coordinator config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Lease granted to agents; a node whose agent is silent this long is
    /// Unreachable. Sent to agents in whole seconds (rounded up).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A session that sends no Hello within this long is refused.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// ACKed versions and command progress are written at most this often per session.
    #[serde(with = "humantime_serde")]
    pub status_flush: Duration,
    /// `node.status.last_seen_ms` (and `lease_expires_at_ms`) is written at
    /// most this often while an agent is quiet otherwise. Liveness itself is
    /// the in-memory lease: a lapse and a return are written at once, so this
    /// only bounds how stale the recorded time may be. Each write is a Node
    /// revision every watcher receives (1,000 a second at 10,000 nodes and
    /// 10 s), hence a minute by default.
    #[serde(with = "humantime_serde")]
    pub last_seen_interval: Duration,
    /// Auto-registration (off by default), as DPF's DPU discovery does: an
    /// rshim an agent reports (in Hello or a hot-plug inventory update) on a
    /// known Node with no Device for it gets one, named `<node>-<rshim>`,
    /// with the serial and PCI address (PF0) from the report and the label
    /// `hostplane.io/auto-registered: "true"`. An existing Device is never
    /// overwritten; a report without a serial is not registered (logged).
    /// Each creation is logged and audited.
    pub auto_register_devices: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            lease: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(30),
            status_flush: Duration::from_secs(1),
            last_seen_interval: Duration::from_secs(60),
            auto_register_devices: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the first message of a session must be Hello")]
    HelloFirst,
    #[error("no Hello within {0:?} of opening the session")]
    HelloTimeout(Duration),
    #[error("Hello.node_name is empty")]
    NoNodeName,
    #[error("node {node} is not registered; create it first")]
    UnknownNode { node: String },
    #[error("Hello may only be sent once per session (node {node})")]
    SecondHello { node: String },
    #[error("the client certificate identifies {identity:?}, which may not act for node {node}")]
    NotAuthorized { identity: String, node: String },
    #[error(
        "no node identity: this coordinator requires a client certificate (signed by its client CA, \
         subject CN = the node name) on agent sessions"
    )]
    NoIdentity,
    #[error("replaced by a newer session from node {node}")]
    Replaced { node: String },
    #[error(
        "the client certificate is no longer trusted after the coordinator reloaded its TLS files: {reason}"
    )]
    NoLongerTrusted { reason: String },
    #[error("coordinator is shutting down; reconnect")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<StreamError> for Status {
    fn from(e: StreamError) -> Status {
        let msg = e.to_string();
        match e {
            StreamError::HelloFirst | StreamError::NoNodeName | StreamError::SecondHello { .. } => {
                Status::invalid_argument(msg)
            }
            StreamError::HelloTimeout(_) => Status::deadline_exceeded(msg),
            StreamError::UnknownNode { .. } => Status::not_found(msg),
            StreamError::NotAuthorized { .. } => Status::permission_denied(msg),
            StreamError::NoIdentity | StreamError::NoLongerTrusted { .. } => Status::unauthenticated(msg),
            StreamError::Replaced { .. } => Status::aborted(msg),
            StreamError::ShuttingDown | StreamError::Store(_) => Status::unavailable(msg),
        }
    }
}

/// State shared by every session of one service.
pub(crate) struct Shared {
    live: Arc<liveness::Liveness>,
    /// Node -> the one current session per node.
    sessions: Mutex<HashMap<String, Registered>>,
    /// Session id -> why it was ended by [`AgentStream::revalidate`].
    untrusted: Mutex<HashMap<u64, String>>,
    next_id: AtomicU64,
    stop: Mutex<CancellationToken>,
    expiry_started: AtomicBool,
    /// Node -> the session its desired-state changes wake.
    delivery: Delivery,
    delivery_started: AtomicBool,
    /// Telemetry and cap reports go in, caps come out.
    power: Mutex<PowerHub>,
}

/// A live session: its id, the token that ends it, and the client
/// certificate chain it was opened with (None over plain TCP).
pub(crate) struct Registered {
    id: u64,
    token: CancellationToken,
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Shared {
    /// Why session `id` was ended for its certificate, if it was.
    pub(crate) fn untrusted_reason(&self, id: u64) -> Option<String> {
        self.untrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    fn stop(&self) -> CancellationToken {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Make a session the node's current one; the previous one is told to
    /// end. The session's desired-state wakes start here: register before
    /// composing the first desired state, so no change falls in between.
    fn register(
        self: &Arc<Self>,
        node: &str,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let desired = self.delivery.subscribe(node, id);
        let token = self.stop().child_token();
        let old = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
            node.to_string(),
            Registered {
                id,
                token: token.clone(),
                certs,
            },
        );
        if let Some(Registered {
            id: old_id,
            token: old_token,
            ..
        }) = old
        {
            tracing::info!(
                node,
                session = id,
                replaced = old_id,
                "a newer session replaces the older one"
            );
            old_token.cancel();
        }
        crate::metrics::hub().agents_connected.inc();
        Registration {
            id,
            token,
            desired,
            guard: Connected {
                shared: self.clone(),
                node: node.to_string(),
                id,
            },
        }
    }

    pub(crate) fn power(&self) -> PowerHub {
        self.power.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn unregister(&self, node: &str, id: u64) {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(node).is_some_and(|r| r.id == id) {
            m.remove(node);
        }
    }
}

/// A session's place in the service: its id, the token that ends it, its
/// desired-state wakes, and the guard that ends its registration.
pub(crate) struct Registration {
    id: u64,
    token: CancellationToken,
    desired: Subscription,
    guard: Connected,
}

/// Dropping it (however the session ends: exactly once) unregisters the
/// session and counts it out of `agents_connected`.
pub(crate) struct Connected {
    shared: Arc<Shared>,
    node: String,
    id: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.shared.unregister(&self.node, self.id);
        crate::metrics::hub().agents_connected.dec();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop().cancel();
    }
}

/// The AgentService implementation.
#[derive(Clone)]
pub struct AgentStream {
    store: Store,
    cfg: StreamConfig,
    shared: Arc<Shared>,
    /// Refuse sessions without a client certificate (the server runs mTLS).
    require_identity: bool,
    /// Refused sessions are written here.
    audit: Audit,
}

impl AgentStream {
    pub fn new(store: Store, cfg: StreamConfig) -> AgentStream {
        let shared = Arc::new(Shared {
            live: Arc::new(liveness::Liveness::new(cfg.lease)),
            sessions: Mutex::new(HashMap::new()),
            untrusted: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stop: Mutex::new(CancellationToken::new()),
            expiry_started: AtomicBool::new(false),
            delivery: Delivery::new(),
            delivery_started: AtomicBool::new(false),
            power: Mutex::new(PowerHub::new()),
        });
        AgentStream {
            store,
            cfg,
            shared,
            require_identity: false,
            audit: Audit::default(),
        }
    }

    /// Write refused sessions (no certificate, another node's) to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> AgentStream {
        self.audit = audit;
        self
    }

    /// After a TLS reload: check every live session's certificate chain with
    /// `verify` (the new client CA); end those it refuses (UNAUTHENTICATED,
    /// audited). Returns the nodes whose sessions were ended.
    pub fn revalidate(
        &self,
        verify: &dyn Fn(&[CertificateDer<'static>]) -> Result<(), String>,
    ) -> Vec<String> {
        let mut ended = Vec::new();
        let sessions = self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (node, r) in sessions.iter() {
            let Some(chain) = &r.certs else { continue };
            if let Err(reason) = verify(chain) {
                let e = StreamError::NoLongerTrusted { reason };
                tracing::warn!(node, session = r.id, error = %e, "ending an agent session");
                self.audit.record(Record {
                    who: node,
                    role: "agent",
                    method: "AgentService/Session",
                    target: &format!("node/{node}"),
                    result: &format!("ended: {e}"),
                    peer: &format!("session {}", r.id),
                });
                self.shared
                    .untrusted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(r.id, e.to_string());
                r.token.cancel();
                ended.push(node.clone());
            }
        }
        ended
    }

    fn audit_refusal(
        &self,
        identity: Option<&str>,
        node: &str,
        remote: Option<std::net::SocketAddr>,
        why: &StreamError,
    ) {
        // Rate-limited per peer, as refused admin calls are.
        self.audit.refusal(
            remote,
            Record {
                who: identity.unwrap_or("unauthenticated"),
                role: "agent",
                method: "AgentService/Session",
                target: &format!("node/{node}"),
                result: &format!("refused: {why}"),
                peer: &crate::audit::peer_of(remote, identity),
            },
        );
    }

    /// Refuse sessions whose peer presented no client certificate. The server
    /// sets this when it serves mTLS (with `tls.client_auth_optional` an admin
    /// may connect without one, an agent may not).
    pub fn with_require_identity(mut self, require: bool) -> AgentStream {
        self.require_identity = require;
        self
    }

    /// End every session (UNAVAILABLE, so agents reconnect elsewhere) and the
    /// lease task when `shutdown` is cancelled. Call before [`Self::into_server`].
    pub fn with_shutdown(self, shutdown: &CancellationToken) -> AgentStream {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = shutdown.child_token();
        self
    }

    /// Share `hub` with the policy engine and the admin API (else the stream
    /// has a hub of its own). Call before [`Self::into_server`].
    pub fn with_power(self, hub: PowerHub) -> AgentStream {
        *self.shared.power.lock().unwrap_or_else(|p| p.into_inner()) = hub;
        self
    }

    /// Serve as replica `name` of several on PostgreSQL, leading while
    /// `role` says so: agent liveness is then shared through the store's
    /// `sessions` (docs/ha.md §5). Call before [`Self::into_server`]; on
    /// SQLite do not call it.
    pub fn with_replica(
        self,
        name: String,
        role: tokio::sync::watch::Receiver<crate::ha::Role>,
    ) -> AgentStream {
        if !self.shared.live.set_replica(name, role) {
            tracing::warn!("agent stream replica set twice; the first stays");
        }
        self
    }

    /// The tonic service. Starts the lease-expiry task (needs a tokio runtime).
    pub fn into_server(self) -> AgentServiceServer<AgentStream> {
        self.ensure_expiry_task();
        AgentServiceServer::new(self)
    }

    fn ensure_expiry_task(&self) {
        if !self.shared.delivery_started.swap(true, Ordering::SeqCst) {
            self.shared.delivery.start(&self.store, self.shared.stop());
        }
        if self.shared.expiry_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let (owner, live, store, stop) = (
            Arc::downgrade(&self.shared),
            self.shared.live.clone(),
            self.store.clone(),
            self.shared.stop(),
        );
        tokio::spawn(
            liveness::run_expiry(owner, live, store, stop).instrument(tracing::info_span!("agent_leases")),
        );
    }
}

/// The identity proven by the peer's TLS client certificate (verified
/// against the client CA by the TLS layer): the subject CN, or the first DNS
/// SAN when there is no CN. None over plain TCP or without a certificate.
fn peer_identity<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    hostplane_common::tls::cert_name(certs.first()?)
}

/// An agent may only act for the node its certificate names; with mTLS it
/// must have one.
fn check_identity(identity: Option<&str>, require: bool, node: &str) -> Result<(), StreamError> {
    match identity {
        None if require => Err(StreamError::NoIdentity),
        Some(id) if id != node => Err(StreamError::NotAuthorized {
            identity: id.into(),
            node: node.into(),
        }),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl AgentService for AgentStream {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.ensure_expiry_task();
        let identity = peer_identity(&request);
        let certs = request.peer_certs();
        let remote = request.remote_addr();
        if identity.is_none() && self.require_identity {
            tracing::warn!(remote = ?remote, "agent session without a client certificate refused");
            let e = StreamError::NoIdentity;
            self.audit_refusal(None, "", remote, &e);
            return Err(e.into());
        }
        let mut inbound = request.into_inner();
        let hello = session::read_hello(&mut inbound, self.cfg.hello_timeout).await?;
        if let Err(e) = check_identity(identity.as_deref(), self.require_identity, &hello.node_name) {
            tracing::warn!(remote = ?remote, error = %e, "agent session refused");
            self.audit_refusal(identity.as_deref(), &hello.node_name, remote, &e);
            return Err(e.into());
        }
        let node = hello.node_name.clone();
        self.shared.live.touch(&node);
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let h = hello.clone();
        let (live, n) = (self.shared.live.clone(), node.clone());
        let auto_register = self.cfg.auto_register_devices;
        // The Hello claims the node's session row in the same transaction,
        // so no other replica's expiry sees the node unserved meanwhile.
        let recorded = self
            .store
            .write(move |t| {
                let recorded = status::record_hello(t, &h, lease_ms, auto_register)?;
                if recorded.is_some() {
                    liveness::claim_session(t, &live, &n)?;
                }
                Ok::<_, StoreError>(recorded)
            })
            .await
            .map_err(StreamError::from)?;
        let Some((agent_session, recorded)) = recorded else {
            self.shared.live.forget(&node);
            return Err(StreamError::UnknownNode { node }.into());
        };
        let reg = self.shared.register(&node, certs);
        let span = tracing::info_span!("agent_session", node = %node, session = reg.id);
        span.in_scope(|| session::report_inventory(&self.audit, &node, reg.id, &recorded));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut sess = session::Session::new(
            self.store.clone(),
            self.cfg.clone(),
            node.clone(),
            self.shared.clone(),
            reg,
            tx,
        )
        .with_audit(self.audit.clone())
        .with_agent_session(agent_session);
        sess.send_desired(true).instrument(span.clone()).await?;
        span.in_scope(|| {
            tracing::info!(
                agent_version = %hello.agent_version,
                boot_id = %hello.boot_id,
                last_applied = hello.last_applied_version,
                remote = ?remote,
                "agent session opened"
            )
        });
        tokio::spawn(sess.run(inbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod delivery_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_hook_refuses_another_nodes_certificate() {
        assert!(check_identity(None, false, "n1").is_ok());
        assert!(check_identity(Some("n1"), false, "n1").is_ok());
        assert!(check_identity(Some("n1"), true, "n1").is_ok());
        let e = check_identity(Some("n2"), true, "n1").unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::PermissionDenied);
        let e = check_identity(None, true, "n1").unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn errors_map_to_the_documented_codes() {
        use tonic::Code;
        let cases = [
            (StreamError::HelloFirst, Code::InvalidArgument),
            (StreamError::UnknownNode { node: "n9".into() }, Code::NotFound),
            (StreamError::Replaced { node: "n1".into() }, Code::Aborted),
            (StreamError::ShuttingDown, Code::Unavailable),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        let s = Status::from(StreamError::UnknownNode { node: "n9".into() });
        assert_eq!(s.message(), "node n9 is not registered; create it first");
    }

    #[test]
    fn config_parses_humantime() {
        let c: StreamConfig = serde_json::from_str(r#"{"lease":"3s","status_flush":"250ms"}"#).unwrap();
        assert_eq!(
            (c.lease, c.status_flush),
            (Duration::from_secs(3), Duration::from_millis(250))
        );
        assert!(serde_json::from_str::<StreamConfig>(r#"{"leese":"3s"}"#).is_err());
    }
}
