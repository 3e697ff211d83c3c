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
//! Without `auth.tokens_file` the admin API is not token-checked (every
//! client that passed the transport — mTLS — is an admin); the coordinator
//! says so at start.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hostplane_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hostplane_proto::v1::{
    CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse, CreateRequest, DeleteRequest,
    DeleteResponse, Deployment, Dpu, DpuReadiness, DpuRef, GetRequest, Kind, ListRequest, ListResponse, Node,
    NodeRebootStatus, NodeRef, PowerSummary, PowerSummaryRequest, Resource, SetDeploymentImageRequest,
    UpdateRequest, WatchRequest,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{AdminApi, WatchStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The `auth:` section of the coordinator config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// YAML: `tokens: [{name, role, sha256}]`; unset = no token check.
    pub tokens_file: Option<PathBuf>,
    /// JSON lines appended for every mutating or refused call; unset = the log only.
    pub audit_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    /// Lower-case hex SHA-256 of the token: `printf %s "$TOKEN" | sha256sum`.
    sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.tokens_file {path}: {reason}")]
    Tokens { path: PathBuf, reason: String },
    #[error("auth.audit_file {path}: {source}")]
    Audit { path: PathBuf, source: std::io::Error },
}

/// Who made a call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Token check and audit log, shared by every call.
#[derive(Clone)]
pub struct Guard {
    /// sha256 hex -> caller; None: no token check.
    tokens: Option<Arc<HashMap<String, Caller>>>,
    audit: Option<Arc<Mutex<std::fs::File>>>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn load_tokens(path: &Path) -> Result<HashMap<String, Caller>, AuthError> {
    let fail = |reason: String| AuthError::Tokens {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let f: TokensFile = serde_norway::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let mut out = HashMap::new();
    let mut names = std::collections::HashSet::new();
    for (i, t) in f.tokens.into_iter().enumerate() {
        let h = t.sha256.trim().to_ascii_lowercase();
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!(
                "tokens[{i}] ({}): sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                t.name
            )));
        }
        if t.name.is_empty() || !names.insert(t.name.clone()) {
            return Err(fail(format!(
                "tokens[{i}]: name {:?} is empty or repeated",
                t.name
            )));
        }
        if out
            .insert(
                h,
                Caller {
                    name: t.name.clone(),
                    role: t.role,
                },
            )
            .is_some()
        {
            return Err(fail(format!(
                "tokens[{i}] ({}): the same token hash appears twice",
                t.name
            )));
        }
    }
    Ok(out)
}

impl Guard {
    /// Read the tokens and open the audit log as the config says.
    pub fn from_config(cfg: &AuthConfig) -> Result<Guard, AuthError> {
        let tokens = cfg
            .tokens_file
            .as_deref()
            .map(load_tokens)
            .transpose()?
            .map(Arc::new);
        let audit = match &cfg.audit_file {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| AuthError::Audit {
                        path: p.clone(),
                        source,
                    })?;
                Some(Arc::new(Mutex::new(f)))
            }
        };
        match &tokens {
            Some(t) => tracing::info!(tokens = t.len(), "admin API: bearer tokens required"),
            None => tracing::warn!(
                "admin API: no auth.tokens_file — every client that passes the transport is an admin"
            ),
        }
        Ok(Guard { tokens, audit })
    }

    /// No token check, no audit file (tests of the API alone).
    pub fn open() -> Guard {
        Guard {
            tokens: None,
            audit: None,
        }
    }

    fn check(&self, md: &MetadataMap, need: Role) -> Result<Caller, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        };
        let Some(value) = md.get("authorization") else {
            return Err(Status::unauthenticated(
                "no bearer token: pass --token (HOSTPLANE_TOKEN) or the authorization: Bearer header",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("the authorization header is not 'Bearer <token>'"))?;
        let caller = tokens
            .get(&hash_token(token.trim()))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        if caller.role < need {
            return Err(Status::permission_denied(format!(
                "{} has role {}; this call needs {}",
                caller.name,
                caller.role.name(),
                need.name()
            )));
        }
        Ok(caller)
    }

    /// Append one audit record (and log it).
    pub fn record(&self, who: &str, role: &str, method: &str, target: &str, result: &str) {
        let rec = serde_json::json!({
            "at_ms": hostplane_common::time::now_ms(),
            "who": who,
            "role": role,
            "method": method,
            "target": target,
            "result": result,
        });
        tracing::info!(who, role, method, target, result, "audit");
        if let Some(f) = &self.audit {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = writeln!(f, "{rec}").and_then(|()| f.flush()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }
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
        match $self.guard.check($req.metadata(), $need) {
            Err(status) => {
                let who = if status.code() == tonic::Code::Unauthenticated {
                    "unauthenticated".to_string()
                } else {
                    status.message().split(' ').next().unwrap_or("").to_string()
                };
                $self.guard.record(
                    &who,
                    "",
                    $method,
                    &target,
                    &format!("denied: {}", status.message()),
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
                    $self
                        .guard
                        .record(&caller.name, caller.role.name(), $method, &target, &result);
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
        guarded!(self, req, Role::Viewer, "Watch", t, false, watch)
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

    async fn mark_rebooted(&self, req: Request<NodeRef>) -> Reply<Node> {
        let t = |r: &Request<NodeRef>| format!("node/{}", r.get_ref().name);
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
    fn tokens_file_errors_name_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let bad = write(d.path(), "tokens:\n  - {name: a, role: admin, sha256: abc}\n");
        let e = load_tokens(&bad).unwrap_err().to_string();
        assert!(e.contains("tokens[0] (a): sha256 must be 64 hex digits"), "{e}");
        let h = hash_token("t");
        let dup = write(
            d.path(),
            &format!(
                "tokens:\n  - {{name: a, role: admin, sha256: {h}}}\n  - {{name: a, role: viewer, sha256: {h}}}\n"
            ),
        );
        assert!(load_tokens(&dup).unwrap_err().to_string().contains("repeated"));
        let role = write(
            d.path(),
            &format!("tokens:\n  - {{name: a, role: root, sha256: {h}}}\n"),
        );
        assert!(
            load_tokens(&role)
                .unwrap_err()
                .to_string()
                .contains("unknown variant")
        );
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
        let g = Guard::from_config(&AuthConfig {
            tokens_file: Some(p),
            audit_file: None,
        })
        .unwrap();
        let md = |t: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
            m
        };
        assert_eq!(g.check(&md("v-token"), Role::Viewer).unwrap().name, "vic");
        let e = g.check(&md("v-token"), Role::Operator).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("vic has role viewer; this call needs operator")
        );
        assert!(g.check(&md("o-token"), Role::Operator).is_ok());
        assert_eq!(
            g.check(&md("o-token"), Role::Admin).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            g.check(&md("nope"), Role::Viewer).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.check(&MetadataMap::new(), Role::Viewer).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
