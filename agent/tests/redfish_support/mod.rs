//! A tiny Redfish BMC for the client's tests: fixed JSON resources that
//! follow the surface in docs/power.md (DGX node chassis, GPU chassis,
//! EnvironmentMetrics, Power, Controls), sessions and Basic auth, PATCH of
//! the power limits with range checks, and a log of every request (arrival
//! and end instants, auth used) for assertions on the client's behaviour.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cr3t-Pa55-4-bmc";

/// What the BMC serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// EnvironmentMetrics, Controls and Power (what redfish.md describes).
    Modern,
    /// Only the deprecated `Power` resource: no EnvironmentMetrics, no Controls.
    PowerOnly,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuthUsed {
    None,
    Basic,
    Token,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub end: Instant,
    pub method: String,
    pub path: String,
    pub auth: AuthUsed,
    pub body: String,
}

pub struct Fixture {
    pub resources: Mutex<HashMap<String, Value>>,
    pub sessions_enabled: bool,
    pub tokens: Mutex<HashSet<String>>,
    next_session: AtomicUsize,
    pub log: Mutex<Vec<Hit>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// How long each request takes to answer.
    pub delay: Mutex<Duration>,
}

pub struct Bmc {
    pub fixture: Arc<Fixture>,
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bmc {
    pub fn hits(&self) -> Vec<Hit> {
        self.fixture.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.fixture.log.lock().unwrap().clear();
    }

    pub fn get(&self, path: &str) -> Value {
        self.fixture.resources.lock().unwrap()[path].clone()
    }

    /// Change a resource (`f` edits it in place).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        f(self.fixture.resources.lock().unwrap().get_mut(path).unwrap());
    }

    pub fn remove(&self, path: &str) {
        self.fixture.resources.lock().unwrap().remove(path);
    }

    /// Invalidate every session (as a BMC reboot does).
    pub fn drop_sessions(&self) {
        self.fixture.tokens.lock().unwrap().clear();
    }

    pub fn posts_to_sessions(&self) -> usize {
        self.hits()
            .iter()
            .filter(|h| h.method == "POST" && h.path.ends_with("/Sessions"))
            .count()
    }
}

/// A DGX-like BMC with `gpus` GPU chassis.
pub fn resources(shape: Shape, gpus: usize, sessions: bool) -> HashMap<String, Value> {
    let mut r = HashMap::new();
    let modern = shape == Shape::Modern;
    let mut root = json!({
        "@odata.id": "/redfish/v1", "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.17.0",
        "UUID": "92384634-2938-2342-8820-489239905423",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"},
        "Links": {},
    });
    if sessions {
        root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
        root["Links"]["Sessions"] = json!({"@odata.id": "/redfish/v1/SessionService/Sessions"});
        r.insert(
            "/redfish/v1/SessionService".into(),
            json!({"@odata.id": "/redfish/v1/SessionService", "@odata.type": "#SessionService.v1_1_9.SessionService",
                "Id": "SessionService", "Name": "Session Service",
                "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}),
        );
    }
    r.insert("/redfish/v1".into(), root);
    r.insert(
        "/redfish/v1/Systems".into(),
        collection(
            "/redfish/v1/Systems",
            "ComputerSystemCollection",
            &["/redfish/v1/Systems/DGX".into()],
        ),
    );
    r.insert(
        "/redfish/v1/Systems/DGX".into(),
        json!({"@odata.id": "/redfish/v1/Systems/DGX", "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
            "Id": "DGX", "Name": "DGX", "Model": "DGX H100", "PowerState": "On",
            "Links": {"Chassis": [{"@odata.id": "/redfish/v1/Chassis/DGX"}]}}),
    );
    let gpu_paths: Vec<String> = (1..=gpus)
        .map(|i| format!("/redfish/v1/Chassis/HGX_GPU_SXM_{i}"))
        .collect();
    // GPU chassis listed first: the client must not pick the node by position.
    let mut members = gpu_paths.clone();
    members.push("/redfish/v1/Chassis/DGX".into());
    r.insert(
        "/redfish/v1/Chassis".into(),
        collection("/redfish/v1/Chassis", "ChassisCollection", &members),
    );
    let mut node = json!({
        "@odata.id": "/redfish/v1/Chassis/DGX", "@odata.type": "#Chassis.v1_23_0.Chassis",
        "Id": "DGX", "Name": "DGX", "ChassisType": "RackMount", "Model": "DGX H100", "Manufacturer": "NVIDIA",
        "Power": {"@odata.id": "/redfish/v1/Chassis/DGX/Power"},
        "Links": {
            "ComputerSystems": [{"@odata.id": "/redfish/v1/Systems/DGX"}],
            "Contains": gpu_paths.iter().map(|p| json!({"@odata.id": p})).collect::<Vec<_>>(),
        },
    });
    r.insert(
        "/redfish/v1/Chassis/DGX/Power".into(),
        json!({"@odata.id": "/redfish/v1/Chassis/DGX/Power", "@odata.type": "#Power.v1_7_1.Power",
            "Id": "Power", "Name": "Power",
            "PowerControl": [{"@odata.id": "/redfish/v1/Chassis/DGX/Power#/PowerControl/0", "MemberId": "0",
                "Name": "Chassis Power Control", "PowerConsumedWatts": 5432.0, "PowerCapacityWatts": 10200.0,
                "PowerLimit": {"LimitInWatts": null, "LimitException": "LogEventOnly", "CorrectionInMs": 1000},
                "PowerMetrics": {"IntervalInMin": 1, "MinConsumedWatts": 5000.0, "MaxConsumedWatts": 6000.0,
                    "AverageConsumedWatts": 5400.0}}]}),
    );
    if modern {
        node["EnvironmentMetrics"] = json!({"@odata.id": "/redfish/v1/Chassis/DGX/EnvironmentMetrics"});
        node["Controls"] = json!({"@odata.id": "/redfish/v1/Chassis/DGX/Controls"});
        add_modern(
            &mut r,
            "/redfish/v1/Chassis/DGX",
            6123.5,
            4000.0,
            10200.0,
            "Chassis",
        );
    }
    r.insert("/redfish/v1/Chassis/DGX".into(), node);
    for (i, p) in gpu_paths.iter().enumerate() {
        let id = format!("HGX_GPU_SXM_{}", i + 1);
        let mut g = json!({
            "@odata.id": p, "@odata.type": "#Chassis.v1_23_0.Chassis", "Id": id, "Name": format!("GPU {}", i + 1),
            "ChassisType": "Module",
            "Links": {"ContainedBy": {"@odata.id": "/redfish/v1/Chassis/DGX"}},
        });
        if modern {
            g["EnvironmentMetrics"] = json!({"@odata.id": format!("{p}/EnvironmentMetrics")});
            g["Controls"] = json!({"@odata.id": format!("{p}/Controls")});
            add_modern(&mut r, p, 600.0 + i as f64, 200.0, 700.0, "GPU");
        }
        r.insert(p.clone(), g);
    }
    r
}

fn collection(path: &str, kind: &str, members: &[String]) -> Value {
    json!({"@odata.id": path, "@odata.type": format!("#{kind}.{kind}"), "Name": kind,
        "Members": members.iter().map(|m| json!({"@odata.id": m})).collect::<Vec<_>>(),
        "Members@odata.count": members.len()})
}

fn add_modern(r: &mut HashMap<String, Value>, chassis: &str, watts: f64, min: f64, max: f64, context: &str) {
    r.insert(
        format!("{chassis}/EnvironmentMetrics"),
        json!({"@odata.id": format!("{chassis}/EnvironmentMetrics"),
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics", "Id": "EnvironmentMetrics",
            "Name": "Environment Metrics",
            "PowerWatts": {"DataSourceUri": format!("{chassis}/Controls/PowerLimit"), "Reading": watts},
            "EnergykWh": {"Reading": 100.0},
            "PowerLimitWatts": {"SetPoint": null, "AllowableMin": min, "AllowableMax": max, "ControlMode": "Disabled"}}),
    );
    r.insert(
        format!("{chassis}/Controls"),
        collection(
            &format!("{chassis}/Controls"),
            "ControlCollection",
            &[format!("{chassis}/Controls/PowerLimit")],
        ),
    );
    r.insert(
        format!("{chassis}/Controls/PowerLimit"),
        json!({"@odata.id": format!("{chassis}/Controls/PowerLimit"), "@odata.type": "#Control.v1_3_0.Control",
            "Id": "PowerLimit", "Name": "Power Limit", "ControlType": "Power", "SetPoint": null,
            "SetPointUnits": "W", "AllowableMin": min, "AllowableMax": max, "ControlMode": "Disabled",
            "PhysicalContext": context, "Sensor": {"Reading": watts, "DataSourceUri": format!("{chassis}/EnvironmentMetrics")}}),
    );
}

/// Serve `resources` on 127.0.0.1 (a free port).
pub async fn serve(resources: HashMap<String, Value>, sessions: bool) -> Bmc {
    let fixture = Arc::new(Fixture {
        resources: Mutex::new(resources),
        sessions_enabled: sessions,
        tokens: Mutex::new(HashSet::new()),
        next_session: AtomicUsize::new(1),
        log: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        delay: Mutex::new(Duration::ZERO),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(handle).with_state(fixture.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Bmc { fixture, url, task }
}

pub async fn dgx(shape: Shape, gpus: usize) -> Bmc {
    serve(resources(shape, gpus, true), true).await
}

pub fn basic(user: &str, password: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": format!("Base.1.18.{code}"), "message": message,
        "@Message.ExtendedInfo": [{"MessageId": format!("Base.1.18.{code}"), "Message": message}]}});
    let mut b = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if status == StatusCode::UNAUTHORIZED {
        b = b.header("WWW-Authenticate", "Basic realm=\"hostplane-bmc\"");
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn ok(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn handle(
    State(f): State<Arc<Fixture>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let n = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    f.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let delay = *f.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let auth = if headers.contains_key("X-Auth-Token") {
        AuthUsed::Token
    } else if headers.contains_key("Authorization") {
        AuthUsed::Basic
    } else {
        AuthUsed::None
    };
    let path = uri.path().trim_end_matches('/').to_string();
    let resp = answer(&f, &method, &path, &headers, &body);
    f.in_flight.fetch_sub(1, Ordering::SeqCst);
    f.log.lock().unwrap().push(Hit {
        at,
        end: Instant::now(),
        method: method.to_string(),
        path,
        auth,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    resp
}

fn answer(f: &Fixture, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let sessions = "/redfish/v1/SessionService/Sessions";
    if path == "/redfish/v1" && method == Method::GET {
        return ok(StatusCode::OK, &f.resources.lock().unwrap()[path]);
    }
    if path == sessions && method == Method::POST {
        if !f.sessions_enabled {
            return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no SessionService");
        }
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v["UserName"] != USER || v["Password"] != PASSWORD {
            return error(
                StatusCode::UNAUTHORIZED,
                "NoValidSession",
                "Invalid username or password",
            );
        }
        let id = f.next_session.fetch_add(1, Ordering::SeqCst);
        let token = format!("token-{id}");
        f.tokens.lock().unwrap().insert(token.clone());
        let loc = format!("{sessions}/{id}");
        return Response::builder()
            .status(StatusCode::CREATED)
            .header("X-Auth-Token", token)
            .header("Location", &loc)
            .header("Content-Type", "application/json")
            .body(Body::from(
                json!({"@odata.id": loc, "@odata.type": "#Session.v1_7_0.Session", "Id": id.to_string(),
                "Name": "User Session", "UserName": USER})
                .to_string(),
            ))
            .unwrap();
    }
    let token_ok = headers
        .get("X-Auth-Token")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| f.tokens.lock().unwrap().contains(t));
    let basic_ok = headers
        .get("Authorization")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t == basic(USER, PASSWORD));
    if !token_ok && !basic_ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "NoValidSession",
            "There is no valid session established with the implementation.",
        );
    }
    if method == Method::DELETE && path.starts_with(&format!("{sessions}/")) {
        let token = headers
            .get("X-Auth-Token")
            .and_then(|t| t.to_str().ok())
            .unwrap_or("");
        f.tokens.lock().unwrap().remove(token);
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap();
    }
    let mut res = f.resources.lock().unwrap();
    if !res.contains_key(path) {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("{path} does not exist"),
        );
    }
    match *method {
        Method::GET => ok(StatusCode::OK, &res[path]),
        Method::PATCH => patch(&mut res, path, body),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GeneralError",
            "method not allowed",
        ),
    }
}

/// PATCH of `<chassis>/Controls/PowerLimit` or `<chassis>/Power`: the same
/// limit shows in Controls, Power and EnvironmentMetrics of the chassis.
fn patch(res: &mut HashMap<String, Value>, path: &str, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "MalformedJSON", "the body is not JSON");
    };
    let (chassis, limit): (&str, Option<f64>) = if let Some(ch) = path.strip_suffix("/Controls/PowerLimit") {
        let c = &res[path];
        let (min, max) = (
            c["AllowableMin"].as_f64().unwrap(),
            c["AllowableMax"].as_f64().unwrap(),
        );
        match (v.get("SetPoint"), v["ControlMode"].as_str()) {
            (_, Some("Disabled")) => (ch, None),
            (Some(sp), _) => match sp.as_f64() {
                Some(w) if w >= min && w <= max => (ch, Some(w)),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "PropertyValueOutOfRange",
                        &format!("The value {sp} for the property SetPoint is not in the supported range."),
                    );
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, "PropertyMissing", "SetPoint"),
        }
    } else if let Some(ch) = path.strip_suffix("/Power") {
        let l = &v["PowerControl"][0]["PowerLimit"]["LimitInWatts"];
        match l {
            Value::Null => (ch, None),
            Value::Number(n) => (ch, n.as_f64()),
            _ => return error(StatusCode::BAD_REQUEST, "PropertyValueTypeError", "LimitInWatts"),
        }
    } else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "GeneralError", "not patchable");
    };
    let mode = if limit.is_some() { "Automatic" } else { "Disabled" };
    if let Some(c) = res.get_mut(&format!("{chassis}/Controls/PowerLimit")) {
        c["SetPoint"] = json!(limit);
        c["ControlMode"] = json!(mode);
    }
    if let Some(p) = res.get_mut(&format!("{chassis}/Power")) {
        p["PowerControl"][0]["PowerLimit"]["LimitInWatts"] = json!(limit);
    }
    if let Some(e) = res.get_mut(&format!("{chassis}/EnvironmentMetrics")) {
        e["PowerLimitWatts"]["SetPoint"] = json!(limit);
        e["PowerLimitWatts"]["ControlMode"] = json!(mode);
    }
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap()
}
