//! Admin API authorization and audit.
//!
//! Bearer tokens (`authorization: Bearer <token>`) with a role each:
//! `viewer` (read, watch), `operator` (viewer + approve maintenance, mark
//! rebooted, reprovision), `admin` (everything). Tokens are stored hashed
//! (SHA-256, hex) in `auth.tokens_file`; the token itself is never stored or
//! logged. A call without a token gets UNAUTHENTICATED, a token that is not
//! known UNAUTHENTICATED, a role too low PERMISSION_DENIED — and nothing
//! changes. Every mutating call and every refused call is written to the
//! audit log (`auth.audit_file`, JSON lines: when, who, role, what, result).
//!
//! Tokens are required whenever the coordinator serves TLS: without
//! `auth.tokens_file` it refuses to start, unless `auth.disabled: true` says
//! that every client passing mTLS (agents included) may act as an admin.
//! Over plain TCP (`insecure`) without a tokens file the API is open, as the
//! transport already is; both cases are logged as warnings at start.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hostplane_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hostplane_proto::v1::{
    ClusterStatus, ClusterStatusRequest, CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse,
    CreateRequest, DeleteRequest, DeleteResponse, Deployment, Dpu, DpuReadiness, DpuRef, GetRequest, Kind,
    ListRequest, ListResponse, MarkRebootedRequest, Node, NodeRebootStatus, NodeRef, PowerSummary,
    PowerSummaryRequest, Resource, SetDeploymentImageRequest, UpdateRequest, WatchRequest,
};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{AdminApi, WatchStream};
use crate::audit::{Audit, Record};

pub use hostplane_common::tokens::{Role, hash_token};

/// The `auth:` section of the coordinator config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// YAML: `tokens: [{name, role, sha256}]`. Required with TLS unless `disabled`.
    pub tokens_file: Option<PathBuf>,
    /// JSON lines appended for every mutating or refused call and every
    /// refused connection; unset = the log only.
    pub audit_file: Option<PathBuf>,
    /// No token check even over TLS: every client with a certificate from
    /// the client CA (agents too) is an admin. Only for a lab; logged as a warning.
    pub disabled: bool,
}

impl AuthConfig {
    /// Check the settings and read the tokens (None: no token check). `tls`:
    /// the server serves TLS, where tokens are required unless `disabled`.
    pub fn check(&self, tls: bool) -> Result<Option<HashMap<String, Caller>>, AuthError> {
        match (&self.tokens_file, self.disabled) {
            (Some(p), false) => Ok(Some(load_tokens(p)?)),
            (Some(p), true) => Err(AuthError::Tokens {
                path: p.clone(),
                reason: "set together with auth.disabled: true; choose one".into(),
            }),
            (None, true) => Ok(None),
            (None, false) if tls => Err(AuthError::TokensRequired),
            (None, false) => Ok(None),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.tokens_file {path}: {reason}")]
    Tokens { path: PathBuf, reason: String },
    #[error("auth.{0}")]
    File(#[from] hostplane_common::tokens::TokensError),
    #[error(
        "auth.tokens_file is not set: with TLS the admin API needs bearer tokens (make one with \
         `hostplanectl token create NAME --role admin`), or set auth.disabled: true to let every \
         client with a certificate from the client CA act as an admin"
    )]
    TokensRequired,
}

/// Who made a call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

type Tokens = Option<Arc<HashMap<String, Caller>>>;

/// Token check and audit log, shared by every call.
#[derive(Clone)]
pub struct Guard {
    /// sha256 hex -> caller; None: no token check. Replaced whole on reload.
    /// Watched by Watch streams, which end when their token is revoked.
    tokens: Arc<tokio::sync::watch::Sender<Tokens>>,
    audit: Audit,
}

fn load_tokens(path: &Path) -> Result<HashMap<String, Caller>, AuthError> {
    let f = hostplane_common::tokens::load(path)?;
    if f.tokens.is_empty() {
        tracing::warn!(path = %path.display(), "auth.tokens_file lists no tokens: every admin call will be refused");
    }
    Ok(f.tokens
        .into_iter()
        .map(|t| {
            (
                t.sha256,
                Caller {
                    name: t.name,
                    role: t.role,
                },
            )
        })
        .collect())
}

impl Guard {
    /// Read the tokens as the config says; `tls` is whether the server
    /// serves TLS (then tokens are required unless `auth.disabled`).
    pub fn from_config(cfg: &AuthConfig, tls: bool, audit: Audit) -> Result<Guard, AuthError> {
        let tokens = cfg.check(tls)?.map(Arc::new);
        match &tokens {
            Some(t) => tracing::info!(tokens = t.len(), "admin API: bearer tokens required"),
            None if cfg.disabled => tracing::warn!(
                "admin API: auth.disabled — every client that passes the transport (agents too) is an admin"
            ),
            None => {
                tracing::warn!("admin API: no auth.tokens_file over plain TCP — every client is an admin")
            }
        }
        Ok(Guard {
            tokens: Arc::new(tokio::sync::watch::Sender::new(tokens)),
            audit,
        })
    }

    /// Read `auth.tokens_file` again (SIGHUP): the new set replaces the old
    /// one for every later call; a file that does not load changes nothing.
    /// Returns how many tokens are in force, or None when tokens are not
    /// checked (nothing to reload).
    pub fn reload(&self, cfg: &AuthConfig, tls: bool) -> Result<Option<usize>, AuthError> {
        let Some(tokens) = cfg.check(tls)? else {
            return Ok(None);
        };
        let n = tokens.len();
        self.tokens.send_replace(Some(Arc::new(tokens)));
        Ok(Some(n))
    }

    /// No token check, no audit file (tests of the API alone).
    pub fn open() -> Guard {
        Guard {
            tokens: Arc::new(tokio::sync::watch::Sender::new(None)),
            audit: Audit::default(),
        }
    }

    /// The audit sink this guard writes to.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The caller, or (who, why) for a refused call.
    fn check(&self, md: &MetadataMap, need: Role) -> Result<Caller, (Option<Caller>, Status)> {
        let tokens = self.tokens.borrow().clone();
        let Some(tokens) = tokens else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        };
        let unauthenticated = |why: &str| (None, Status::unauthenticated(why));
        let Some(value) = md.get("authorization") else {
            return Err(unauthenticated(
                "no bearer token: pass --token (HOSTPLANE_TOKEN) or the authorization: Bearer header",
            ));
        };
        let token = bearer(value)
            .ok_or_else(|| unauthenticated("the authorization header is not 'Bearer <token>'"))?;
        let caller = tokens
            .get(&hash_token(token))
            .cloned()
            .ok_or_else(|| unauthenticated("unknown bearer token"))?;
        if caller.role < need {
            let why = Status::permission_denied(format!(
                "{} has role {}; this call needs {}",
                caller.name,
                caller.role.name(),
                need.name()
            ));
            return Err((Some(caller), why));
        }
        Ok(caller)
    }
}

/// The token in an `authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(value: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Forward `inner` until the token hashed `hash` is no longer in force (a
/// reload revoked it): then one UNAUTHENTICATED and the end.
fn revocable(
    mut inner: WatchStream,
    mut tokens: tokio::sync::watch::Receiver<Tokens>,
    hash: String,
) -> WatchStream {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = inner.next() => match item {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                changed = tokens.changed() => {
                    if changed.is_err() {
                        // The guard is gone (the server is stopping): no more
                        // reloads; forward what is left.
                        while let Some(item) = inner.next().await {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let revoked = !tokens.borrow().as_ref().is_some_and(|t| t.contains_key(&hash));
                    if revoked {
                        let _ = tx
                            .send(Err(Status::unauthenticated(
                                "the bearer token of this watch was revoked",
                            )))
                            .await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The AdminService with authorization and audit in front of [`AdminApi`].
#[derive(Clone)]
pub struct GuardedAdmin {
    inner: AdminApi,
    guard: Guard,
}

impl GuardedAdmin {
    pub fn new(inner: AdminApi, guard: Guard) -> GuardedAdmin {
        GuardedAdmin { inner, guard }
    }

    pub fn into_server(self) -> AdminServiceServer<GuardedAdmin> {
        AdminServiceServer::new(self)
    }
}

fn res_target(r: Option<&Resource>) -> String {
    r.map(|r| format!("{}/{}", r.kind().noun(), r.name()))
        .unwrap_or_default()
}

fn kind_target(kind: i32, name: &str) -> String {
    let noun = Kind::try_from(kind).map(Kind::noun).unwrap_or("unknown");
    format!("{noun}/{name}")
}

/// Check, run, and (for mutating calls or refusals) audit one call.
macro_rules! guarded {
    ($self:ident, $req:ident, $need:expr, $method:literal, $target:expr, $mutating:expr, $call:ident) => {{
        let target: String = $target(&$req);
        // Only for calls that are audited (reads that pass are not).
        let peer = $mutating.then(|| crate::audit::peer(&$req));
        match $self.guard.check($req.metadata(), $need) {
            Err((caller, status)) => {
                let peer = peer.unwrap_or_else(|| crate::audit::peer(&$req));
                let (who, role) = match &caller {
                    Some(c) => (c.name.as_str(), c.role.name()),
                    None => ("unauthenticated", ""),
                };
                // Rate-limited per peer: a flood of refusals must not fill the disk.
                $self.guard.audit.refusal(
                    $req.remote_addr(),
                    Record {
                        who,
                        role,
                        method: $method,
                        target: &target,
                        result: &format!("denied {:?}: {}", status.code(), status.message()),
                        peer: &peer,
                    },
                );
                Err(status)
            }
            Ok(caller) => {
                let out = $self.inner.$call($req).await;
                if $mutating {
                    let result = match &out {
                        Ok(_) => "ok".to_string(),
                        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
                    };
                    $self.guard.audit.record(Record {
                        who: &caller.name,
                        role: caller.role.name(),
                        method: $method,
                        target: &target,
                        result: &result,
                        peer: peer.as_deref().unwrap_or(""),
                    });
                }
                out
            }
        }
    }};
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AdminService for GuardedAdmin {
    type WatchStream = WatchStream;

    async fn create(&self, req: Request<CreateRequest>) -> Reply<Resource> {
        let t = |r: &Request<CreateRequest>| res_target(r.get_ref().resource.as_ref());
        guarded!(self, req, Role::Admin, "Create", t, true, create)
    }

    async fn get(&self, req: Request<GetRequest>) -> Reply<Resource> {
        let t = |r: &Request<GetRequest>| kind_target(r.get_ref().kind, &r.get_ref().name);
        guarded!(self, req, Role::Viewer, "Get", t, false, get)
    }

    async fn list(&self, req: Request<ListRequest>) -> Reply<ListResponse> {
        let t = |r: &Request<ListRequest>| kind_target(r.get_ref().kind, "");
        guarded!(self, req, Role::Viewer, "List", t, false, list)
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Reply<Resource> {
        let t = |r: &Request<UpdateRequest>| res_target(r.get_ref().resource.as_ref());
        guarded!(self, req, Role::Admin, "Update", t, true, update)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Reply<DeleteResponse> {
        let t = |r: &Request<DeleteRequest>| kind_target(r.get_ref().kind, &r.get_ref().name);
        guarded!(self, req, Role::Admin, "Delete", t, true, delete)
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Reply<WatchStream> {
        let t = |_: &Request<WatchRequest>| String::new();
        // Subscribe before the check, so a reload in between is not missed.
        let tokens = self.guard.tokens.subscribe();
        let hash = req
            .metadata()
            .get("authorization")
            .and_then(bearer)
            .map(hash_token);
        let checked = tokens.borrow().is_some();
        let out: Reply<WatchStream> = guarded!(self, req, Role::Viewer, "Watch", t, false, watch);
        match (out, hash) {
            (Ok(stream), Some(hash)) if checked => {
                Ok(Response::new(revocable(stream.into_inner(), tokens, hash)))
            }
            (out, _) => out,
        }
    }

    async fn create_node_with_devices(
        &self,
        req: Request<CreateNodeWithDevicesRequest>,
    ) -> Reply<CreateNodeWithDevicesResponse> {
        let t = |r: &Request<CreateNodeWithDevicesRequest>| {
            let n = r.get_ref().node.as_ref().and_then(|n| n.metadata.as_ref());
            format!("node/{}", n.map(|m| m.name.as_str()).unwrap_or(""))
        };
        guarded!(
            self,
            req,
            Role::Admin,
            "CreateNodeWithDevices",
            t,
            true,
            create_node_with_devices
        )
    }

    async fn approve_maintenance(&self, req: Request<NodeRef>) -> Reply<Node> {
        let t = |r: &Request<NodeRef>| format!("node/{}", r.get_ref().name);
        guarded!(
            self,
            req,
            Role::Operator,
            "ApproveMaintenance",
            t,
            true,
            approve_maintenance
        )
    }

    async fn mark_rebooted(&self, req: Request<MarkRebootedRequest>) -> Reply<Node> {
        let t = |r: &Request<MarkRebootedRequest>| format!("node/{}", r.get_ref().name);
        guarded!(self, req, Role::Operator, "MarkRebooted", t, true, mark_rebooted)
    }

    async fn reprovision(&self, req: Request<DpuRef>) -> Reply<Dpu> {
        let t = |r: &Request<DpuRef>| format!("dpu/{}", r.get_ref().name);
        guarded!(self, req, Role::Operator, "Reprovision", t, true, reprovision)
    }

    async fn get_node_reboot_status(&self, req: Request<NodeRef>) -> Reply<NodeRebootStatus> {
        let t = |r: &Request<NodeRef>| format!("node/{}", r.get_ref().name);
        guarded!(
            self,
            req,
            Role::Viewer,
            "GetNodeRebootStatus",
            t,
            false,
            get_node_reboot_status
        )
    }

    async fn get_dpu_readiness(&self, req: Request<DpuRef>) -> Reply<DpuReadiness> {
        let t = |r: &Request<DpuRef>| format!("dpu/{}", r.get_ref().name);
        guarded!(
            self,
            req,
            Role::Viewer,
            "GetDpuReadiness",
            t,
            false,
            get_dpu_readiness
        )
    }

    async fn set_deployment_image(&self, req: Request<SetDeploymentImageRequest>) -> Reply<Deployment> {
        let t = |r: &Request<SetDeploymentImageRequest>| format!("deployment/{}", r.get_ref().deployment);
        guarded!(
            self,
            req,
            Role::Admin,
            "SetDeploymentImage",
            t,
            true,
            set_deployment_image
        )
    }

    async fn get_power_summary(&self, req: Request<PowerSummaryRequest>) -> Reply<PowerSummary> {
        let t = |_: &Request<PowerSummaryRequest>| String::new();
        guarded!(
            self,
            req,
            Role::Viewer,
            "GetPowerSummary",
            t,
            false,
            get_power_summary
        )
    }

    async fn get_cluster_status(&self, req: Request<ClusterStatusRequest>) -> Reply<ClusterStatus> {
        let t = |_: &Request<ClusterStatusRequest>| String::new();
        guarded!(
            self,
            req,
            Role::Viewer,
            "GetClusterStatus",
            t,
            false,
            get_cluster_status
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tokens.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn roles_are_ordered_and_tokens_checked_by_hash() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!(
                "tokens:\n  - {{name: vic, role: viewer, sha256: {}}}\n  - {{name: ops, role: operator, sha256: {}}}\n",
                hash_token("v-token"),
                hash_token("o-token")
            ),
        );
        let g = Guard::from_config(
            &AuthConfig {
                tokens_file: Some(p),
                ..AuthConfig::default()
            },
            true,
            Audit::default(),
        )
        .unwrap();
        let md = |t: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
            m
        };
        assert_eq!(g.check(&md("v-token"), Role::Viewer).unwrap().name, "vic");
        let mut upper = MetadataMap::new();
        upper.insert("authorization", "BEARER v-token".parse().unwrap());
        assert_eq!(
            g.check(&upper, Role::Viewer).unwrap().name,
            "vic",
            "the scheme is case-insensitive"
        );
        let (who, e) = g.check(&md("v-token"), Role::Operator).unwrap_err();
        assert_eq!(who.unwrap().name, "vic");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("vic has role viewer; this call needs operator")
        );
        assert!(g.check(&md("o-token"), Role::Operator).is_ok());
        assert_eq!(
            g.check(&md("o-token"), Role::Admin).unwrap_err().1.code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            g.check(&md("nope"), Role::Viewer).unwrap_err().1.code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.check(&MetadataMap::new(), Role::Viewer).unwrap_err().1.code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn tokens_are_required_with_tls_unless_disabled() {
        let e = Guard::from_config(&AuthConfig::default(), true, Audit::default())
            .err()
            .unwrap();
        assert!(matches!(e, AuthError::TokensRequired), "{e}");
        assert!(e.to_string().contains("auth.disabled: true"), "{e}");
        let off = AuthConfig {
            disabled: true,
            ..AuthConfig::default()
        };
        let g = Guard::from_config(&off, true, Audit::default()).unwrap();
        assert_eq!(
            g.check(&MetadataMap::new(), Role::Admin).unwrap().role,
            Role::Admin
        );
        // Plain TCP without a tokens file: open, as the transport is.
        assert!(Guard::from_config(&AuthConfig::default(), false, Audit::default()).is_ok());
        // Both at once is a contradiction, named.
        let d = tempfile::tempdir().unwrap();
        let both = AuthConfig {
            tokens_file: Some(write(d.path(), "tokens: []\n")),
            disabled: true,
            ..AuthConfig::default()
        };
        let e = Guard::from_config(&both, true, Audit::default()).err().unwrap();
        assert!(e.to_string().contains("choose one"), "{e}");
    }
}
