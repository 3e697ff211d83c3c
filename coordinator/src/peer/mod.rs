//! Calls between coordinator replicas on one PostgreSQL store (docs/ha.md
//! §5), `hostplane.internal.v1.Peer`:
//!
//! - [`PeerService`] (served by every replica, answered only by the
//!   leader): `Forward` takes a follower's telemetry batches and cap reports
//!   into the leader's [`PowerHub`], as if its own agents had sent them;
//!   `GetPowerSummary` answers what the leader's engine knows.
//! - [`spawn_forwarder`] ([`forward`]): on a follower, one `Forward` stream
//!   to the leader's address, carrying every report the follower's hub
//!   accepts; reopened at each leader change, the gap's reports dropped.
//! - [`LeaderPower`]: `GetPowerSummary` on a follower, answered by the leader.
//!
//! Who may call: with TLS, a client certificate verified against the
//! server's client CA whose name (CN, else first DNS SAN) is one of the
//! replicas' names — by default the name of the server's own certificate,
//! which the replicas present as their client certificate (one certificate
//! for all replicas, as the Helm chart mounts it). Without TLS, the server
//! runs on plain TCP, where agents need no certificate either, and any
//! client may call.
mod forward;

use std::sync::Arc;
use std::time::Duration;

use hostplane_proto::internal::v1::peer_client::PeerClient;
use hostplane_proto::internal::v1::peer_server::{Peer, PeerServer};
use hostplane_proto::internal::v1::{ForwardAck, PowerReport, power_report};
use hostplane_proto::limits::MAX_NAME;
use hostplane_proto::v1::{PowerSummary, PowerSummaryRequest};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};

pub use forward::{forwarder, spawn_forwarder};

use crate::audit::{Audit, Record};
use crate::ha::Role;
use crate::power::PowerHub;

/// How long a replica waits for the leader's TCP/TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `GetPowerSummary` waits for the leader's answer.
pub const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest power summary a follower takes from the leader (a fleet's
/// worth of nodes and GPUs is several MiB, over tonic's 4 MiB default).
pub const MAX_SUMMARY_BYTES: usize = 64 << 20;

/// Who may call the Peer service.
#[derive(Debug, Clone, Default)]
pub struct PeerAuth {
    /// None: plain TCP, anyone. Some: a client certificate naming one of these.
    pub names: Option<Vec<String>>,
}

impl PeerAuth {
    /// Over plain TCP (the server runs without TLS): anyone may call.
    pub fn plain() -> PeerAuth {
        PeerAuth { names: None }
    }

    /// Over mTLS: a client certificate whose name is the one in the
    /// server's own certificate `cert_pem` (the replicas share it).
    pub fn same_certificate(cert_pem: &[u8]) -> Result<PeerAuth, String> {
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let first = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .ok_or_else(|| "tls.cert_file holds no certificate".to_string())?
            .map_err(|e| format!("tls.cert_file: {e}"))?;
        let name = hostplane_common::tls::cert_name(&first).ok_or_else(|| {
            "tls.cert_file: the certificate has neither a common name nor a DNS name, so the other replicas cannot be recognised by it".to_string()
        })?;
        Ok(PeerAuth {
            names: Some(vec![name]),
        })
    }

    /// Ok, or the refusal for a caller whose certificate names `identity`.
    fn check(&self, identity: Option<&str>) -> Result<(), Status> {
        let Some(names) = &self.names else {
            return Ok(());
        };
        match identity {
            None => Err(Status::unauthenticated(
                "the Peer service is for coordinator replicas: a client certificate is required",
            )),
            Some(id) if names.iter().any(|n| n == id) => Ok(()),
            Some(id) => Err(Status::permission_denied(format!(
                "the Peer service is for coordinator replicas: certificate {id:?} is not a replica's (replicas present a certificate named {})",
                names.join(", ")
            ))),
        }
    }
}

/// The leader's side of the Peer service.
#[derive(Clone)]
pub struct PeerService {
    hub: PowerHub,
    role: watch::Receiver<Role>,
    auth: Arc<PeerAuth>,
    audit: Audit,
}

impl PeerService {
    pub fn new(hub: PowerHub, role: watch::Receiver<Role>, auth: PeerAuth) -> PeerService {
        PeerService {
            hub,
            role,
            auth: Arc::new(auth),
            audit: Audit::default(),
        }
    }

    /// Refused calls are written to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> PeerService {
        self.audit = audit;
        self
    }

    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self)
    }

    fn authorize<T>(&self, req: &Request<T>, method: &str) -> Result<(), Status> {
        let identity = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|d| hostplane_common::tls::cert_name(d)));
        self.auth.check(identity.as_deref()).inspect_err(|e| {
            tracing::warn!(remote = ?req.remote_addr(), error = %e.message(), method, "peer call refused");
            self.audit.refusal(
                req.remote_addr(),
                Record {
                    who: identity.as_deref().unwrap_or("unauthenticated"),
                    role: "replica",
                    method,
                    target: "",
                    result: &format!("refused: {}", e.message()),
                    peer: &crate::audit::peer(req),
                },
            );
        })
    }

    /// Ok while this replica leads, else why the caller must go elsewhere.
    fn leading(&self) -> Result<(), Status> {
        not_leader(&self.role.borrow())
    }
}

fn not_leader(role: &Role) -> Result<(), Status> {
    match role {
        Role::Leader { .. } => Ok(()),
        Role::Follower { leader: Some(l) } => Err(Status::failed_precondition(format!(
            "this replica is not the leader; the leader is {} at {} (epoch {})",
            l.holder, l.addr, l.epoch
        ))),
        Role::Follower { leader: None } => Err(Status::failed_precondition(
            "this replica is not the leader, and no leader holds the lease now",
        )),
    }
}

/// A forwarded report the leader must not take: what is wrong with it.
fn check_report(r: &PowerReport) -> Result<(), String> {
    if r.node.is_empty() {
        return Err("a forwarded power report names no node".into());
    }
    if r.node.len() > MAX_NAME {
        return Err(format!(
            "a forwarded power report's node: {} bytes, more than the maximum of {MAX_NAME}",
            r.node.len()
        ));
    }
    if r.report.is_none() {
        return Err(format!("the forwarded power report of node {} is empty", r.node));
    }
    Ok(())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn forward(&self, req: Request<Streaming<PowerReport>>) -> Result<Response<ForwardAck>, Status> {
        self.authorize(&req, "Peer/Forward")?;
        self.leading()?;
        let from = crate::audit::peer(&req);
        let mut inbound = req.into_inner();
        let mut role = self.role.clone();
        let mut received = 0u64;
        tracing::info!(from = %from, "a follower forwards its power reports");
        loop {
            tokio::select! {
                changed = role.changed() => {
                    let r = role.borrow_and_update().clone();
                    if changed.is_err() || !r.is_leader() {
                        tracing::info!(from = %from, received, "no longer the leader: ending a follower's forwarding");
                        return Err(not_leader(&r).err().unwrap_or_else(|| Status::unavailable("shutting down")));
                    }
                }
                m = inbound.message() => match m? {
                    None => break,
                    Some(r) => {
                        check_report(&r).map_err(Status::invalid_argument)?;
                        received += 1;
                        match r.report {
                            Some(power_report::Report::Telemetry(b)) => {
                                self.hub.record_telemetry(&r.node, b);
                            }
                            Some(power_report::Report::CapReport(c)) => self.hub.record_cap_report(&r.node, c),
                            None => {}
                        }
                    }
                },
            }
        }
        tracing::info!(from = %from, received, "a follower's forwarding ended");
        Ok(Response::new(ForwardAck { received }))
    }

    async fn get_power_summary(
        &self,
        req: Request<PowerSummaryRequest>,
    ) -> Result<Response<PowerSummary>, Status> {
        self.authorize(&req, "Peer/GetPowerSummary")?;
        self.leading()?;
        Ok(Response::new(self.hub.summary(req.get_ref())))
    }
}

/// How a replica reaches the others: plain TCP, or TLS with the CA that
/// signed their server certificates and its own client certificate.
#[derive(Clone, Default)]
pub struct PeerConnect {
    tls: Option<ClientTlsConfig>,
}

impl PeerConnect {
    /// Plain TCP (`http://`), for a server without TLS.
    pub fn plain() -> PeerConnect {
        PeerConnect { tls: None }
    }

    /// TLS (`https://`): the other replicas' server certificates are checked
    /// against `ca_pem` (the server's `tls.client_ca_file`: one CA signs the
    /// replicas' certificates); this replica presents `cert_pem`/`key_pem`
    /// (its own server certificate, see [`PeerAuth::same_certificate`]).
    /// The replicas share that certificate, so the leader's is verified as
    /// the first DNS name in this replica's own, whatever host or IP the
    /// leader's address names (a pod IP in Kubernetes); without a DNS name,
    /// as the host of the address.
    pub fn tls(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> PeerConnect {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(name) = hostplane_common::tls::pem_first_dns_name(cert_pem) {
            tls = tls.domain_name(name);
        }
        PeerConnect { tls: Some(tls) }
    }

    /// The URL of a replica at `addr` (`host:port`, as in the `leader` row).
    fn url(&self, addr: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Connect to the replica at `addr`; the error names it.
    pub async fn connect(&self, addr: &str) -> Result<Channel, String> {
        let url = self.url(addr);
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("replica address {addr:?} is not usable ({url}): {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS to replica {url}: {}", error_chain(&e)))?;
        }
        ep.connect()
            .await
            .map_err(|e| format!("cannot connect to replica {url}: {}", error_chain(&e)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// `GetPowerSummary` as a follower answers it: from the leader (a follower
/// runs no engine; its hub holds only its own agents' telemetry).
#[derive(Clone)]
pub struct LeaderPower {
    hub: PowerHub,
    role: watch::Receiver<Role>,
    connect: PeerConnect,
}

impl LeaderPower {
    pub fn new(hub: PowerHub, role: watch::Receiver<Role>, connect: PeerConnect) -> LeaderPower {
        LeaderPower { hub, role, connect }
    }

    /// The summary: this replica's own while it leads, else the leader's;
    /// UNAVAILABLE naming the cause when no leader is known or it cannot be
    /// reached.
    pub async fn summary(&self, req: PowerSummaryRequest) -> Result<PowerSummary, Status> {
        let leader = match &*self.role.borrow() {
            Role::Leader { .. } => None,
            Role::Follower { leader: Some(l) } => Some(l.clone()),
            Role::Follower { leader: None } => {
                return Err(Status::unavailable(
                    "no replica leads now, so no power engine runs; try again when one has taken over",
                ));
            }
        };
        let Some(l) = leader else {
            return Ok(self.hub.summary(&req));
        };
        let ch = self.connect.connect(&l.addr).await.map_err(|e| {
            Status::unavailable(format!(
                "this replica follows; the power summary is the leader's ({} at {}), which cannot be reached: {e}",
                l.holder, l.addr
            ))
        })?;
        let mut req = Request::new(req);
        req.set_timeout(SUMMARY_TIMEOUT);
        PeerClient::new(ch)
            .max_decoding_message_size(MAX_SUMMARY_BYTES)
            .get_power_summary(req)
            .await
            .map(Response::into_inner)
            .map_err(|s| {
                Status::new(
                    if s.code() == tonic::Code::FailedPrecondition {
                        tonic::Code::Unavailable
                    } else {
                        s.code()
                    },
                    format!(
                        "the leader {} at {} did not answer the power summary: {}",
                        l.holder,
                        l.addr,
                        s.message()
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::LeaderInfo;

    #[test]
    fn only_the_replicas_certificate_may_call_over_tls() {
        let auth = PeerAuth {
            names: Some(vec!["coordinator".into()]),
        };
        assert!(auth.check(Some("coordinator")).is_ok());
        let e = auth.check(Some("node-a")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("\"node-a\" is not a replica's"),
            "{}",
            e.message()
        );
        assert_eq!(auth.check(None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(
            PeerAuth::plain().check(None).is_ok(),
            "plain TCP: anyone, as for agents"
        );
    }

    #[test]
    fn a_follower_names_the_leader_it_knows() {
        let e = not_leader(&Role::Follower {
            leader: Some(LeaderInfo {
                holder: "c-1".into(),
                addr: "c-1.example:7443".into(),
                epoch: 4,
            }),
        })
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("c-1 at c-1.example:7443 (epoch 4)"),
            "{}",
            e.message()
        );
        assert!(not_leader(&Role::Leader { epoch: 4 }).is_ok());
    }

    #[test]
    fn reports_without_a_node_or_content_are_refused() {
        let ok = PowerReport {
            node: "n1".into(),
            report: Some(power_report::Report::CapReport(Default::default())),
        };
        assert!(check_report(&ok).is_ok());
        let no_node = PowerReport {
            node: String::new(),
            ..ok.clone()
        };
        assert!(check_report(&no_node).unwrap_err().contains("names no node"));
        let long = PowerReport {
            node: "x".repeat(MAX_NAME + 1),
            ..ok.clone()
        };
        assert!(check_report(&long).unwrap_err().contains("more than the maximum"));
        let empty = PowerReport {
            node: "n1".into(),
            report: None,
        };
        assert!(check_report(&empty).unwrap_err().contains("is empty"));
    }
}
