//! The Redfish service of a simulated BMC: routing, authentication,
//! sessions, the resources and the PATCHes that set power limits.
//!
//! One fallback handler dispatches every request, so that authentication
//! comes before "not found" under `/redfish/v1` (an unauthenticated client
//! learns nothing about what exists) and every error has a Redfish body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::power::{OutOfRange, PowerModel};
use super::workload::Workload;
use super::{Bmc, State as BmcState};

/// Request bodies are small JSON documents; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;
/// `SessionService.SessionTimeout`: a session unused this long is gone.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Open sessions at most; a login beyond gets 503 SessionLimitExceeded.
pub(crate) const MAX_SESSIONS: usize = 64;
const REGISTRY: &str = "Base.1.18";
const REALM: &str = "Basic realm=\"hostplane-bmc\"";

const ROOT: &str = "/redfish/v1";
const SYSTEMS: &str = "/redfish/v1/Systems";
const SYSTEM: &str = "/redfish/v1/Systems/DGX";
const CHASSIS: &str = "/redfish/v1/Chassis";
const NODE_CHASSIS: &str = "/redfish/v1/Chassis/DGX";
const MANAGERS: &str = "/redfish/v1/Managers";
const MANAGER: &str = "/redfish/v1/Managers/BMC";
const SESSION_SERVICE: &str = "/redfish/v1/SessionService";
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

pub(crate) fn router(bmc: Arc<Bmc>) -> Router {
    Router::new().fallback(handle).with_state(bmc)
}

async fn handle(State(bmc): State<Arc<Bmc>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let response = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => dispatch(&bmc, &parts.method, parts.uri.path(), &parts.headers, &body),
        Err(_) => RfError::TooLarge.into_response(),
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
    Systems,
    System,
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
    Session(String),
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
            _ => {}
        }
        let rest = path.strip_prefix("/redfish/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["Systems"] => Route::Systems,
            ["Systems", "DGX"] => Route::System,
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
            ["SessionService", "Sessions", id] => Route::Session(id.to_string()),
            _ => return None,
        })
    }

    /// Methods besides GET/HEAD (every route has those).
    fn extra_methods(&self) -> &'static [Method] {
        match self {
            Route::SimWorkload => &[Method::PUT],
            Route::Power | Route::PowerLimit(_) => &[Method::PATCH],
            Route::Sessions => &[Method::POST],
            Route::Session(_) => &[Method::DELETE],
            _ => &[],
        }
    }

    fn allows(&self, m: &Method) -> bool {
        *m == Method::GET || *m == Method::HEAD || self.extra_methods().contains(m)
    }

    fn allow_header(&self) -> String {
        let mut v = vec!["GET", "HEAD"];
        v.extend(self.extra_methods().iter().map(|m| m.as_str()));
        v.join(", ")
    }
}

fn dispatch(bmc: &Bmc, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let gpus = bmc.model.spec().gpus;
    let route = Route::parse(path, gpus);
    match route {
        Some(Route::Metrics) if *method == Method::GET || *method == Method::HEAD => {
            let s = bmc.lock();
            let text = bmc.telemetry.render(&s.power);
            drop(s);
            return text_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text);
        }
        Some(Route::Metrics) => {
            return method_not_allowed_text("GET, HEAD");
        }
        Some(Route::SimWorkload) => return sim_workload(bmc, method, body),
        _ => {}
    }
    let public = matches!(route, Some(Route::Versions | Route::ServiceRoot))
        || (route == Some(Route::Sessions) && *method == Method::POST);
    if !path.starts_with("/redfish") {
        return RfError::NotFound(path.to_string()).into_response();
    }
    let mut state = bmc.lock();
    if !public && let Err(e) = authenticate(bmc, &mut state, headers) {
        return e.into_response();
    }
    let Some(route) = route else {
        return RfError::NotFound(path.to_string()).into_response();
    };
    if !route.allows(method) {
        let mut r = RfError::MethodNotAllowed(method.to_string()).into_response();
        if let Ok(v) = HeaderValue::from_str(&route.allow_header()) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    let s = &mut *state;
    let is_read = *method == Method::GET || *method == Method::HEAD;
    match (&route, is_read) {
        (Route::Versions, true) => ok(json!({ "v1": "/redfish/v1/" })),
        (Route::ServiceRoot, true) => ok(service_root(bmc)),
        (Route::Systems, true) => ok(collection(
            SYSTEMS,
            "#ComputerSystemCollection.ComputerSystemCollection",
            "Computer System Collection",
            [SYSTEM.to_string()],
        )),
        (Route::System, true) => ok(system(bmc)),
        (Route::ChassisCollection, true) => ok(collection(
            CHASSIS,
            "#ChassisCollection.ChassisCollection",
            "Chassis Collection",
            std::iter::once(Ch::Node)
                .chain((0..gpus).map(Ch::Gpu))
                .map(Ch::uri),
        )),
        (Route::Chassis(ch), true) => ok(chassis(bmc, *ch)),
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
        (Route::Sessions, false) => login(bmc, &mut s.sessions, body),
        (Route::Session(id), true) => match s.sessions.user_of(id) {
            Some(user) => ok(session(id, &user)),
            None => RfError::NotFound(path.to_string()).into_response(),
        },
        (Route::Session(id), false) => {
            if s.sessions.remove(id) {
                tracing::debug!(bmc = %bmc.name, session = %id, "session deleted");
                StatusCode::NO_CONTENT.into_response()
            } else {
                RfError::NotFound(path.to_string()).into_response()
            }
        }
        _ => RfError::MethodNotAllowed(method.to_string()).into_response(),
    }
}

fn log_limit(bmc: &Bmc, ch: Ch, limit: Option<f64>, via: &str) {
    match limit {
        Some(w) => tracing::info!(bmc = %bmc.name, chassis = %ch.id(), watts = w, via, "power limit set"),
        None => tracing::info!(bmc = %bmc.name, chassis = %ch.id(), via, "power limit cleared"),
    }
}

// ---------------------------------------------------------------- auth

/// Open sessions by token.
#[derive(Default)]
pub(crate) struct Sessions {
    next_id: u64,
    by_token: HashMap<String, Session>,
}

struct Session {
    id: String,
    user: String,
    last_used: Instant,
}

impl Sessions {
    fn expire(&mut self) {
        self.expire_at(Instant::now());
    }

    fn expire_at(&mut self, now: Instant) {
        self.by_token
            .retain(|_, s| now.saturating_duration_since(s.last_used) < SESSION_TIMEOUT);
    }

    /// A new session: (id, token); None when [`MAX_SESSIONS`] are open.
    fn create(&mut self, user: &str) -> Option<(String, String)> {
        self.expire();
        if self.by_token.len() >= MAX_SESSIONS {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id.to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.by_token.insert(
            token.clone(),
            Session {
                id: id.clone(),
                user: user.to_string(),
                last_used: Instant::now(),
            },
        );
        Some((id, token))
    }

    /// The session's user, marking it used.
    fn touch(&mut self, token: &str) -> Option<String> {
        self.expire();
        let s = self.by_token.get_mut(token)?;
        s.last_used = Instant::now();
        Some(s.user.clone())
    }

    fn user_of(&mut self, id: &str) -> Option<String> {
        self.expire();
        self.by_token
            .values()
            .find(|s| s.id == id)
            .map(|s| s.user.clone())
    }

    fn remove(&mut self, id: &str) -> bool {
        let before = self.by_token.len();
        self.by_token.retain(|_, s| s.id != id);
        self.by_token.len() != before
    }

    fn ids(&mut self) -> Vec<String> {
        self.expire();
        let mut ids: Vec<u64> = self.by_token.values().filter_map(|s| s.id.parse().ok()).collect();
        ids.sort_unstable();
        ids.into_iter().map(|i| i.to_string()).collect()
    }

    pub(crate) fn clear(&mut self) {
        self.by_token.clear();
    }
}

/// `X-Auth-Token` (a session) or `Authorization: Basic`.
fn authenticate(bmc: &Bmc, state: &mut BmcState, headers: &HeaderMap) -> Result<String, RfError> {
    if let Some(token) = headers.get("x-auth-token") {
        let token = token.to_str().unwrap_or_default();
        return state
            .sessions
            .touch(token)
            .ok_or_else(|| unauthorized("the X-Auth-Token names no open session"));
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no credentials: send X-Auth-Token or Authorization: Basic",
        ));
    };
    let Some((user, password)) = auth.to_str().ok().and_then(parse_basic) else {
        return Err(unauthorized("the Authorization header is not Basic credentials"));
    };
    if user == bmc.username && password == bmc.password {
        Ok(user)
    } else {
        Err(unauthorized("wrong username or password"))
    }
}

fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn unauthorized(why: &str) -> RfError {
    RfError::NoValidSession(why.to_string())
}

fn login(bmc: &Bmc, sessions: &mut Sessions, body: &[u8]) -> Response {
    let obj = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let field = |name: &str| -> Result<String, RfError> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(RfError::TypeError(v.to_string(), name.to_string())),
            None => Err(RfError::Missing(name.to_string())),
        }
    };
    let (user, password) = match (field("UserName"), field("Password")) {
        (Ok(u), Ok(p)) => (u, p),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if user != bmc.username || password != bmc.password {
        tracing::debug!(bmc = %bmc.name, %user, "login refused");
        return unauthorized("wrong username or password").into_response();
    }
    let Some((id, token)) = sessions.create(&user) else {
        return RfError::SessionLimit.into_response();
    };
    tracing::debug!(bmc = %bmc.name, %user, session = %id, "session created");
    let location = format!("{SESSIONS}/{id}");
    let mut r = json_response(StatusCode::CREATED, session(&id, &user));
    let h = r.headers_mut();
    h.insert(
        HeaderName::from_static("x-auth-token"),
        HeaderValue::from_str(&token).expect("a hex token is a valid header"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a path is a valid header"),
    );
    r
}

// ---------------------------------------------------------------- PATCH

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.keys().all(|k| k.starts_with("@odata.")) => Err(RfError::EmptyJson),
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(RfError::MalformedJson),
    }
}

/// `Some(number)`, `None` for null; anything else is a type error naming `name`.
fn watts_or_null(v: &Value, name: &str) -> Result<Option<f64>, RfError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        other => Err(RfError::TypeError(other.to_string(), name.to_string())),
    }
}

fn out_of_range(value: &Value, name: &str, e: OutOfRange) -> RfError {
    RfError::OutOfRange {
        value: value.to_string(),
        property: name.to_string(),
        min: e.min,
        max: e.max,
    }
}

/// `{"PowerControl": [{"PowerLimit": {"LimitInWatts": <f or null>}}]}`
fn patch_power(p: &mut PowerModel, body: &[u8]) -> Result<(), RfError> {
    let obj = parse_object(body)?;
    let mut limit = None;
    for (k, v) in &obj {
        match k.as_str() {
            "PowerControl" => {
                let Value::Array(items) = v else {
                    return Err(RfError::TypeError(v.to_string(), k.clone()));
                };
                if items.len() != 1 {
                    return Err(RfError::General(format!(
                        "PowerControl has exactly one member; the request has {}",
                        items.len()
                    )));
                }
                let Value::Object(member) = &items[0] else {
                    return Err(RfError::TypeError(items[0].to_string(), "PowerControl/0".into()));
                };
                for (mk, mv) in member {
                    match mk.as_str() {
                        "PowerLimit" => {
                            let Value::Object(pl) = mv else {
                                return Err(RfError::TypeError(mv.to_string(), "PowerLimit".into()));
                            };
                            for (lk, lv) in pl {
                                match lk.as_str() {
                                    "LimitInWatts" => limit = Some((watts_or_null(lv, lk)?, lv.clone())),
                                    "LimitException" | "CorrectionInMs" => {
                                        return Err(RfError::NotWritable(lk.clone()));
                                    }
                                    _ => return Err(RfError::Unknown(lk.clone())),
                                }
                            }
                        }
                        "@odata.id" | "MemberId" => {}
                        k if known_power_control_property(k) => {
                            return Err(RfError::NotWritable(mk.clone()));
                        }
                        _ => return Err(RfError::Unknown(mk.clone())),
                    }
                }
            }
            k if k.starts_with("@odata.") => {}
            "Id" | "Name" | "Voltages" | "PowerSupplies" | "Redundancy" => {
                return Err(RfError::NotWritable(k.to_string()));
            }
            _ => return Err(RfError::Unknown(k.clone())),
        }
    }
    let Some((watts, raw)) = limit else {
        return Err(RfError::Missing("PowerControl/0/PowerLimit/LimitInWatts".into()));
    };
    p.set_node_limit(watts)
        .map_err(|e| out_of_range(&raw, "LimitInWatts", e))
}

fn known_power_control_property(k: &str) -> bool {
    matches!(
        k,
        "Name"
            | "PowerConsumedWatts"
            | "PowerCapacityWatts"
            | "PowerRequestedWatts"
            | "PowerAvailableWatts"
            | "PowerAllocatedWatts"
            | "PowerMetrics"
            | "RelatedItem"
            | "Status"
    )
}

/// `{"SetPoint": <f>, "ControlMode": "Automatic"}` sets; `{"ControlMode": "Disabled"}` clears.
fn patch_control(p: &mut PowerModel, ch: Ch, body: &[u8]) -> Result<(), RfError> {
    let obj = parse_object(body)?;
    let mut set_point: Option<(Option<f64>, Value)> = None;
    let mut mode: Option<bool> = None; // Some(true) = Automatic, Some(false) = Disabled
    for (k, v) in &obj {
        match k.as_str() {
            "SetPoint" => set_point = Some((watts_or_null(v, k)?, v.clone())),
            "ControlMode" => match v.as_str() {
                Some("Automatic") => mode = Some(true),
                Some("Disabled") => mode = Some(false),
                Some(_) => return Err(RfError::NotInList(v.to_string(), k.clone())),
                None => return Err(RfError::TypeError(v.to_string(), k.clone())),
            },
            k if k.starts_with("@odata.") => {}
            "Id" | "Name" | "ControlType" | "SetPointUnits" | "AllowableMin" | "AllowableMax"
            | "PhysicalContext" | "Sensor" | "Status" | "RelatedItem" => {
                return Err(RfError::NotWritable(k.to_string()));
            }
            _ => return Err(RfError::Unknown(k.clone())),
        }
    }
    let current = limit_of(p, ch);
    let new = match (set_point, mode) {
        (Some((Some(_), _)), Some(false)) => {
            return Err(RfError::Conflict("SetPoint".into(), "ControlMode".into()));
        }
        (Some((None, _)), Some(true)) => {
            return Err(RfError::Conflict("ControlMode".into(), "SetPoint".into()));
        }
        (Some((Some(w), raw)), _) => Some((w, raw)),
        (Some((None, _)), None) | (_, Some(false)) => None,
        (None, Some(true)) => match current {
            Some(w) => Some((w, json!(w))),
            None => return Err(RfError::Missing("SetPoint".into())),
        },
        (None, None) => return Err(RfError::EmptyJson),
    };
    let raw = new.as_ref().map(|(_, r)| r.clone()).unwrap_or(Value::Null);
    let watts = new.map(|(w, _)| w);
    let result = match ch {
        Ch::Node => p.set_node_limit(watts),
        Ch::Gpu(i) => p.set_gpu_limit(i, watts),
    };
    result.map_err(|e| out_of_range(&raw, "SetPoint", e))
}

// ---------------------------------------------------------------- resources

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn link(uri: &str) -> Value {
    json!({ "@odata.id": uri })
}

fn status_ok() -> Value {
    json!({ "State": "Enabled", "Health": "OK" })
}

fn service_root(bmc: &Bmc) -> Value {
    json!({
        "@odata.id": ROOT,
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": "1.17.0",
        "UUID": bmc.uuid,
        "Vendor": "hostplane",
        "Product": format!("hostplane BMC simulator ({})", bmc.model.spec().display_name),
        "Systems": link(SYSTEMS),
        "Chassis": link(CHASSIS),
        "Managers": link(MANAGERS),
        "SessionService": link(SESSION_SERVICE),
        "Links": { "Sessions": link(SESSIONS) },
    })
}

/// A resource collection. DMTF collections have no `Id`.
fn collection(uri: &str, odata_type: &str, name: &str, members: impl IntoIterator<Item = String>) -> Value {
    let members: Vec<Value> = members.into_iter().map(|m| link(&m)).collect();
    json!({
        "@odata.id": uri,
        "@odata.type": odata_type,
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members,
    })
}

fn system(bmc: &Bmc) -> Value {
    let spec = bmc.model.spec();
    json!({
        "@odata.id": SYSTEM,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "DGX",
        "Name": spec.display_name,
        "SystemType": "Physical",
        "Manufacturer": "NVIDIA",
        "Model": spec.display_name,
        "UUID": bmc.uuid,
        "PowerState": "On",
        "Status": status_ok(),
        "Links": {
            "Chassis": [link(NODE_CHASSIS)],
            "ManagedBy": [link(MANAGER)],
        },
    })
}

fn manager(bmc: &Bmc) -> Value {
    json!({
        "@odata.id": MANAGER,
        "@odata.type": "#Manager.v1_18_0.Manager",
        "Id": "BMC",
        "Name": format!("{} BMC", bmc.name),
        "ManagerType": "BMC",
        "FirmwareVersion": concat!("hostplane-sim ", env!("CARGO_PKG_VERSION")),
        "PowerState": "On",
        "Status": status_ok(),
        "Links": {
            "ManagerForServers": [link(SYSTEM)],
            "ManagerForChassis": [link(NODE_CHASSIS)],
        },
    })
}

fn session_service() -> Value {
    json!({
        "@odata.id": SESSION_SERVICE,
        "@odata.type": "#SessionService.v1_1_9.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": SESSION_TIMEOUT.as_secs(),
        "Sessions": link(SESSIONS),
    })
}

fn session(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{id}"),
        "@odata.type": "#Session.v1_7_0.Session",
        "Id": id,
        "Name": "User Session",
        "UserName": user,
        "Password": null,
        "SessionType": "Redfish",
    })
}

fn chassis(bmc: &Bmc, ch: Ch) -> Value {
    let spec = bmc.model.spec();
    let uri = ch.uri();
    let mut v = json!({
        "@odata.id": uri,
        "@odata.type": "#Chassis.v1_23_0.Chassis",
        "Id": ch.id(),
        "Manufacturer": "NVIDIA",
        "PowerState": "On",
        "Status": status_ok(),
        "EnvironmentMetrics": link(&format!("{uri}/EnvironmentMetrics")),
        "Controls": link(&format!("{uri}/Controls")),
        "Sensors": link(&format!("{uri}/Sensors")),
    });
    let o = v.as_object_mut().expect("an object");
    match ch {
        Ch::Node => {
            o.insert("Name".into(), json!(spec.display_name));
            o.insert("ChassisType".into(), json!("RackMount"));
            o.insert("Model".into(), json!(spec.display_name));
            o.insert("Power".into(), link(&format!("{uri}/Power")));
            let gpus: Vec<Value> = (0..spec.gpus).map(|i| link(&Ch::Gpu(i).uri())).collect();
            o.insert(
                "Links".into(),
                json!({
                    "ComputerSystems": [link(SYSTEM)],
                    "ManagedBy": [link(MANAGER)],
                    "Contains": gpus,
                }),
            );
        }
        Ch::Gpu(i) => {
            o.insert("Name".into(), json!(format!("GPU SXM {}", i + 1)));
            o.insert("ChassisType".into(), json!("Module"));
            o.insert("Model".into(), json!(spec.gpu_name));
            o.insert(
                "Links".into(),
                json!({
                    "ContainedBy": link(NODE_CHASSIS),
                    "ManagedBy": [link(MANAGER)],
                }),
            );
        }
    }
    v
}

fn draw_of(p: &PowerModel, ch: Ch) -> f64 {
    match ch {
        Ch::Node => p.node_draw(),
        Ch::Gpu(i) => p.gpu_draws()[i],
    }
}

fn limit_of(p: &PowerModel, ch: Ch) -> Option<f64> {
    match ch {
        Ch::Node => p.node_limit(),
        Ch::Gpu(i) => p.gpu_limit(i),
    }
}

fn range_of(p: &PowerModel, ch: Ch) -> (f64, f64) {
    match ch {
        Ch::Node => p.node_limit_range(),
        Ch::Gpu(_) => p.gpu_limit_range(),
    }
}

fn energy_kwh(p: &PowerModel, ch: Ch) -> f64 {
    let j = match ch {
        Ch::Node => p.node_energy_j(),
        Ch::Gpu(i) => p.gpu_energy_j(i),
    };
    (j / 3.6e6 * 1e6).round() / 1e6
}

fn control_mode(limit: Option<f64>) -> &'static str {
    if limit.is_some() { "Automatic" } else { "Disabled" }
}

fn sensor_uri(ch: Ch) -> String {
    format!("{}/Sensors/{}", ch.uri(), ch.sensor_id())
}

fn physical_context(ch: Ch) -> &'static str {
    match ch {
        Ch::Node => "Chassis",
        Ch::Gpu(_) => "GPU",
    }
}

fn power(p: &PowerModel) -> Value {
    let uri = format!("{NODE_CHASSIS}/Power");
    let stats = p.stats();
    json!({
        "@odata.id": uri,
        "@odata.type": "#Power.v1_7_1.Power",
        "Id": "Power",
        "Name": "Power",
        "PowerControl@odata.count": 1,
        "PowerControl": [{
            "@odata.id": format!("{uri}#/PowerControl/0"),
            "MemberId": "0",
            "Name": "Chassis Power Control",
            "PowerConsumedWatts": round2(p.node_draw()),
            "PowerCapacityWatts": p.spec().node_max_watts(),
            "PowerLimit": {
                "LimitInWatts": p.node_limit(),
                "LimitException": "LogEventOnly",
                "CorrectionInMs": 1000,
            },
            "PowerMetrics": {
                "IntervalInMin": 1,
                "MinConsumedWatts": round2(stats.min),
                "MaxConsumedWatts": round2(stats.max),
                "AverageConsumedWatts": round2(stats.average),
            },
            "RelatedItem": [link(NODE_CHASSIS)],
            "Status": status_ok(),
        }],
    })
}

fn environment_metrics(p: &PowerModel, ch: Ch) -> Value {
    let limit = limit_of(p, ch);
    let (min, max) = range_of(p, ch);
    json!({
        "@odata.id": format!("{}/EnvironmentMetrics", ch.uri()),
        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
        "Id": "EnvironmentMetrics",
        "Name": format!("{} Environment Metrics", ch.id()),
        "PowerWatts": {
            "DataSourceUri": sensor_uri(ch),
            "Reading": round2(draw_of(p, ch)),
        },
        "EnergykWh": { "Reading": energy_kwh(p, ch) },
        "PowerLimitWatts": {
            "SetPoint": limit,
            "AllowableMin": min,
            "AllowableMax": max,
            "ControlMode": control_mode(limit),
        },
    })
}

fn control(p: &PowerModel, ch: Ch) -> Value {
    let limit = limit_of(p, ch);
    let (min, max) = range_of(p, ch);
    json!({
        "@odata.id": format!("{}/Controls/PowerLimit", ch.uri()),
        "@odata.type": "#Control.v1_3_0.Control",
        "Id": "PowerLimit",
        "Name": format!("{} Power Limit", ch.id()),
        "ControlType": "Power",
        "SetPoint": limit,
        "SetPointUnits": "W",
        "AllowableMin": min,
        "AllowableMax": max,
        "ControlMode": control_mode(limit),
        "PhysicalContext": physical_context(ch),
        "Sensor": {
            "Reading": round2(draw_of(p, ch)),
            "DataSourceUri": sensor_uri(ch),
        },
        "RelatedItem": [link(&ch.uri())],
        "Status": status_ok(),
    })
}

fn sensor(p: &PowerModel, ch: Ch) -> Value {
    json!({
        "@odata.id": sensor_uri(ch),
        "@odata.type": "#Sensor.v1_7_0.Sensor",
        "Id": ch.sensor_id(),
        "Name": format!("{} Power", ch.id()),
        "ReadingType": "Power",
        "ReadingUnits": "W",
        "Reading": round2(draw_of(p, ch)),
        "PhysicalContext": physical_context(ch),
        "Status": status_ok(),
    })
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

// ---------------------------------------------------------------- responses

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (HeaderName::from_static("odata-version"), "4.0"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn method_not_allowed_text(allow: &'static str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, allow)],
        format!("method not allowed; allowed: {allow}\n"),
    )
        .into_response()
}

/// A message of the DMTF Base registry.
#[derive(Debug)]
enum RfError {
    General(String),
    NoValidSession(String),
    NotFound(String),
    MethodNotAllowed(String),
    MalformedJson,
    EmptyJson,
    TypeError(String, String),
    NotInList(String, String),
    NotWritable(String),
    Unknown(String),
    Missing(String),
    Conflict(String, String),
    OutOfRange {
        value: String,
        property: String,
        min: f64,
        max: f64,
    },
    SessionLimit,
    TooLarge,
}

impl RfError {
    fn status(&self) -> StatusCode {
        match self {
            RfError::NoValidSession(_) => StatusCode::UNAUTHORIZED,
            RfError::NotFound(_) => StatusCode::NOT_FOUND,
            RfError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RfError::SessionLimit => StatusCode::SERVICE_UNAVAILABLE,
            RfError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// (message id, message, args, resolution)
    fn parts(&self) -> (&'static str, String, Vec<String>, &'static str) {
        const FIX_BODY: &str = "Correct the value for the property in the request body and resubmit the request if the operation failed.";
        match self {
            RfError::General(m) => ("GeneralError", m.clone(), vec![], "None."),
            RfError::TooLarge => (
                "GeneralError",
                format!("The request body is over {MAX_BODY} bytes or could not be read."),
                vec![],
                "Send a smaller request body.",
            ),
            RfError::NoValidSession(why) => (
                "NoValidSession",
                format!("There is no valid session established with the implementation: {why}."),
                vec![],
                "Establish a session before attempting any operations.",
            ),
            RfError::NotFound(uri) => (
                "ResourceNotFound",
                format!("The requested resource of type Resource named '{uri}' was not found."),
                vec!["Resource".into(), uri.clone()],
                "Provide a valid resource identifier and resubmit the request.",
            ),
            RfError::MethodNotAllowed(m) => (
                "OperationNotAllowed",
                format!("The HTTP method {m} is not allowed on this resource."),
                vec![],
                "None.",
            ),
            RfError::MalformedJson => (
                "MalformedJSON",
                "The request body submitted was malformed JSON and could not be parsed by the receiving service."
                    .into(),
                vec![],
                "Ensure that the request body is valid JSON and resubmit the request.",
            ),
            RfError::EmptyJson => (
                "EmptyJSON",
                "The request body submitted contained an empty JSON object and the service is unable to process it."
                    .into(),
                vec![],
                "Add properties in the JSON object and resubmit the request.",
            ),
            RfError::TypeError(v, p) => (
                "PropertyValueTypeError",
                format!("The value '{v}' for the property {p} is not a type that the property can accept."),
                vec![v.clone(), p.clone()],
                FIX_BODY,
            ),
            RfError::NotInList(v, p) => (
                "PropertyValueNotInList",
                format!("The value '{v}' for the property {p} is not in the list of acceptable values."),
                vec![v.clone(), p.clone()],
                "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
            ),
            RfError::NotWritable(p) => (
                "PropertyNotWritable",
                format!("The property {p} is a read only property and cannot be assigned a value."),
                vec![p.clone()],
                "Remove the property from the request body and resubmit the request if the operation failed.",
            ),
            RfError::Unknown(p) => (
                "PropertyUnknown",
                format!("The property {p} is not in the list of valid properties for the resource."),
                vec![p.clone()],
                "Remove the unknown property from the request body and resubmit the request if the operation failed.",
            ),
            RfError::Missing(p) => (
                "PropertyMissing",
                format!("The property {p} is a required property and must be included in the request."),
                vec![p.clone()],
                "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.",
            ),
            RfError::Conflict(a, b) => (
                "PropertyValueConflict",
                format!(
                    "The property '{a}' could not be written because its value would conflict with the value of the '{b}' property."
                ),
                vec![a.clone(), b.clone()],
                "No resolution is required.",
            ),
            RfError::OutOfRange {
                value,
                property,
                min,
                max,
            } => (
                "PropertyValueOutOfRange",
                format!(
                    "The value '{value}' for the property {property} is not in the supported range of acceptable values ({min} to {max})."
                ),
                vec![value.clone(), property.clone()],
                FIX_BODY,
            ),
            RfError::SessionLimit => (
                "SessionLimitExceeded",
                format!(
                    "The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation ({MAX_SESSIONS})."
                ),
                vec![],
                "Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions, if supported.",
            ),
        }
    }
}

impl IntoResponse for RfError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (id, message, args, resolution) = self.parts();
        let id = format!("{REGISTRY}.{id}");
        let severity = if status.is_server_error() {
            "Critical"
        } else {
            "Warning"
        };
        let mut r = json_response(
            status,
            json!({
                "error": {
                    "code": id,
                    "message": message,
                    "@Message.ExtendedInfo": [{
                        "@odata.type": "#Message.v1_1_1.Message",
                        "MessageId": id,
                        "Message": message,
                        "MessageArgs": args,
                        "MessageSeverity": severity,
                        "Resolution": resolution,
                    }],
                }
            }),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        r
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

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(
            parse_basic("Basic YWRtaW46YTpi"),
            Some(("admin".into(), "a:b".into()))
        );
        assert_eq!(
            parse_basic("basic YWRtaW46YWRtaW4="),
            Some(("admin".into(), "admin".into()))
        );
        assert_eq!(parse_basic("Bearer YWRtaW46YWRtaW4="), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic YWRtaW4="), None);
    }

    fn h100() -> PowerModel {
        PowerModel::new(*super::super::Model::DgxH100.spec(), Workload::Idle)
    }

    #[test]
    fn control_patches_set_and_clear() {
        let mut p = h100();
        patch_control(
            &mut p,
            Ch::Node,
            br#"{"SetPoint": 8000, "ControlMode": "Automatic"}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), Some(8000.0));
        patch_control(&mut p, Ch::Node, br#"{"SetPoint": 7000}"#).unwrap();
        assert_eq!(p.node_limit(), Some(7000.0));
        patch_control(&mut p, Ch::Node, br#"{"ControlMode": "Automatic"}"#).unwrap();
        assert_eq!(p.node_limit(), Some(7000.0));
        patch_control(&mut p, Ch::Node, br#"{"ControlMode": "Disabled"}"#).unwrap();
        assert_eq!(p.node_limit(), None);
        patch_control(
            &mut p,
            Ch::Gpu(3),
            br#"{"SetPoint": 300, "ControlMode": "Automatic"}"#,
        )
        .unwrap();
        assert_eq!(p.gpu_limit(3), Some(300.0));
        patch_control(&mut p, Ch::Gpu(3), br#"{"SetPoint": null}"#).unwrap();
        assert_eq!(p.gpu_limit(3), None);
    }

    #[test]
    fn bad_control_patches_change_nothing() {
        let mut p = h100();
        p.set_node_limit(Some(9000.0)).unwrap();
        for body in [
            &br#"{"SetPoint": 100}"#[..],
            br#"{"SetPoint": 99999, "ControlMode": "Automatic"}"#,
            br#"{"SetPoint": "9000"}"#,
            br#"{"SetPoint": 8000, "ControlMode": "Disabled"}"#,
            br#"{"SetPoint": null, "ControlMode": "Automatic"}"#,
            br#"{"ControlMode": "Override"}"#,
            br#"{"AllowableMax": 20000}"#,
            br#"{"Colour": "red"}"#,
            br#"{}"#,
            br#"[1]"#,
            br#"{"SetPoint": 8000"#,
        ] {
            assert!(
                patch_control(&mut p, Ch::Node, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(p.node_limit(), Some(9000.0));
        }
        let mut fresh = h100();
        assert!(patch_control(&mut fresh, Ch::Node, br#"{"ControlMode": "Automatic"}"#).is_err());
        assert_eq!(fresh.node_limit(), None);
    }

    #[test]
    fn power_patches_set_clear_and_refuse() {
        let mut p = h100();
        patch_power(
            &mut p,
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": 8000}}]}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), Some(8000.0));
        for body in [
            &br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": 100}}]}"#[..],
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": true}}]}"#,
            br#"{"PowerControl": [{"PowerLimit": {"LimitException": "HardPowerOff"}}]}"#,
            br#"{"PowerControl": [{}, {}]}"#,
            br#"{"PowerControl": [{"PowerConsumedWatts": 1}]}"#,
            br#"{"PowerControl": {}}"#,
            br#"{"Voltages": []}"#,
            br#"{"PowerControl": [{}]}"#,
        ] {
            assert!(
                patch_power(&mut p, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(p.node_limit(), Some(8000.0));
        }
        patch_power(
            &mut p,
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": null}}]}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), None);
    }

    #[test]
    fn sessions_expire_and_are_capped() {
        let mut s = Sessions::default();
        let (id, token) = s.create("admin").unwrap();
        assert_eq!(s.touch(&token).as_deref(), Some("admin"));
        assert_eq!(s.ids(), vec![id.clone()]);
        s.expire_at(Instant::now() + SESSION_TIMEOUT / 2);
        assert_eq!(s.ids(), vec![id.clone()]);
        s.expire_at(Instant::now() + SESSION_TIMEOUT);
        assert_eq!(s.touch(&token), None);
        for _ in 0..MAX_SESSIONS {
            assert!(s.create("admin").is_some());
        }
        assert!(s.create("admin").is_none());
        let first = s.ids()[0].clone();
        assert!(s.remove(&first));
        assert!(!s.remove(&first));
        assert!(s.create("admin").is_some());
    }
}
