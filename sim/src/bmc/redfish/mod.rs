//! The Redfish service of a simulated BMC: routing, authentication,
//! sessions, the resources and the PATCHes that set power limits.
//!
//! One fallback handler dispatches every request, so that authentication
//! comes before "not found" under `/redfish/v1` (an unauthenticated client
//! learns nothing about what exists) and every error has a Redfish body.

mod action;
mod auth;
mod errors;
mod patch;
mod resources;
mod service;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::workload::Workload;
use super::{Bmc, State as BmcState};
use action::{RESET_ACTION, parse_reset};
use auth::{authenticate, login};
use errors::{RfError, json_response, method_not_allowed_text, text_response};
use patch::{patch_control, patch_power};
use resources::*;

pub(crate) use auth::Sessions;
pub use errors::{BASE_MESSAGES, RegistryMessage, format_message};

/// Request bodies are small JSON documents; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;

const ROOT: &str = "/redfish/v1";
const SYSTEMS: &str = "/redfish/v1/Systems";
const SYSTEM: &str = "/redfish/v1/Systems/DGX";
const SYSTEM_RESET: &str = "/redfish/v1/Systems/DGX/Actions/ComputerSystem.Reset";
const CHASSIS: &str = "/redfish/v1/Chassis";
const NODE_CHASSIS: &str = "/redfish/v1/Chassis/DGX";
const MANAGERS: &str = "/redfish/v1/Managers";
const MANAGER: &str = "/redfish/v1/Managers/BMC";
const SESSION_SERVICE: &str = "/redfish/v1/SessionService";
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
const ACCOUNT_SERVICE: &str = "/redfish/v1/AccountService";
const ACCOUNTS: &str = "/redfish/v1/AccountService/Accounts";
const ROLES: &str = "/redfish/v1/AccountService/Roles";

pub(crate) fn router(bmc: Arc<Bmc>) -> Router {
    Router::new().fallback(handle).with_state(bmc)
}

async fn handle(State(bmc): State<Arc<Bmc>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let response = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => dispatch(&bmc, &parts.method, parts.uri.path(), &parts.headers, &body),
        Err(_) if parts.uri.path().starts_with("/redfish") => RfError::TooLarge.into_response(),
        Err(_) => text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain; charset=utf-8",
            format!("the request body is over {MAX_BODY} bytes\n"),
        ),
    };
    bmc.telemetry
        .count_request(parts.method.as_str(), response.status().as_u16());
    response
}

/// A chassis: the node, or GPU `i` (0-based; its id is `HGX_GPU_SXM_<i+1>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ch {
    Node,
    Gpu(usize),
}

impl Ch {
    fn id(self) -> String {
        match self {
            Ch::Node => "DGX".to_string(),
            Ch::Gpu(i) => format!("HGX_GPU_SXM_{}", i + 1),
        }
    }

    fn uri(self) -> String {
        format!("{CHASSIS}/{}", self.id())
    }

    fn sensor_id(self) -> String {
        format!("{}_Power_0", self.id())
    }

    fn parse(id: &str, gpus: usize) -> Option<Ch> {
        if id == "DGX" {
            return Some(Ch::Node);
        }
        let n: usize = id.strip_prefix("HGX_GPU_SXM_")?.parse().ok()?;
        (n >= 1 && n <= gpus && n.to_string() == id["HGX_GPU_SXM_".len()..]).then(|| Ch::Gpu(n - 1))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Metrics,
    SimWorkload,
    Versions,
    ServiceRoot,
    ODataService,
    Metadata,
    Systems,
    System,
    /// `Systems/DGX/Actions/ComputerSystem.Reset`: POST only.
    SystemReset,
    ChassisCollection,
    Chassis(Ch),
    Power,
    EnvironmentMetrics(Ch),
    Controls(Ch),
    PowerLimit(Ch),
    Sensors(Ch),
    PowerSensor(Ch),
    Managers,
    Manager,
    SessionService,
    Sessions,
    /// `Sessions/Members`: a POST there creates a session, as on the collection.
    SessionsMembers,
    Session(String),
    AccountService,
    Accounts,
    Account(String),
    Roles,
    Role(String),
}

impl Route {
    fn parse(path: &str, gpus: usize) -> Option<Route> {
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        match path {
            "/metrics" => return Some(Route::Metrics),
            "/sim/workload" => return Some(Route::SimWorkload),
            "/redfish" => return Some(Route::Versions),
            ROOT => return Some(Route::ServiceRoot),
            "/redfish/v1/odata" => return Some(Route::ODataService),
            "/redfish/v1/$metadata" => return Some(Route::Metadata),
            _ => {}
        }
        let rest = path.strip_prefix("/redfish/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["Systems"] => Route::Systems,
            ["Systems", "DGX"] => Route::System,
            ["Systems", "DGX", "Actions", action] if *action == RESET_ACTION => Route::SystemReset,
            ["Chassis"] => Route::ChassisCollection,
            ["Chassis", id, tail @ ..] => {
                let ch = Ch::parse(id, gpus)?;
                match tail {
                    [] => Route::Chassis(ch),
                    ["Power"] if ch == Ch::Node => Route::Power,
                    ["EnvironmentMetrics"] => Route::EnvironmentMetrics(ch),
                    ["Controls"] => Route::Controls(ch),
                    ["Controls", "PowerLimit"] => Route::PowerLimit(ch),
                    ["Sensors"] => Route::Sensors(ch),
                    ["Sensors", s] if *s == ch.sensor_id() => Route::PowerSensor(ch),
                    _ => return None,
                }
            }
            ["Managers"] => Route::Managers,
            ["Managers", "BMC"] => Route::Manager,
            ["SessionService"] => Route::SessionService,
            ["SessionService", "Sessions"] => Route::Sessions,
            ["SessionService", "Sessions", "Members"] => Route::SessionsMembers,
            ["SessionService", "Sessions", id] => Route::Session(id.to_string()),
            ["AccountService"] => Route::AccountService,
            ["AccountService", "Accounts"] => Route::Accounts,
            ["AccountService", "Accounts", id] => Route::Account(id.to_string()),
            ["AccountService", "Roles"] => Route::Roles,
            ["AccountService", "Roles", id] => Route::Role(id.to_string()),
            _ => return None,
        })
    }

    /// Methods besides GET/HEAD (every route but `Sessions/Members` has those).
    fn extra_methods(&self) -> &'static [Method] {
        match self {
            Route::SimWorkload => &[Method::PUT],
            Route::Power | Route::PowerLimit(_) => &[Method::PATCH],
            Route::Sessions | Route::SessionsMembers | Route::SystemReset => &[Method::POST],
            Route::Session(_) => &[Method::DELETE],
            _ => &[],
        }
    }

    fn readable(&self) -> bool {
        !matches!(self, Route::SessionsMembers | Route::SystemReset)
    }

    fn allows(&self, m: &Method) -> bool {
        (self.readable() && (*m == Method::GET || *m == Method::HEAD)) || self.extra_methods().contains(m)
    }

    fn allow_header(&self) -> String {
        let mut v = if self.readable() {
            vec!["GET", "HEAD"]
        } else {
            vec![]
        };
        v.extend(self.extra_methods().iter().map(|m| m.as_str()));
        v.join(", ")
    }

    /// Anyone may read these, and log in (as a BMC serves them).
    fn public(&self, method: &Method) -> bool {
        match self {
            Route::Versions | Route::ServiceRoot | Route::ODataService | Route::Metadata => true,
            Route::Sessions | Route::SessionsMembers => *method == Method::POST,
            _ => false,
        }
    }
}

/// `OData-Version` other than 4.0 (the only version served): 412.
fn check_odata_version(headers: &HeaderMap) -> Result<(), RfError> {
    match headers.get("odata-version") {
        None => Ok(()),
        Some(v) if v.as_bytes().trim_ascii() == b"4.0" => Ok(()),
        Some(v) => Err(RfError::HeaderPrecondition(format!(
            "OData-Version: {}",
            String::from_utf8_lossy(v.as_bytes())
        ))),
    }
}

/// A body sent with a `Content-Type` other than JSON: 415 (no Content-Type is taken as JSON).
fn check_content_type(headers: &HeaderMap, body: &[u8]) -> Result<(), RfError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(v.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if body.is_empty() || media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(RfError::MediaType(format!("Content-Type: {text}")))
    }
}

/// A successful read: the JSON body with `Allow`, `Link: rel=describedby`
/// and an `ETag` (a hash of the body: it changes when the resource does).
fn ok_read(route: &Route, body: serde_json::Value) -> Response {
    use sha2::{Digest, Sha256};
    let link = body
        .get("@odata.type")
        .and_then(|t| t.as_str())
        .and_then(service::described_by);
    let digest = Sha256::digest(body.to_string().as_bytes());
    let etag = format!("W/\"{}\"", hex::encode(&digest[..8]));
    let mut r = json_response(StatusCode::OK, body);
    add_allow(&mut r, route);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    if let Some(link) = link
        && let Ok(v) = HeaderValue::from_str(&link)
    {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

fn add_allow(r: &mut Response, route: &Route) {
    if let Ok(v) = HeaderValue::from_str(&route.allow_header()) {
        r.headers_mut().insert(header::ALLOW, v);
    }
}

/// The resource type named in a 404 for `path`.
fn kind_of(path: &str) -> &'static str {
    let p = path.trim_end_matches('/');
    if p.contains("/Sessions/") {
        "Session"
    } else if p.contains("/Accounts/") {
        "ManagerAccount"
    } else if p.contains("/Roles/") {
        "Role"
    } else if p.contains("/Sensors/") {
        "Sensor"
    } else if p.contains("/Controls/") {
        "Control"
    } else if p.contains("/Chassis/") {
        "Chassis"
    } else if p.contains("/Actions/") {
        "Action"
    } else if p.contains("/Systems/") {
        "ComputerSystem"
    } else if p.contains("/Managers/") {
        "Manager"
    } else {
        "Resource"
    }
}

fn dispatch(bmc: &Bmc, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let gpus = bmc.model.spec().gpus;
    let route = Route::parse(path, gpus);
    match route {
        Some(Route::Metrics) if *method == Method::GET || *method == Method::HEAD => {
            let s = bmc.lock();
            let (status, content_type, text) =
                bmc.telemetry
                    .render(&s.power, &s.system, headers.get(header::ACCEPT));
            drop(s);
            return text_response(status, content_type, text);
        }
        Some(Route::Metrics) => {
            return method_not_allowed_text("GET, HEAD");
        }
        Some(Route::SimWorkload) => return sim_workload(bmc, method, body),
        _ => {}
    }
    let not_found = || RfError::NotFound(kind_of(path), path.to_string()).into_response();
    if !path.starts_with("/redfish") {
        return not_found();
    }
    if let Err(e) = check_odata_version(headers) {
        return e.into_response();
    }
    let public = route.as_ref().is_some_and(|r| r.public(method));
    let mut state = bmc.lock();
    if !public && let Err(e) = authenticate(bmc, &mut state, headers) {
        return e.into_response();
    }
    let Some(route) = route else {
        return not_found();
    };
    if !route.allows(method) {
        let mut r = RfError::MethodNotAllowed.into_response();
        add_allow(&mut r, &route);
        return r;
    }
    if let Err(e) = check_content_type(headers, body) {
        return e.into_response();
    }
    let s = &mut *state;
    let is_read = *method == Method::GET || *method == Method::HEAD;
    let ok = |body: serde_json::Value| ok_read(&route, body);
    match (&route, is_read) {
        (Route::Versions, true) => ok(json!({ "v1": "/redfish/v1/" })),
        (Route::ServiceRoot, true) => ok(service_root(bmc)),
        (Route::ODataService, true) => ok(service::odata_service()),
        (Route::Metadata, true) => {
            let mut r = text_response(
                StatusCode::OK,
                "application/xml; charset=utf-8",
                service::metadata(),
            );
            r.headers_mut().insert(
                HeaderName::from_static("odata-version"),
                HeaderValue::from_static("4.0"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            add_allow(&mut r, &route);
            r
        }
        (Route::AccountService, true) => ok(service::account_service()),
        (Route::Accounts, true) => ok(collection(
            ACCOUNTS,
            "#ManagerAccountCollection.ManagerAccountCollection",
            "Accounts Collection",
            [format!("{ACCOUNTS}/{}", service::ACCOUNT_ID)],
        )),
        (Route::Account(id), true) if id == service::ACCOUNT_ID => ok(service::account(&bmc.username)),
        (Route::Roles, true) => ok(collection(
            ROLES,
            "#RoleCollection.RoleCollection",
            "Roles Collection",
            service::PREDEFINED_ROLES
                .iter()
                .map(|(id, _)| format!("{ROLES}/{id}")),
        )),
        (Route::Role(id), true) => match service::role(id) {
            Some(r) => ok(r),
            None => not_found(),
        },
        (Route::Account(_), true) => not_found(),
        (Route::Systems, true) => ok(collection(
            SYSTEMS,
            "#ComputerSystemCollection.ComputerSystemCollection",
            "Computer System Collection",
            [SYSTEM.to_string()],
        )),
        (Route::System, true) => ok(system(bmc, s.system.state())),
        (Route::SystemReset, false) => match parse_reset(body) {
            Ok(reset) => {
                bmc.reset_locked(s, reset);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => e.into_response(),
        },
        (Route::ChassisCollection, true) => ok(collection(
            CHASSIS,
            "#ChassisCollection.ChassisCollection",
            "Chassis Collection",
            std::iter::once(Ch::Node)
                .chain((0..gpus).map(Ch::Gpu))
                .map(Ch::uri),
        )),
        (Route::Chassis(ch), true) => ok(chassis(bmc, *ch, s.system.state())),
        (Route::Power, true) => ok(power(&s.power)),
        (Route::Power, false) => match patch_power(&mut s.power, body) {
            Ok(()) => {
                log_limit(bmc, Ch::Node, s.power.node_limit(), "Power");
                ok(power(&s.power))
            }
            Err(e) => e.into_response(),
        },
        (Route::EnvironmentMetrics(ch), true) => ok(environment_metrics(&s.power, *ch)),
        (Route::Controls(ch), true) => ok(collection(
            &format!("{}/Controls", ch.uri()),
            "#ControlCollection.ControlCollection",
            "Controls",
            [format!("{}/Controls/PowerLimit", ch.uri())],
        )),
        (Route::PowerLimit(ch), true) => ok(control(&s.power, *ch)),
        (Route::PowerLimit(ch), false) => match patch_control(&mut s.power, *ch, body) {
            Ok(()) => {
                log_limit(bmc, *ch, limit_of(&s.power, *ch), "Controls");
                ok(control(&s.power, *ch))
            }
            Err(e) => e.into_response(),
        },
        (Route::Sensors(ch), true) => ok(collection(
            &format!("{}/Sensors", ch.uri()),
            "#SensorCollection.SensorCollection",
            "Sensors",
            [sensor_uri(*ch)],
        )),
        (Route::PowerSensor(ch), true) => ok(sensor(&s.power, *ch)),
        (Route::Managers, true) => ok(collection(
            MANAGERS,
            "#ManagerCollection.ManagerCollection",
            "Manager Collection",
            [MANAGER.to_string()],
        )),
        (Route::Manager, true) => ok(manager(bmc)),
        (Route::SessionService, true) => ok(session_service()),
        (Route::Sessions, true) => ok(collection(
            SESSIONS,
            "#SessionCollection.SessionCollection",
            "Session Collection",
            s.sessions.ids().into_iter().map(|id| format!("{SESSIONS}/{id}")),
        )),
        (Route::Sessions | Route::SessionsMembers, false) => login(bmc, &mut s.sessions, body),
        (Route::Session(id), true) => match s.sessions.user_of(id) {
            Some(user) => ok(session(id, &user)),
            None => not_found(),
        },
        (Route::Session(id), false) => {
            if s.sessions.remove(id) {
                tracing::debug!(bmc = %bmc.name, session = %id, "session deleted");
                StatusCode::NO_CONTENT.into_response()
            } else {
                not_found()
            }
        }
        _ => {
            let mut r = RfError::MethodNotAllowed.into_response();
            add_allow(&mut r, &route);
            r
        }
    }
}

fn log_limit(bmc: &Bmc, ch: Ch, limit: Option<f64>, via: &str) {
    match limit {
        Some(w) => tracing::info!(bmc = %bmc.name, chassis = %ch.id(), watts = w, via, "power limit set"),
        None => tracing::info!(bmc = %bmc.name, chassis = %ch.id(), via, "power limit cleared"),
    }
}

// ---------------------------------------------------------------- /sim

/// `GET` the workload profile, `PUT` a new one (text body, e.g. `constant:0.5`). No auth.
fn sim_workload(bmc: &Bmc, method: &Method, body: &[u8]) -> Response {
    if *method == Method::GET || *method == Method::HEAD {
        let w = bmc.lock().power.workload();
        return text_response(StatusCode::OK, "text/plain; charset=utf-8", format!("{w}\n"));
    }
    if *method != Method::PUT {
        return method_not_allowed_text("GET, HEAD, PUT");
    }
    let parsed = std::str::from_utf8(body)
        .map_err(|_| "the body is not UTF-8".to_string())
        .and_then(|s| s.parse::<Workload>().map_err(|e| e.to_string()));
    match parsed {
        Ok(w) => {
            bmc.set_workload(w);
            text_response(StatusCode::OK, "text/plain; charset=utf-8", format!("{w}\n"))
        }
        Err(e) => text_response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let p = |s: &str| Route::parse(s, 8);
        assert_eq!(p("/redfish/v1"), Some(Route::ServiceRoot));
        assert_eq!(p("/redfish/v1/"), Some(Route::ServiceRoot));
        assert_eq!(p("/redfish/v1/Chassis/DGX/Power"), Some(Route::Power));
        assert_eq!(
            p("/redfish/v1/Chassis/HGX_GPU_SXM_8/Controls/PowerLimit"),
            Some(Route::PowerLimit(Ch::Gpu(7)))
        );
        assert_eq!(
            p("/redfish/v1/Chassis/HGX_GPU_SXM_1/Sensors/HGX_GPU_SXM_1_Power_0"),
            Some(Route::PowerSensor(Ch::Gpu(0)))
        );
        assert_eq!(
            p("/redfish/v1/Systems/DGX/Actions/ComputerSystem.Reset"),
            Some(Route::SystemReset)
        );
        assert_eq!(p("/redfish/v1/Systems/DGX/Actions/ComputerSystem.Other"), None);
        assert_eq!(
            p("/redfish/v1/SessionService/Sessions/7"),
            Some(Route::Session("7".into()))
        );
        for missing in [
            "/redfish/v1/Chassis/HGX_GPU_SXM_9",
            "/redfish/v1/Chassis/HGX_GPU_SXM_0",
            "/redfish/v1/Chassis/HGX_GPU_SXM_01",
            "/redfish/v1/Chassis/HGX_GPU_SXM_1/Power",
            "/redfish/v1/Chassis/DGX/Sensors/HGX_GPU_SXM_1_Power_0",
            "/redfish/v1/Systems/Other",
            "/redfish/v2",
        ] {
            assert_eq!(p(missing), None, "{missing}");
        }
        assert_eq!(Route::parse("/redfish/v1/Chassis/HGX_GPU_SXM_5", 4), None);
    }
}
